"""``nnext fda``: Fourier multi-source transfer for trained nnU-Net models, without retraining.

``nnext fda attach MODEL_FOLDER -o NEW_MODEL_FOLDER [--images SOURCE_IMAGES]``
    writes a copy of a trained model folder (stock trainer, or one of ours with nnU-Net's standard network)
    whose checkpoints predict with multi-source transfer: the weights are kept, a style bank of donors cut
    from source images is added, ``trainer_name`` becomes ``nnUNetTrainerFourierMST`` (or ``--trainer``).
    The original folder is only read. Donors come from ``--images`` (raw images in nnU-Net naming,
    preprocessed with the model's own plans) or, by default, from each fold's training cases in
    ``$nnUNet_preprocessed`` (fold ``all``: every preprocessed case, as ``nnUNetv2_train D C all`` trains on).
    ``--beta/--n-mst/--mode/--selection`` override the settings. On a model that already has a bank, the bank
    is kept unless ``--images`` is given, so the command also re-configures.
``nnext fda select-beta MODEL_FOLDER --target NAME IMAGES LABELS [...] -o OUT_DIR``
    grid search of ``beta`` on labelled target validation data (the paper's Sect. 4.3): mean foreground Dice
    per target and beta, computed in the model's preprocessed space, the best beta per target ("optimal per
    pair") and for the mean over targets ("averaged optimal"); writes ``beta_grid.json`` and
    ``beta_grid.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_ext.cli.main import UserError
from nnunet_ext.core.metrics import mean_dice, nanmean
from nnunet_ext.utils.atomic import atomic_directory, write_json_atomic
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely, refuse_unsafe_checkpoints
from nnunet_ext.utils.nnunet_paths import dataset_folder, fold_folder, parse_fold, trained_folds
from nnunet_ext.utils.plotting import default_style

BANK_REPORT = "fda_bank.json"
DEFAULT_BETAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fda", help="Fourier multi-source transfer: attach to a model, select beta",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="fda_command", metavar="ACTION", required=True)

    attach = sub.add_parser("attach", help="copy a trained model folder and give it a style bank")
    attach.add_argument("model", type=Path, metavar="MODEL_FOLDER",
                        help="trained model folder (with plans.json, dataset.json, fold_X/)")
    attach.add_argument("-o", "--output", type=Path, required=True, metavar="NEW_MODEL_FOLDER",
                        help="new model folder to write (must not exist)")
    attach.add_argument("--images", type=Path, metavar="SOURCE_IMAGES",
                        help="source-domain images in nnU-Net naming (CASE_0000.nii.gz ...); default: the fold's "
                             "training cases in $nnUNet_preprocessed (fold all: every case)")
    attach.add_argument("-f", "--folds", nargs="+", metavar="FOLD",
                        help="folds to convert: numbers or all (default: every fold found)")
    attach.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    attach.add_argument("--trainer", default="nnUNetTrainerFourierMST",
                        help="our trainer class recorded in the checkpoints (its settings are the defaults)")
    _settings_arguments(attach)
    attach.set_defaults(func=_attach_command)

    select = sub.add_parser("select-beta", help="grid search of beta on labelled target validation data")
    select.add_argument("model", type=Path, metavar="MODEL_FOLDER", help="model folder with a style bank")
    select.add_argument("--target", nargs=3, action="append", required=True, metavar=("NAME", "IMAGES", "LABELS"),
                        help="a labelled target validation set (repeat for several targets / pairs)")
    select.add_argument("--betas", nargs="+", type=float, default=list(DEFAULT_BETAS), help="beta grid")
    select.add_argument("-f", "--folds", nargs="+", default=["0"], metavar="FOLD",
                        help="folds to use: numbers or all (default 0)")
    select.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    select.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="where to write results")
    select.add_argument("-device", default="cpu", help="torch device (cpu, cuda)")
    _settings_arguments(select, beta=False)
    select.set_defaults(func=_select_beta_command)


def _settings_arguments(parser: argparse.ArgumentParser, beta: bool = True) -> None:
    if beta:
        parser.add_argument("--beta", type=float, help="Fourier window size in [0, 0.5]")
    parser.add_argument("--n-mst", type=int, help="styled copies per input (paper: 7)")
    parser.add_argument("--mode", choices=("2d", "2.5d", "3d"), help="donor selection granularity")
    parser.add_argument("--selection", choices=("srsim", "random"), help="donor selection rule")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"beta": "beta", "n_mst": "n_mst", "mode": "mode", "selection": "selection"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


# model folders ------------------------------------------------------------------------------------------------
def _read_model_folder(model: Path, folds: list[str] | None, checkpoint: str) -> tuple[dict, dict, dict[str, Path]]:
    if not model.is_dir():
        raise UserError(f"model folder {model} does not exist")
    missing = [n for n in ("plans.json", "dataset.json") if not (model / n).is_file()]
    if missing:
        raise UserError(f"{model} is not an nnU-Net model folder: {', '.join(missing)} missing")
    found = trained_folds(model, checkpoint)
    if folds:
        try:
            folds = [str(parse_fold(f)) for f in folds]
        except ValueError as e:
            raise UserError(f"-f: {e}") from None
        absent = [f for f in folds if f not in found]
        if absent:
            raise UserError(f"no {checkpoint} for folds {absent} in {model} (found folds {sorted(found)})")
        found = {f: found[f] for f in folds}
    if not found:
        raise UserError(f"no fold_*/{checkpoint} in {model}; train the model first or pass -chk")
    plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((model / "dataset.json").read_text(encoding="utf-8"))
    return plans, dataset, found


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint, loaded without running code from it (``weights_only=True``, nnU-Net's numpy scalars allowed)."""
    try:
        return load_checkpoint_safely(path, map_location="cpu")
    except ValueError as e:  # names the file: missing, corrupt, or refused
        raise UserError(str(e)) from None


