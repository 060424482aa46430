"""``nnext demo-data``: write demo nnU-Net raw datasets from real MRI shipped in installed packages.

    nnext demo-data mni-tissue                      # -> $nnUNet_raw/Dataset990_DemoMNITissue
    nnext demo-data colin-skullstrip --profile tiny # -> $nnUNet_raw/Dataset991_DemoColinSkullStrip
    nnext demo-data all --raw-root DIR --overwrite

Each dataset has real training slabs, held-out real test slabs and one simulated-scanner copy of the
test slabs per severity; ``domains.json`` says which case belongs to which domain. See
``nnunet_ext.dataset_conversion.demo_data`` for sources, labels and the artefacts.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from nnunet_ext.cli.main import UserError, raw_root as resolve_raw_root

#: CLI name -> (builder name, default dataset id)
DATASETS: dict[str, tuple[str, int]] = {
    "mni-tissue": ("mni_tissue", 990),
    "colin-skullstrip": ("colin_skullstrip", 991),
}


def _summary(folder: Path) -> str:
    """Cases per domain and split, and the grid of the cases, read back from what was written."""
    import SimpleITK as sitk

    from nnunet_ext.domains import load_domains

    meta = load_domains(folder)
    counts = Counter((case["domain"], case["split"]) for case in meta.cases.values())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(next((folder / "imagesTr").glob("*_0000.nii.gz"))))
    reader.ReadImageInformation()
    size = " x ".join(str(s) for s in reader.GetSize())
    spacing = " x ".join(f"{s:g}" for s in reader.GetSpacing())
    lines = [f"wrote {folder}", f"  cases: {size} voxels of {spacing} mm (axial slabs)"]
    for domain, info in meta.domains.items():
        splits = ", ".join(f"{counts[(domain, s)]} {s}" for s in ("train", "test") if counts[(domain, s)])
        kind = f"simulated from {info.get('derived_from')}" if info.get("simulated") else "real"
        lines.append(f"  {domain:<28} {splits:<18} ({kind})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.dataset_conversion.demo_data import (
        available_demo_datasets,
        build_demo_dataset,
        demo_dataset_folder,
    )

    if args.dataset == "all" and args.id is not None:
        raise ValueError("--id names one dataset; with 'all' the default ids are used (990, 991). "
                         "Build datasets one at a time to choose ids.")
    raw_root = resolve_raw_root(args.raw_root)
    chosen = list(DATASETS) if args.dataset == "all" else [args.dataset]
    available = available_demo_datasets()
    missing = {c: available[DATASETS[c][0]] for c in chosen if available[DATASETS[c][0]] is not None}
    if args.dataset != "all" and missing:
        raise UserError(missing[args.dataset])
    todo = [c for c in chosen if c not in missing]
    ids = {c: DATASETS[c][1] if args.id is None else args.id for c in todo}
    targets = {c: demo_dataset_folder(DATASETS[c][0], ids[c], raw_root) for c in todo}
    if not args.overwrite:
        existing = [str(t) for t in targets.values() if t.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    for cli_name in todo:
        folder = build_demo_dataset(
            DATASETS[cli_name][0],
            ids[cli_name],
            raw_root,
            seed=args.seed,
            profile=args.profile,
            severities=tuple(args.severities),
            overwrite=args.overwrite,
        )
        print(_summary(folder))
    for cli_name, reason in missing.items():
        print(f"nnext demo-data: skipped {cli_name}: {reason}", file=sys.stderr)
    return 1 if missing else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_ext.dataset_conversion.demo_data import PROFILES, SEVERITIES

    p = subparsers.add_parser(
        "demo-data",
        help="write demo nnU-Net raw datasets (real MRI + simulated scanner domains) into $nnUNet_raw",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=[*DATASETS, "all"], help="which dataset ('all': every available one)")
    p.add_argument("--id", type=int, default=None,
                   help="nnU-Net dataset id, 1..999 (default: " +
                   ", ".join(f"{i} for {n}" for n, (_, i) in DATASETS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated scanner artefacts (default 0)")
    p.add_argument("--profile", choices=list(PROFILES), default="demo",
                   help="demo: 2 mm, fast CPU training (default); tiny: 4 mm, for end-to-end tests")
    p.add_argument("--severities", nargs="*", choices=list(SEVERITIES), default=list(SEVERITIES),
                   metavar="SEVERITY",
                   help=f"simulated-scanner test domains to write, from {list(SEVERITIES)} (default: all; "
                   "none: only the real domain)")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    p.set_defaults(func=run)
