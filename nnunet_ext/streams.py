"""Data streams for continual learning: ordered stages of case ids inside one nnU-Net dataset.

A stream lives in ``stream.json`` beside ``dataset.json`` in ``$nnUNet_raw/DatasetXXX_Name/`` (nnU-Net
ignores the file; ``nnext stream`` also copies it into ``$nnUNet_preprocessed/DatasetXXX_Name/`` so a
trainer finds it without ``nnUNet_raw``). Format (``format_version`` 1)::

    {
      "format_version": 1,
      "scenario": "shifting_source",            # free text: "shifting_source", "transformed", ...
      "stages": [
        {"stage": 0, "train": ["case_a", ...], "val": ["case_b", ...], "test": ["case_t", ...],
         "weights": {"mni152": 1.0}},           # extra keys are kept as they are
        {"stage": 1, "train": [...], "val": [...], "test": [...]}
      ]
    }

``train`` and ``val`` name training cases (``imagesTr``), ``test`` names held-out cases (``imagesTs``)
used only for evaluation. A method is never told which stage a case belongs to at test time; the stage
index only orders training. Streams written before ``format_version`` existed (the hippocampus converter
of nnunet-ext 0.1) have no ``format_version`` and no ``test``: they read as version 1 with empty ``test``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_ext.utils.atomic import write_json_atomic

STREAM_FILENAME = "stream.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """One stage of a stream.

    Attributes:
        index: position in the stream (0-based, equals the list position).
        train: training case ids of this stage.
        val: validation case ids of this stage (training cases held out for nnU-Net's validation).
        test: held-out test case ids (``imagesTs``) drawn from this stage's distribution.
        extra: any other keys of the stage (``weights``, ``transform``, ...).
    """

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.index, "train": list(self.train), "val": list(self.val), "test": list(self.test),
                **self.extra}


@dataclass(frozen=True)
class Stream:
    """An ordered list of stages.

    Attributes:
        stages: the stages in training order.
        scenario: free-text scenario name (``"shifting_source"``, ``"transformed"``), or ``None``.
        extra: other top-level keys, kept as they are.
        source: the file the stream was read from (for error messages), or ``None``.
    """

    stages: tuple[Stage, ...]
    scenario: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "scenario": self.scenario, **self.extra,
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Any, source: str | os.PathLike | None = None) -> Stream:
        """Parse and check the structure (see the module docstring).

        Raises:
            ValueError: naming ``source`` and the stage when the structure is wrong, a stage has no training
                case, or a case appears twice.
        """
        where = str(source) if source is not None else "<stream>"
        if not isinstance(d, dict) or not isinstance(d.get("stages"), list):
            raise ValueError(f"{where}: expected an object with a 'stages' list (see nnunet_ext/streams.py)")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        if not d["stages"]:
            raise ValueError(f"{where}: the stream has no stages; list at least one stage with training cases")
        stages, seen = [], {}
        for position, s in enumerate(d["stages"]):
            if not isinstance(s, dict):
                raise ValueError(f"{where}: stage {position} must be an object, got {type(s).__name__}")
            if s.get("stage", position) != position:
                raise ValueError(f"{where}: stage at position {position} says 'stage': {s['stage']!r}; stages must "
                                 f"be listed in order 0, 1, 2, ...")
            lists = {}
            for key in ("train", "val", "test"):
                value = s.get(key, [])
                if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
                    raise ValueError(f"{where}: stage {position} '{key}' must be a list of case ids, got {value!r}")
                lists[key] = tuple(value)
            if not lists["train"]:
                raise ValueError(f"{where}: stage {position} is empty (no 'train' cases); remove the stage or give "
                                 f"it training cases")
            for key in ("train", "val", "test"):
                for case in lists[key]:
                    if case in seen:
                        raise ValueError(f"{where}: case {case!r} is listed twice (stage {seen[case][0]} "
                                         f"'{seen[case][1]}' and stage {position} '{key}'); each case belongs to "
                                         f"one stage and one list")
                    seen[case] = (position, key)
            extra = {k: v for k, v in s.items() if k not in ("stage", "train", "val", "test")}
            stages.append(Stage(position, lists["train"], lists["val"], lists["test"], extra))
        extra = {k: v for k, v in d.items() if k not in ("format_version", "scenario", "stages")}
        return cls(tuple(stages), d.get("scenario"), extra, Path(source) if source is not None else None)

    def check_cases(self, training_cases: Iterable[str] | None, test_cases: Iterable[str] | None = None) -> None:
        """Check that every case the stream names exists.

        Args:
            training_cases: case ids available for training (``imagesTr`` or the preprocessed folder);
                ``None`` skips the check of the ``train`` and ``val`` lists.
            test_cases: case ids in ``imagesTs``; ``None`` skips the check of the ``test`` lists.

        Raises:
            ValueError: naming the stream file, the stage and up to five unknown cases.
        """
        where = str(self.source) if self.source is not None else "<stream>"
        known = None if training_cases is None else set(training_cases)
        known_test = None if test_cases is None else set(test_cases)
        for s in self.stages:
            for key, pool in (("train", known), ("val", known), ("test", known_test)):
                if pool is None:
                    continue
                unknown = [c for c in getattr(s, key) if c not in pool]
                if unknown:
                    folder = "imagesTs" if key == "test" else "the training cases (imagesTr / preprocessed folder)"
                    raise ValueError(f"{where}: stage {s.index} '{key}' names {len(unknown)} case(s) not found in "
                                     f"{folder}: {unknown[:5]}; fix the stream file or rebuild it with 'nnext stream'")


def read_stream(path: str | os.PathLike) -> Stream:
    """Read a stream from a dataset folder or a ``.json`` file.

    Raises:
        FileNotFoundError: no stream file there (names the path and how to create one).
        ValueError: the file is not a valid stream.
    """
    path = Path(path)
    if path.is_dir():
        path = path / STREAM_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no stream at {path}. Build one with 'nnext stream shifting-source ...' or "
                                f"'nnext stream transformed ...', or write {STREAM_FILENAME} as described in "
                                f"nnunet_ext/streams.py")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return Stream.from_dict(d, source=path)


def write_stream(stream: Stream, path: str | os.PathLike) -> Path:
    """Write ``stream`` atomically to a dataset folder or a ``.json`` file path; returns the file path."""
    path = Path(path)
    if path.is_dir():
        path = path / STREAM_FILENAME
    write_json_atomic(path, stream.to_dict())
    return path


def find_stream_file(dataset_name: str, preprocessed_folder: str | os.PathLike | None = None,
                     raw_root: str | os.PathLike | None = None) -> Path:
    """Where a trainer finds the stream of ``dataset_name``: the preprocessed folder first, then the raw one.

    Args:
        dataset_name: ``DatasetXXX_Name``.
        preprocessed_folder: ``$nnUNet_preprocessed/DatasetXXX_Name`` (the trainer's
            ``preprocessed_dataset_folder_base``), or ``None``.
        raw_root: ``$nnUNet_raw``; defaults to the environment variable.

    Raises:
        FileNotFoundError: naming every place looked at and how to create the stream.
    """
    candidates = []
    if preprocessed_folder is not None:
        candidates.append(Path(preprocessed_folder) / STREAM_FILENAME)
    raw = raw_root if raw_root is not None else os.environ.get("nnUNet_raw")
    if raw:
        candidates.append(Path(raw) / dataset_name / STREAM_FILENAME)
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates) or "(nnUNet_raw is not set and no preprocessed folder given)"
    raise FileNotFoundError(f"{dataset_name} has no {STREAM_FILENAME} (looked at {looked}). Build one with "
                            f"'nnext stream shifting-source {dataset_name} ...' or 'nnext stream transformed ...'")
