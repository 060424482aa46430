"""``nnext plot-layer-speed``: the AvaGrad paper's Fig. 2 (per-layer update magnitude) for several runs.

    nnext plot-layer-speed RESULTS/.../nnUNetTrainerSGD_layerspeed__nnUNetPlans__2d/fold_0 \\
                           RESULTS/.../nnUNetTrainerAvaGrad_layerspeed__nnUNetPlans__2d/fold_0 -o layer_speed.png
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.evaluation.layer_speed import plot_layer_speed

    spreads = plot_layer_speed(args.folders, args.output, args.labels)
    for label, value in spreads.items():
        print(f"{label}: fastest/slowest layer mean update = {value:.2f}x")
    print(f"wrote {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot-layer-speed", help="per-layer weight-update magnitude of runs (AvaGrad Fig. 2)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="MODEL_FOLDER", help="fold folders holding layer_speed.json")
    p.add_argument("-o", "--output", default="layer_speed.png", help="PNG to write (default: layer_speed.png)")
    p.add_argument("--labels", nargs="+", help="panel titles, one per folder")
    p.set_defaults(func=run)
