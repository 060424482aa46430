import os
import subprocess
import sys

from nnunet_ext import _autodiscover as ad
from nnunet_ext.cli import doctor
from tests.conftest import environ_with


def _run_doctor(env_updates: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = environ_with({**env_updates, "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "nnunet_ext", "doctor"], env=env, capture_output=True, text=True)


def test_path_var_checks(tmp_path):
    ok = tmp_path / "raw"
    ok.mkdir()
    checks = {c.name: c for c in doctor.check_path_vars(
        {"nnUNet_raw": str(ok), "nnUNet_preprocessed": str(tmp_path / "missing")})}
    assert checks["nnUNet_raw"].status == "ok"
    assert checks["nnUNet_preprocessed"].status == "fail" and "mkdir -p" in checks["nnUNet_preprocessed"].fix
    assert checks["nnUNet_results"].status == "fail" and "export nnUNet_results" in checks["nnUNet_results"].fix


def test_discovery_check_fails_without_our_folder_and_names_the_fix():
    checks = doctor.check_discovery({ad.ENV_VAR: "/somewhere/else", ad.OPT_OUT_VAR: "1"})
    by_name = {c.name: c for c in checks}
    assert by_name["auto-discovery"].status == "fail"
    assert by_name[ad.ENV_VAR].status == "fail" and ad.TRAINER_FOLDER in by_name[ad.ENV_VAR].fix


def test_real_lookup_check():
    assert doctor.lookup_check("nnUNetTrainerCPU_smoke").status == "ok"
    bad = doctor.lookup_check("nnUNetTrainerNoSuchThing_x")
    assert bad.status == "fail" and bad.fix


def test_doctor_exit_codes(tmp_path):
    dirs = {v: str(tmp_path / v) for v in doctor.PATH_VARS}
    for d in dirs.values():
        os.makedirs(d)
    good = _run_doctor({**dirs, ad.ENV_VAR: None, ad.OPT_OUT_VAR: None})
    assert good.returncode == 0, good.stdout + good.stderr
    for word in ("python", "torch", "nnunetv2", "nnunet-ext", "nnUNet_raw", "lookup nnUNetTrainerCPU_smoke",
                 "device"):
        assert word in good.stdout
    broken = _run_doctor({**dirs, "nnUNet_results": None, ad.ENV_VAR: None, ad.OPT_OUT_VAR: "1"})
    assert broken.returncode == 1
    assert "export nnUNet_results" in broken.stdout
    assert "problem(s)" in broken.stdout
