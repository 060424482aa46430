"""Site-adaptation trainers in process on the tiny brain-scanners data: each starts from the source model and
changes what its paper says it changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.site_adaptation import mmtl_target_count
from nnunet_ext.trainers.site_adaptation import (
    ADAPTATION_CHECKPOINT_KEY,
    AIVA_LAMBDA_KEY,
    L2SP_ANCHOR_KEY,
    nnUNetTrainerAIVA,
    nnUNetTrainerFineTuneAll,
    nnUNetTrainerFineTuneFirst,
    nnUNetTrainerFineTuneLast,
    nnUNetTrainerL2SP,
    nnUNetTrainerMMTL,
    nnUNetTrainerOCTL,
    nnUNetTrainerOCTL_Adam,
    nnUNetTrainerSpotTUNet,
)
from nnunet_ext.trainers.toolkit import unwrap
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely
from tests.conftest import make_trainer


@pytest.fixture
def started(scanners_workspace, adaptation_fold, monkeypatch, tmp_path):
    """A trainer of the given class on the adaptation fold, training started (source loaded, loaders built)."""
    trainers = []

    def start(cls, epochs=2, iterations=3, fold=None):
        trainer = make_trainer(cls, scanners_workspace, monkeypatch, tmp_path / cls.__name__, epochs, iterations,
                               fold=adaptation_fold.fold if fold is None else fold.fold)
        trainer.on_train_start()
        trainers.append(trainer)
        return trainer

    yield start
    for trainer in trainers:
        trainer.on_train_end()


def _source(adaptation_fold) -> dict:
    return load_checkpoint_safely(adaptation_fold.source_checkpoint)


def _step(trainer, n=1):
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    for _ in range(n):
        trainer.train_step(next(trainer.dataloader_train))


def test_training_starts_from_every_source_weight_and_on_the_target_cases(started, adaptation_fold):
    trainer = started(nnUNetTrainerFineTuneAll)
    source = _source(adaptation_fold)["network_weights"]
    own = unwrap(trainer.network).state_dict()
    assert own.keys() == source.keys()
    assert all(torch.equal(own[k], source[k]) for k in own)  # the segmentation layers too
    assert sorted(trainer.dataloader_train.data_loader._data.identifiers) == adaptation_fold.target_cases
    assert trainer.initial_lr == 1e-3
    state = trainer.extra_checkpoint_state()[ADAPTATION_CHECKPOINT_KEY]
    assert state["target_domain"] == "ge_15" and state["fold"] == adaptation_fold.fold


@pytest.mark.parametrize("cls, moving", [(nnUNetTrainerFineTuneFirst, ("encoder.stages.0.",)),
                                         (nnUNetTrainerFineTuneLast, ("decoder.seg_layers.", "decoder.stages."))])
def test_partial_fine_tuning_changes_only_its_layers(started, adaptation_fold, cls, moving):
    trainer = started(cls)
    source = _source(adaptation_fold)["network_weights"]
    _step(trainer, 2)
    params = dict(unwrap(trainer.network).named_parameters())
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), source[n])}
    assert changed and all(n.startswith(moving) for n in changed)
    if cls is nnUNetTrainerFineTuneLast:
        last = f"decoder.stages.{len(unwrap(trainer.network).decoder.stages) - 1}."
        assert all(n.startswith((last, "decoder.seg_layers.")) for n in changed)


def test_l2sp_pulls_towards_the_source_and_resumes_with_its_anchor(started, adaptation_fold, scanners_workspace,
                                                                    monkeypatch, tmp_path):
    trainer = started(nnUNetTrainerL2SP)
    assert trainer.weight_decay == 0.0
    assert trainer.regularization_loss(None, None).item() == 0.0  # at the source weights
    _step(trainer, 2)
    assert trainer.regularization_loss(None, None).item() > 0.0
    trainer.on_train_epoch_end([{"loss": 0.0}])
    log = json.loads((Path(trainer.output_folder) / "l2sp.json").read_text())
    assert log["epochs"] == [0] and log["train_regularization"][0] >= 0.0
    trainer.current_epoch = 1
    path = Path(trainer.output_folder) / "checkpoint_test.pth"
    trainer.save_checkpoint(str(path))
    checkpoint = load_checkpoint_safely(path)
    source = _source(adaptation_fold)["network_weights"]
    assert all(torch.equal(checkpoint[L2SP_ANCHOR_KEY][k], source[k]) for k in checkpoint[L2SP_ANCHOR_KEY])

    resumed = make_trainer(nnUNetTrainerL2SP, scanners_workspace, monkeypatch, tmp_path / "resumed", fold=trainer.fold)
    resumed.load_checkpoint(str(path))
    resumed.on_train_start()  # resumed: keeps the checkpoint's weights, not the source's
    try:
        weights = unwrap(resumed.network).state_dict()
        assert all(torch.equal(weights[k], checkpoint["network_weights"][k]) for k in weights)
        assert resumed.regularization_loss(None, None).item() == pytest.approx(
            trainer.regularization_loss(None, None).item(), rel=1e-6)
    finally:
        resumed.on_train_end()


def test_mmtl_batches_start_with_source_samples_and_end_mostly_target(started, adaptation_fold, monkeypatch):
    trainer = started(nnUNetTrainerMMTL, epochs=2, iterations=4)
    seen = []
    stock_step = nnUNetTrainer.train_step

    def recording_step(self, batch):
        seen.append(list(batch["keys"]))
        return stock_step(self, batch)

    monkeypatch.setattr(nnUNetTrainer, "train_step", recording_step)
    for epoch in range(2):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        for _ in range(4):
            trainer.train_step(next(trainer.dataloader_train))
    size = trainer.batch_size
    assert all(len(keys) == size for keys in seen)
    assert all(k in adaptation_fold.source_cases for k in seen[0])  # the first step: source samples only
    counts = [sum(k in adaptation_fold.target_cases for k in keys) for keys in seen]
    assert counts == [mmtl_target_count(step, 8, size) for step in range(8)]
    assert counts[-1] == 7 * size // 8 and all(k in adaptation_fold.target_cases for k in seen[-1][size - counts[-1]:])
    assert trainer.epoch_log_values() == {"target_samples_first": counts[4], "target_samples_last": counts[7],
                                          "batch_size": size}


def test_octl_continues_the_source_momentum(started, adaptation_fold):
    trainer = started(nnUNetTrainerOCTL)
    source = _source(adaptation_fold)["optimizer_state"]
    own = trainer.optimizer.state_dict()
    assert own["param_groups"][0]["lr"] == pytest.approx(1e-3) and own["param_groups"][0]["momentum"] == 0.99
    assert len(own["state"]) == len(source["state"]) > 0
    for k, entry in source["state"].items():
        assert torch.equal(own["state"][k]["momentum_buffer"], entry["momentum_buffer"])


def test_octl_adam_refuses_an_sgd_source(started):
    with pytest.raises(ValueError, match="same optimizer type"):
        started(nnUNetTrainerOCTL_Adam)


def test_a_fold_that_is_not_an_adaptation_fold_is_refused(scanners_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerMMTL, scanners_workspace, monkeypatch, tmp_path, fold=0)
    with pytest.raises(ValueError, match="nnext adapt"):
        trainer.initialize()


@pytest.fixture(scope="module")
def unlabelled_fold(scanners_workspace, adaptation_fold):
    from nnunet_ext.adaptation import define_adaptation_fold
    from nnunet_ext.domains import load_domains

    ws = scanners_workspace
    return define_adaptation_fold(ws.preprocessed / ws.dataset_dir.name, load_domains(ws.dataset_dir / "domains.json"),
                                  adaptation_fold.source_fold, adaptation_fold.source_checkpoint, "ge_15", 0)


def test_aiva_aligns_target_bottlenecks_without_target_labels(started, unlabelled_fold):
    trainer = started(nnUNetTrainerAIVA, fold=unlabelled_fold)
    trainer.aiva_embedding_batches = 3
    trainer.aiva_clusters = 4
    trainer.on_epoch_start()
    assert trainer._aiva_lambda > 0
    assert trainer._alignment.target_means.shape[0] == 4
    before = {n: p.detach().clone() for n, p in unwrap(trainer.network).named_parameters()}
    trainer.on_train_epoch_start()
    batch = next(trainer.dataloader_train)
    assert set(batch["keys"]) <= set(unlabelled_fold.target_cases)
    batch["target"] = None  # the target's labels are never read
    loss = trainer.train_step(batch)["loss"]
    assert loss == loss and loss > 0
    after = dict(unwrap(trainer.network).named_parameters())
    first = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(after[first], before[first])  # the alignment and the source loss train the encoder
    values = trainer.epoch_log_values()
    assert values["train_alignment"] >= 0 and values["lambda"] == trainer._aiva_lambda
    assert trainer.extra_checkpoint_state()[AIVA_LAMBDA_KEY] == trainer._aiva_lambda
    assert unlabelled_fold.val_cases == [c for c in unlabelled_fold.val_cases if c.startswith("siemens_3")]


def test_supervised_and_unsupervised_trainers_refuse_the_other_kind_of_fold(scanners_workspace, adaptation_fold,
                                                                          unlabelled_fold, monkeypatch, tmp_path):
    mmtl = make_trainer(nnUNetTrainerMMTL, scanners_workspace, monkeypatch, tmp_path / "a", fold=unlabelled_fold.fold)
    with pytest.raises(ValueError, match="needs a labelled fold"):
        mmtl.initialize()
    aiva = make_trainer(nnUNetTrainerAIVA, scanners_workspace, monkeypatch, tmp_path / "b", fold=adaptation_fold.fold)
    with pytest.raises(ValueError, match="needs an unlabelled fold"):
        aiva.initialize()


def test_resumed_mmtl_and_aiva_continue_their_schedule_and_lambda(started, adaptation_fold, unlabelled_fold,
                                                                  scanners_workspace, monkeypatch, tmp_path):
    """``--c``: MMTL's target share continues from the checkpoint's epoch (not from 0); AIVA keeps its lambda."""
    for cls, fold in ((nnUNetTrainerMMTL, adaptation_fold), (nnUNetTrainerAIVA, unlabelled_fold)):
        trainer = started(cls, epochs=2, iterations=4, fold=fold)
        if cls is nnUNetTrainerAIVA:
            trainer.aiva_embedding_batches, trainer.aiva_clusters = 3, 4
            trainer.on_epoch_start()
        trainer.current_epoch = 1
        path = Path(trainer.output_folder) / "checkpoint_test.pth"
        trainer.save_checkpoint(str(path))
        resumed = make_trainer(cls, scanners_workspace, monkeypatch, tmp_path / f"resumed_{cls.__name__}", 2, 4,
                               fold=fold.fold)
        resumed.load_checkpoint(str(path))
        resumed.on_train_start()
        try:
            assert resumed.current_epoch == 2  # nnU-Net stores epoch + 1
            if cls is nnUNetTrainerMMTL:
                resumed.current_epoch = 1  # the first step after a resume at epoch 1
                resumed.on_train_epoch_start()
                resumed.train_step(next(resumed.dataloader_train))
                assert resumed._target_counts == [mmtl_target_count(4, 8, resumed.batch_size)] != [0]
            else:
                assert resumed._aiva_lambda == trainer._aiva_lambda > 0
        finally:
            resumed.on_train_end()


def test_spottune_starts_both_copies_from_the_source_and_trains_only_tuned_copies_and_policy(started,
                                                                                             adaptation_fold):
    trainer = started(nnUNetTrainerSpotTUNet)
    network = unwrap(trainer.network)
    source = _source(adaptation_fold)["network_weights"]
    own = network.state_dict()
    for key in own:
        if not key.startswith("policy."):
            plain = key[len("unet."):].replace(".tuned.", ".").replace(".frozen.", ".")
            assert torch.equal(own[key], source[plain])
    before = {k: v.clone() for k, v in own.items()}
    _step(trainer, 2)
    after = network.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(".tuned." in k for k in changed) and any(k.startswith("policy.") for k in changed)
    assert not any(".frozen." in k for k in changed)
    penalty = trainer.regularization_loss(None, None).item()
    assert penalty == pytest.approx(trainer.spottune_lambda * (1 - network.last_gates).sum(1).mean().item())
    shares = trainer.epoch_log_values()["frozen_share"]
    assert set(shares) == set(network.layer_names) and all(0.0 <= v <= 1.0 for v in shares.values())
