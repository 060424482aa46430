"""Conversions under faults: truncated and corrupt files, a conversion killed with SIGKILL, more folds than
subjects, and a re-run that has nothing to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion.cc359 import convert_cc359
from nnunet_ext.dataset_conversion.common import ConversionError
from nnunet_ext.dataset_conversion.hippocampus_stream import build_hippocampus_stream
from nnunet_ext.dataset_conversion.mnms import convert_mnms
from nnunet_ext.dataset_conversion.msd import convert_msd
from tests.dataset_conversion.layouts import (
    CC_SUBJECTS,
    cc_stem,
    make_cc359,
    make_dryad,
    make_harp,
    make_mnms,
    make_task04,
    snapshot,
)


def cut(path: Path, keep: int) -> Path:
    """Truncate ``path`` in place to its first ``keep`` bytes (negative: drop the last ``-keep``)."""
    path.write_bytes(path.read_bytes()[:keep])
    return path


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture
def cc(tmp_path: Path) -> Path:
    return make_cc359(tmp_path / "CC359")


def cc_image(download: Path, index: int) -> Path:
    return download / "Original" / "Original" / f"{cc_stem(CC_SUBJECTS[index])}.nii.gz"


def cc_mask(download: Path, index: int) -> Path:
    return download / "Silver-standard-machine-learning" / "Silver-standard" / f"{cc_stem(CC_SUBJECTS[index])}_ss.nii.gz"


def test_cc359_truncated_image_and_header_cut_mask_are_listed_by_name(cc: Path, tmp_path: Path) -> None:
    image, mask = cut(cc_image(cc, 0), -64), cut(cc_mask(cc, 5), 100)
    before = snapshot(cc)
    with pytest.raises(ConversionError) as info:
        convert_cc359(cc, 511, tmp_path / "raw")
    message = str(info.value)
    assert f"- {image}: found the gzip stream is cut off" in message
    assert f"- {mask}: found not a NIfTI file, or its header is cut off" in message
    assert "Fix: re-download or re-copy this file" in message and "nothing was written" in message
    assert snapshot(cc) == before
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_mnms_truncated_cine_is_listed_by_name(tmp_path: Path) -> None:
    download = make_mnms(tmp_path / "MnM")
    cine = next(download.rglob("A0S9V9_sa.nii.gz"))
    cut(cine, -200)
    with pytest.raises(ConversionError, match=rf"{cine}: found the gzip stream is cut off"):
        convert_mnms(download, 512, tmp_path / "raw")


def test_msd_truncated_test_image_is_refused_before_nnunetv2_reads_it(tmp_path: Path) -> None:
    task = make_task04(tmp_path / "dl")
    image = task / "imagesTs" / "hippocampus_005.nii.gz"
    cut(image, -30)
    with pytest.raises(ConversionError, match=rf"{image}: found the gzip stream is cut off"):
        convert_msd(task, 513, tmp_path / "raw")


def test_hippocampus_stream_names_a_truncated_label_and_a_corrupt_minc(tmp_path: Path) -> None:
    harp, dryad = make_harp(tmp_path / "HarP"), make_dryad(tmp_path / "Dryad")
    label = dryad / "s02" / "s02_hippolabels_t1w_standard_L_MNI.nii.gz"
    cut(label, -40)
    minc = harp / "100" / "ADNI_002_S_0295_1.mnc"
    cut(minc, 500)
    with pytest.raises(ConversionError) as info:
        build_hippocampus_stream(514, tmp_path / "raw", harp=harp, dryad=dryad, num_stages=2)
    message = str(info.value)
    assert f"- {label}: found the gzip stream is cut off" in message
    assert f"- {minc}: found" in message and "mincconvert -2" in message


def test_conversion_killed_with_sigkill_is_cleaned_up_by_the_next_run(cc: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    child = (
        "import sys, time\n"
        "from nnunet_ext.dataset_conversion.cc359 import convert_cc359\n"
        "def progress(done, total, case):\n"
        "    if done == 3:\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(600)\n"
        f"convert_cc359({str(cc)!r}, 515, {str(raw)!r}, progress=progress)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    left = hidden(raw)
    assert any(n.endswith(".tmp") for n in left) and any(n.endswith(".lock") for n in left), left
    assert not (raw / "Dataset515_CC359").exists()
    folder = convert_cc359(cc, 515, raw)
    assert sorted(p.name for p in raw.iterdir()) == [folder.name]


def test_leftover_without_lock_is_refused_with_the_path_to_delete(cc: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    old_style = raw / ".Dataset516_CC359.k2j4x9q1.tmp"  # what versions without locks left behind
    old_style.mkdir(parents=True)
    with pytest.raises(FileExistsError, match=rf"rm -rf '{old_style}'"):
        convert_cc359(cc, 516, raw)
    old_style.rmdir()
    assert convert_cc359(cc, 516, raw).is_dir()


def test_a_no_op_rerun_removes_leftovers_too(cc: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = convert_cc359(cc, 517, raw)
    (raw / f".{folder.name}.abcd1234.tmp").mkdir()  # a killed --overwrite run: its lock is held by nobody
    (raw / f".{folder.name}.abcd1234.lock").touch()
    assert convert_cc359(cc, 517, raw) == folder
    assert hidden(raw) == []


def test_folds_are_exactly_those_asked_for_or_refused(cc: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "raw"
    # 4 GE 3 T subjects, one held out: 3 training subjects
    with pytest.raises(ValueError, match=r"--folds 5 asks for more folds than there are training subjects \(3\)"):
        convert_cc359(cc, 518, raw, num_folds=5)
    assert not list(raw.glob("*518*")) and not list(raw.glob(".*518*"))
    folder = convert_cc359(cc, 518, raw)
    record = json.loads((folder / "conversion.json").read_text())
    assert len(json.loads((folder / "splits_final.json").read_text())) == record["num_folds_written"] == 3
    assert record["options"]["num_folds"] is None
    assert main(["convert", "cc359", str(cc), "519", "--raw-root", str(raw), "--folds", "4"]) == 2
    assert "Pass --folds 3 or fewer" in capsys.readouterr().err
    assert main(["convert", "cc359", str(cc), "519", "--raw-root", str(raw), "--folds", "3"]) == 0
    assert len(json.loads((raw / "Dataset519_CC359" / "splits_final.json").read_text())) == 3


def test_msd_folds_refused_before_converting(tmp_path: Path) -> None:
    task = make_task04(tmp_path / "dl")  # 4 training cases
    with pytest.raises(ValueError, match=r"--folds 6 .* \(4\)"):
        convert_msd(task, 520, tmp_path / "raw", num_folds=6)
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_cli_says_unchanged_on_a_no_op_and_prints_plain_progress_when_piped(
        cc: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["convert", "cc359", str(cc), "521", "--raw-root", str(tmp_path / "raw")]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert first.out.startswith(f"wrote {tmp_path / 'raw' / 'Dataset521_CC359'}")
    lines = first.err.splitlines()
    assert any(line.endswith(f"convert cc359 1/{len(CC_SUBJECTS)}: writing CC0001") for line in lines), lines
    assert lines[-1].split("] ", 1)[1].startswith(f"convert cc359: done, {len(CC_SUBJECTS)} steps in ")
    assert main(argv) == 0
    second = capsys.readouterr()
    assert second.out.startswith("unchanged: ") and "nothing was written" in second.out.splitlines()[0]
    assert "writing" not in second.err
