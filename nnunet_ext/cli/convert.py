"""``nnext convert``: public multi-domain datasets, as downloaded -> nnU-Net raw datasets with domains.

    nnext convert cc359 RAW_DIR DATASET_ID [--source-domain ge_3] [--mask silver]
    nnext convert mnms RAW_DIR DATASET_ID [--source-domain vendor_B] [--csv PATH]
    nnext convert msd TASK_DIR DATASET_ID
    nnext convert hippocampus-stream DATASET_ID --decathlon DIR --harp DIR --dryad DIR

Each writes ``$nnUNet_raw/DatasetXXX_Name/`` with ``dataset.json``, ``domains.json`` (domain, split and
patient of every case), ``splits_final.json`` (patient-grouped folds; ``nnUNetv2_plan_and_preprocess``
copies it into ``$nnUNet_preprocessed``) and ``conversion.json``. The raw download is only read; the
dataset appears only when the whole conversion succeeded; a re-run with the same inputs does nothing.
See documentation/datasets.md.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from nnunet_ext.cli.main import UserError, raw_root as resolve_raw_root
from nnunet_ext.utils.progress import StepProgress


def _record_identity(folder: Path) -> tuple[int, int] | None:
    """Inode and mtime of ``folder``'s conversion.json: every write replaces the folder, so both change."""
    from nnunet_ext.dataset_conversion.common import CONVERSION_FILENAME

    try:
        stat = (folder / CONVERSION_FILENAME).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _summary(folder: Path, changed: bool) -> str:
    from nnunet_ext.domains import load_domains

    meta = load_domains(folder)
    counts = Counter((case["domain"], case["split"]) for case in meta.cases.values())
    lines = [f"wrote {folder}" if changed else
             f"unchanged: {folder} already holds this conversion (same inputs and options); nothing was written"]
    for domain, info in meta.domains.items():
        splits = ", ".join(f"{counts[(domain, s)]} {s}" for s in ("train", "test") if counts[(domain, s)])
        lines.append(f"  {domain:<22} {splits:<20} ({info.get('role', '')})")
    lines.append(f"  next: nnUNetv2_plan_and_preprocess -d {folder.name[7:10]} -c 2d 3d_fullres "
                 "(copies splits_final.json into $nnUNet_preprocessed)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    raw_root = resolve_raw_root(args.raw_root)
    before = {p: _record_identity(p) for p in raw_root.glob(f"Dataset{args.dataset_id:03d}_*")}
    with StepProgress(f"convert {args.dataset}") as progress:
        folder = _convert(args, raw_root, progress)
    print(_summary(folder, changed=before.get(folder) != _record_identity(folder)))
    return 0


def _convert(args: argparse.Namespace, raw_root: Path, progress: StepProgress) -> Path:
    from nnunet_ext.dataset_conversion.common import ConversionError

    def on_case(done: int, total: int, case: str) -> None:
        progress.total = total
        progress.step(f"writing {case}")

    common = {"overwrite": args.overwrite, "progress": on_case}
    progress.note("checking the inputs")
    try:
        if args.dataset == "cc359":
            from nnunet_ext.dataset_conversion.cc359 import convert_cc359

            folder = convert_cc359(args.raw_dir, args.dataset_id, raw_root, name=args.name or "CC359",
                                   source_domain=args.source_domain or "ge_3", mask=args.mask,
                                   test_fraction=args.test_fraction, num_folds=args.folds, seed=args.seed, **common)
        elif args.dataset == "mnms":
            from nnunet_ext.dataset_conversion.mnms import convert_mnms

            folder = convert_mnms(args.raw_dir, args.dataset_id, raw_root, name=args.name or "MNMs",
                                  csv_path=args.csv, source_domain=args.source_domain or "vendor_B",
                                  domain_by=args.domain_by, test_fraction=args.test_fraction, num_folds=args.folds,
                                  seed=args.seed, allow_missing_images=args.allow_missing_images, **common)
        elif args.dataset == "msd":
            from nnunet_ext.dataset_conversion.msd import convert_msd

            progress.note("nnunetv2's Decathlon converter reports no progress per case")
            folder = convert_msd(args.task_dir, args.dataset_id, raw_root, num_processes=args.num_processes,
                                 num_folds=args.folds, seed=args.seed, **common)
        else:
            from nnunet_ext.dataset_conversion.hippocampus_stream import (
                build_hippocampus_stream,
            )

            folder = build_hippocampus_stream(args.dataset_id, raw_root, decathlon=args.decathlon, harp=args.harp,
                                              dryad=args.dryad, name=args.name or "HippocampusStream",
                                              order=args.order, num_stages=args.stages,
                                              test_fraction=args.test_fraction, seed=args.seed, **common)
    except ConversionError as e:
        raise UserError(str(e)) from None
    return folder


def _common(p: argparse.ArgumentParser, folds: bool = True) -> None:
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--name", default=None, help="dataset name after DatasetXXX_")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of source-domain patients held out for imagesTs (default 0.2)")
    if folds:
        p.add_argument("--folds", type=int, default=None, metavar="N",
                       help="folds in splits_final.json: exactly this many, refused if there are fewer training "
                            "subjects (default: 5, or one per training subject when there are fewer)")
    p.add_argument("--seed", type=int, default=0, help="seed of held-out patients and folds (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset written from other inputs/options")


