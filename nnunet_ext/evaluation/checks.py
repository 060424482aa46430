"""Input checks of ``nnext evaluate``: dataset.json, label selection, case files, image headers, voxel values.

Every check returns :class:`Problem` records instead of raising, so that :func:`raise_problems` can list
every problem of a folder in one ``ValueError`` (grouped by kind, each with the case, the file and the fix).
:func:`header_problems` needs only the image headers: readable, one channel, and the same grid as the
reference, i.e. the same shape, spacing, origin and direction. Tolerances:

- spacing: relative ``SPACING_RTOL`` = 1e-3 per axis;
- origin: ``ORIGIN_TOLERANCE_VOXELS`` = 0.01 of the reference's voxel size along each axis (0.01 mm at
  1 mm spacing). Float noise from NIfTI's float32 header fields and qform/sform round trips is about
  1e-5 mm, far below it, while any real shift of a prediction (a tenth of a voxel and more) is far above
  it; a shifted prediction would otherwise be scored voxel by voxel against anatomy it was not predicted
  for (a prediction moved by 100 mm would score Dice 1.0);
- direction: every direction cosine within ``DIRECTION_ATOL`` = 1e-4 of the reference's. Cosines lie in
  [-1, 1]; float32 storage errs by about 1e-7, while a mirrored or transposed axis changes a cosine by 1 or
  more. 1e-4 rad of rotation moves a point 200 mm from the origin by 0.02 mm.

:func:`value_problems` checks the voxel values (finite, integer, defined in ``dataset.json``) of an image
that was read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

#: relative tolerance when comparing the spacing of a prediction with its reference
SPACING_RTOL = 1e-3
#: largest origin difference per axis, as a fraction of the reference's voxel size along that axis
ORIGIN_TOLERANCE_VOXELS = 1e-2
#: largest difference of a direction cosine (entries of the direction matrix)
DIRECTION_ATOL = 1e-4
_SAME_GRID_FIX = "predict from the image of the same case: nnUNetv2_predict writes predictions on the input grid"

#: problem kind -> (what is wrong, how to fix it); formatted with the fields of :class:`Context`
PROBLEM_KINDS: dict[str, tuple[str, str]] = {
    "missing_prediction": (
        "reference cases without a prediction in {pred_dir}",
        "predict them into that folder (nnUNetv2_predict ... -o {pred_dir}), or evaluate a subset "
        "(cases=[...], nnext evaluate --cases)",
    ),
    "unknown_case": (
        "requested cases without a reference in {ref_dir}",
        "check the case names; a reference is {ref_dir}/<case>{file_ending}",
    ),
    "missing_reference": (
        "predictions without a reference in {ref_dir}",
        "add their reference labels to {ref_dir}, or evaluate only the cases that have one "
        "(cases=[...], nnext evaluate --cases)",
    ),
    "no_domain": (
        "cases without an entry in the domain metadata {domains}",
        "add each case under 'cases' there (format: nnunet_ext/domains.py), or pass the domain metadata of "
        "this dataset (--domains)",
    ),
    "unreadable": (
        "files nnext cannot read (truncated, corrupt or not an image)",
        "write or copy them again (a prediction: re-run nnUNetv2_predict for that case; a reference: copy it "
        "again from the source and compare its size) as valid images in the dataset's file format "
        "({file_ending})",
    ),
    "not_scalar": ("images with more than one channel", "save label maps as single-channel integer images"),
    "shape": ("predictions whose shape differs from the reference", _SAME_GRID_FIX),
    "spacing": (
        f"predictions whose spacing differs from the reference (relative tolerance {SPACING_RTOL:g})",
        _SAME_GRID_FIX,
    ),
    "origin": (
        f"predictions whose origin differs from the reference (by more than {ORIGIN_TOLERANCE_VOXELS:g} of a voxel "
        "along an axis): they lie elsewhere in the scanner's space",
        _SAME_GRID_FIX + "; undo any shift or crop another tool applied to the prediction",
    ),
    "direction": (
        f"predictions whose direction (axis orientation) differs from the reference (a direction cosine by more "
        f"than {DIRECTION_ATOL:g}), e.g. mirrored or transposed axes",
        _SAME_GRID_FIX + "; undo any flip or reorientation another tool applied to the prediction",
    ),
    "non_finite": ("images with NaN or infinite values", "label maps hold integer label values; regenerate them"),
    "non_integer": ("images with non-integer values", "label maps hold integer label values; regenerate them"),
    "undefined_label": (
        "images with label values that {dataset_json} does not define (defined: {defined})",
        "pass the dataset.json of this dataset (--dataset-json), or fix the label values",
    ),
}


@dataclass(frozen=True)
class Problem:
    """One problem of one case: ``kind`` is a key of :data:`PROBLEM_KINDS`, ``detail`` names the file(s)."""

    kind: str
    case: str
    detail: str


@dataclass(frozen=True)
class Context:
    """What the problem messages of :data:`PROBLEM_KINDS` are formatted with."""

    pred_dir: Path
    ref_dir: Path
    file_ending: str
    dataset_json: str
    domains: str
    defined: str


def load_dataset_json(dataset_json: dict[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    """A ``dataset.json`` given as a dict, a file or its dataset folder, and where it came from (for messages)."""
    if isinstance(dataset_json, dict):
        return dataset_json, "dataset_json"
    path = Path(dataset_json)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset.json not found at {path}; pass the dataset.json of the dataset (--dataset-json)"
        )
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{path}: expected a JSON object (nnU-Net dataset.json), got {type(dataset).__name__}")
    return dataset, str(path)


def dataset_labels(dataset: dict[str, Any], source: str) -> dict[int, str]:
    """All label values of a dataset.json (background included) -> name."""
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source}: 'labels' must be an object name -> integer value, as nnU-Net requires")
    defined: dict[int, str] = {}
    for name, value in raw.items():
        if name == "ignore":
            raise NotImplementedError(
                f"{source}: label 'ignore' ({value}) is an nnU-Net ignore label, which nnext evaluate does not "
                "support; evaluate with a dataset.json without it and references without ignored voxels"
            )
        if isinstance(value, (list, tuple)):
            raise NotImplementedError(
                f"{source}: label {name!r} is region-based ({value}); nnext evaluate supports only integer labels"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{source}: label {name!r} must be an integer >= 0, got {value!r}")
        if value in defined:
            raise ValueError(f"{source}: labels {defined[value]!r} and {name!r} share the value {value}")
        defined[value] = name
    return defined


def select_labels(defined: dict[int, str], labels: list[int] | None, source: str) -> dict[int, str]:
    """The foreground labels to evaluate (value -> name): ``labels``, or every foreground label if None."""
    foreground = {v: n for v, n in sorted(defined.items()) if v != 0}
    if labels is None:
        if not foreground:
            raise ValueError(f"{source}: 'labels' defines no foreground label (value > 0) to evaluate")
        return foreground
    if len(labels) == 0:
        raise ValueError("labels is an empty list; pass None to evaluate every foreground label")
    unknown = [v for v in labels if v not in foreground]
    if unknown:
        raise ValueError(
            f"labels {unknown} are not foreground labels of {source} (available: {sorted(foreground)}); "
            "background 0 is never evaluated"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {labels} contain duplicates; list each label once")
    return {v: foreground[v] for v in sorted(labels)}


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> file of every ``<case><file_ending>`` in ``folder`` (hidden files left out)."""
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(file_ending) and not p.name.startswith(".") and p.is_file()
    }


