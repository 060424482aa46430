"""Site-adaptation folds: appended to nnU-Net's splits, recorded beside them, idempotent, refusing bad input."""

from __future__ import annotations

import json

import pytest

from nnunet_ext.adaptation import ADAPTATION_FILENAME, define_adaptation_fold, load_adaptation_fold
from nnunet_ext.domains import DomainMetadata

SCANNERS = ("siemens_3", "ge_15")
SUBJECTS = {"train": ["s0", "s1", "s2", "s3"], "val": ["s4"], "test": ["s5", "s6"]}


@pytest.fixture
def dataset(tmp_path):
    meta = DomainMetadata()
    for scanner in SCANNERS:
        meta.add_domain(scanner, "simulated scanner", simulated=True)
        for subset, subjects in SUBJECTS.items():
            for s in subjects:
                meta.add_case(f"{scanner}_{s}", scanner, "test" if subset == "test" else "train", s, subset=subset)
    pre = tmp_path / "Dataset990_X"
    pre.mkdir()
    splits = [{"train": [f"{sc}_{s}" for s in SUBJECTS["train"]], "val": [f"{sc}_s4"]} for sc in SCANNERS]
    (pre / "splits_final.json").write_text(json.dumps(splits))
    checkpoint = tmp_path / "model" / "fold_0" / "checkpoint_final.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x")
    return pre, meta, checkpoint


def test_a_fold_is_appended_with_the_labelled_target_cases_and_recorded(dataset):
    pre, meta, checkpoint = dataset
    fold = define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 2, seed=3)
    splits = json.loads((pre / "splits_final.json").read_text())
    assert fold.fold == 2 and len(splits) == 3
    assert splits[2] == {"train": fold.target_cases, "val": ["ge_15_s4"]}
    assert len(fold.labelled_subjects) == 2 and set(fold.labelled_subjects) <= set(SUBJECTS["train"])
    assert fold.target_cases == [f"ge_15_{s}" for s in fold.labelled_subjects]
    assert fold.source_cases == splits[0]["train"] and fold.source_domains == ["siemens_3"]
    assert fold.source_checkpoint == str(checkpoint.resolve())
    assert load_adaptation_fold(pre, 2) == fold and load_adaptation_fold(pre, 0) is None


def test_the_same_arguments_give_the_same_fold_and_other_seeds_a_new_one(dataset):
    pre, meta, checkpoint = dataset
    first = define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 1, seed=0)
    again = define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 1, seed=0)
    assert again == first
    draws = {tuple(define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 1, seed=s).labelled_subjects)
             for s in range(1, 8)}
    assert len(draws) > 1  # the seed changes the draw
    assert len(json.loads((pre / "splits_final.json").read_text())) == 2 + 1 + 7
    assert len(json.loads((pre / ADAPTATION_FILENAME).read_text())["folds"]) == 8


def test_bad_input_is_refused_and_nothing_written(dataset):
    pre, meta, checkpoint = dataset
    before = (pre / "splits_final.json").read_text()
    cases = [
        (dict(target_domain="philips_3"), "not in domains.json"),
        (dict(target_domain="siemens_3"), "one the source fold 0 trains on"),
        (dict(labelled=-1), r"labelled must be an int in \[0, 4\]"),
        (dict(labelled=5), r"labelled must be an int in \[0, 4\]"),
        (dict(source_fold=7), "source fold 7"),
        (dict(source_checkpoint=checkpoint.parent / "missing.pth"), "does not exist"),
    ]
    for change, message in cases:
        kwargs = dict(source_fold=0, source_checkpoint=checkpoint, target_domain="ge_15", labelled=1)
        kwargs.update(change)
        with pytest.raises(ValueError, match=message):
            define_adaptation_fold(pre, meta, **kwargs)
    assert (pre / "splits_final.json").read_text() == before and not (pre / ADAPTATION_FILENAME).exists()
    fold = define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 1)
    with pytest.raises(ValueError, match="adaptation folds"):
        define_adaptation_fold(pre, meta, fold.fold, checkpoint, "siemens_3", 1)


def test_without_nnunet_splits_the_message_says_to_preprocess(tmp_path, dataset):
    _, meta, checkpoint = dataset
    with pytest.raises(ValueError, match="nnUNetv2_plan_and_preprocess"):
        define_adaptation_fold(tmp_path, meta, 0, checkpoint, "ge_15", 1)


def test_an_unlabelled_fold_has_every_target_training_case_and_validates_on_the_source(dataset):
    pre, meta, checkpoint = dataset
    fold = define_adaptation_fold(pre, meta, 0, checkpoint, "ge_15", 0)
    assert fold.labelled_subjects == [] and fold.target_cases == [f"ge_15_{s}" for s in SUBJECTS["train"]]
    assert fold.val_cases == ["siemens_3_s4"]  # no target label anywhere
