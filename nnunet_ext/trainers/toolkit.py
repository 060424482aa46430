"""The pieces every nnunet-ext trainer is built from, so method modules hold only their method.

- :func:`unwrap`, :func:`batch_to_device`, :func:`amp_context`, :func:`backward_and_step`: nnU-Net's own
  ``train_step`` in parts, for trainers that make several updates per batch (CateNorm, LSCL) or add a loss
  term (EWC, LwF). nnU-Net runs the forward pass under CUDA autocast and then backward -> unscale -> clip
  the gradient norm at 12 -> step -> update with its ``GradScaler`` (plain backward -> clip -> step without
  AMP); these pieces do the same so they cannot drift from nnU-Net or from each other.
- :class:`EpochLog`: a method's per-epoch values in a JSON file in the fold folder (``self.logger.log``
  accepts only nnU-Net's own keys), cut back to the checkpoint's epoch when a run resumes with ``--c``.
- :class:`RegularizedStepMixin`: nnU-Net's train step with one extra loss term (EWC, LwF, L2-SP), the mean
  segmentation loss and term logged per epoch.
- :class:`PairedConsistencyLoss`: nnU-Net's loss plus a consistency term between the two halves of a batch of
  paired views (GIN-IPA's two views, style consistency's clean and altered views).
- :class:`MethodGenerator`: a method's own ``torch.Generator`` (augmentation draws), seeded per DDP rank and
  saved in every checkpoint, so ``--c`` continues its sequence.
- :class:`NNExtTrainerMixin`: the base of every trainer we export. It writes every checkpoint atomically
  with the method's extra state and the random generators' state, and loads checkpoints without running
  code from them (:func:`~nnunet_ext.utils.checkpoint_io.load_checkpoint_safely`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Literal

import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from nnunet_ext.utils.atomic import remove_temporary_files, write_json_atomic
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely, save_torch_atomic
from nnunet_ext.utils.seeding import get_rng_state, rank_seed, set_rng_state

__all__ = ["GRAD_CLIP_NORM", "NNUNET_CHECKPOINT_KEYS", "RNG_CHECKPOINT_KEY", "EpochLog", "MethodGenerator",
           "NNExtTrainerMixin", "PairedConsistencyLoss", "RegularizedStepMixin", "amp_context", "backward_and_step",
           "batch_to_device",
           "half_batch", "shutdown_augmenters", "unwrap"]

#: nnU-Net's gradient-norm clip (``nnUNetTrainer.train_step``)
GRAD_CLIP_NORM = 12

#: the keys of nnU-Net 2.8's checkpoint dict (``nnUNetTrainer.save_checkpoint``)
NNUNET_CHECKPOINT_KEYS = ("network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes")

#: checkpoint key of the python / numpy / torch generator state (:func:`nnunet_ext.utils.seeding.get_rng_state`)
RNG_CHECKPOINT_KEY = "nnext_rng"

Layout = Literal["columns", "records"]
Target = torch.Tensor | list[torch.Tensor]


def unwrap(network: nn.Module) -> nn.Module:
    """The module behind DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    if isinstance(network, (DistributedDataParallel, DataParallel)):
        network = network.module
    return getattr(network, "_orig_mod", network)


def shutdown_augmenters(*loaders: Any) -> None:
    """Stop the worker processes of nnU-Net data loaders (multi-threaded augmenters); others are left as they are.

    batchgenerators prints while its workers shut down; that output is swallowed.
    """
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
        for loader in loaders:
            if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                loader._finish()


def batch_to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
    """``(data, target)`` of an nnU-Net batch on ``device`` (``non_blocking`` as nnU-Net's ``train_step``).

    ``target`` is a list (one tensor per deep-supervision output) when deep supervision is on.
    """
    data = batch["data"].to(device, non_blocking=True)
    target = batch["target"]
    if isinstance(target, list):
        return data, [t.to(device, non_blocking=True) for t in target]
    return data, target.to(device, non_blocking=True)


def amp_context(device: torch.device) -> AbstractContextManager:
    """nnU-Net's autocast: on CUDA only (CPU and MPS run in float32)."""
    return autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()


def backward_and_step(trainer, loss: torch.Tensor) -> None:
    """Backward ``loss`` and step ``trainer.optimizer`` as nnU-Net does; with AMP a full GradScaler cycle, so it
    may run several times per batch."""
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
        trainer.grad_scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRAD_CLIP_NORM)
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRAD_CLIP_NORM)
        trainer.optimizer.step()


