"""What a benchmark runs: rows (trainers, fine-tuning on top of another row, test-time methods), runs, shards.

A **row** is given as a string:

``TRAINER``
    train ``TRAINER`` from scratch (any trainer nnU-Net's lookup finds: stock, ours, a user's).
``TRAINER@BASE``
    fine-tune: train ``TRAINER`` starting from the finished ``BASE`` run of the same seed and fold
    (``nnUNetv2_train ... -pretrained_weights BASE/checkpoint_final.pth``), e.g.
    ``nnUNetTrainerStyleCurriculum_finetune@nnUNetTrainer``.
``METHOD@BASE``
    a test-time method put on top of the trained ``BASE`` model without retraining; ``fda`` is
    ``nnext fda attach`` (Fourier multi-source transfer), e.g. ``fda@nnUNetTrainerDA5``.

``BASE`` must itself be a row of the benchmark (it is added if missing). A **run** is one row at one seed and
one fold. Every trainer runs at the benchmark's named budget (:mod:`nnunet_ext.trainers.budget`) under the
name ``budget_trainer_name(trainer, budget, seed)``, so each seed has its own results folder.

>>> parse_row("fda@nnUNetTrainerDA5")
Row(spec='fda@nnUNetTrainerDA5', kind='attach', trainer=None, base='nnUNetTrainerDA5')
>>> [r.spec for r in with_baselines([parse_row("nnUNetTrainerGIN")])]
['nnUNetTrainer', 'nnUNetTrainerNoDA', 'nnUNetTrainerDA5', 'nnUNetTrainerGIN']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

RowKind = Literal["train", "finetune", "attach"]

#: rows every benchmark has: stock nnU-Net, without augmentation, and nnU-Net's strong augmentation (DA5)
BASELINE_ROWS: tuple[str, ...] = ("nnUNetTrainer", "nnUNetTrainerNoDA", "nnUNetTrainerDA5")
#: the row every cost is compared with
REFERENCE_ROW = "nnUNetTrainer"
#: test-time methods a row can put on top of a trained model: name -> what it is
ATTACH_METHODS: dict[str, str] = {"fda": "Fourier multi-source transfer (nnext fda attach), no retraining"}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Row:
    """One row of the matrix.

    Attributes:
        spec: the row as written (``TRAINER``, ``TRAINER@BASE`` or ``METHOD@BASE``).
        kind: ``"train"``, ``"finetune"`` or ``"attach"``.
        trainer: the trainer trained by this row (None for ``attach``).
        base: the row this one builds on (None for ``train``).
    """

    spec: str
    kind: RowKind
    trainer: str | None
    base: str | None

    @property
    def slug(self) -> str:
        """A folder name for the row."""
        return self.spec.replace("@", "-on-")


def parse_row(spec: str) -> Row:
    """Parse one row string (see the module docstring).

    Raises:
        ValueError: not ``NAME`` or ``NAME@BASE`` with Python-identifier names, a ``__`` in a trainer name
            (nnU-Net splits result folders at ``__``), or a base that is not a plain trainer row.
    """
    if not isinstance(spec, str) or spec.count("@") > 1:
        raise ValueError(f"row {spec!r}: write TRAINER, TRAINER@BASE_TRAINER or METHOD@BASE_TRAINER "
                         f"(methods: {', '.join(ATTACH_METHODS)})")
    name, _, base = spec.partition("@")
    for part in (name, base) if base else (name,):
        if not _NAME.match(part) or "__" in part:
            raise ValueError(f"row {spec!r}: {part!r} is not a trainer or method name (letters, digits, single "
                             f"underscores; nnU-Net reserves '__')")
    if not base:
        if name in ATTACH_METHODS:
            raise ValueError(f"row {spec!r}: a test-time method needs the model it goes on, e.g. {name}@nnUNetTrainer")
        return Row(spec, "train", name, None)
    if name in ATTACH_METHODS:
        return Row(spec, "attach", None, base)
    return Row(spec, "finetune", name, base)


def with_baselines(rows: Sequence[Row]) -> list[Row]:
    """``rows`` with the baseline rows first and every missing base row added, duplicates dropped, order kept."""
    ordered: list[Row] = [parse_row(s) for s in BASELINE_ROWS]
    for row in rows:
        if row.base is not None:
            ordered.append(parse_row(row.base))
        ordered.append(row)
    seen: set[str] = set()
    unique = []
    for row in ordered:
        if row.spec not in seen:
            seen.add(row.spec)
            unique.append(row)
    return unique


@dataclass(frozen=True)
class Run:
    """One row at one seed and fold."""

    row: Row
    seed: int
    fold: str

    @property
    def key(self) -> str:
        return f"{self.row.slug}/seed{self.seed}/fold_{self.fold}"


def plan_runs(rows: Sequence[Row], seeds: Sequence[int], folds: Sequence[str]) -> list[Run]:
    """Every run, bases before the rows built on them."""
    return [Run(row, int(seed), str(fold)) for seed in seeds for fold in folds for row in rows]


def parse_shard(value: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    Raises:
        ValueError: anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value or "")
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of four jobs), got {value!r}")
    return int(match[1]), int(match[2])


def shard_runs(runs: Sequence[Run], index: int, count: int) -> list[Run]:
    """The runs of shard ``index`` of ``count``: a run goes with the root row it builds on (same seed and
    fold), so fine-tuning and test-time rows always find their base in the same job."""
    by_spec = {run.row.spec: run.row for run in runs}

    def root(row: Row) -> str:
        while row.base is not None and row.base in by_spec:
            row = by_spec[row.base]
        return row.spec

    groups = sorted({(root(r.row), r.seed, r.fold) for r in runs})
    mine = {g for i, g in enumerate(groups) if i % count == index}
    return [r for r in runs if (root(r.row), r.seed, r.fold) in mine]
