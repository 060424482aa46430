"""Checkpoints are loaded without running code from them and written atomically."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_ext.utils import checkpoint_io
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely, save_torch_atomic
from tests.payload import Payload


def _nnunet_like_checkpoint() -> dict:
    """The value types of a checkpoint nnU-Net 2.8 writes after training (numpy scalars from its logger)."""
    return {
        "network_weights": {"conv.weight": torch.randn(2, 1, 3, 3)},
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": [{"lr": 0.01}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [np.float64(0.5)],
                    "dice_per_class_or_region": [[np.float64(0.4), np.float32(0.7)]], "lrs": [0.01],
                    "epoch_start_timestamps": [1.0]},
        "_best_ema": np.float64(0.55),
        "current_epoch": 2,
        "init_args": {"plans": {"plans_name": "nnUNetPlans"}, "configuration": "2d", "fold": 0,
                      "dataset_json": {"labels": {"background": 0}}, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1),
        "numbers": [np.int64(3), np.int32(4), np.bool_(True), np.float16(1.5), np.dtype("float32")],
    }


def test_a_reduce_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "payload": Payload(marker)}, path)
    with pytest.raises(ValueError) as error:
        load_checkpoint_safely(path)
    assert not marker.exists()
    message = str(error.value)
    assert str(path) in message and "plant" in message and "only load model folders you trust" in message.lower()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_plain_weights_only_refuses_nnunets_numpy_scalars():
    buffer = io.BytesIO()
    torch.save(_nnunet_like_checkpoint(), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(buffer, weights_only=True)


def test_an_nnunet_checkpoint_with_numpy_scalars_loads_with_its_values(tmp_path):
    original = _nnunet_like_checkpoint()
    save_torch_atomic(original, tmp_path / "ckpt.pth")
    loaded = load_checkpoint_safely(tmp_path / "ckpt.pth", map_location="cpu")
    assert loaded["_best_ema"] == original["_best_ema"] and type(loaded["_best_ema"]) is np.float64
    assert loaded["logging"] == original["logging"] and loaded["numbers"] == original["numbers"]
    assert loaded["init_args"] == original["init_args"]
    torch.testing.assert_close(loaded["network_weights"]["conv.weight"], original["network_weights"]["conv.weight"])
    # the allow-list applied to this one call only
    assert not set(checkpoint_io.numpy_safe_globals()) & set(torch.serialization.get_safe_globals())


def test_numpy_1_spelling_of_the_scalar_reconstructor_is_allowed():
    paths = {g[1] for g in checkpoint_io.numpy_safe_globals() if isinstance(g, tuple)}
    assert paths == {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"}


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "folder"])
def test_missing_or_damaged_files_give_an_error_naming_them(damage, tmp_path):
    path = tmp_path / "checkpoint_latest.pth"
    save_torch_atomic(_nnunet_like_checkpoint(), path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(ValueError, match="checkpoint_latest.pth"):
        load_checkpoint_safely(path)


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected the dict"):
        load_checkpoint_safely(tmp_path / "list.pth")


def test_a_failing_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    save_torch_atomic({"epoch": 1}, path)
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_torch_atomic({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
