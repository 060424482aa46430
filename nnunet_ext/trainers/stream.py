"""Training over a stream of stages (continual learning) inside one stock ``nnUNetv2_train`` run.

:class:`StreamTrainerMixin` reads the dataset's ``stream.json`` (see :mod:`nnunet_ext.streams`), trains
``epochs_per_stage`` epochs on each stage in order and switches nnU-Net's training and validation case
lists at every stage boundary (the dataloaders are rebuilt; the old worker processes are shut down).
Methods plug in through two hooks, :meth:`~StreamTrainerMixin.on_stage_start` and
:meth:`~StreamTrainerMixin.on_stage_end`, and keep their state in the checkpoint by extending
:meth:`~StreamTrainerMixin.stream_state_dict` / :meth:`~StreamTrainerMixin.load_stream_state_dict` (saved
under ``"nnext_stream"`` through the toolkit's checkpoint hooks,
:class:`~nnunet_ext.trainers.toolkit.NNExtTrainerMixin`).

Decisions (nnU-Net forces a few):

- ``fold`` must be ``0`` or ``"all"``; both mean "the stream's own split" (the stream lists each stage's
  ``train`` and ``val`` cases, so a cross-validation fold indexes nothing). Any other fold raises.
- Each stage is a fresh nnU-Net schedule: the optimizer (SGD, momentum) is rebuilt at every stage start
  and the poly learning rate restarts from ``initial_lr`` (as separate training runs per stage would).
- A stage without ``val`` cases validates on its training cases (nnU-Net needs a validation loader).
- nnU-Net's final validation (``perform_actual_validation``) runs on the ``val`` cases of *all* stages.
- Reliability: every checkpoint is written atomically (temporary file + rename). After each stage the
  trainer writes ``checkpoint_latest.pth`` and a copy ``checkpoint_stage_K.pth`` (the model after stage K,
  for continual evaluation). ``nnUNetv2_train ... --c`` loads ``checkpoint_latest.pth`` first, so a run
  killed mid-stage resumes inside that stage (from the stage start or a later periodic save) and never
  repeats a finished stage. The stream position is saved in the checkpoint under ``"nnext_stream"``. A run
  resumed at a stage boundary switches the data loaders to the new stage in the first epoch, as the
  uninterrupted run does, so a seeded run continues the same random sequence.
"""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.streams import Stream, find_stream_file, read_stream
from nnunet_ext.trainers.budget import BudgetMixin
from nnunet_ext.trainers.toolkit import NNExtTrainerMixin, shutdown_augmenters
from nnunet_ext.utils.atomic import atomic_path

__all__ = ["STREAM_CHECKPOINT_KEY", "StagewisePolyLR", "StreamTrainerMixin", "nnUNetTrainerSequential",
           "nnUNetTrainerSequential_50epochs", "nnUNetTrainerSequential_smoke"]

STREAM_CHECKPOINT_KEY = "nnext_stream"


