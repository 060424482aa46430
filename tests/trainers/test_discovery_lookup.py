"""Every trainer we export resolves through nnU-Net's own lookup to our class."""

import contextlib
import inspect
import io

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_ext.trainers as ours

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