def register(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_ext.dataset_conversion.cc359 import DOMAINS, MASK_SUFFIXES
    from nnunet_ext.dataset_conversion.hippocampus_stream import SOURCES

    parser = subparsers.add_parser(
        "convert", help="convert CC-359, M&Ms, a Decathlon task or the hippocampus stream into nnU-Net raw datasets",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    p = sub.add_parser("cc359", help="Calgary-Campinas-359 skull stripping (6 vendor/field-strength domains)")
    p.add_argument("raw_dir", type=Path, metavar="RAW_DIR", help="folder with the unpacked Original and mask zips")
    p.add_argument("dataset_id", type=int, metavar="DATASET_ID", help="nnU-Net dataset id of the result (1-999)")
    p.add_argument("--source-domain", choices=list(DOMAINS), default=None, help="training domain (default ge_3)")
    p.add_argument("--mask", choices=list(MASK_SUFFIXES), default="silver", help="mask kind (default silver, *_ss)")
    _common(p)

    p = sub.add_parser("mnms", help="M&Ms 2020 cine MRI, one case per annotated frame (vendor domains)")
    p.add_argument("raw_dir", type=Path, metavar="RAW_DIR", help="the unpacked OpenDataset (any releases)")
    p.add_argument("dataset_id", type=int, metavar="DATASET_ID", help="nnU-Net dataset id of the result (1-999)")
    p.add_argument("--csv", type=Path, default=None, help="metadata CSV (default: every such CSV in RAW_DIR)")
    p.add_argument("--source-domain", default=None, help="training domain (default vendor_B)")
    p.add_argument("--domain-by", choices=["vendor", "vendor_centre"], default="vendor",
                   help="domain = vendor (default) or vendor and centre")
    p.add_argument("--allow-missing-images", action="store_true",
                   help="skip CSV rows whose images are not downloaded instead of failing")
    _common(p)

    p = sub.add_parser("msd", help="a Medical Segmentation Decathlon task (nnunetv2's converter)")
    p.add_argument("task_dir", type=Path, metavar="TASK_DIR", help="unpacked TaskNN_Name folder")
    p.add_argument("dataset_id", type=int, metavar="DATASET_ID", help="nnU-Net dataset id of the result (1-999)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--folds", type=int, default=None, metavar="N",
                   help="folds in splits_final.json: exactly this many, refused if there are fewer training "
                            "subjects (default: 5, or one per training case when there are fewer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset written from other inputs")

    p = sub.add_parser("hippocampus-stream", help="Decathlon Task04 + HarP + Dryad shifting-source stream (ODEx)")
    p.add_argument("dataset_id", type=int, metavar="DATASET_ID", help="nnU-Net dataset id of the result (1-999)")
    p.add_argument("--decathlon", type=Path, default=None, help="unpacked Task04_Hippocampus")
    p.add_argument("--harp", type=Path, default=None, help="HarP folder (MINC images, NIfTI side labels)")
    p.add_argument("--dryad", type=Path, default=None, help="Dryad folder (sNN subject folders)")
    p.add_argument("--order", nargs="+", choices=list(SOURCES), default=list(SOURCES),
                   help="order of the shift through the sources (default harp dryad decathlon)")
    p.add_argument("--stages", type=int, default=6, help="stages = folds of splits_final.json (default 6)")
    _common(p, folds=False)
    parser.set_defaults(func=run)