def header_problems(case: str, prediction: Path, reference: Path) -> list[Problem]:
    """Checks that need only the image headers: readable, one channel, same shape, spacing, origin, direction."""
    headers = {}
    problems = []
    for role, path in (("prediction", prediction), ("reference", reference)):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            problems.append(Problem("unreadable", case, f"{role} {path}: {reason}"))
            continue
        if reader.GetNumberOfComponents() != 1:
            problems.append(Problem("not_scalar", case, f"{role} {path} has {reader.GetNumberOfComponents()} channels"))
        headers[role] = reader
    if len(headers) < 2:
        return problems
    pred, ref = headers["prediction"], headers["reference"]

    def pair(ours: str, theirs: str) -> str:
        return f"prediction {prediction} has {ours}, reference {reference} {theirs}"

    pred_shape, ref_shape = tuple(reversed(pred.GetSize())), tuple(reversed(ref.GetSize()))
    if pred_shape != ref_shape:
        problems.append(Problem("shape", case, pair(f"shape {pred_shape}", f"{ref_shape} (numpy axis order)")))
        return problems
    pred_spacing, ref_spacing = tuple(reversed(pred.GetSpacing())), tuple(reversed(ref.GetSpacing()))
    if any(abs(p - r) > SPACING_RTOL * max(abs(p), abs(r)) for p, r in zip(pred_spacing, ref_spacing)):
        problems.append(Problem("spacing", case, pair(f"spacing {_fmt_tuple(pred_spacing)} mm",
                                                      f"{_fmt_tuple(ref_spacing)} mm (numpy axis order)")))
    # origin and direction in ITK's physical (x, y, z) order; tolerances in the module docstring
    limits = [ORIGIN_TOLERANCE_VOXELS * s for s in ref.GetSpacing()]
    if any(abs(p - r) > limit for p, r, limit in zip(pred.GetOrigin(), ref.GetOrigin(), limits)):
        problems.append(Problem("origin", case, pair(f"origin {_fmt_tuple(pred.GetOrigin())} mm",
                                                     f"{_fmt_tuple(ref.GetOrigin())} mm (x, y, z)")))
    if any(abs(p - r) > DIRECTION_ATOL for p, r in zip(pred.GetDirection(), ref.GetDirection())):
        problems.append(Problem("direction", case, pair(f"direction {_fmt_tuple(pred.GetDirection())}",
                                                        f"{_fmt_tuple(ref.GetDirection())} (row-major matrix)")))
    return problems


