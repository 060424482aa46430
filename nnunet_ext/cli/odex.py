"""nnext odex explain: which ODEx expert predicted which patch, case by case.

    nnext odex explain MODEL_FOLDER -i IMAGES_DIR -o OUT.jsonl [-f FOLD] [-chk CHECKPOINT] [--device DEVICE]

MODEL_FOLDER is a trained ODEx model folder (.../nnUNetTrainerODEx__nnUNetPlans__2d with plans.json,
dataset.json and fold_X/). Every case of IMAGES_DIR (nnU-Net naming: CASE_0000.nii.gz, ...) is predicted with
nnU-Net's own predictor (nnUNetPredictor.initialize_from_trained_model_folder, sliding window and mirroring as
nnUNetv2_predict does them) while a recorder is attached to the pool. OUT.jsonl gets one JSON line per case:

    {"case": "...", "fold": "0", "patches": N, "counts": {"0": n0, "1": n1},
     "expert": [...], "score": [[...], ...], "far_ood": [...]}

For every routed patch, in the order the predictor ran them (sliding-window tiles, each mirrored copy
separately): the chosen expert, every expert's score (null for an expert without history) and whether the
patch was far out-of-distribution. Segmentations are not written (nnUNetv2_predict writes them); the images
are only read and OUT.jsonl is written atomically once every case is done.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_ext.cli.main import UserError
from nnunet_ext.utils.atomic import write_text_atomic
from nnunet_ext.utils.checkpoint_io import refuse_unsafe_checkpoints


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("odex", help="ODEx tools: explain which expert predicted each patch",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="odex_command", metavar="ACTION", required=True)
    explain = sub.add_parser("explain", help="predict with an ODEx model and write the expert chosen per patch")
    explain.add_argument("model", type=Path, metavar="MODEL_FOLDER",
                         help="trained ODEx model folder (with plans.json, dataset.json, fold_X/)")
    explain.add_argument("-i", "--images", type=Path, required=True, metavar="IMAGES_DIR",
                         help="images in nnU-Net naming (CASE_0000.nii.gz ...)")
    explain.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.jsonl",
                         help="JSON-lines file to write, one line per case (replaced if it exists)")
    explain.add_argument("-f", "--fold", default="0", metavar="FOLD", help="fold to use: 0-4 or all (default 0)")
    explain.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                         help="checkpoint file name (default checkpoint_final.pth)")
    explain.add_argument("--device", default=None,
                         help="torch device, e.g. cpu or cuda (default: cuda if available, else cpu)")
    explain.set_defaults(func=_explain_command)


def _cases(images: Path, file_ending: str, num_channels: int) -> dict[str, list[str]]:
    """``{case: [channel files]}`` of ``images`` in nnU-Net naming, checked against the model's channels."""
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    if not images.is_dir():
        raise UserError(f"-i {images}: not a folder; pass the folder with the images to explain")
    identifiers = get_identifiers_from_splitted_dataset_folder(str(images), file_ending)
    if not len(identifiers):
        raise UserError(f"-i {images}: no images named CASE_XXXX{file_ending} (the model's file ending)")
    names = sorted(p.name for p in images.iterdir())
    cases = {str(case): create_paths_fn(str(images), names, file_ending, str(case)) for case in identifiers}
    wrong = {case: len(files) for case, files in cases.items() if len(files) != num_channels}
    if wrong:
        raise UserError(f"-i {images}: the model takes {num_channels} channel(s) per case (CASE_0000"
                        f"{file_ending} ...), but these cases have another number of files: {wrong}")
    return cases


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise UserError(f"-o {output} is a folder; pass a file name such as {output / 'odex_explain.jsonl'}")
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: folder {output.parent} does not exist; create it first")


def explain(model: Path, images: Path, output: Path, fold: str = "0", checkpoint: str = "checkpoint_final.pth",
            device: str | None = None) -> list[dict]:
    """Predict every case of ``images`` with ``model`` and write the routing of each patch to ``output``.

    Args:
        model: trained ODEx model folder.
        images: images in nnU-Net naming.
        output: JSON-lines file (one line per case), written atomically at the end.
        fold: fold folder to use (``"0"`` .. or ``"all"``).
        checkpoint: checkpoint file name in the fold folder.
        device: torch device name; ``None``: cuda if available, else cpu.

    Returns:
        The records written, one per case.

    Raises:
        UserError: missing folders or files, a model that is not an ODEx pool, images that do not fit it.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.networks.odex import ODExPool

    _check_output(output)
    fold_folder = model / f"fold_{fold}"
    for needed in (model / "plans.json", model / "dataset.json", fold_folder / checkpoint):
        if not needed.is_file():
            raise UserError(f"{needed} not found: MODEL_FOLDER must be a trained model folder with plans.json, "
                            f"dataset.json and fold_{fold}/{checkpoint} (see -f and -chk)")
    dataset = json.loads((model / "dataset.json").read_text(encoding="utf-8"))
    cases = _cases(images, dataset["file_ending"], len(dataset["channel_names"]))

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                allow_tqdm=False)
    refuse_unsafe_checkpoints([fold_folder / checkpoint])  # nnU-Net's predictor loads with weights_only=False
    predictor.initialize_from_trained_model_folder(str(model), (fold if fold == "all" else int(fold),), checkpoint)
    pool = next((m for m in predictor.network.modules() if isinstance(m, ODExPool)), None)
    if pool is None:
        raise UserError(f"{model} is not an ODEx model (its network is {type(predictor.network).__name__}); "
                        f"explain needs a model trained with an nnUNetTrainerODEx* trainer")

    reader = predictor.plans_manager.image_reader_writer_class()
    records = []
    for case, files in cases.items():
        image, properties = reader.read_images(files)
        with pool.recording() as recorder:
            predictor.predict_single_npy_array(image, properties, None, None, False)
        records.append({"case": case, "fold": fold, **recorder.as_dict()})
    write_text_atomic(output, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _explain_command(args: argparse.Namespace) -> int:
    records = explain(args.model, args.images, args.output, args.fold, args.checkpoint, args.device)
    for r in records:
        print(f"{r['case']}: {r['patches']} patches, experts {r['counts']}, far-OOD {sum(r['far_ood'])}")
    print(f"wrote {args.output}")
    return 0