class StagewisePolyLR(PolyLRScheduler):
    """nnU-Net's poly schedule restarted at every stage (``step(epoch)`` uses ``epoch % steps_per_stage``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, steps_per_stage: int):
        self.steps_per_stage = steps_per_stage
        super().__init__(optimizer, initial_lr, steps_per_stage)

    def step(self, current_step: int | None = None) -> None:
        super().step(None if current_step is None or current_step == -1 else current_step % self.steps_per_stage)


class StreamTrainerMixin(NNExtTrainerMixin):
    """Trains stage after stage of the dataset's stream; base of every continual-learning trainer.

    Attributes:
        epochs_per_stage: epochs trained on each stage (the paper: 200); ``num_epochs`` becomes
            ``epochs_per_stage * len(stream)``. A budget scales it (``epoch_settings``).
        reset_optimizer_each_stage: rebuild the optimizer (fresh momentum) at each stage start.
        current_stage: index of the stage being trained (read-only property).
        stream: the parsed :class:`~nnunet_ext.streams.Stream` (read from :attr:`stream_file` on first use).
    """

    epochs_per_stage: int = 200
    reset_optimizer_each_stage: bool = True
    epoch_settings: ClassVar[tuple[str, ...]] = ("epochs_per_stage",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.fold not in (0, "all"):
            raise ValueError(f"{type(self).__name__}: fold must be 0 or 'all' (the stream file defines each stage's "
                             f"train/val cases, so a cross-validation fold means nothing), got fold={self.fold!r}. "
                             f"Run nnUNetv2_train DATASET CONFIG 0 -tr {type(self).__name__}")
        if int(self.epochs_per_stage) < 1:
            raise ValueError(f"{type(self).__name__}.epochs_per_stage must be >= 1, got {self.epochs_per_stage}")
        self.num_epochs = self.epochs_from_settings()
        self._stage_started = -1  # highest stage whose on_stage_start ran
        self._stages_done = 0  # stages whose on_stage_end ran
        self._data_stage: int | None = None  # stage whose cases the dataloaders serve
        self._all_stages_split = False  # do_split returns every stage's cases (final validation)

    @cached_property
    def stream_file(self) -> Path:
        """The dataset's ``stream.json`` (:func:`~nnunet_ext.streams.find_stream_file`)."""
        return find_stream_file(self.plans_manager.dataset_name, self.preprocessed_dataset_folder_base)

    @cached_property
    def stream(self) -> Stream:
        return read_stream(self.stream_file)

    def epochs_from_settings(self) -> int:
        return int(self.epochs_per_stage) * len(self.stream)

    # ---------------------------------------------------------------- stream position
    @property
    def current_stage(self) -> int:
        """Index of the stage the current epoch belongs to (the last stage once training is over)."""
        return self._stage_of(self.current_epoch)

    def _stage_of(self, epoch: int) -> int:
        return min(epoch // int(self.epochs_per_stage), len(self.stream) - 1)

    def on_stage_start(self, stage_index: int) -> None:
        """Hook: called once before the first epoch of ``stage_index`` (dataloaders already serve it)."""

    def on_stage_end(self, stage_index: int) -> None:
        """Hook: called once after the last epoch of ``stage_index`` (dataloaders still serve it)."""

    def stream_state_dict(self) -> dict[str, Any]:
        """Method state saved in every checkpoint under ``"nnext_stream"``; subclasses extend the dict (call super)."""
        return {"stage_started": self._stage_started, "stages_done": self._stages_done,
                "epochs_per_stage": int(self.epochs_per_stage), "num_stages": len(self.stream)}

    def load_stream_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`stream_state_dict` (called by ``load_checkpoint`` before the weights are loaded)."""
        for key, expected in (("epochs_per_stage", int(self.epochs_per_stage)), ("num_stages", len(self.stream))):
            if state.get(key, expected) != expected:
                raise ValueError(f"checkpoint was written with {key}={state[key]} but {type(self).__name__} now has "
                                 f"{key}={expected} ({self.stream_file}); resume with the same trainer and stream, "
                                 f"or start a new run without --c")
        self._stage_started = int(state["stage_started"])
        self._stages_done = int(state["stages_done"])

    # ---------------------------------------------------------------- nnU-Net overrides
    def initialize(self):
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise NotImplementedError(f"{type(self).__name__} does not support region-based training or an ignore "
                                      f"label; use the stock trainer for such datasets")
        identifiers = infer_dataset_class(self.preprocessed_dataset_folder).get_identifiers(
            self.preprocessed_dataset_folder)
        self.stream.check_cases(identifiers)
        super().initialize()
        self.print_to_log_file(f"Stream {self.stream_file}: {len(self.stream)} stages x {self.epochs_per_stage} "
                               f"epochs = {self.num_epochs} epochs; cases per stage (train/val): "
                               f"{[(len(s.train), len(s.val)) for s in self.stream.stages]}")

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()
        return optimizer, StagewisePolyLR(optimizer, self.initial_lr, int(self.epochs_per_stage))

    def do_split(self):
        if self._all_stages_split:
            tr = [c for s in self.stream.stages for c in s.train]
            val = [c for s in self.stream.stages for c in (s.val or s.train)]
            return tr, val
        stage = self.stream.stages[self.current_stage if self._data_stage is None else self._data_stage]
        return list(stage.train), list(stage.val or stage.train)

    def on_train_start(self):
        # the loaders serve the stage of the last epoch trained: a run resumed at a stage boundary then switches
        # them in on_epoch_start, as the uninterrupted run does (rebuilding them draws from the global RNG)
        self._data_stage = self._stage_of(max(self.current_epoch - 1, 0))
        super().on_train_start()

    def on_epoch_start(self):
        super().on_epoch_start()
        stage = self.current_stage
        while self._stages_done < stage:  # a stage whose epochs ran but whose end hook did not (interrupted)
            self._use_stage_data(self._stages_done)
            self._finish_stage(self._stages_done)
        self._use_stage_data(stage)
        if self._stage_started < stage:
            self.print_to_log_file(f"Stage {stage} of {len(self.stream)} starts ({len(self.stream.stages[stage].train)} "
                                   f"training cases)")
            if self.reset_optimizer_each_stage and stage > 0:
                self.optimizer, self.lr_scheduler = self.configure_optimizers()
            self.on_stage_start(stage)
            self._stage_started = stage

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.current_epoch % int(self.epochs_per_stage) == 0:
            self._finish_stage(self.current_epoch // int(self.epochs_per_stage) - 1)

    def on_train_end(self):
        self._all_stages_split = True
        super().on_train_end()

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {**super().extra_checkpoint_state(), STREAM_CHECKPOINT_KEY: self.stream_state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if STREAM_CHECKPOINT_KEY not in checkpoint:
            raise ValueError(f"the checkpoint has no '{STREAM_CHECKPOINT_KEY}' entry: it was not written by a stream "
                             f"trainer; start a new run without --c")
        self.load_stream_state_dict(checkpoint[STREAM_CHECKPOINT_KEY])

    # ---------------------------------------------------------------- internals
    def _use_stage_data(self, stage: int) -> None:
        if self._data_stage == stage:
            return
        self._shutdown_dataloaders()
        self._data_stage = stage
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()

    def _shutdown_dataloaders(self) -> None:
        shutdown_augmenters(self.dataloader_train, self.dataloader_val)
        self.dataloader_train = self.dataloader_val = None

    def _finish_stage(self, stage: int) -> None:
        if self._stages_done > stage:
            return
        self.on_stage_end(stage)
        self._stages_done = stage + 1
        # save_checkpoint stores current_epoch + 1; here the epoch counter already points past the stage
        self.current_epoch -= 1
        latest = os.path.join(self.output_folder, "checkpoint_latest.pth")
        self.save_checkpoint(latest)
        self.current_epoch += 1
        if self.local_rank == 0 and not self.disable_checkpointing:
            with atomic_path(Path(self.output_folder) / f"checkpoint_stage_{stage}.pth") as tmp:
                shutil.copyfile(latest, tmp)
        self.print_to_log_file(f"Stage {stage} done; saved {latest} and checkpoint_stage_{stage}.pth")


class nnUNetTrainerSequential(StreamTrainerMixin, nnUNetTrainer):
    """Sequential fine-tuning: one network trained stage after stage (the forgetting baseline)."""


class nnUNetTrainerSequential_50epochs(nnUNetTrainerSequential):
    epochs_per_stage = 50


class nnUNetTrainerSequential_smoke(StreamTrainerMixin, BudgetMixin, nnUNetTrainer):
    """The ``smoke`` budget with 2 epochs x 15 iterations per stage, seed 0 (tests)."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"epochs_per_stage": 2}
