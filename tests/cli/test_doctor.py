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


def test_path_var_fixes_fit_the_problem(tmp_path, monkeypatch):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    check = doctor.path_var_check("nnUNet_results", str(a_file))
    assert check.status == "fail" and "is a file, not a folder" in check.detail
    assert check.fix.startswith("point nnUNet_results at a folder (export nnUNet_results=")
    under_file = doctor.path_var_check("nnUNet_raw", str(a_file / "raw"))
    assert under_file.status == "fail" and f"{a_file} is a file" in under_file.detail and "mkdir" not in under_file.fix
    missing = doctor.path_var_check("nnUNet_raw", str(tmp_path / "new" / "raw"))
    assert missing.status == "fail" and missing.fix == f"mkdir -p {tmp_path / 'new' / 'raw'}"
    monkeypatch.setattr(doctor, "_writable", lambda path: False)
    monkeypatch.setattr(doctor, "_read_only_fs", lambda path: True)
    read_only = doctor.path_var_check("nnUNet_raw", str(tmp_path))
    assert "read-only file system" in read_only.detail and "chmod" not in read_only.fix
    assert "export nnUNet_raw=" in read_only.fix
    monkeypatch.setattr(doctor, "_read_only_fs", lambda path: False)
    denied = doctor.path_var_check("nnUNet_raw", str(tmp_path))
    assert denied.status == "fail" and denied.fix == f"chmod u+wx {tmp_path}"


def test_unset_path_vars_are_a_warning_until_some_are_set(tmp_path):
    fresh = doctor.check_path_vars({})
    assert [c.status for c in fresh] == ["warn"] * 3
    assert [c.fix.split("  ")[0] for c in fresh] == doctor.suggested_exports()[:3]
    half = {c.name: c for c in doctor.check_path_vars({"nnUNet_raw": str(tmp_path)})}
    assert half["nnUNet_raw"].status == "ok"
    assert half["nnUNet_results"].status == "fail"
    assert half["nnUNet_results"].detail == "not set, although nnUNet_raw is set"


def test_missing_ext_trainer_entry_is_reported_with_the_value_without_it(tmp_path):
    gone = str(tmp_path / "gone")
    value = os.pathsep.join([gone, ad.TRAINER_FOLDER])
    rows = [c for c in doctor.check_discovery({ad.ENV_VAR: value}) if c.name == f"{ad.ENV_VAR} entry"]
    assert len(rows) == 1 and rows[0].status == "warn" and gone in rows[0].detail and "does not exist" in rows[0].detail
    assert rows[0].fix == f"export {ad.ENV_VAR}={ad.TRAINER_FOLDER}"


def _fake_lifelong(site):
    """An installed distribution named like Lifelong-nnUNet's: import name nnunet_ext, a clashing trainer."""
    dist_info = site / "nnunet_ext-0.0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: nnunet_ext\nVersion: 0.0.0\n")
    module = site / "nnunet_ext" / "training" / "network_training" / "nnUNetTrainerSequential.py"
    module.parent.mkdir(parents=True)
    module.write_text("class nnUNetTrainerSequential(nnUNetTrainerMultiHead):\n    pass\n")
    (dist_info / "RECORD").write_text("nnunet_ext/__init__.py,,\n"
                                      "nnunet_ext/training/network_training/nnUNetTrainerSequential.py,,\n"
                                      "nnunet_ext-0.0.0.dist-info/METADATA,,\nnnunet_ext-0.0.0.dist-info/RECORD,,\n")


def test_shadowing_by_another_distribution_and_ext_trainer_folders(tmp_path, monkeypatch):
    names = {"nnUNetTrainerSequential", "nnUNetTrainerODEx"}
    assert [c.status for c in doctor.check_shadowing(names, environ={})] == ["ok"]
    site = tmp_path / "site"
    _fake_lifelong(site)
    monkeypatch.syspath_prepend(str(site))
    rows = [c for c in doctor.check_shadowing(names, environ={}) if str(site) in c.detail]
    assert {(c.name, c.status) for c in rows} == {("import name nnunet_ext", "warn"), ("trainer names", "warn")}
    assert any("defines nnUNetTrainerSequential" in c.detail for c in rows)
    other = tmp_path / "other_trainers"
    other.mkdir()
    (other / "mine.py").write_text("class nnUNetTrainerODEx:\n    pass\n")
    for value, status in ((os.pathsep.join([str(other), ad.TRAINER_FOLDER]), "fail"),
                          (os.pathsep.join([ad.TRAINER_FOLDER, str(other)]), "warn")):
        found = [c for c in doctor.check_shadowing(names, environ={ad.ENV_VAR: value}) if str(other) in c.detail]
        assert [c.status for c in found] == [status] and "nnUNetTrainerODEx" in found[0].detail


def test_doctor_after_the_demo_exits_0_with_export_lines_unwrapped():
    env = {v: None for v in doctor.PATH_VARS}
    result = subprocess.run([sys.executable, "-m", "nnunet_ext", "doctor"], capture_output=True, text=True,
                            env=environ_with({**env, ad.ENV_VAR: None, ad.OPT_OUT_VAR: None, "COLUMNS": "40"}))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for export in doctor.suggested_exports():
        assert f"  {export}" in lines
    assert any(line.strip() == 'fix: export nnUNet_results="$HOME/nnUNet_data/nnUNet_results"  '
               '(then mkdir -p "$nnUNet_results")' for line in lines)
    assert "not set yet" in result.stdout and "problem(s)" not in result.stdout