def _source_volumes_from_images(images: Path, plans_manager, configuration_manager, dataset: dict) -> list[np.ndarray]:
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    if not images.is_dir():
        raise UserError(f"--images {images} is not a folder")
    ending = dataset["file_ending"]
    groups = create_lists_from_splitted_dataset_folder(str(images), ending)
    n_channels = len(dataset["channel_names"])
    bad = [g[0] for g in groups if len(g) != n_channels]
    if not groups:
        raise UserError(f"no images named CASE_0000{ending} in {images}")
    if bad:
        raise UserError(f"cases with a channel count other than {n_channels} in {images}: {bad}; every case needs "
                        f"CASE_0000{ending} .. CASE_{n_channels - 1:04d}{ending}")
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    volumes = []
    for files in groups:
        data, _, _ = preprocessor.run_case(files, None, plans_manager, configuration_manager, dataset)
        if not np.isfinite(data).all():
            raise UserError(f"source image {files[0]} contains NaN or infinite values")
        volumes.append(np.asarray(data, dtype=np.float32))
    return volumes


def _source_volumes_from_preprocessed(dataset_name: str, data_identifier: str, fold: str,
                                      max_cases: int) -> list[np.ndarray]:
    """Donor volumes from the cases nnU-Net trained ``fold`` on (fold ``all``: every preprocessed case)."""
    from nnunet_ext.utils.preprocessed import fold_training_cases, load_source_volumes

    try:
        folder = dataset_folder("preprocessed", dataset_name)
        keys = fold_training_cases(folder, data_identifier, fold)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(
            f"no preprocessed training data of fold {fold} for {dataset_name} ({data_identifier}): {e}; pass --images "
            "SOURCE_IMAGES (source-domain images in nnU-Net naming) instead") from None
    return load_source_volumes(folder / data_identifier, keys, max_cases)


