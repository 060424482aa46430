"""Domain metadata of an nnU-Net raw dataset: which case comes from which scanner, site or simulation.

The metadata lives in ``domains.json`` beside ``dataset.json`` in ``$nnUNet_raw/DatasetXXX_Name/``
(nnU-Net ignores the file). Format (``format_version`` 1)::

    {
      "format_version": 1,
      "domains": {
        "mni152": {"description": "MNI ICBM152 2009a T1 (real MRI)", "simulated": false},
        "mni152_bias_severe": {"description": "...", "simulated": true,
                               "derived_from": "mni152", "transform": {"name": "RandomBiasField", ...}}
      },
      "cases": {
        "mni152_slab00": {"domain": "mni152", "split": "train", "subject": "mni152"},
        "mni152_bias_severe_slab07": {"domain": "mni152_bias_severe", "split": "test",
                                      "subject": "mni152"}
      }
    }

Case ids are file stems as nnU-Net uses them (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``;
``imagesTs``/``labelsTs`` for ``split == "test"``). ``subject`` groups cases that must never be split
across folds (one patient, or one source volume cut into slabs). Extra keys are kept as they are.

Optional, added without a format change (readers of version 1 that ignore unknown keys are unaffected;
files without them are written exactly as before):

* a case's ``subset``: ``"train"``, ``"val"`` or ``"test"``, the role of its subject in a dataset that fixes
  one (the simulated ``brain_scanners`` demo: validation subjects are for choosing hyper-parameters, test
  subjects only for the final evaluation). ``"test"`` cases have ``split == "test"``, the others ``"train"``.
* a top-level ``subjects`` object: subject id -> free description (e.g. how a simulated subject was made
  and its tissue volumes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nnunet_ext.utils.atomic import write_json_atomic

DOMAINS_FILENAME = "domains.json"
FORMAT_VERSION = 1
Split = Literal["train", "test"]
Subset = Literal["train", "val", "test"]
#: the split (imagesTr or imagesTs) each subset lives in
SUBSET_SPLIT: dict[str, str] = {"train": "train", "val": "train", "test": "test"}


@dataclass
class DomainMetadata:
    """Domains and the domain of every case of one dataset.

    Attributes:
        domains: domain name -> description dict (``description``, ``simulated`` and free extra keys).
        cases: case id -> dict with ``domain``, ``split`` (``"train"``/``"test"``), ``subject`` and extras
            (optionally ``subset``, see the module docstring).
        subjects: optional subject id -> free description dict.
    """

    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_domain(self, name: str, description: str, simulated: bool, **extra: Any) -> None:
        if not name or "/" in name:
            raise ValueError(f"domain name must be a non-empty string without '/', got {name!r}")
        self.domains[name] = {"description": description, "simulated": bool(simulated), **extra}

    def add_case(self, case_id: str, domain: str, split: Split, subject: str, **extra: Any) -> None:
        if domain not in self.domains:
            raise ValueError(f"case {case_id!r}: unknown domain {domain!r}; add it with add_domain first")
        if split not in ("train", "test"):
            raise ValueError(f"case {case_id!r}: split must be 'train' or 'test', got {split!r}")
        if case_id in self.cases:
            raise ValueError(f"duplicate case id {case_id!r}")
        if "subset" in extra and SUBSET_SPLIT.get(extra["subset"]) != split:
            raise ValueError(f"case {case_id!r}: subset must be one of {list(SUBSET_SPLIT)} and lie in its split "
                             f"({SUBSET_SPLIT}), got subset {extra['subset']!r} with split {split!r}")
        self.cases[case_id] = {"domain": domain, "split": split, "subject": subject, **extra}

    def domain_of(self, case_id: str) -> str:
        try:
            return self.cases[case_id]["domain"]
        except KeyError:
            raise KeyError(
                f"case {case_id!r} has no entry in {DOMAINS_FILENAME}; add it or check the case name"
            ) from None

    def cases_of(self, domain: str, split: Split | None = None) -> list[str]:
        return sorted(
            c for c, m in self.cases.items() if m["domain"] == domain and (split is None or m["split"] == split)
        )

    def cases_in_subset(self, subset: Subset, domain: str | None = None) -> list[str]:
        """Sorted cases whose ``subset`` is ``subset`` (in ``domain`` if given)."""
        return sorted(c for c, m in self.cases.items()
                      if m.get("subset") == subset and (domain is None or m["domain"] == domain))

    def to_dict(self) -> dict[str, Any]:
        d = {"format_version": FORMAT_VERSION, "domains": self.domains, "cases": self.cases}
        return d | {"subjects": self.subjects} if self.subjects else d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> DomainMetadata:
        if not isinstance(d, dict) or "cases" not in d or "domains" not in d:
            raise ValueError(f"{source}: expected an object with 'domains' and 'cases' (see nnunet_ext.domains)")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        subjects = d.get("subjects", {})
        if not isinstance(subjects, dict):
            raise ValueError(f"{source}: 'subjects' must be an object (subject id -> description), got "
                             f"{type(subjects).__name__}")
        meta = cls(domains=dict(d["domains"]), cases=dict(d["cases"]), subjects=dict(subjects))
        for case_id, m in meta.cases.items():
            if not isinstance(m, dict) or "domain" not in m:
                raise ValueError(f"{source}: case {case_id!r} has no 'domain'")
            if m["domain"] not in meta.domains:
                raise ValueError(
                    f"{source}: case {case_id!r} names domain {m['domain']!r}, which is not listed under 'domains'"
                )
        return meta


def save_domains(meta: DomainMetadata, path: str | os.PathLike) -> Path:
    """Write ``meta`` atomically. ``path`` is a dataset folder or a ``.json`` file path."""
    path = Path(path)
    if path.is_dir():
        path = path / DOMAINS_FILENAME
    write_json_atomic(path, meta.to_dict())
    return path


def load_domains(path: str | os.PathLike) -> DomainMetadata:
    """Read domain metadata from a dataset folder or a ``.json`` file.

    Raises:
        FileNotFoundError: no metadata file there (names the path and how to create one).
        ValueError: the file is not valid metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DOMAINS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no domain metadata at {path}. Datasets built by 'nnext demo-data' or 'nnext convert' carry one; "
            f"for other datasets write a {DOMAINS_FILENAME} as described in nnunet_ext/domains.py"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return DomainMetadata.from_dict(d, source=str(path))
