"""``nnext evaluate-continual``: the matrix R[i][j], mean Dice, BWT, FWT and per-stage Dice curves of methods.

Example (predictions of each method's model after stage i on the union of the stream's test cases)::

    nnext evaluate-continual --stream $nnUNet_raw/Dataset950_X/stream.json \\
        --ref $nnUNet_raw/Dataset950_X/labelsTs \\
        --method Seq='preds/seq/after{stage}' --method ODEx='preds/odex/after{stage}' -o report/

writes ``continual.json``, ``continual.md`` and ``continual.png`` (:mod:`nnunet_ext.evaluation.continual`).
``--model NAME=MODEL_FOLDER`` predicts instead with a stream trainer's per-stage checkpoints
(``fold_F/checkpoint_stage_K.pth``) into ``OUT_DIR/predictions/NAME/after{K}`` first.
``--dice-json continual.json`` re-renders a report from the per-case Dice of an earlier run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_ext.cli.main import UserError
from nnunet_ext.utils.checkpoint_io import refuse_unsafe_checkpoints
from nnunet_ext.utils.nnunet_paths import Fold, case_image_files, fold_folder, parse_fold

#: name of the checkpoint of the model after stage K that stream trainers write in the fold folder
STAGE_CHECKPOINT = "checkpoint_stage_{stage}.pth"


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
    parser.add_argument("--model", action="append", metavar="NAME=MODEL_FOLDER",
                        help="a stream trainer's model folder (TRAINER__PLANS__CONFIG): predict the test cases with "
                             "fold_F/checkpoint_stage_K.pth for every stage K into OUT_DIR/predictions/NAME/after{K}")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="test images for --model (default: imagesTs beside REF_DIR)")
    parser.add_argument("-f", "--fold", default="0", help="fold of --model: a number or all (default 0)")
    parser.add_argument("--checkpoint-pattern", default=STAGE_CHECKPOINT,
                        help=f"checkpoint file name of the model after stage {{stage}} (default {STAGE_CHECKPOINT})")
    parser.add_argument("--device", default="cpu", help="device for --model predictions (default cpu)")
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring at prediction (faster)")
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
    from nnunet_ext.cli.evaluate import default_beside
    from nnunet_ext.evaluation.continual import (
        case_dice_of_folder,
        continual_result,
        markdown_report,
        stage_folders,
        write_continual_report,
    )
    from nnunet_ext.streams import read_stream
    from nnunet_ext.utils.outputs import check_output_folder

    check_output_folder(args.output)  # before anything is predicted or evaluated
    stream = read_stream(args.stream)
    patterns = _pairs(args.method, "--method")
    models = _pairs(args.model, "--model")
    clash = sorted(set(models) & set(patterns))
    if clash:
        raise UserError(f"{clash} given both as --method and --model; give each method once")
    pools = {name: int(k) for name, k in _pairs(args.pool_size, "--pool-size").items() if k.isdigit()}
    if len(pools) != len(args.pool_size or []):
        raise UserError(f"--pool-size expects NAME=K with an integer K >= 0, got {args.pool_size}")
    settings: dict = {"methods": patterns, "baseline_pattern": args.baseline}
    if args.dice_json is not None:
        if patterns or models or args.baseline:
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
        if not patterns and not models:
            raise UserError("give at least one --method NAME=DIR_PATTERN or --model NAME=MODEL_FOLDER (or --dice-json)")
        if args.ref is None:
            raise UserError("--ref REF_DIR is required with prediction folders")
        dataset_json = args.dataset_json or default_beside(args.ref, "dataset.json", "--dataset-json")
        file_ending = json.loads(Path(dataset_json).read_text(encoding="utf-8")).get("file_ending", ".nii.gz")
        if not args.ref.is_dir():
            raise UserError(f"reference folder {args.ref} does not exist; check --ref")
        stream.check_cases(None, [p.name[: -len(file_ending)] for p in args.ref.glob(f"*{file_ending}")])
        if models:
            try:
                fold = parse_fold(args.fold)
            except ValueError as e:
                raise UserError(f"-f: {e}") from None
            images = args.images or Path(args.ref).resolve().parent / "imagesTs"
            checkpoints = {name: _stage_checkpoints(Path(folder), fold, args.checkpoint_pattern, len(stream))
                           for name, folder in models.items()}
            for name, folder in models.items():
                out = args.output / "predictions" / name / "after{stage}"
                _predict_after_stages(Path(folder), fold, checkpoints[name], stream, images, file_ending,
                                      str(out), args.device, not args.disable_tta)
                patterns[name] = str(out)
            settings.update(models=models, fold=args.fold, checkpoint_pattern=args.checkpoint_pattern,
                            images=str(images), tta=not args.disable_tta, methods=patterns)
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


def _stage_checkpoints(model: Path, fold: Fold, pattern: str, num_stages: int) -> list[str]:
    """Checkpoint names of the model after each stage; all must exist before anything is predicted."""
    if "{stage}" not in pattern:
        raise UserError(f"--checkpoint-pattern must contain {{stage}}, got {pattern!r}")
    fold_dir = fold_folder(model, fold)
    names = [pattern.format(stage=k) for k in range(num_stages)]
    missing = [n for n in names if not (fold_dir / n).is_file()]
    if missing:
        found = sorted(p.name for p in fold_dir.glob("checkpoint*.pth")) if fold_dir.is_dir() else []
        raise UserError(f"{fold_dir}: missing {missing} (the stream has {num_stages} stages; found {found}). Train "
                        f"the stream to its end with a stream trainer, or pass --checkpoint-pattern")
    refuse_unsafe_checkpoints(fold_dir / n for n in names)  # nnU-Net's predictor unpickles with weights_only=False
    return names


def _predict_after_stages(model: Path, fold: Fold, checkpoints: list[str], stream, images: Path, file_ending: str,
                          out_pattern: str, device: str, tta: bool) -> None:
    """Predict the stream's test cases with each stage checkpoint (nnU-Net's predictor, stock settings)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    cases = [c for s in stream.stages for c in s.test]
    inputs = case_image_files(images, cases, file_ending)
    missing = [c for c, files in inputs.items() if not files]
    if missing:
        raise UserError(f"no images of {len(missing)} test case(s) in {images}: {missing[:5]}; pass --images DIR")
    for stage, checkpoint in enumerate(checkpoints):
        out = Path(out_pattern.replace("{stage}", str(stage)))
        out.mkdir(parents=True, exist_ok=True)
        print(f"predicting {len(cases)} cases with {model.name}/{fold_folder(model, fold).name}/{checkpoint} -> {out}")
        predictor = nnUNetPredictor(use_mirroring=tta, device=torch.device(device), perform_everything_on_device=False,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), (fold,), checkpoint)
        predictor.predict_from_files([inputs[c] for c in cases], [str(out / c) for c in cases],
                                     save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)
