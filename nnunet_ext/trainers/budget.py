"""Named training budgets that apply to any trainer: ours, nnU-Net's own, or a user's.

A :class:`Budget` says what a stock 1000-epoch nnU-Net trainer gets (``epochs``, ``iterations`` and
``val_iterations`` per epoch). :class:`BudgetMixin` applies it after the trainer's own ``__init__``: every
epoch-denominated setting is scaled by ``factor = epochs / 1000`` -- ``num_epochs`` as the trainer set it
(AvaGrad's 50 becomes ``50 * factor``), ``epochs_per_stage`` of stream trainers, and every attribute a
class lists in ``epoch_settings`` (collected over the MRO; CateNorm lists ``warmup_epochs``). ``num_epochs``
and ``epochs_per_stage`` round to at least 1, other settings to the nearest integer. The iterations per
epoch are absolute. Trainers whose ``num_epochs`` follows from other settings (stream trainers: epochs per
stage x stages) recompute it afterwards, so the result does not depend on where the mixin sits among the
bases: ``class A(BudgetMixin, nnUNetTrainerSequential)`` and ``class B(StreamTrainerMixin, BudgetMixin,
nnUNetTrainer)`` train the same number of epochs.

No class needs to be written for a budget: ``nnUNetv2_train D 2d 0 -tr nnUNetTrainerDA5_cpuBudget_seed1``
trains nnU-Net's ``nnUNetTrainerDA5`` at the ``cpu`` budget with seed 1 (:func:`budget_trainer_name`,
:func:`resolve_budget_trainer`); the class is made when nnU-Net's lookup asks for the name, at training
and at prediction time. Hand-written ``*_smoke`` / ``*_demo`` trainers name a budget and list only their
deviations from it in ``budget_overrides``.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_ext.trainers.toolkit import NNExtTrainerMixin
from nnunet_ext.utils.seeding import rank_seed, seed_everything

__all__ = ["BUDGETS", "Budget", "BudgetMixin", "FixedEpochsMixin", "budget_trainer_name", "epoch_settings_of",
           "get_budget", "nnUNetTrainerCPU_demo", "nnUNetTrainerCPU_smoke", "resolve_budget_trainer"]

#: nnU-Net's ``num_epochs``: a budget's ``epochs`` are relative to it
NNUNET_EPOCHS = 1000

_BUDGET_NAME = re.compile(r"[a-z][a-z0-9]*")
_BUDGET_TRAINER = re.compile(r"(?P<base>\w+?)_(?P<budget>[a-z][a-z0-9]*)Budget(?:_seed(?P<seed>0|[1-9][0-9]*))?")
#: settings that must stay >= 1 when scaled
_AT_LEAST_ONE = ("num_epochs", "epochs_per_stage")


@dataclass(frozen=True)
class Budget:
    """A training length, stated for a stock 1000-epoch nnU-Net trainer.

    Attributes:
        name: used in trainer names (``..._<name>Budget``): lower-case letters and digits.
        epochs: what a 1000-epoch trainer trains; every epoch setting is scaled by ``epochs / 1000``.
        iterations: ``num_iterations_per_epoch`` (nnU-Net: 250).
        val_iterations: ``num_val_iterations_per_epoch`` (nnU-Net: 50).
        description: one line for listings.
    """

    name: str
    epochs: int
    iterations: int
    val_iterations: int
    description: str

    def __post_init__(self):
        if not _BUDGET_NAME.fullmatch(self.name):
            raise ValueError(f"budget name must be lower-case letters and digits (it becomes part of trainer names), "
                             f"got {self.name!r}")
        for field in ("epochs", "iterations", "val_iterations"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"budget {self.name!r}: {field} must be an int >= 1, got {value!r}")

    @property
    def factor(self) -> float:
        """The scale of epoch settings: ``epochs / 1000``."""
        return self.epochs / NNUNET_EPOCHS


#: the named budgets
BUDGETS: dict[str, Budget] = {b.name: b for b in (
    Budget("micro", 2, 4, 1, "the benchmark runner's own test: 2 epochs x 4 iterations, exercises the commands, "
                            "learns little"),
    Budget("smoke", 4, 15, 2, "the tests' budget: 4 epochs x 15 iterations, enough to beat trivial predictions on "
                              "the tiny dataset"),
    Budget("demo", 12, 25, 5, "the nnext demo's budget: 12 epochs x 25 iterations"),
    Budget("cpu", 40, 50, 10, "a CPU benchmark run: 40 epochs x 50 iterations"),
    Budget("paper", 1000, 250, 50, "nnU-Net's own: 1000 epochs x 250 iterations (factor 1)"),
)}


def get_budget(name: str) -> Budget:
    """The budget called ``name``.

    Raises:
        ValueError: no such budget (the message lists the known ones).
    """
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; known budgets: {', '.join(BUDGETS)}")
    return BUDGETS[name]


def epoch_settings_of(cls: type) -> tuple[str, ...]:
    """The attributes scaled by a budget besides ``num_epochs``: every ``epoch_settings`` entry in ``cls``'s MRO."""
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        names.update(dict.fromkeys(vars(klass).get("epoch_settings", ())))
    return tuple(names)


class FixedEpochsMixin(NNExtTrainerMixin):
    """Sets nnU-Net's ``num_epochs`` from the class attribute ``epochs`` after ``nnUNetTrainer.__init__``.

    For paper-table settings (``nnUNetTrainerAvaGrad``: 50 epochs). A :class:`BudgetMixin` listed before it
    in the bases scales the result.
    """

    epochs: int = 1000

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs


