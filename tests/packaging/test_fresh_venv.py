"""Acceptance: in a fresh venv, after ``pip install .`` and after ``pip install -e .``, the stock
nnU-Net commands resolve our trainers with nothing exported; uninstall leaves nothing behind; nothing is
written into nnunetv2's folder.

To stay fast and offline the venv sees the heavy dependencies (torch, ...) of this interpreter through a
plain path line (``.pth`` files in that folder are *not* processed, so this interpreter's own nnunet-ext
hook does not leak in). nnunetv2 itself is installed into the venv so its console scripts live there.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext import _autodiscover as ad
SMOKE_TRAINER = "nnUNetTrainerCPU_smoke"

pytestmark = [pytest.mark.packaging, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


def _sh(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _snapshot(folder: Path) -> dict[str, float]:
    """Files under ``folder`` with their mtimes, without bytecode caches."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _make_venv(tmp: Path) -> tuple[Path, Path]:
    venv = tmp / "venv"
    _sh([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    venv_site = Path(_sh([py, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip())
    (venv_site / "zz_parent_site_packages.pth").write_text(site.getsitepackages()[0] + "\n")
    _sh([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "nnunetv2==2.8.1"])
    return py, venv_site


def _copy_source(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "nnunet_ext", src / "nnunet_ext", ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_fresh_venv_install_discovery_uninstall(tmp_path, editable, smoke_model, tiny_workspace):
    py, venv_site = _make_venv(tmp_path)
    src = _copy_source(tmp_path)
    nnunet_dir = venv_site / "nnunetv2"
    before_site = {p.name for p in venv_site.iterdir()}
    before_nnunet = _snapshot(nnunet_dir)

    _sh([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *(["-e"] if editable else []), src])
    env = {k: v for k, v in tiny_workspace.env.items() if k not in (ad.ENV_VAR, ad.OPT_OUT_VAR)}
    expected_folder = (src if editable else venv_site) / "nnunet_ext" / "_discovery"

    # the start-up hook registers the installed copy, nothing else
    out = _sh([py, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env).stdout.strip()
    assert out.split(os.pathsep) == [str(expected_folder)]
    out = _sh([py, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"],
              dict(env, nnUNet_extTrainer="/users/own")).stdout.strip()
    assert out.split(os.pathsep) == ["/users/own", str(expected_folder)]
    out = _sh([py, "-c", "import os; print(os.environ.get('nnUNet_extTrainer', '<unset>'))"],
              dict(env, NNUNET_EXT_NO_AUTODISCOVERY="1")).stdout.strip()
    assert out == "<unset>"

    # nnUNetv2_train resolves our trainer by name: --val (nnU-Net's validation of a trained fold, here a copy of the
    # smoke model) goes through the same lookup as training, without training again
    bin_dir = py.parent
    results = tmp_path / "results"
    copied = results / smoke_model.parent.name / smoke_model.name
    shutil.copytree(smoke_model, copied, ignore=shutil.ignore_patterns("validation"))
    train = _sh([bin_dir / "nnUNetv2_train", tiny_workspace.dataset_id, "2d", "0", "-tr", SMOKE_TRAINER,
                 "-device", "cpu", "--val"], dict(env, nnUNet_n_proc_DA="0", nnUNet_results=str(results)))
    assert f"Using trainer '{SMOKE_TRAINER}' from: {expected_folder}" in train.stdout
    assert (copied / "fold_0" / "validation" / "summary.json").is_file()

    # both predict commands resolve it from the checkpoint's trainer_name
    images = tiny_workspace.dataset_dir / "imagesTs"
    n_cases = len(list(images.glob("*_0000.nii.gz")))
    predict = _sh([bin_dir / "nnUNetv2_predict", "-i", images, "-o", tmp_path / "pred", "-d",
                   tiny_workspace.dataset_id, "-c", "2d", "-f", "0", "-tr", SMOKE_TRAINER, "-device", "cpu",
                   "-npp", "1", "-nps", "1", "--disable_progress_bar"], env)
    assert f"Using trainer '{SMOKE_TRAINER}' from: {expected_folder}" in predict.stdout
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == n_cases
    predict_mf = _sh([bin_dir / "nnUNetv2_predict_from_modelfolder", "-i", images, "-o", tmp_path / "pred_mf",
                      "-m", smoke_model, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                      "--disable_progress_bar"], env)
    assert f"Using trainer '{SMOKE_TRAINER}' from: {expected_folder}" in predict_mf.stdout
    assert len(list((tmp_path / "pred_mf").glob("*.nii.gz"))) == n_cases

    # uninstall leaves nothing behind and the hook is gone
    _sh([py, "-m", "pip", "uninstall", "-y", "nnunet-ext"])
    assert {p.name for p in venv_site.iterdir()} == before_site
    out = _sh([py, "-c", "import os; print(os.environ.get('nnUNet_extTrainer', '<unset>'))"], env).stdout.strip()
    assert out == "<unset>"
    # nothing was written into nnunetv2's own package folder
    assert _snapshot(nnunet_dir) == before_nnunet