def value_problems(case: str, role: str, path: Path, array: np.ndarray, defined: frozenset[int]) -> list[Problem]:
    """Checks of the voxel values: finite, integer, and defined in dataset.json."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            return [Problem("non_finite", case, f"{role} {path}: {int(np.count_nonzero(~finite))} voxels")]
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            return [
                Problem(
                    "non_integer", case, f"{role} {path}: {int(np.count_nonzero(fractional))} voxels, e.g. {example:g}"
                )
            ]
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        return [Problem("non_integer", case, f"{role} {path}: pixel type {array.dtype}")]
    undefined = sorted(int(v) for v in np.unique(array).tolist() if int(v) not in defined)
    if undefined:
        return [Problem("undefined_label", case, f"{role} {path}: values {undefined}")]
    return []


def raise_problems(problems: list[Problem], context: Context) -> None:
    """Raise one ``ValueError`` listing every problem, grouped by kind with its fix; return if there is none."""
    if not problems:
        return
    fields = vars(context)
    lines = [
        f"cannot evaluate {context.pred_dir} against {context.ref_dir}: {len(problems)} problem(s); "
        "nothing was computed or written."
    ]
    for kind, (what, fix) in PROBLEM_KINDS.items():
        of_kind = [p for p in problems if p.kind == kind]
        if of_kind:
            lines.append(f"{what.format(**fields)} ({len(of_kind)}). Fix: {fix.format(**fields)}:")
            lines += [f"  - case {p.case!r}: {p.detail}" for p in sorted(of_kind, key=lambda p: p.case)]
    raise ValueError("\n".join(lines))


def _fmt_tuple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v + 0.0:g}" for v in values) + ")"  # + 0.0: -0 prints as 0
