"""``nnext adapt``: a site-adaptation fold -- a trained source model, a new site, a few labelled target subjects.

    nnext adapt DATASET -m SOURCE_MODEL_FOLDER -f SOURCE_FOLD --target DOMAIN --labelled N [--seed S]
    nnext adapt DATASET --list

DATASET is a dataset id or name with ``domains.json`` (e.g. ``nnext demo-data brain-scanners``, ``nnext convert
cc359``), planned and preprocessed; the target DOMAIN is one of its domains, and the source model (any trained
nnU-Net model folder of this dataset, e.g. ``$nnUNet_results/Dataset992_DemoBrainScanners/
nnUNetTrainer__nnUNetPlans__2d``) was trained on SOURCE_FOLD. The command appends a fold to nnU-Net's
``splits_final.json`` in ``$nnUNet_preprocessed`` (train: the N labelled target subjects' cases; val: the target
domain's validation cases) and records the source model in ``nnext_adaptation.json``; it prints the fold
number and the commands that use it:

    nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerMMTL           # or FineTuneAll / FineTuneFirst / L2SP / OCTL ...
    nnUNetv2_predict -i IMAGES -o OUT -d DATASET -c 2d -f FOLD -tr nnUNetTrainerMMTL

Running it again with the same arguments returns the same fold. Raw data are never modified.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_ext.cli.main import UserError

DATASET_HELP = "dataset id (992), folder name (Dataset992_X) in $nnUNet_raw, or a raw dataset folder"


def run(args: argparse.Namespace) -> int:
    from nnunet_ext.adaptation import define_adaptation_fold, load_adaptation_folds
    from nnunet_ext.domains import DOMAINS_FILENAME, load_domains
    from nnunet_ext.utils.nnunet_paths import dataset_folder, fold_folder

    try:
        raw = dataset_folder("raw", args.dataset)
        pre = dataset_folder("preprocessed", args.dataset)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.list:
        folds = load_adaptation_folds(pre)
        if not folds:
            print(f"{pre.name}: no site-adaptation folds")
        for index, f in sorted(folds.items()):
            print(f"fold {index}: source fold {f.source_fold} ({', '.join(f.source_domains)}) -> {f.target_domain}, "
                  f"labelled {f.labelled_subjects} (seed {f.seed}); source {f.source_checkpoint}")
        return 0
    missing = [flag for flag, value in (("-m", args.model), ("-f", args.fold), ("--target", args.target),
                                        ("--labelled", args.labelled)) if value is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (or pass --list)")
    if not (raw / DOMAINS_FILENAME).is_file():
        raise UserError(f"{raw} has no {DOMAINS_FILENAME}: site adaptation needs to know each case's domain; build the "
                        f"dataset with nnext demo-data / nnext convert, or write domains.json "
                        f"(documentation/datasets.md)")
    checkpoint = fold_folder(Path(args.model), args.fold) / args.checkpoint
    fold = define_adaptation_fold(pre, load_domains(raw / DOMAINS_FILENAME), args.fold, checkpoint, args.target,
                                  args.labelled, args.seed)
    name = pre.name
    print(f"site-adaptation fold {fold.fold} of {name}: source fold {fold.source_fold} "
          f"({', '.join(fold.source_domains)}) -> {fold.target_domain}; labelled subjects {fold.labelled_subjects} "
          f"({len(fold.target_cases)} cases), validation {len(fold.val_cases)} cases")
    print(f"  nnUNetv2_train {name} CONFIGURATION {fold.fold} -tr nnUNetTrainerMMTL")
    print(f"  nnUNetv2_predict -i IMAGES -o OUT -d {name} -c CONFIGURATION -f {fold.fold} -tr nnUNetTrainerMMTL")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt", help="define a site-adaptation fold (source model -> new site, N labelled subjects)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", metavar="DATASET", help=DATASET_HELP)
    parser.add_argument("-m", "--model", default=None, metavar="SOURCE_MODEL_FOLDER",
                        help="the trained source model folder (TRAINER__PLANS__CONFIGURATION)")
    parser.add_argument("-f", "--fold", type=int, default=None, metavar="SOURCE_FOLD",
                        help="the fold the source model was trained on")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="the source checkpoint file in the fold folder (default checkpoint_final.pth)")
    parser.add_argument("--target", default=None, metavar="DOMAIN", help="the new site: a domain of domains.json")
    parser.add_argument("--labelled", type=int, default=None, metavar="N",
                        help="labelled target subjects (drawn from the target domain's training subjects)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject draw (default 0)")
    parser.add_argument("--list", action="store_true", help="list the dataset's site-adaptation folds")
    parser.set_defaults(func=run)
