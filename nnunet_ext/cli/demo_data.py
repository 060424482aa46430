"""``nnext demo-data``: write demo nnU-Net raw datasets from real MRI shipped in installed packages.

    nnext demo-data mni-tissue                      # -> $nnUNet_raw/Dataset990_DemoMNITissue
    nnext demo-data colin-skullstrip --profile tiny # -> $nnUNet_raw/Dataset991_DemoColinSkullStrip
    nnext demo-data brain-scanners [-d 992] [--subjects 24] [--seed 0] [--profile default|tiny]
                                   [--figures DIR]  # -> $nnUNet_raw/Dataset992_DemoBrainScanners
    nnext demo-data all --raw-root DIR --overwrite

The slab datasets have real training slabs, held-out real test slabs and one simulated-scanner copy of
the test slabs per severity. brain-scanners has simulated subjects imaged on six simulated scanners (MR
physics), train/val/test subjects and one single-source fold per scanner in splits_final.json; --figures
draws it (an existing dataset is drawn without rebuilding unless --overwrite). ``domains.json`` says which
case belongs to which domain. The registry of datasets, their default ids and builders is
``nnunet_ext.dataset_conversion.demo_data``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from nnunet_ext.cli.main import UserError, raw_root as resolve_raw_root

#: builder option -> CLI flag; an option is passed only to datasets that take it
_OPTION_FLAGS: dict[str, str] = {"severities": "--severities", "subjects": "--subjects"}


def _summary(folder: Path, description: str) -> str:
    """Cases per domain and split, and the grid of the cases, read back from what was written."""
    import SimpleITK as sitk

    from nnunet_ext.domains import load_domains

    meta = load_domains(folder)
    part = "subset" if all("subset" in case for case in meta.cases.values()) else "split"
    counts = Counter((case["domain"], case[part]) for case in meta.cases.values())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(next((folder / "imagesTr").glob("*_0000.nii.gz"))))
    reader.ReadImageInformation()
    size = " x ".join(str(s) for s in reader.GetSize())
    spacing = " x ".join(f"{s:g}" for s in reader.GetSpacing())
    lines = [f"wrote {folder}", f"  cases: {size} voxels of {spacing} mm ({description})"]
    for domain, info in meta.domains.items():
        splits = ", ".join(f"{counts[(domain, s)]} {s}" for s in ("train", "val", "test") if counts[(domain, s)])
        if not info.get("simulated"):
            kind = "real"
        else:
            kind = f"simulated from {info['derived_from']}" if info.get("derived_from") else "simulated"
        lines.append(f"  {domain:<28} {splits:<24} ({kind})")
    if meta.subjects:
        volumes = [s["volumes"] for s in meta.subjects.values() if "volumes" in s]
        brain = [v["brain_ml"] for v in volumes]
        ventricles = [v["ventricles_ml"] for v in volumes]
        lines.append(f"  {len(meta.subjects)} subjects: brain {min(brain):.0f}-{max(brain):.0f} ml, lateral ventricles "
                     f"{min(ventricles):.1f}-{max(ventricles):.1f} ml (domains.json 'subjects')")
    return "\n".join(lines)


def step_printer() -> Callable[[str], None]:
    """A progress callback printing one plain line per step with the elapsed time, on stderr."""
    start = time.perf_counter()

    def show(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return show


def _draw(folder: Path, out_dir: Path) -> int:
    from nnunet_ext.dataset_conversion.brain_scanners_figures import write_figures

    for path in write_figures(folder, out_dir):
        print(f"figure: {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.dataset_conversion.demo_data import DEMO_DATASETS, available_demo_datasets

    entries = {e.cli_name: e for e in DEMO_DATASETS.values()}
    if args.dataset == "all" and args.id is not None:
        defaults = ", ".join(str(e.default_id) for e in entries.values())
        raise ValueError(f"--id names one dataset; with 'all' the default ids are used ({defaults}). "
                         "Build datasets one at a time to choose ids.")
    raw_root = resolve_raw_root(args.raw_root)
    chosen = list(entries) if args.dataset == "all" else [args.dataset]
    given = {option: getattr(args, option) for option in _OPTION_FLAGS if getattr(args, option) is not None}
    if args.figures is not None and args.dataset != "brain-scanners":
        raise ValueError(f"--figures draws the brain-scanners dataset, not {args.dataset}; drop --figures or build "
                         f"brain-scanners")
    for cli_name in chosen if args.dataset != "all" else ():
        entry = entries[cli_name]
        wrong = [_OPTION_FLAGS[o] for o in given if o not in entry.options]
        if wrong:
            raise ValueError(f"{' '.join(wrong)} does not apply to {cli_name}; its options are "
                             f"{[_OPTION_FLAGS[o] for o in entry.options]}")
        if args.profile is not None and args.profile not in entry.profiles:
            raise ValueError(f"--profile {args.profile} does not apply to {cli_name}; choose one of "
                             f"{list(entry.profiles)}")
    available = available_demo_datasets()
    missing = {c: available[entries[c].name] for c in chosen if available[entries[c].name] is not None}
    if args.dataset != "all" and missing:
        raise UserError(missing[args.dataset])
    todo = [c for c in chosen if c not in missing]
    targets = {c: entries[c].folder(entries[c].default_id if args.id is None else args.id, raw_root) for c in todo}
    if args.figures is not None and not args.overwrite and targets["brain-scanners"].is_dir():
        return _draw(targets["brain-scanners"], Path(args.figures))
    if not args.overwrite:
        existing = [str(t) for t in targets.values() if t.exists()]
        if existing:
            raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    for cli_name in todo:
        entry = entries[cli_name]
        profile = args.profile if args.profile in entry.profiles else None
        options = {o: tuple(v) if isinstance(v, list) else v for o, v in given.items() if o in entry.options}
        folder = entry.build(args.id, raw_root, seed=args.seed, profile=profile, overwrite=args.overwrite,
                             progress=step_printer(), **options)
        print(_summary(folder, entry.description))
        if args.figures is not None:
            _draw(folder, Path(args.figures))
    for cli_name, reason in missing.items():
        print(f"nnext demo-data: skipped {cli_name}: {reason}", file=sys.stderr)
    return 1 if missing else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from nnunet_ext.dataset_conversion.demo_data import DEMO_DATASETS, SEVERITIES

    entries = list(DEMO_DATASETS.values())
    profiles = list(dict.fromkeys(p for e in entries for p in e.profiles))
    p = subparsers.add_parser(
        "demo-data",
        help="write demo nnU-Net raw datasets (real MRI + simulated scanner domains) into $nnUNet_raw",
        description=__doc__ + "\ndatasets:\n" + "\n".join(
            f"  {e.cli_name:<18} {e.description} (id {e.default_id}, profiles {'|'.join(e.profiles)})"
            for e in entries),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=[*(e.cli_name for e in entries), "all"],
                   help="which dataset ('all': every available one)")
    p.add_argument("-d", "--id", type=int, default=None,
                   help="nnU-Net dataset id, 1..999 (default: " +
                   ", ".join(f"{e.default_id} for {e.cli_name}" for e in entries) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random in the dataset (default 0)")
    p.add_argument("--profile", choices=profiles, default=None,
                   help="size profile (default: the dataset's first). Slab datasets: demo (2 mm, fast CPU "
                   "training) or tiny (4 mm, for end-to-end tests); brain-scanners: default (2 mm) or tiny (4 mm)")
    p.add_argument("--severities", nargs="*", choices=list(SEVERITIES), default=None, metavar="SEVERITY",
                   help=f"slab datasets: simulated-scanner test domains to write, from {list(SEVERITIES)} "
                   "(default: all; none: only the real domain)")
    p.add_argument("--subjects", type=int, default=None, metavar="N",
                   help="brain-scanners: number of simulated subjects, >= 4 (default: 24, tiny profile 6)")
    p.add_argument("--figures", default=None, metavar="DIR",
                   help="brain-scanners: write its figures (one subject under every scanner, several subjects "
                   "under one) into DIR")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    p.set_defaults(func=run)
