"""Start-up registration of our trainer folder in nnUNet_extTrainer (fast, no venv)."""

import os
import subprocess
import sys

import pytest

from nnunet_ext import _autodiscover as ad
from tests.conftest import environ_with

PRINT_VAR = "import os; print(os.environ.get('nnUNet_extTrainer', '<unset>'))"


def _fresh_python(env_updates: dict[str, str | None]) -> str:
    return subprocess.run([sys.executable, "-c", PRINT_VAR], env=environ_with(env_updates), capture_output=True,
                          text=True, check=True).stdout.strip()


def test_extended_value_appends_after_user_entries_and_is_idempotent():
    mine = os.pathsep.join(["/a", "/b"])
    value = ad.extended_value(mine, "/ours")
    assert value.split(os.pathsep) == ["/a", "/b", "/ours"]
    assert ad.extended_value(value, "/ours") == value
    assert ad.extended_value(None, "/ours") == "/ours"
    assert ad.extended_value("", "/ours") == "/ours"


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("0", False),
                                            ("", False), ("false", False), ("no", False)])
def test_opted_out_values(value, expected):
    assert ad.opted_out({ad.OPT_OUT_VAR: value}) is expected
    assert ad.opted_out({}) is False


def test_trainer_folder_holds_only_the_reexport_module():
    names = sorted(n for n in os.listdir(ad.TRAINER_FOLDER) if n != "__pycache__")
    assert names == ["nnunet_ext_trainers.py"]


def test_fresh_interpreter_registers_our_folder():
    value = _fresh_python({ad.ENV_VAR: None, ad.OPT_OUT_VAR: None})
    assert value.split(os.pathsep) == [ad.TRAINER_FOLDER]


def test_fresh_interpreter_keeps_the_users_value_first():
    mine = os.pathsep.join(["/home/me/my_trainers", "/opt/other"])
    value = _fresh_python({ad.ENV_VAR: mine, ad.OPT_OUT_VAR: None})
    assert value.split(os.pathsep) == ["/home/me/my_trainers", "/opt/other", ad.TRAINER_FOLDER]


def test_opt_out_leaves_the_variable_alone():
    assert _fresh_python({ad.ENV_VAR: None, ad.OPT_OUT_VAR: "1"}) == "<unset>"
    assert _fresh_python({ad.ENV_VAR: "/mine", ad.OPT_OUT_VAR: "1"}) == "/mine"


def test_startup_hook_does_not_import_torch_or_nnunetv2():
    code = "import sys; print(sorted(m for m in ('torch', 'nnunetv2', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
