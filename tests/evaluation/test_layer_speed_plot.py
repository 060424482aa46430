import json

import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.evaluation.layer_speed import find_layer_speed, plot_layer_speed, spread


def _record(folder, optimizer, scale):
    folder.mkdir(parents=True)
    record = {"groups": {"encoder.a.weight": "context", "decoder.seg_layers.0.weight": "segmentation"},
              "optimizer": optimizer, "epochs": [0, 1],
              "updates": {"encoder.a.weight": [1e-4 * scale, 1e-4 * scale], "decoder.seg_layers.0.weight": [1e-2, 1e-2]}}
    (folder / "layer_speed.json").write_text(json.dumps(record))
    return record


def test_spread_and_plot(tmp_path):
    sgd = _record(tmp_path / "sgd" / "fold_0", "SGD", 1.0)
    _record(tmp_path / "ag" / "fold_0", "AvaGrad", 50.0)
    assert spread(sgd) == pytest.approx(100.0)
    spreads = plot_layer_speed([tmp_path / "sgd", tmp_path / "ag" / "fold_0"], tmp_path / "fig.png", ["SGD", "AG"])
    assert spreads == pytest.approx({"SGD": 100.0, "AG": 2.0})
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="_layerspeed"):
        find_layer_speed(tmp_path)
    assert main(["plot-layer-speed", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