def attach(model: Path, output: Path, images: Path | None = None, folds: list[str] | None = None,
           checkpoint: str = "checkpoint_final.pth", trainer: str = "nnUNetTrainerFourierMST",
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``output``: a copy of ``model`` whose checkpoints carry a style bank (see the module docstring).

    Returns:
        The bank report written to ``output/fda_bank.json``.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.networks.fourier_mst import FourierMSTNetwork, sample_donor_patches
    from nnunet_ext.trainers import fourier_mst as ours

    output = Path(output)
    if output.resolve() == Path(model).resolve():
        raise UserError("-o must be a new folder: attach never modifies the original model folder")
    if output.exists():
        raise UserError(f"{output} exists; choose a new folder (nothing was written)")
    target_cls = getattr(ours, trainer, None)
    if not (isinstance(target_cls, type) and issubclass(target_cls, ours.FourierMSTMixin)):
        names = sorted(n for n in dir(ours) if n.startswith("nnUNetTrainerFourierMST"))
        raise UserError(f"--trainer must be one of {names}, got {trainer!r}")
    plans, dataset, checkpoints = _read_model_folder(Path(model), folds, checkpoint)
    plans_manager = PlansManager(plans)
    if plans_manager.get_label_manager(dataset).has_regions:
        raise UserError("region-based models (sigmoid outputs) are not supported by multi-source transfer")
    report: dict[str, Any] = {"source_model": str(Path(model).resolve()), "trainer": trainer, "folds": {}}
    converted: dict[str, dict] = {}
    volumes_cache: list[np.ndarray] | None = None
    for fold, path in checkpoints.items():
        ckpt = _load_checkpoint(path)
        configuration = ckpt["init_args"]["configuration"]
        cm = plans_manager.get_configuration(configuration)
        original = ckpt["trainer_name"]
        weights = ckpt["network_weights"]
        has_bank = any(k.startswith("bank.") for k in weights)
        num_in = determine_num_input_channels(plans_manager, cm, dataset)
        num_out = plans_manager.get_label_manager(dataset).num_segmentation_heads
        network = target_cls.build_network_architecture(plans_manager, cm, num_in, num_out, False)
        assert isinstance(network, FourierMSTNetwork)
        state = weights if has_bank else {f"net.{k}": v for k, v in weights.items()}
        if not has_bank:
            state.update({f"bank.{k}": v for k, v in network.bank.state_dict().items()})
        try:
            network.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(
                f"the weights of {path} (trainer {original}) do not fit nnU-Net's standard network for "
                f"{configuration}: attach supports trainers that use nnU-Net's standard architecture. ({e})"
            ) from e
        settings = {**{k: v for k, v in network.bank.settings().items()
                       if k in ("beta", "n_mst", "mode", "selection")}, **(overrides or {})}
        if not has_bank:  # settings of the target trainer, not the zeros of an empty state
            settings = {"beta": target_cls.fda_beta, "n_mst": target_cls.fda_n_mst,
                        "mode": target_cls.fda_mode or ("3d" if len(cm.patch_size) == 3 else "2d"),
                        "selection": target_cls.fda_selection, **(overrides or {})}
        try:
            network.bank.configure(**settings)
        except ValueError as e:
            raise UserError(str(e)) from e
        if images is not None or not has_bank:
            if images is not None:
                if volumes_cache is None:
                    volumes_cache = _source_volumes_from_images(Path(images), plans_manager, cm, dataset)
                volumes, source = volumes_cache, str(Path(images).resolve())
            else:
                volumes = _source_volumes_from_preprocessed(plans["dataset_name"], cm.data_identifier, fold,
                                                            target_cls.fda_bank_cases)
                source = f"nnUNet_preprocessed training cases of fold {fold}"
            network.bank.set_donors(sample_donor_patches(volumes, network.bank.patch_size, target_cls.fda_bank_size,
                                                         target_cls.fda_bank_max_megabytes))
            report["folds"][fold] = {"donor_source": source, "source_cases": len(volumes)}
        else:
            report["folds"][fold] = {"donor_source": "kept from the source model"}
        report["folds"][fold].update(network.bank.settings(), original_trainer=original)
        converted[fold] = dict(ckpt, network_weights=network.state_dict(), trainer_name=trainer)
    with atomic_directory(output) as tmp:
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
            if (Path(model) / name).is_file():
                shutil.copy2(Path(model) / name, tmp / name)
        for fold, ckpt in converted.items():
            fold_folder(tmp, fold).mkdir()
            torch.save(ckpt, fold_folder(tmp, fold) / checkpoint)
        write_json_atomic(tmp / BANK_REPORT, report)
    return report


def _attach_command(args: argparse.Namespace) -> int:
    report = attach(args.model, args.output, args.images, args.folds, args.checkpoint, args.trainer, _overrides(args))
    for fold, info in report["folds"].items():
        print(f"fold {fold}: {info['num_donors']} donors ({info['bank_megabytes']} MB) from {info['donor_source']}; "
              f"beta {info['beta']}, n_mst {info['n_mst']}, mode {info['mode']}, selection {info['selection']}")
    print(f"wrote {args.output}; predict with:\n  nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {args.output} "
          f"-f {' '.join(report['folds'])} -device cpu -npp 1 -nps 1")
    return 0


# beta selection -----------------------------------------------------------------------------------------------
def configure_predictor_bank(predictor, **settings: Any) -> None:
    """Change the style-bank settings of an initialised ``nnUNetPredictor`` for every fold it holds
    (the predictor reloads each fold's state dict, settings included, before predicting)."""
    try:
        predictor.network.bank.configure(**settings)
    except ValueError as e:
        raise UserError(str(e)) from e
    for params in predictor.list_of_parameters:
        for key, value in predictor.network.bank.state_dict().items():
            if key != "donors":
                params[f"bank.{key}"] = value.clone()


def select_beta(model: Path, targets: list[tuple[str, Path, Path]], betas: list[float], folds: list[str],
                checkpoint: str, device: str = "cpu", overrides: dict[str, Any] | None = None,
                progress=None) -> dict[str, Any]:
    """Dice per target and beta; best beta per target and for the mean over targets.

    A case's Dice is :func:`nnunet_ext.core.metrics.mean_dice` over the foreground labels (labels absent from
    both its reference and its prediction are left out); a target's Dice is the mean over its cases, leaving
    out cases where every label is absent from both.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    if not betas or any(not 0.0 <= b <= 0.5 for b in betas):
        raise UserError(f"--betas must be numbers in [0, 0.5], got {betas}")
    _, _, checkpoints = _read_model_folder(Path(model), folds, checkpoint)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device(device), perform_everything_on_device=False,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    refuse_unsafe_checkpoints(checkpoints.values())  # nnU-Net's predictor unpickles with weights_only=False
    predictor.initialize_from_trained_model_folder(str(model), [parse_fold(f) for f in checkpoints], checkpoint)
    if not hasattr(predictor.network, "bank"):
        raise UserError(f"{model} has no style bank; run `nnext fda attach {model} -o NEW_MODEL_FOLDER` first")
    dataset = predictor.dataset_json
    labels = [v for k, v in dataset["labels"].items() if k != "background" and isinstance(v, int)]
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    cases: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, images, refs in targets:
        groups = create_lists_from_splitted_dataset_folder(str(images), dataset["file_ending"])
        if not groups:
            raise UserError(f"target {name}: no images named CASE_0000{dataset['file_ending']} in {images}")
        ending = dataset["file_ending"]
        labels_of = {files[0]: Path(refs) / (Path(files[0]).name[: -len("_0000" + ending)] + ending) for files in groups}
        missing = [image for image, label in labels_of.items() if not label.is_file()]
        if missing:
            raise UserError(f"target {name}: no label in {refs} for {missing}")
        cases[name] = []
        for files in groups:
            data, seg, _ = preprocessor.run_case(files, str(labels_of[files[0]]), predictor.plans_manager,
                                                 predictor.configuration_manager, dataset)
            cases[name].append((data, seg[0]))
        if not any(np.isin(seg, labels).any() for _, seg in cases[name]):
            raise UserError(f"target {name}: no reference label in {refs} holds a foreground label {labels}; Dice is "
                            "undefined when reference and prediction are both empty, so beta cannot be chosen on "
                            "this target. Pass labelled cases that contain the structures")
    grid: dict[str, list[float]] = {name: [] for name in cases}
    for beta in betas:
        configure_predictor_bank(predictor, **{**(overrides or {}), "beta": beta})
        for name, items in cases.items():
            dices = []
            for data, seg in items:
                logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
                dices.append(mean_dice(logits.argmax(0).numpy(), seg, labels))
            grid[name].append(nanmean(dices))
            if progress:
                progress(f"beta {beta:g} {name}: Dice {grid[name][-1]:.4f}")
    mean = [float(np.mean([grid[n][i] for n in grid])) for i in range(len(betas))]
    return {"betas": list(betas), "dice": grid, "mean_dice": mean, "folds": folds, "settings": overrides or {},
            "optimal_per_pair": {n: betas[int(np.argmax(v))] for n, v in grid.items()},
            "averaged_optimal": betas[int(np.argmax(mean))]}


@default_style()
def plot_beta_grid(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in result["dice"].items():
        ax.plot(result["betas"], values, marker="o", label=name)
    ax.plot(result["betas"], result["mean_dice"], "k--", marker="s", label="mean (averaged optimal)")
    ax.axvline(result["averaged_optimal"], color="grey", lw=0.8)
    ax.set_xlabel("beta (window radius = beta x min patch side)")
    ax.set_ylabel("mean foreground Dice (preprocessed space)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _select_beta_command(args: argparse.Namespace) -> int:
    from nnunet_ext.utils.outputs import check_output_folder

    check_output_folder(args.output)  # before any prediction
    targets = [(n, Path(i), Path(r)) for n, i, r in args.target]
    result = select_beta(args.model, targets, args.betas, args.folds, args.checkpoint, args.device,
                         _overrides(args), progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    args.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output / "beta_grid.json", result)
    plot_beta_grid(result, args.output / "beta_grid.png")
    print(f"optimal per pair: {result['optimal_per_pair']}; averaged optimal: {result['averaged_optimal']}")
    print(f"apply it: nnext fda attach {args.model} -o NEW_MODEL_FOLDER --beta {result['averaged_optimal']}")
    return 0
