"""``nnext stream``: build and check continual-learning streams (``stream.json``) of nnU-Net raw datasets.

    nnext stream shifting-source DATASET [--order D1 D2 ...] [--stages 4] [--group-by subject|case]
                                 [--stratify-by FIELD]
    nnext stream transformed DATASET NEW_ID [--name NAME] [--domain D] [--stages 4] [--group-by ...]
                                 [--stratify-by FIELD | --repeat-units] [--test-units N]
    nnext stream demo transformed|shifting-source [--id 950|951] [--stages 4]
    nnext stream check DATASET

DATASET is a dataset id (``501``), a folder name in $nnUNet_raw (``Dataset501_X``) or a path. The
scenarios follow the ODEx paper (Gonzalez et al., DART 2022); see documentation/continual.md and
``nnunet_ext.dataset_conversion.stream_scenarios``. Input files are never modified: ``shifting-source``
only adds ``stream.json``; ``transformed`` writes a new dataset. Both copy ``stream.json`` into
$nnUNet_preprocessed/DatasetXXX_Name/ when that folder exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnunet_ext.cli.main import UserError, raw_root as resolve_raw_root
from nnunet_ext.utils.nnunet_paths import nnunet_folder

#: CLI scenario name -> (builder scenario, default dataset id)
DEMOS: dict[str, tuple[str, int]] = {"transformed": ("transformed", 950), "shifting-source": ("shifting_source", 951)}


def resolve_dataset(value: str, raw: str | None = None) -> Path:
    """A raw dataset folder from a path, an id (``501``) or a folder name in ``raw`` (default ``$nnUNet_raw``)."""
    path = Path(value)
    if path.is_dir():
        return path
    root = resolve_raw_root(raw)
    if value.isdigit():
        found = sorted(root.glob(f"Dataset{int(value):03d}_*"))
        if len(found) == 1:
            return found[0]
        raise UserError(f"dataset id {value}: found {len(found)} folders Dataset{int(value):03d}_* in {root}; pass "
                        f"the folder path")
    if (root / value).is_dir():
        return root / value
    raise UserError(f"dataset {value!r} is neither a folder nor a dataset id/name in {root}")


def _progress(done: int, total: int, case: str) -> None:
    if sys.stderr.isatty():
        print(f"\r  {done}/{total} {case:<40}", end="" if done < total else "\n", file=sys.stderr)


def _summary(folder: Path) -> str:
    from nnunet_ext.streams import read_stream

    stream = read_stream(folder)
    lines = [f"wrote {stream.source} ({stream.scenario}, {len(stream)} stages)"]
    for s in stream.stages:
        info = s.extra.get("weights") or {"strength": s.extra.get("transform", {}).get("strength")}
        lines.append(f"  stage {s.index}: {len(s.train)} train, {len(s.val)} val, {len(s.test)} test  {info}")
    return "\n".join(lines)


def _listed(folder: Path, sub: str) -> list[str]:
    ending = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("file_ending", ".nii.gz")
    suffix = f"_0000{ending}"
    return [p.name[: -len(suffix)] for p in (folder / sub).glob(f"*{suffix}")]


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.dataset_conversion import stream_scenarios
    from nnunet_ext.streams import read_stream

    try:
        pre = nnunet_folder("preprocessed")
    except ValueError:
        pre = None  # nothing preprocessed yet: stream.json is written beside dataset.json only
    if args.action == "shifting-source":
        folder = resolve_dataset(args.dataset, args.raw_root)
        stream_scenarios.shifting_source_stream(
            folder, args.order, num_stages=args.stages, val_fraction=args.val_fraction, seed=args.seed,
            group_by=args.group_by, overwrite=args.overwrite, preprocessed_root=pre, stratify_by=args.stratify_by)
    elif args.action == "transformed":
        source = resolve_dataset(args.dataset, args.raw_root)
        folder = stream_scenarios.transformed_stream(
            source, args.new_id, args.raw_root or source.parent, name=args.name, domain=args.domain,
            num_stages=args.stages, val_fraction=args.val_fraction, seed=args.seed, group_by=args.group_by,
            overwrite=args.overwrite, preprocessed_root=pre, progress=_progress, stratify_by=args.stratify_by,
            repeat_units=args.repeat_units, test_units=args.test_units)
    elif args.action == "demo":
        from nnunet_ext.dataset_conversion.demo_stream import build_demo_stream

        scenario, default_id = DEMOS[args.scenario]
        folder = build_demo_stream(scenario, args.id or default_id, resolve_raw_root(args.raw_root), args.seed,
                                   args.overwrite, pre, args.stages)
    else:
        folder = resolve_dataset(args.dataset, args.raw_root)
        stream = read_stream(folder)
        stream.check_cases(_listed(folder, "imagesTr"), _listed(folder, "imagesTs"))
        print(f"{stream.source}: {len(stream)} stages, every case found")
        return 0
    print(_summary(folder))
    print(f"  next: nnUNetv2_plan_and_preprocess -d {folder.name[7:10]} -c 2d, then train a stream trainer "
          f"(documentation/continual.md)")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", type=int, default=4, help="number of stages (default 4)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="per stage, fraction of training units held out as val (default 0.2)")
    p.add_argument("--group-by", choices=["subject", "case"], default="subject",
                   help="unit dealt to stages (default subject; 'case' only for slabs of one volume)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing stream.json / dataset")


def _stratify(p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
    p.add_argument("--stratify-by", default=None, metavar="FIELD",
                   help="numeric domains.json case field (e.g. slab): spread each stage's units over its range "
                        "instead of dealing them at random")


DATASET_HELP = "the raw dataset: its folder, its id (501) or its folder name in $nnUNet_raw"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stream", help="build or check a continual-learning stream (shifting source, transformed, demo)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("shifting-source", help="mix the dataset's domains with linearly sliding weights")
    p.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    p.add_argument("--order", nargs="+", default=None, metavar="DOMAIN",
                   help="source domains in stream order (default: every real domain with training cases)")
    _stratify(p)
    _common(p)
    p = sub.add_parser("transformed", help="one domain through progressively stronger TorchIO transforms (new dataset)")
    p.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    p.add_argument("new_id", type=int, metavar="NEW_ID", help="id of the new dataset")
    p.add_argument("--name", default=None, help="new dataset name after DatasetXXX_ (default <name>Transformed)")
    p.add_argument("--domain", default=None, help="source domain (default: the only real domain)")
    p.add_argument("--test-units", type=int, default=None, metavar="N",
                   help="use N of the domain's test subjects (seeded; default all): every stage's test set holds "
                        "them, so N sets the evaluation cost")
    units = p.add_mutually_exclusive_group()
    units.add_argument("--repeat-units", action="store_true",
                       help="every stage gets every training unit through its own transform (for slabs of one volume)")
    _stratify(units)
    _common(p)
    p = sub.add_parser("demo", help="small embedded-data stream (MNI152 / Colin27) for tests and the benchmark")
    p.add_argument("scenario", choices=list(DEMOS), help="which of the two ODEx stream scenarios to build")
    p.add_argument("--id", type=int, default=None, help="dataset id (default 950 transformed, 951 shifting-source)")
    p.add_argument("--stages", type=int, default=4, help="number of stages (default 4; the ODEx paper has 5)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p = sub.add_parser("check", help="check that every case stream.json names exists")
    p.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.set_defaults(func=run)
