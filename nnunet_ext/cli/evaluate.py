"""``nnext evaluate``: per-domain Dice, surface Dice, HD95 and ASSD of a prediction folder.

Example::

    nnext evaluate PRED_DIR --ref $nnUNet_raw/Dataset501_NAME/labelsTs -o PRED_DIR/evaluation

writes ``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` (:mod:`nnunet_ext.evaluation.per_domain`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_ext.domains import DOMAINS_FILENAME

#: show a progress bar from this many cases on
PROGRESS_MIN_CASES = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-domain Dice, surface Dice, HD95 and ASSD of a prediction folder",
        description=(
            "Evaluate predicted label maps against reference labels, per case and label, and aggregate the "
            "metrics per domain of domains.json. Writes evaluation.json, evaluation.md and evaluation.png to "
            "OUT_DIR and prints the Markdown table. OUT_DIR and every case are checked first (a prediction must "
            "have its reference's shape, spacing, origin and direction); on any problem nothing is written and "
            "all problems are listed."
        ),
    )
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR", help="folder of predictions (<case><file_ending>)")
    parser.add_argument(
        "--ref",
        type=Path,
        required=True,
        metavar="REF_DIR",
        help="folder of reference labels, e.g. DatasetXXX/labelsTs",
    )
    parser.add_argument(
        "--dataset-json",
        type=Path,
        metavar="PATH",
        help="nnU-Net dataset.json (labels, file_ending); default: dataset.json in REF_DIR's parent folder "
        "(nnU-Net raw layout DatasetXXX/labelsTs -> DatasetXXX/dataset.json)",
    )
    parser.add_argument(
        "--domains",
        type=Path,
        metavar="PATH",
        help=f"domain metadata; default: {DOMAINS_FILENAME} in REF_DIR's parent folder (DatasetXXX/{DOMAINS_FILENAME})",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="report folder")
    parser.add_argument(
        "--tolerance-mm", type=float, default=1.0, metavar="MM", help="surface Dice tolerance in mm (default: 1.0)"
    )
    parser.add_argument(
        "--labels", type=int, nargs="+", metavar="LABEL", help="label values to evaluate (default: all foreground)"
    )
    parser.add_argument(
        "--cases", nargs="+", metavar="CASE", help="evaluate only these case ids (default: every reference case)"
    )
    parser.add_argument(
        "-np", "--num-processes", type=int, default=1, metavar="N", help="worker processes (default: 1)"
    )
    parser.add_argument("--title", default="Per-domain evaluation", help="heading of the report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nnunet_ext.evaluation.per_domain import evaluate_folder, markdown_table, write_report
    from nnunet_ext.utils.outputs import check_output_folder

    check_output_folder(args.output)  # before any case is read
    dataset_json = args.dataset_json or default_beside(args.ref, "dataset.json", "--dataset-json")
    domains = args.domains or default_beside(args.ref, DOMAINS_FILENAME, "--domains")

    bar = Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )
    task_id = None

    def progress(done: int, total: int, case: str) -> None:
        nonlocal task_id
        if total < PROGRESS_MIN_CASES:
            return
        if task_id is None:
            bar.start()
            task_id = bar.add_task("", total=total)
        bar.update(task_id, completed=done, description=case)

    try:
        result = evaluate_folder(
            args.pred_dir,
            args.ref,
            dataset_json,
            domains,
            tolerance_mm=args.tolerance_mm,
            labels=args.labels,
            num_processes=args.num_processes,
            cases=args.cases,
            progress=progress,
        )
    finally:
        bar.stop()
    paths = write_report(result, args.output, title=args.title)
    print(markdown_table(result))
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def default_beside(ref_dir: Path, filename: str, option: str) -> Path:
    """``filename`` in the parent of a reference folder (nnU-Net raw layout: ``DatasetXXX/labelsTs`` ->
    ``DatasetXXX/dataset.json``), the default of ``option`` in the evaluation commands.

    Raises:
        FileNotFoundError: the file is not there; the message says to pass ``option``.
    """
    path = Path(ref_dir).resolve().parent / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{option} not given and {path} does not exist (the default is {filename} in REF_DIR's parent folder); "
            f"pass {option} PATH"
        )
    return path
