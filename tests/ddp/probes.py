"""What the DDP tests record inside each rank (``instrument``) and report from it (``probe``).

These functions run in the processes :func:`tests.ddp.harness.run_ddp_trainings` spawns, so they live at module
level (picklable) and return only tensors and plain values (loadable with ``weights_only=True``).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any
from unittest import mock

import torch

from nnunet_ext.trainers.toolkit import unwrap


def _cpu(value: Any) -> Any:
    """``value`` with every tensor detached, copied and on the CPU (dicts, lists and tuples followed)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cpu(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- every trainer
def record_training_batches(trainer, stack: ExitStack) -> None:
    """Record the torch generator's state after construction and the case keys of every training batch."""
    trainer.ddp_record = {"keys": [], "torch_rng_after_init": torch.get_rng_state()}
    train_step = trainer.train_step

    def recording(batch: dict) -> dict:
        trainer.ddp_record["keys"].append([str(k) for k in batch["keys"]])
        return train_step(batch)

    trainer.train_step = recording


def training_state(trainer) -> dict[str, Any]:
    """Weights, optimizer state, the rank's share of the batch and what :func:`record_training_batches` saw."""
    return {
        "weights": _cpu(unwrap(trainer.network).state_dict()),
        "optimizer": _cpu(trainer.optimizer.state_dict()["state"]),
        "batch_size": int(trainer.batch_size),
        "oversample": float(trainer.oversample_foreground_percent),
        "epochs_trained": int(trainer.current_epoch),
        "keys": trainer.ddp_record["keys"],
        "torch_rng_after_init": trainer.ddp_record["torch_rng_after_init"],
    }


def style_consistency_state(trainer) -> dict[str, Any]:
    """:func:`training_state` plus the regeneration decoder's weights (outside the network: its own DDP)."""
    return {**training_state(trainer), "decoder": _cpu(trainer._sc_decoder.state_dict())}


# ---------------------------------------------------------------------------------------------------- ODEx
def record_odex(trainer, stack: ExitStack) -> None:
    """Also record every all-reduce of the ODEx trainer (input and result) and every feature pass's features."""
    import nnunet_ext.trainers.odex as odex_trainers

    record_training_batches(trainer, stack)
    trainer.ddp_record.update(reductions=[], stage_features=[])
    reduce = odex_trainers.distributed_reduce

    def recording_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
        before = _cpu(tensor)
        result = reduce(tensor, op)
        trainer.ddp_record["reductions"].append({"op": op, "input": before, "output": _cpu(result)})
        return result

    stack.enter_context(mock.patch.object(odex_trainers, "distributed_reduce", recording_reduce))
    stage_features = trainer._stage_features

    def recording_features(expert: int) -> torch.Tensor:
        features = stage_features(expert)
        trainer.ddp_record["stage_features"].append(_cpu(features))
        return features

    trainer._stage_features = recording_features


def odex_state(trainer) -> dict[str, Any]:
    pool = trainer.pool
    return {
        **training_state(trainer),
        "pool_size": len(pool),
        "active": pool.active,
        "histories": [{"means": _cpu(h.means), "chols": _cpu(h.chols), "calibrations": _cpu(h.calibrations)}
                      for h in pool.histories],
        "decisions": trainer.odex_decisions,
        "reductions": trainer.ddp_record["reductions"],
        "stage_features": trainer.ddp_record["stage_features"],
    }


# ----------------------------------------------------------------------------------------------------- EWC
def record_ewc(trainer, stack: ExitStack) -> None:
    """Also record, for every Fisher estimate, the weights it starts from, the batches it draws and its result."""
    record_training_batches(trainer, stack)
    trainer.ddp_record["fisher"] = []
    estimate_fisher = trainer.estimate_fisher

    def recording_estimate():
        weights = _cpu(unwrap(trainer.network).state_dict())
        loader = trainer.dataloader_train
        batches: list[dict] = []

        class Recorder:
            def __next__(self):
                batch = next(loader)
                batches.append({"data": _cpu(batch["data"]), "target": _cpu(batch["target"])})
                return batch

        trainer.dataloader_train = Recorder()
        try:
            accumulator = estimate_fisher()
        finally:
            trainer.dataloader_train = loader
        trainer.ddp_record["fisher"].append({"weights": weights, "batches": batches, "count": accumulator.count,
                                             "fisher": _cpu(accumulator.fisher())})
        return accumulator

    trainer.estimate_fisher = recording_estimate


def ewc_state(trainer) -> dict[str, Any]:
    return {**training_state(trainer), "ewc": _cpu(trainer.ewc.state_dict()),
            "fisher_calls": trainer.ddp_record["fisher"]}


# ----------------------------------------------------------------------------------------------------- LwF
def lwf_state(trainer) -> dict[str, Any]:
    teacher = None if trainer.teacher is None else _cpu(trainer.teacher.state_dict())
    return {**training_state(trainer), "teacher": teacher}


# ------------------------------------------------------------------------------------------------ Fourier MST
def fourier_state(trainer) -> dict[str, Any]:
    bank = unwrap(trainer.network).bank
    return {**training_state(trainer), "bank": _cpu(bank.state_dict()), "bank_settings": bank.settings()}


# ------------------------------------------------------------------------------------------ style curriculum
def curriculum_state(trainer) -> dict[str, Any]:
    return {**training_state(trainer), "curriculum_log": trainer._curriculum_log.data}