class PairedConsistencyLoss(nn.Module):
    """nnU-Net's loss, plus ``weight * consistency(first half, second half)`` while :meth:`pairing` is active.

    In a paired batch the first half of the samples are one view (GIN-IPA: views a; style consistency: the
    clean images), the second half the other view of the same cases, with the targets repeated. The
    consistency uses the full-resolution output (the first of nnU-Net's deep-supervision list). Outside
    :meth:`pairing` (nnU-Net's validation) it is nnU-Net's loss unchanged.

    Args:
        segmentation_loss: nnU-Net's loss (``DeepSupervisionWrapper`` or a plain loss).
        weight: weight of the consistency term.
        consistency: ``f(logits_first_half, logits_second_half) -> scalar``.

    Attributes:
        records: ``(segmentation loss, consistency)`` of every paired call, detached.
    """

    def __init__(self, segmentation_loss: nn.Module, weight: float,
                 consistency: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.weight = float(weight)
        self.consistency = consistency
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._paired = False

    @contextmanager
    def pairing(self) -> Iterator[None]:
        """Within this block every call treats its batch as ``[first views; second views]``."""
        self._paired = True
        try:
            yield
        finally:
            self._paired = False

    def forward(self, output: torch.Tensor | list[torch.Tensor], target: Target) -> torch.Tensor:
        segmentation = self.segmentation_loss(output, target)
        if not self._paired:
            return segmentation
        logits = output[0] if isinstance(output, (list, tuple)) else output
        if logits.shape[0] % 2:
            raise RuntimeError(f"a paired batch needs an even number of samples (first views, then second), got "
                               f"{logits.shape[0]}")
        first, second = logits.chunk(2)
        if not self.weight:  # still measured (for the method's log), but no gradient and no share of the loss
            with torch.no_grad():
                self.records.append((segmentation.detach(), self.consistency(first, second)))
            return segmentation
        consistency = self.consistency(first, second)
        self.records.append((segmentation.detach(), consistency.detach()))
        return segmentation + self.weight * consistency


def half_batch(data: torch.Tensor, target: Target, generator: torch.Generator
               ) -> tuple[torch.Tensor, Target]:
    """A random half (``B // 2``, at least 1; in batch order) of a batch's samples and their targets.

    For methods that forward two views per sample but must keep nnU-Net's network batch size (GPU memory):
    both views of half the samples. ``generator`` (CPU) draws the half.
    """
    if data.shape[0] < 2:
        return data, target
    keep = torch.randperm(data.shape[0], generator=generator)[: data.shape[0] // 2].sort().values.to(data.device)
    return data[keep], [t[keep] for t in target] if isinstance(target, list) else target[keep]


class MethodGenerator:
    """A method's own ``torch.Generator``: seeded per DDP rank, saved in checkpoints under ``key``.

    Args:
        key: checkpoint key of its state (unique per method, e.g. ``"nnext_gin_generator"``).
        seed: the seed; None draws one from torch's global generator (so a seeded run repeats).
        local_rank: the DDP rank (:func:`~nnunet_ext.utils.seeding.rank_seed` gives each rank its own stream).

    Attributes:
        generator: the generator (CPU).
    """

    def __init__(self, key: str, seed: int | None, local_rank: int = 0):
        self.key = key
        seed = seed if seed is not None else int(torch.randint(2 ** 62, (1,)).item())
        self.generator = torch.Generator().manual_seed(rank_seed(seed, local_rank))

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """``{key: state}`` for :meth:`NNExtTrainerMixin.extra_checkpoint_state` (rank 0's, saved once)."""
        return {self.key: self.generator.get_state()}

    def restore(self, checkpoint: Mapping[str, Any], is_ddp: bool) -> None:
        """Continue the saved sequence. Under DDP every rank keeps its own fresh generator (as the toolkit does
        for the global generators); a checkpoint without the key (written before the state was saved) too."""
        if self.key in checkpoint and not is_ddp:
            self.generator.set_state(checkpoint[self.key].cpu())


class EpochLog:
    """A method's per-epoch values as one JSON file, resumable with the checkpoint.

    Two layouts:

    - ``"columns"``: ``{**header, "epochs": [e, ...], column: [value per epoch], ...}``; with ``group`` set
      the columns sit in one nested dict, ``{**header, "epochs": [...], group: {column: [...]}}`` (for many
      columns, e.g. one per network layer).
    - ``"records"``: ``{**header, "epochs": [{"epoch": e, **values}, ...]}``.

    :meth:`for_trainer` (call it in ``on_train_start``, once ``current_epoch`` comes from the checkpoint)
    keeps from an existing file only the epochs before the trainer's ``current_epoch``, so a run resumed
    with ``--c`` continues the log where its checkpoint stands. A file of another layout or other columns
    (a changed network, an older version) is started anew, as is an unreadable one. The header is always
    the current run's. Every :meth:`append` rewrites the file atomically.

    Args:
        path: the JSON file.
        header: fixed keys written before ``"epochs"`` (settings of the run).
        layout: ``"columns"`` or ``"records"``.
        columns: the per-epoch keys of the ``"columns"`` layout (every :meth:`append` gives all of them).
        group: for ``"columns"``, the key of the nested dict holding the columns; None: top level.
        write: write the file (False on DDP ranks other than 0; the values are still kept).

    Example:
        >>> import tempfile
        >>> log = EpochLog(Path(tempfile.mkdtemp()) / "m.json", {"setting": 1}, columns=("loss",))
        >>> log.append(0, {"loss": 0.5})
        >>> log.data
        {'setting': 1, 'epochs': [0], 'loss': [0.5]}
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None, layout: Layout = "columns",
                 columns: Sequence[str] = (), group: str | None = None, write: bool = True):
        if layout not in ("columns", "records"):
            raise ValueError(f"layout must be 'columns' or 'records', got {layout!r}")
        if layout == "records" and (columns or group):
            raise ValueError("columns and group belong to the 'columns' layout; records take any keys")
        self.path = Path(path)
        self.header = dict(header or {})
        self.layout = layout
        self.columns = tuple(columns)
        self.group = group
        self.write_enabled = write
        reserved = {"epochs", group} & set(self.header)
        if reserved:
            raise ValueError(f"header keys {sorted(reserved)} clash with the log's own keys; rename them")
        self.data: dict[str, Any] = self._empty()

    @classmethod
    def for_trainer(cls, trainer, filename: str, header: Mapping[str, Any] | None = None, layout: Layout = "columns",
                    columns: Sequence[str] = (), group: str | None = None) -> EpochLog:
        """The log ``filename`` in ``trainer.output_folder``, keeping the epochs before ``trainer.current_epoch``;
        written on rank 0 only."""
        log = cls(Path(trainer.output_folder) / filename, header, layout, columns, group,
                  write=trainer.local_rank == 0)
        log.keep_before(trainer.current_epoch)
        return log

    @property
    def epochs(self) -> list[int]:
        """The epochs logged so far."""
        if self.layout == "records":
            return [r["epoch"] for r in self.data["epochs"]]
        return list(self.data["epochs"])

    def keep_before(self, epoch: int) -> None:
        """Start from the file on disk (if any and of this layout), keeping only entries of epochs ``< epoch``."""
        self.data = self._empty()
        previous = self._read()
        if previous is None:
            return
        if self.layout == "records":
            self.data["epochs"] = [r for r in previous["epochs"] if r["epoch"] < epoch]
            return
        keep = [i for i, e in enumerate(previous["epochs"]) if e < epoch]
        self.data["epochs"] = [previous["epochs"][i] for i in keep]
        source = previous[self.group] if self.group else previous
        target = self.data[self.group] if self.group else self.data
        for column in self.columns:
            target[column] = [source[column][i] for i in keep]

    def append(self, epoch: int, values: Mapping[str, Any]) -> None:
        """Add the values of ``epoch`` and rewrite the file (when writing is enabled).

        Raises:
            ValueError: with the ``"columns"`` layout, ``values`` does not have exactly the log's columns.
        """
        if self.layout == "records":
            self.data["epochs"].append({"epoch": epoch, **values})
        else:
            if set(values) != set(self.columns):
                raise ValueError(f"{self.path.name}: epoch {epoch} gives {sorted(values)}, the log's columns are "
                                 f"{sorted(self.columns)}")
            self.data["epochs"].append(epoch)
            target = self.data[self.group] if self.group else self.data
            for column in self.columns:
                target[column].append(values[column])
        self.write()

    def write(self) -> None:
        """Write the log atomically (when writing is enabled)."""
        if self.write_enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)

    # ---------------------------------------------------------------- internals
    def _empty(self) -> dict[str, Any]:
        data: dict[str, Any] = {**self.header, "epochs": []}
        if self.layout == "columns":
            target = data.setdefault(self.group, {}) if self.group else data
            for column in self.columns:
                target[column] = []
        return data

    def _read(self) -> dict[str, Any] | None:
        """The file's content if it exists, parses and has this log's layout and columns; else None."""
        if not self.path.is_file():
            return None
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        epochs = previous.get("epochs") if isinstance(previous, dict) else None
        if not isinstance(epochs, list):
            return None
        if self.layout == "records":
            return previous if all(isinstance(r, dict) and "epoch" in r for r in epochs) else None
        source = previous.get(self.group) if self.group else previous
        if not isinstance(source, dict) or (self.group and set(source) != set(self.columns)):
            return None
        fits = all(isinstance(source.get(c), list) and len(source[c]) == len(epochs) for c in self.columns)
        return previous if fits else None


class NNExtTrainerMixin:
    """The base of every nnunet-ext trainer: one ``save_checkpoint`` and one ``load_checkpoint`` for all methods.

    ``save_checkpoint`` writes nnU-Net 2.8's checkpoint dict (:meth:`nnunet_checkpoint`, same keys and values as
    ``nnUNetTrainer.save_checkpoint``) plus the method's :meth:`extra_checkpoint_state` and the state of the
    python / numpy / torch generators under ``"nnext_rng"``, atomically (temporary file + rename: a run killed
    while saving keeps its previous checkpoint), on rank 0, unless ``disable_checkpointing`` is set. Stock
    ``nnUNetv2_predict`` reads these files like any nnU-Net checkpoint.

    ``load_checkpoint`` takes a file (loaded with ``weights_only=True``, see
    :func:`~nnunet_ext.utils.checkpoint_io.load_checkpoint_safely`) or a dict, passes it to
    :meth:`load_extra_checkpoint_state` and then restores what nnU-Net's own ``load_checkpoint`` restores. The
    generator state is restored when training starts (after nnU-Net has built its data loaders, which draw
    two warm-up batches), so a resumed seeded run continues the random sequence of the uninterrupted one
    (exactly so with ``nnUNet_n_proc_DA=0``; worker processes of the multi-threaded augmenter draw their own
    seeds). Under DDP each rank keeps its fresh state (restoring rank 0's on every rank would make all ranks
    draw the same patches).

    Methods add state with the two hooks and call ``super()`` so that mixins compose::

        def extra_checkpoint_state(self):
            return {**super().extra_checkpoint_state(), "my_method": self.my_state()}

        def load_extra_checkpoint_state(self, checkpoint):
            super().load_extra_checkpoint_state(checkpoint)
            self.set_my_state(checkpoint["my_method"])
    """

    _rng_on_train_start: dict[str, Any] | None = None

    def epochs_from_settings(self) -> int | None:
        """Hook: ``num_epochs`` as the method derives it from its own settings (stream trainers: epochs per stage
        x stages), or None when ``num_epochs`` is a setting of its own. A budget calls it after scaling."""
        return None

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """Hook: extra top-level checkpoint entries of the method (call super and extend the dict)."""
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        """Hook: restore :meth:`extra_checkpoint_state` from ``checkpoint``; runs before the weights are loaded, so
        it may adapt the network and optimizer to them (e.g. grow a pool of experts)."""

    def nnunet_checkpoint(self) -> dict[str, Any]:
        """The dict nnU-Net 2.8's ``nnUNetTrainer.save_checkpoint`` writes (same keys and values).

        Built here so that the method state joins it in memory and every checkpoint is written once (saving
        nnU-Net's file, reading it back and rewriting it tripled the cost of each save, which grows with an
        ODEx pool). ``tests/trainers/test_stream_trainer.py`` compares it with nnU-Net's own file.
        """
        return {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint + :meth:`extra_checkpoint_state` + RNG state, written atomically on rank 0."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = self.nnunet_checkpoint()
        extra = self.extra_checkpoint_state()
        clash = set(extra) & (set(checkpoint) | {RNG_CHECKPOINT_KEY})
        if clash:
            raise ValueError(f"{type(self).__name__}.extra_checkpoint_state returns {sorted(clash)}, keys nnU-Net or "
                             f"the toolkit already use; give the method's state its own key")
        save_torch_atomic({**checkpoint, **extra, RNG_CHECKPOINT_KEY: get_rng_state()}, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str | os.PathLike) -> None:
        """Restore a checkpoint file (loaded safely) or dict: method state first, then nnU-Net's state.

        Raises:
            ValueError: the file is missing, corrupt or refused (see ``load_checkpoint_safely``), or it is not an
                nnU-Net training checkpoint (e.g. weights only).
            TypeError: neither a path nor a dict.
        """
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            checkpoint, source = filename_or_checkpoint, "the checkpoint dict"
        elif isinstance(filename_or_checkpoint, (str, os.PathLike)):
            checkpoint = load_checkpoint_safely(filename_or_checkpoint, map_location=self.device)
            source = str(filename_or_checkpoint)
        else:
            raise TypeError(f"{type(self).__name__}.load_checkpoint expects a checkpoint file path or dict, got "
                            f"{type(filename_or_checkpoint).__name__}")
        missing = [k for k in NNUNET_CHECKPOINT_KEYS if k not in checkpoint and k != "inference_allowed_mirroring_axes"]
        if missing:
            raise ValueError(f"{source} is not an nnU-Net training checkpoint (no {missing}); to start a new run from "
                             f"its weights use nnUNetv2_train ... -pretrained_weights FILE instead of --c")
        self.load_extra_checkpoint_state(checkpoint)

        network = unwrap(self.network)
        own_keys = network.state_dict().keys()
        # nnU-Net's heuristic for weights saved from a DataParallel/DDP wrapper
        weights = {k[len("module."):] if k not in own_keys and k.startswith("module.") else k: v
                   for k, v in checkpoint["network_weights"].items()}
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self._rng_on_train_start = None if self.is_ddp else checkpoint.get(RNG_CHECKPOINT_KEY)

    def on_train_start(self):
        super().on_train_start()
        if self.local_rank == 0:
            self.remove_checkpoint_leftovers()
        if self._rng_on_train_start is not None:
            set_rng_state(self._rng_on_train_start)
            self._rng_on_train_start = None
            self.print_to_log_file(f"resuming at epoch {self.current_epoch} with the checkpoint's random generator "
                                   f"state")

    def remove_checkpoint_leftovers(self) -> list[Path]:
        """Delete temporary checkpoint files (``.checkpoint_*.pth.XXXXXXXX.tmp``) that a killed earlier run of this
        fold left behind; called on rank 0 when training starts, before this run writes any.

        The saves are atomic, so such a file is never the checkpoint ``--c`` resumes from, only litter (a
        checkpoint's size each).
        """
        removed = remove_temporary_files(self.output_folder, "checkpoint*.pth")
        if removed:
            self.print_to_log_file(f"removed {len(removed)} temporary checkpoint file(s) of an interrupted earlier "
                                   f"run: {[p.name for p in removed]}")
        return removed


class RegularizedStepMixin(NNExtTrainerMixin):
    """nnU-Net's train step with one extra loss term from :meth:`regularization_loss`, logged per epoch.

    The step is nnU-Net's own (AMP autocast and ``GradScaler`` on CUDA, gradient clipping at 12, deep
    supervision) with ``loss = segmentation loss + regularization_loss(data, output)``; the per-epoch means of
    both go to :attr:`regularization_log_filename` in the fold folder, with the values of
    :meth:`regularization_log_values` as extra columns.

    Attributes:
        regularization_log_filename: the per-epoch JSON log in the fold folder.
        regularization_log_columns: the names of the extra columns :meth:`regularization_log_values` fills.
    """

    regularization_log_filename: str = "regularization.json"
    regularization_log_columns: tuple[str, ...] = ()

    def regularization_loss(self, data: torch.Tensor, output: Target) -> torch.Tensor | None:
        """Hook: the extra term for this batch (float32 scalar), or None while the method is inactive."""
        return None

    def regularization_log_values(self) -> dict[str, Any]:
        """Hook: this epoch's values of :attr:`regularization_log_columns`."""
        return {}

    def on_train_start(self):
        super().on_train_start()
        self._regularization_log = EpochLog.for_trainer(
            self, self.regularization_log_filename,
            columns=(*self.regularization_log_columns, "train_loss_segmentation", "train_regularization"))
        self._step_terms: list[tuple[float, float]] = []

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._step_terms = []

    def train_step(self, batch: dict) -> dict:
        data, target = batch_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with amp_context(self.device):
            output = self.network(data)
            seg_loss = self.loss(output, target)
        extra = self.regularization_loss(data, output)
        loss = seg_loss if extra is None else seg_loss + extra
        backward_and_step(self, loss)
        self._step_terms.append((seg_loss.item(), 0.0 if extra is None else extra.item()))
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        terms = self._step_terms or [(float("nan"), float("nan"))]
        self._regularization_log.append(self.current_epoch, {
            **self.regularization_log_values(),
            "train_loss_segmentation": sum(s for s, _ in terms) / len(terms),
            "train_regularization": sum(r for _, r in terms) / len(terms)})
