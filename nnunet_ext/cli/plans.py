"""``nnext plans``: write plans variants that nnU-Net's stock commands use with ``-p`` (one action per method).

    nnext plans catenorm -d 501 [-p nnUNetPlans] [-o nnUNetPlans_CateNorm] [--stages 0 1 2 3]
                         [--hidden-ratio 0.5] [--mask-mode area] [--overwrite]

nnU-Net cannot discover external planners, but it builds any network class a plans file names by dotted
path. Each action reads ``$nnUNet_preprocessed/DatasetXXX_NAME/<-p>.json`` and writes ``<-o>.json`` beside it;
the preprocessed data is shared, so ``nnUNetv2_train DATASET CONFIG FOLD -tr TRAINER -p <-o>`` runs at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_ext.cli.main import UserError
from nnunet_ext.utils.nnunet_paths import dataset_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plans", help="write method plans variants (used with nnUNetv2_train -p)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="plans_command", metavar="METHOD", required=True)
    cn = sub.add_parser("catenorm", help="every configuration builds the CateNorm U-Net (nnUNetTrainerCateNorm*)")
    cn.add_argument("-d", "--dataset", required=True, help="dataset id or name (DatasetXXX_NAME)")
    cn.add_argument("-p", "--plans", default="nnUNetPlans", help="source plans name (default nnUNetPlans)")
    cn.add_argument("-o", "--output-plans", default="nnUNetPlans_CateNorm", help="name of the plans to write")
    cn.add_argument("--stages", type=int, nargs="+", metavar="S",
                    help="encoder stages with CateNorm, 0 = highest resolution (default: the paper's first four, "
                         "never the bottleneck)")
    cn.add_argument("--hidden-ratio", type=float, default=0.5, help="first conditioning conv channels / C (0.5)")
    cn.add_argument("--mask-mode", choices=("area", "nearest"), default="area", help="mask resizing (area)")
    cn.add_argument("--overwrite", action="store_true", help="replace existing output plans")
    cn.set_defaults(func=_catenorm)


def preprocessed_dataset_dir(dataset: str) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_NAME`` for a dataset id or name."""
    try:
        folder = dataset_folder("preprocessed", dataset)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return folder


def _catenorm(args: argparse.Namespace) -> int:
    from nnunet_ext.plans.catenorm import write_catenorm_plans

    try:
        out = write_catenorm_plans(preprocessed_dataset_dir(args.dataset), args.plans, args.output_plans,
                                   args.stages, args.hidden_ratio, args.mask_mode, overwrite=args.overwrite)
    except NotImplementedError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}\ntrain with: nnUNetv2_train {args.dataset} CONFIGURATION FOLD -tr nnUNetTrainerCateNorm "
          f"-p {args.output_plans}")
    return 0
