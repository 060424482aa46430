"""Every trainer we export resolves through nnU-Net's own lookup to our class."""

import contextlib
import importlib
import inspect
import io
import os
import pkgutil

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_ext.trainers as ours
from nnunet_ext._autodiscover import ENV_VAR, extended_value
from nnunet_ext.trainers.budget import budget_trainer_name, resolve_budget_trainer
from nnunet_ext.trainers.toolkit import NNExtTrainerMixin

TRAINERS = [getattr(ours, n) for n in ours.__all__ if n.startswith("nnUNetTrainer")]


def test_there_are_trainers():
    assert TRAINERS


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_name_rules(cls):
    assert "__" not in cls.__name__
    assert issubclass(cls, nnUNetTrainer)


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_lookup_resolves_to_our_class(cls):
    with contextlib.redirect_stdout(io.StringIO()):
        found = recursive_find_trainer_class_by_name(cls.__name__)
    assert found is cls, f"{cls.__name__} resolved to {found.__module__}.{found.__name__}"


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_constructor_signature_is_nnunets(cls):
    assert list(inspect.signature(cls.__init__).parameters) == list(
        inspect.signature(nnUNetTrainer.__init__).parameters)


def test_unknown_trainer_still_fails_clearly():
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(RuntimeError, match="Could not find"):
        recursive_find_trainer_class_by_name("nnUNetTrainerDoesNotExist_xyz")


def _defined_trainers() -> dict[str, type]:
    """Every nnUNetTrainer subclass defined (not imported) in a module of nnunet_ext.trainers."""
    found = {}
    for info in pkgutil.walk_packages(ours.__path__, prefix=f"{ours.__name__}."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__:
                found[obj.__name__] = obj
    return found


DEFINED = _defined_trainers()


@pytest.fixture
def discovery_env(monkeypatch):
    """nnUNet_extTrainer with our discovery folder, as the installed .pth file sets it."""
    monkeypatch.setenv(ENV_VAR, extended_value(os.environ.get(ENV_VAR)))


def test_every_trainer_defined_in_our_modules_is_exported_and_found_by_nnunets_lookup(discovery_env):
    assert len(DEFINED) >= len(TRAINERS)
    missing = []
    for name, cls in DEFINED.items():
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                found = recursive_find_trainer_class_by_name(name)
        except RuntimeError:  # "Could not find requested nnunet trainer"
            found = None
        if found is not cls:
            missing.append(name)
    assert not missing, f"not found by nnU-Net's lookup (add them to their module's __all__): {missing}"


def test_every_method_module_lists_its_exports_and_every_trainer_has_the_toolkit_base():
    for info in pkgutil.iter_modules(ours.__path__):
        module = importlib.import_module(f"{ours.__name__}.{info.name}")
        assert isinstance(getattr(module, "__all__", None), list), f"{module.__name__} has no __all__"
    assert {m.__name__ for m in ours.MODULES} == {f"{ours.__name__}.{i.name}"
                                                    for i in pkgutil.iter_modules(ours.__path__)} - {
        f"{ours.__name__}.toolkit"}
    assert [n for n, cls in DEFINED.items() if not issubclass(cls, NNExtTrainerMixin)] == []


def test_a_budget_trainer_name_resolves_through_nnunets_lookup(discovery_env):
    name = budget_trainer_name("nnUNetTrainerDA5", "cpu", 1)
    with contextlib.redirect_stdout(io.StringIO()):
        found = recursive_find_trainer_class_by_name(name)
    assert found is resolve_budget_trainer(name) and found.__name__ == name and found.seed == 1
    assert list(inspect.signature(found.__init__).parameters) == list(
        inspect.signature(nnUNetTrainer.__init__).parameters)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(RuntimeError, match="Could not find"):
        recursive_find_trainer_class_by_name("nnUNetTrainerDoesNotExist_xyz_cpuBudget")
