"""``nnext evaluate-continual``: the matrix R[i][j], mean Dice, BWT, FWT and per-stage Dice curves of methods.

Example (predictions of each method's model after stage i on the union of the stream's test cases)::

    nnext evaluate-continual --stream $nnUNet_raw/Dataset950_X/stream.json \\
        --ref $nnUNet_raw/Dataset950_X/labelsTs \\
        --method Seq='preds/seq/after{stage}' --method ODEx='preds/odex/after{stage}' -o report/

writes ``continual.json``, ``continual.md`` and ``continual.png`` (:mod:`nnunet_ext.evaluation.continual`).
``--dice-json continual.json`` re-renders a report from the per-case Dice of an earlier run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_ext.cli.main import UserError


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"{option} expects NAME=VALUE, got {value!r}")
        if name in out:
            raise UserError(f"{option}: {name!r} given twice; give each method once")
        out[name] = rest
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate-continual",
        help="continual-learning matrix R[i][j], mean Dice, BWT, FWT and per-stage Dice curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stream", type=Path, required=True, metavar="PATH",
                        help="stream.json (or its dataset folder); its stages' 'test' lists define R's columns")
    parser.add_argument("--ref", type=Path, metavar="REF_DIR", help="reference labels, e.g. DatasetXXX/labelsTs")
    parser.add_argument("--dataset-json", type=Path, metavar="PATH",
                        help="dataset.json (labels, file_ending); default: dataset.json in REF_DIR's parent folder")
    parser.add_argument("--method", action="append", metavar="NAME=DIR_PATTERN",
                        help="a method's prediction folders; {stage} in the pattern is replaced by 0..N-1 "
                             "(the model after that stage). Repeat for several methods")
    parser.add_argument("--baseline", metavar="DIR_PATTERN",
                        help="predictions of the FWT baseline model(s): one folder, or a pattern with {stage} "
                             "(b_j from folder j). Without it FWT is n/a")
    parser.add_argument("--pool-size", action="append", metavar="NAME=K",
                        help="number of models in a method's pool (reported as |Θ|)")
    parser.add_argument("--fwt-variant", choices=["lopez_paz", "diaz_rodriguez"], default="lopez_paz",
                        help="FWT terms: R[j-1][j] - b_j (default) or all R[i][j] - b_j with i < j")
    parser.add_argument("--dice-json", type=Path, metavar="PATH",
                        help="per-case Dice from an earlier continual.json instead of prediction folders")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="report folder")
    parser.add_argument("-np", "--num-processes", type=int, default=1, metavar="N", help="worker processes")
    parser.add_argument("--title", default="Continual evaluation", help="heading of the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.cli.evaluate import _default_beside
    from nnunet_ext.evaluation.continual import (
        case_dice_of_folder,
        continual_result,
        markdown_report,
        stage_folders,
        write_continual_report,
    )
    from nnunet_ext.streams import read_stream

    stream = read_stream(args.stream)
    patterns = _pairs(args.method, "--method")
    pools = {name: int(k) for name, k in _pairs(args.pool_size, "--pool-size").items() if k.isdigit()}
    if len(pools) != len(args.pool_size or []):
        raise UserError(f"--pool-size expects NAME=K with an integer K >= 0, got {args.pool_size}")
    settings: dict = {"methods": patterns, "baseline_pattern": args.baseline}
    if args.dice_json is not None:
        if patterns or args.baseline:
            raise UserError("give either --dice-json or --method/--baseline prediction folders, not both")
        try:
            earlier = json.loads(args.dice_json.read_text(encoding="utf-8"))
            methods = {name: m["per_case_dice"] for name, m in earlier["methods"].items()}
            baseline = earlier["baseline"]["per_case_dice"] if earlier.get("baseline") else None
            baseline_source = earlier["baseline"]["source"] if earlier.get("baseline") else ""
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--dice-json {args.dice_json}: not a continual.json written by this command ({e!r})")
        settings = {"dice_json": str(args.dice_json)}
    else:
        if not patterns:
            raise UserError("give at least one --method NAME=DIR_PATTERN (or --dice-json)")
        if args.ref is None:
            raise UserError("--ref REF_DIR is required with prediction folders")
        dataset_json = args.dataset_json or _default_beside(args.ref, "dataset.json", "--dataset-json")
        file_ending = json.loads(Path(dataset_json).read_text(encoding="utf-8")).get("file_ending", ".nii.gz")
        if not args.ref.is_dir():
            raise UserError(f"reference folder {args.ref} does not exist; check --ref")
        stream.check_cases(None, [p.name[: -len(file_ending)] for p in args.ref.glob(f"*{file_ending}")])
        folders = {name: stage_folders(p, len(stream)) for name, p in patterns.items()}

        def dice_of(folder: Path) -> dict[str, float]:
            print(f"evaluating {folder}")
            return case_dice_of_folder(stream, folder, args.ref, dataset_json, args.num_processes)

        methods = {name: [dice_of(f) for f in fs] for name, fs in folders.items()}
        baseline, baseline_source = None, ""
        if args.baseline:
            bfolders = stage_folders(args.baseline, len(stream), require_placeholder=False)
            per_folder = {f: dice_of(f) for f in dict.fromkeys(bfolders)}  # one evaluation per distinct folder
            baseline = [per_folder[f] for f in bfolders]
            baseline_source = args.baseline
        settings.update(reference_dir=str(args.ref), dataset_json=str(dataset_json))
    result = continual_result(stream, methods, baseline, baseline_source, pools, args.fwt_variant, settings)
    paths = write_continual_report(result, args.output, args.title)
    print(markdown_report(result, args.title).split("\nDefinitions")[0])
    for path in paths.values():
        print(f"wrote {path}")
    return 0