class BudgetMixin(NNExtTrainerMixin):
    """Applies the named budget :attr:`budget` to any trainer, after the trainer's own ``__init__`` (see module).

    Attributes:
        budget: a name in :data:`BUDGETS`; None applies no scaling (only ``budget_overrides`` and ``seed``).
        seed: if set, python/numpy/torch are seeded when the trainer is constructed (before nnU-Net builds the
            network and the data loaders). With nnU-Net's single-threaded augmenter (``nnUNet_n_proc_DA=0``) a
            CPU run then repeats exactly; the tests' ``*_smoke`` trainers use 0 so their numeric bounds are
            checked against one known run, not a draw. ``None`` (default): nnU-Net's usual unseeded run. Under
            DDP each rank seeds with :func:`~nnunet_ext.utils.seeding.rank_seed` (rank 0: ``seed``), so the ranks
            draw different patches; the network starts from rank 0's weights on every rank (DDP broadcasts them).
        budget_overrides: instance attributes set after the scaling, for trainers whose values deviate from the
            budget (e.g. more iterations for ODEx's smoke run).
    """

    budget: str | None = None
    seed: int | None = None
    budget_overrides: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.budget is not None:
            get_budget(cls.budget)  # a misspelt budget fails when the class is defined, not at training time

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget()
        if self.seed is not None:
            seed_everything(rank_seed(self.seed, self.local_rank))

    def apply_budget(self) -> None:
        """Scale the epoch settings, set the iterations, apply ``budget_overrides``, re-derive ``num_epochs``."""
        if self.budget is not None:
            budget = get_budget(self.budget)
            for attr in ("num_epochs", *epoch_settings_of(type(self))):
                scaled = round(getattr(self, attr) * budget.factor)
                setattr(self, attr, max(1, scaled) if attr in _AT_LEAST_ONE else scaled)
            self.num_iterations_per_epoch = budget.iterations
            self.num_val_iterations_per_epoch = budget.val_iterations
        for attr, value in self.budget_overrides.items():
            if not hasattr(self, attr):
                raise ValueError(f"{type(self).__name__}.budget_overrides sets {attr!r}, which the trainer does not "
                                 f"have; check the spelling")
            setattr(self, attr, value)
        derived = self.epochs_from_settings()
        if derived is not None:
            self.num_epochs = derived


def budget_trainer_name(trainer: str, budget: str, seed: int | None = None) -> str:
    """The name of ``trainer`` at ``budget`` (and ``seed``), e.g. ``nnUNetTrainerDA5_cpuBudget_seed1``.

    Pass it to ``nnUNetv2_train`` / ``nnUNetv2_predict -tr``; :func:`resolve_budget_trainer` makes the class.

    Raises:
        ValueError: unknown budget, a trainer name that is not an identifier or contains ``__``, a seed that is
            not an int >= 0.
    """
    get_budget(budget)
    if not trainer.isidentifier() or "__" in trainer:
        raise ValueError(f"trainer must be a class name without '__' (nnU-Net separates folder parts with it), got "
                         f"{trainer!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    return f"{trainer}_{budget}Budget" + ("" if seed is None else f"_seed{seed}")


_BUDGET_TRAINERS: dict[str, type] = {}


def resolve_budget_trainer(name: str) -> type | None:
    """The trainer class a :func:`budget_trainer_name` stands for, or None if ``name`` is not one.

    The base trainer is looked up by name among our exports, then with nnU-Net's own
    ``recursive_find_trainer_class_by_name`` (nnunetv2's trainers and the folders in ``nnUNet_extTrainer``,
    i.e. a user's own trainers too). The class is ``(BudgetMixin, base)`` with the budget and seed as class
    attributes, made once per name and reachable as ``nnunet_ext.trainers.budget.<name>`` (so it pickles and
    keeps its identity).
    """
    found = _BUDGET_TRAINER.fullmatch(name)
    if found is None or "__" in name or found["budget"] not in BUDGETS:
        return None
    if name in _BUDGET_TRAINERS:
        return _BUDGET_TRAINERS[name]
    base = _find_trainer(found["base"])
    if base is None:
        return None
    seed = None if found["seed"] is None else int(found["seed"])
    bases = (base,) if issubclass(base, BudgetMixin) else (BudgetMixin, base)
    cls = type(name, bases, {
        "__module__": __name__, "__qualname__": name, "budget": found["budget"], "seed": seed, "budget_overrides": {},
        "__doc__": f"{base.__name__} at the {found['budget']!r} budget ({BUDGETS[found['budget']].description}); "
                   f"seed {seed}.",
    })
    _BUDGET_TRAINERS[name] = cls
    return cls


def _find_trainer(name: str) -> type | None:
    import nnunet_ext.trainers as ours

    cls = getattr(ours, name, None)
    if isinstance(cls, type) and issubclass(cls, nnUNetTrainer):
        return cls
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):  # not found / not an nnUNetTrainer
        return None


def __getattr__(name: str) -> type:
    cls = None if name.startswith("_") else resolve_budget_trainer(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


class nnUNetTrainerCPU_smoke(BudgetMixin, nnUNetTrainer):
    """Stock nnU-Net at the ``smoke`` budget (4 epochs x 15 iterations), seed 0: the end-to-end tests' trainer."""

    budget = "smoke"
    seed = 0


class nnUNetTrainerCPU_demo(BudgetMixin, nnUNetTrainer):
    """Stock nnU-Net at the ``demo`` budget (12 epochs x 25 iterations): the ``nnext demo`` baseline."""

    budget = "demo"
