"""Site-adaptation folds: a source model, a target domain and a few labelled target subjects of one dataset.

The source model is any nnU-Net model folder trained on a fold of the dataset (e.g. a single-source fold of
``nnext demo-data brain-scanners`` or of ``nnext convert cc359``); the target site is another domain of the
same dataset (``domains.json``), so source and target share the plans and the preprocessed data.
:func:`define_adaptation_fold` (``nnext adapt``) appends one fold to nnU-Net's ``splits_final.json`` in
``$nnUNet_preprocessed/DatasetXXX_Name/`` -- ``train`` = the labelled target cases, ``val`` = the target
domain's validation cases -- and records what the adaptation trainers need beside it, in
``nnext_adaptation.json``::

    {
      "format_version": 1,
      "folds": {
        "6": {"source_fold": 1, "source_domains": ["siemens_3"], "source_cases": [...],
              "source_checkpoint": "/abs/.../fold_1/checkpoint_final.pth",
              "target_domain": "ge_15", "labelled_subjects": ["sub03"], "target_cases": ["ge_15_sub03"],
              "val_cases": [...], "seed": 0}
      }
    }

Then ``nnUNetv2_train DATASET CONFIG 6 -tr nnUNetTrainerMMTL`` (or any trainer of
:mod:`nnunet_ext.trainers.site_adaptation`) starts from the source checkpoint -- every weight, the
segmentation layers too, which nnU-Net's ``-pretrained_weights`` would re-initialise -- and stock
``nnUNetv2_predict ... -f 6`` predicts with the adapted model. Only ``$nnUNet_preprocessed`` is written (both
files atomically); the raw dataset is never touched. Running nnU-Net's preprocessing again copies the raw
``splits_final.json`` over the preprocessed one: the adaptation folds are then gone and the trainers say so
(run ``nnext adapt`` again).

``--labelled 0`` makes an unlabelled fold (unsupervised adaptation, AIVA): ``train`` holds every target training
case, whose labels the trainer never uses, and ``val`` the source fold's validation cases.

Labelled target subjects are drawn (seeded) from the target domain's training subjects. In a dataset that
images the same subjects on every scanner (the simulated ``brain-scanners``) they may be subjects the source
model was trained on under another scanner: the adaptation then is to the scanner only, not to new anatomy.
Test subjects are never among them.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nnunet_ext.domains import DomainMetadata
from nnunet_ext.utils.atomic import write_json_atomic

__all__ = ["ADAPTATION_FILENAME", "AdaptationFold", "define_adaptation_fold", "load_adaptation_fold",
           "load_adaptation_folds"]

ADAPTATION_FILENAME = "nnext_adaptation.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AdaptationFold:
    """One site-adaptation fold (see the module docstring).

    Attributes:
        fold: its index in ``splits_final.json``.
        source_fold: the fold the source model was trained on.
        source_domains: the domains of the source fold's training cases.
        source_cases: the source fold's training cases (MMTL keeps sampling them).
        source_checkpoint: the source model's checkpoint (absolute path).
        target_domain: the new site.
        labelled_subjects: the target subjects whose labels the adaptation may use (empty: an unlabelled fold).
        target_cases: their cases in the target domain (the fold's ``train``; in an unlabelled fold every target
            training case).
        val_cases: the target domain's validation cases (the fold's ``val``; in an unlabelled fold the source
            fold's).
        seed: the seed of the subject draw.
    """

    fold: int
    source_fold: int
    source_domains: list[str]
    source_cases: list[str]
    source_checkpoint: str
    target_domain: str
    labelled_subjects: list[str]
    target_cases: list[str]
    val_cases: list[str]
    seed: int

    def to_json(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("fold")
        return entry


def load_adaptation_folds(preprocessed_dataset: str | os.PathLike) -> dict[int, AdaptationFold]:
    """Every adaptation fold recorded in ``preprocessed_dataset/nnext_adaptation.json`` (empty without the file).

    Raises:
        ValueError: the file is not valid JSON or not format version 1.
    """
    path = Path(preprocessed_dataset) / ADAPTATION_FILENAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and run nnext adapt again") from e
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r}, this nnunet-ext reads "
                         f"{FORMAT_VERSION}")
    return {int(k): AdaptationFold(fold=int(k), **v) for k, v in data.get("folds", {}).items()}


def load_adaptation_fold(preprocessed_dataset: str | os.PathLike, fold: int) -> AdaptationFold | None:
    """The adaptation fold ``fold`` of the dataset, or None if ``fold`` is not one."""
    return load_adaptation_folds(preprocessed_dataset).get(int(fold))


def _read_splits(path: Path) -> list[dict[str, list[str]]]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run nnUNetv2_plan_and_preprocess for the dataset first (nnext "
                         f"adapt adds folds to nnU-Net's splits)")
    return json.loads(path.read_text(encoding="utf-8"))


def define_adaptation_fold(preprocessed_dataset: str | os.PathLike, domains: DomainMetadata, source_fold: int,
                           source_checkpoint: str | os.PathLike, target_domain: str, labelled: int,
                           seed: int = 0) -> AdaptationFold:
    """Add a site-adaptation fold to the dataset (or return the identical one already there).

    Args:
        preprocessed_dataset: ``$nnUNet_preprocessed/DatasetXXX_Name``.
        domains: the dataset's ``domains.json``.
        source_fold: the fold of ``splits_final.json`` the source model was trained on.
        source_checkpoint: the source model's ``checkpoint_final.pth`` (any nnU-Net checkpoint of these plans).
        target_domain: a domain of ``domains`` that the source fold does not train on.
        labelled: how many target training subjects are labelled; 0 makes an **unlabelled** fold for unsupervised
            adaptation (AIVA): ``train`` = every target training case (their labels are never used), ``val`` = the
            source fold's validation cases.
        seed: seeds the draw of the labelled subjects.

    Returns:
        The fold; its index is ``len(splits)`` before the call, or that of an identical earlier definition.

    Raises:
        ValueError: no ``splits_final.json``, a source fold that is not in it (or is itself an adaptation fold),
            an unknown target domain or one the source trains on, ``labelled`` outside ``[1, subjects]``, a
            missing source checkpoint, or a target domain without validation cases.
    """
    pre = Path(preprocessed_dataset)
    splits_path = pre / "splits_final.json"
    splits = _read_splits(splits_path)
    existing = load_adaptation_folds(pre)
    if not 0 <= source_fold < len(splits) or source_fold in existing:
        raise ValueError(f"source fold {source_fold}: {splits_path} has folds 0-{len(splits) - 1}, of which "
                         f"{sorted(existing) or 'none'} are adaptation folds; pass the fold the source model was "
                         f"trained on")
    checkpoint = Path(source_checkpoint).resolve()
    if not checkpoint.is_file():
        raise ValueError(f"source checkpoint {checkpoint} does not exist; pass the trained source model's "
                         f"fold_{source_fold}/checkpoint_final.pth")
    if target_domain not in domains.domains:
        raise ValueError(f"target domain {target_domain!r} is not in domains.json (domains: "
                         f"{', '.join(domains.domains)})")
    source_cases = list(splits[source_fold]["train"])
    source_domains = sorted({domains.domain_of(c) for c in source_cases})
    if target_domain in source_domains:
        raise ValueError(f"target domain {target_domain!r} is one the source fold {source_fold} trains on "
                         f"({', '.join(source_domains)}); pick a new site")
    train = domains.cases_in_subset("train", target_domain)
    val = domains.cases_in_subset("val", target_domain)
    subjects = sorted({domains.cases[c]["subject"] for c in train})
    if isinstance(labelled, bool) or not isinstance(labelled, int) or not 0 <= labelled <= len(subjects):
        raise ValueError(f"labelled must be an int in [0, {len(subjects)}] (the target domain {target_domain!r} has "
                         f"{len(subjects)} training subjects; 0: unlabelled adaptation), got {labelled!r}")
    if labelled == 0:  # unsupervised: every target training case, no target label anywhere (validation on source)
        chosen, target_cases, val = [], sorted(train), list(splits[source_fold]["val"])
    else:
        chosen = sorted(random.Random(seed).sample(subjects, labelled))
        target_cases = sorted(c for c in train if domains.cases[c]["subject"] in chosen)
    if not val:
        raise ValueError(f"target domain {target_domain!r} has no validation cases (subset 'val' in domains.json); "
                         f"nnU-Net's validation needs some")
    for index, fold in existing.items():
        if (fold.source_fold, fold.source_checkpoint, fold.target_domain, fold.labelled_subjects, fold.seed) == \
                (source_fold, str(checkpoint), target_domain, chosen, seed) and index < len(splits) \
                and sorted(splits[index]["train"]) == target_cases:
            return fold
    index = len(splits)
    fold = AdaptationFold(index, source_fold, source_domains, source_cases, str(checkpoint), target_domain, chosen,
                          target_cases, sorted(val), seed)
    record = {"format_version": FORMAT_VERSION,
              "folds": {**{str(k): v.to_json() for k, v in existing.items() if k < len(splits)},
                        str(index): fold.to_json()}}
    write_json_atomic(splits_path, [*splits, {"train": target_cases, "val": sorted(val)}])
    write_json_atomic(pre / ADAPTATION_FILENAME, record)
    return fold
