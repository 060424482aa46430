"""Figures of a written ``brain_scanners`` dataset: one subject under every scanner, several subjects under one.

Both show the axial slice at world ``z =`` :data:`SLICE_Z_MM` (MNI coordinates, through the lateral
ventricles), in neurological orientation (the subject's left on the left, anterior up), each image windowed
from 0 to its 99.5th percentile (the vendors' intensity scales differ by an order of magnitude; the panel
title gives the range), with the label drawn over it in the lower row (CSF blue, GM orange, WM green).

    nnext demo-data brain-scanners --profile default --figures documentation/figures
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnunet_ext.domains import load_domains
from nnunet_ext.utils.atomic import atomic_path
from nnunet_ext.utils.plotting import default_style

SLICE_Z_MM = 12.0
LABEL_COLOURS = {1: (0.20, 0.45, 0.95), 2: (0.95, 0.55, 0.10), 3: (0.20, 0.75, 0.30)}


def _axial(path: Path) -> np.ndarray:
    """The axial slice at :data:`SLICE_Z_MM` of a NIfTI file with an axis-aligned RAS affine: rows along y
    (posterior to anterior, drawn upwards), columns along x (the subject's left to right)."""
    import nibabel as nib

    img = nib.load(str(path))
    k = int(round(float((np.linalg.inv(img.affine) @ np.array([0.0, 0.0, SLICE_Z_MM, 1.0]))[2])))
    return np.asarray(img.dataobj[:, :, k]).T


def _overlay(label: np.ndarray) -> np.ndarray:
    rgba = np.zeros(label.shape + (4,))
    for value, colour in LABEL_COLOURS.items():
        rgba[label == value] = (*colour, 0.45)
    return rgba


def _panel(ax: Any, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    top = float(np.percentile(image, 99.5))
    ax.imshow(image, cmap="gray", vmin=0, vmax=top, origin="lower", interpolation="nearest")
    if label is not None:
        ax.imshow(_overlay(label), origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize="small")
    ax.set_axis_off()


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _case_files(folder: Path, meta: Any, case: str) -> tuple[Path, Path]:
    suffix = "Tr" if meta.cases[case]["split"] == "train" else "Ts"
    return folder / f"images{suffix}" / f"{case}_0000.nii.gz", folder / f"labels{suffix}" / f"{case}.nii.gz"


@default_style()
def write_figures(folder: str | Path, out_dir: str | Path, scanner: str = "siemens_3", subjects: int = 6
                  ) -> list[Path]:
    """Write ``brain_scanners_by_scanner.png`` (the first test subject under every scanner) and
    ``brain_scanners_by_subject.png`` (the first ``subjects`` subjects under ``scanner``) into ``out_dir``.

    Raises:
        ValueError: ``scanner`` is not a domain of the dataset.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder, out_dir = Path(folder), Path(out_dir)
    meta = load_domains(folder)
    if scanner not in meta.domains:
        raise ValueError(f"scanner must be one of the dataset's domains {list(meta.domains)}, got {scanner!r}")
    domains = list(meta.domains)
    subject = sorted(meta.cases[c]["subject"] for c in meta.cases_in_subset("test"))[0]

    fig = Figure(figsize=(2.3 * len(domains), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(domains), squeeze=False)
    for column, domain in enumerate(domains):
        info = meta.domains[domain]
        image_path, label_path = _case_files(folder, meta, f"{domain}_{subject}")
        image, label = _axial(image_path), _axial(label_path)
        title = f"{domain}\n{info['family']} {info['field_t']:g} T, 0-{np.percentile(image, 99.5):.0f} a.u."
        _panel(axes[0, column], image, None, title)
        _panel(axes[1, column], image, label, "label")
    fig.suptitle(f"subject {subject} (test) under every simulated scanner, axial z = {SLICE_Z_MM:g} mm")
    paths = [_save(fig, out_dir / "brain_scanners_by_scanner.png")]

    names = sorted(meta.subjects)[:subjects]
    fig = Figure(figsize=(2.3 * len(names), 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(names), squeeze=False)
    for column, name in enumerate(names):
        volumes = meta.subjects[name]["volumes"]
        image_path, label_path = _case_files(folder, meta, f"{scanner}_{name}")
        image, label = _axial(image_path), _axial(label_path)
        title = (f"{name} ({meta.subjects[name]['subset']})\nbrain {volumes['brain_ml']:.0f} ml, "
                 f"ventricles {volumes['ventricles_ml']:.0f} ml")
        _panel(axes[0, column], image, None, title)
        _panel(axes[1, column], image, label, "label")
    fig.suptitle(f"{len(names)} simulated subjects under {scanner}, axial z = {SLICE_Z_MM:g} mm")
    paths.append(_save(fig, out_dir / "brain_scanners_by_subject.png"))
    return paths
