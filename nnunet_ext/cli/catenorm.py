"""``nnext catenorm align``: class-wise intensity alignment of source datasets to a target (CateNorm, appendix A).

    nnext catenorm align --target TARGET_DATASET --source SRC_DATASET [SRC_DATASET ...] -o OUT_DIR
                         [--classes 0 1 2] [--overwrite]

Every dataset is an nnU-Net raw folder (``dataset.json``, ``imagesTr``, ``labelsTr``); each source folder is one
domain. Per case and class, the mean and standard deviation of the intensities inside the class are measured
(paper Eqs. 6-7); each source case's statistics are moved from its domain's spread onto the target domain's
(Eqs. 8-11) and every class region is rescaled to them (Eq. 12), channel by channel. Writes
``OUT_DIR/<source folder name>/`` with the aligned ``imagesTr``, the original ``labelsTr`` and ``dataset.json``,
and ``alignment.json`` (statistics before / after). Inputs are only read.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np

from nnunet_ext.cli.main import UserError
from nnunet_ext.utils.atomic import atomic_directory, write_json_atomic

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\..+)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("catenorm", help="CateNorm tools: class-wise intensity alignment",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="catenorm_command", metavar="ACTION", required=True)
    align = sub.add_parser("align", help="align source datasets' class-wise intensity statistics to a target")
    align.add_argument("--target", type=Path, required=True, metavar="TARGET_DATASET", help="nnU-Net raw dataset")
    align.add_argument("--source", type=Path, nargs="+", required=True, metavar="SRC_DATASET",
                       help="nnU-Net raw datasets to align (one domain each)")
    align.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="output root folder")
    align.add_argument("--classes", type=int, nargs="+", help="label values to align (default: all in dataset.json)")
    align.add_argument("--overwrite", action="store_true", help="replace existing output datasets")
    align.set_defaults(func=_align_command)


def _cases(folder: Path) -> tuple[dict, dict[str, dict[int, Path]]]:
    """dataset.json and ``{case: {channel: image path}}`` of ``folder/imagesTr``."""
    ds_file = folder / "dataset.json"
    if not ds_file.is_file() or not (folder / "imagesTr").is_dir() or not (folder / "labelsTr").is_dir():
        raise UserError(f"{folder} is not an nnU-Net raw dataset (needs dataset.json, imagesTr, labelsTr)")
    dataset = json.loads(ds_file.read_text(encoding="utf-8"))
    ending = dataset.get("file_ending", ".nii.gz")
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted((folder / "imagesTr").iterdir()):
        m = _CHANNEL.match(p.name)
        if m and m["ending"] == ending:
            cases.setdefault(m["case"], {})[int(m["channel"])] = p
    if not cases:
        raise UserError(f"{folder / 'imagesTr'} holds no images ending in {ending}")
    for case in cases:
        if not (folder / "labelsTr" / f"{case}{ending}").is_file():
            raise UserError(f"{folder}: label labelsTr/{case}{ending} is missing")
    return dataset, cases


def _read(path: Path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _domain_statistics(folder: Path, classes: list[int]):
    from nnunet_ext.core.catenorm import classwise_statistics

    dataset, cases = _cases(folder)
    ending = dataset.get("file_ending", ".nii.gz")
    channels = sorted({c for ch in cases.values() for c in ch})
    stats = np.full((len(cases), len(channels), len(classes), 2), np.nan)
    for i, (case, files) in enumerate(cases.items()):
        _, label = _read(folder / "labelsTr" / f"{case}{ending}")
        for j, ch in enumerate(channels):
            _, image = _read(files[ch])
            if image.shape != label.shape:
                raise UserError(f"{files[ch]}: shape {image.shape} differs from its label's {label.shape}")
            stats[i, j] = classwise_statistics(image, label, classes)
    return dataset, cases, channels, stats


def align_datasets(target: Path, sources: list[Path], output: Path, classes: list[int] | None = None,
                   overwrite: bool = False) -> list[Path]:
    """Write one aligned copy of every source dataset under ``output`` (see module docstring)."""
    import SimpleITK as sitk

    from nnunet_ext.core.catenorm import align_case, aligned_statistics

    target_ds = json.loads((target / "dataset.json").read_text(encoding="utf-8")) if (target / "dataset.json").is_file() \
        else None
    if target_ds is None:
        raise UserError(f"{target} is not an nnU-Net raw dataset (no dataset.json)")
    if classes is None:
        classes = sorted(int(v) for v in target_ds["labels"].values() if isinstance(v, int))
    _, _, t_channels, t_stats = _domain_statistics(target, classes)
    written = []
    for source in sources:
        dataset, cases, channels, stats = _domain_statistics(source, classes)
        if channels != t_channels:
            raise UserError(f"{source} has channels {channels}, the target {t_channels}")
        ending = dataset.get("file_ending", ".nii.gz")
        new_stats = np.stack([aligned_statistics(stats[:, j], t_stats[:, j]) for j in range(len(channels))], axis=1)
        dst = output / source.name
        with atomic_directory(dst, overwrite=overwrite) as tmp:
            (tmp / "imagesTr").mkdir()
            shutil.copytree(source / "labelsTr", tmp / "labelsTr")
            shutil.copy2(source / "dataset.json", tmp / "dataset.json")
            for i, (case, files) in enumerate(cases.items()):
                _, label = _read(source / "labelsTr" / f"{case}{ending}")
                for j, ch in enumerate(channels):
                    image, array = _read(files[ch])
                    out = sitk.GetImageFromArray(align_case(array, label, classes, stats[i, j], new_stats[i, j]))
                    out.CopyInformation(image)
                    sitk.WriteImage(out, str(tmp / "imagesTr" / files[ch].name))
            write_json_atomic(tmp / "alignment.json", {
                "target": str(target), "source": str(source), "classes": classes, "channels": channels,
                "cases": list(cases), "statistics": "per case, channel, class: [mean, std]",
                "before": stats.tolist(), "after": new_stats.tolist(),
                "target_statistics": t_stats.tolist()})
        written.append(dst)
    return written


def _align_command(args: argparse.Namespace) -> int:
    for folder in (args.target, *args.source):
        if not folder.is_dir():
            raise UserError(f"{folder} does not exist")
    for out in align_datasets(args.target, list(args.source), args.output, args.classes, args.overwrite):
        print(f"wrote {out}")
    return 0
