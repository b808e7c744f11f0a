"""Shipped segmenter weights: loading by name or path, errors, the input-scale rule, wbc-v1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemaflow.core.errors import DataError
from hemaflow.lib import seg_nets, seg_weights
from hemaflow.plugins.segment import learned
from hemaflow.plugins.segment.learned import (DeepLabSegmenter, build_model, largest_cell_diameter,
                                               load_weights, predict_cell_size, predict_with_meta,
                                               read_weights_meta, resolve_weights, save_weights,
                                               shipped_weights)
from hemaflow.testing import make, make_context
from tests.plugins.seg_fixtures import field, image_set

TINY_META = {"architecture": "unet", "encoder": "tu-test_resnet", "target": "three_class",
             "scale_rule": "cell_size", "cell_diameter": 24.0, "first_short_side": 64, "input_scale": 0.5}


@pytest.fixture()
def tiny_weights(tmp_path, monkeypatch):
    """A random tiny model saved as ``tiny-v0`` in a temporary weights folder."""
    import torch

    torch.manual_seed(0)
    folder = tmp_path / "weights"
    folder.mkdir()
    save_weights(build_model("unet", "tu-test_resnet", 3), folder / "tiny-v0.safetensors", TINY_META)
    monkeypatch.setattr(seg_weights, "WEIGHTS_DIR", folder)
    return folder / "tiny-v0.safetensors"


def test_weights_load_by_name_and_by_path(tiny_weights):
    assert shipped_weights() == {"tiny-v0": tiny_weights}
    assert resolve_weights("tiny-v0") == tiny_weights
    net, meta = load_weights("tiny-v0")
    assert meta["encoder"] == "tu-test_resnet" and meta["weights"] == "tiny-v0"
    assert next(net.parameters()).dtype.is_floating_point and not net.training
    net2, _ = load_weights(str(tiny_weights))
    for (k, a), (_, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert (a == b).all(), k
    assert read_weights_meta(tiny_weights)["scale_rule"] == "cell_size"


def test_unknown_weights_name_lists_the_shipped_ones(tiny_weights, tmp_path):
    with pytest.raises(DataError, match=r"^tiny-v9: unknown segmenter weights name; did you mean 'tiny-v0'\?; "
                                        r"shipped weights: tiny-v0 \(or give a local .safetensors path\)$"):
        resolve_weights("tiny-v9")
    with pytest.raises(DataError, match="weights file not found"):
        resolve_weights(str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file
    import torch

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DataError, match="not a hemaflow segmenter weights file"):
        load_weights(str(tmp_path / "plain.safetensors"))


def test_component_with_weights_infers_without_training(tiny_weights, tmp_path):
    # no masks in the data set: with weights, nothing trains, so none are needed
    images = image_set(tmp_path / "data", [(field(seed=0)[0], None), (field(size=(45, 71), seed=1)[0], None)])
    comp = make(DeepLabSegmenter, weights="tiny-v0")
    assert comp.check_params() == []
    out = comp.run(make_context(tmp_path / "w"), images=images)
    assert out["masks"].read_mask("im1").shape == (45, 71)
    assert out["model"].meta["encoder"] == "tu-test_resnet" and "best_epoch" not in out["model"].meta
    problems = make(DeepLabSegmenter, weights="wbc-v9").check_params()
    assert problems and problems[0][0] == "/weights" and "shipped weights: tiny-v0" in problems[0][1]


def test_default_params_have_no_weights_key():
    # recipes without `weights` keep the cache key they had before the parameter existed
    from hemaflow.testing import defaults

    assert "weights" not in defaults(DeepLabSegmenter)


def test_cell_size_rule_rescales_to_the_training_cell_size(monkeypatch):
    calls = []

    def fake_predict(model, img, *, mode, scale, device="cpu", tile=1024):
        calls.append(scale)
        h, w = img.shape[:2]
        m = np.zeros((h, w), np.uint8)
        m[: h // 2, : w // 2] = 1  # a cell a quarter of the image
        return m

    monkeypatch.setattr(seg_nets, "predict_mask", fake_predict)
    img = np.zeros((200, 200, 3), np.uint8)
    predict_cell_size(None, img, mode="three_class", cell_diameter=56.4, first_short_side=100)
    # first pass at 100/200; the cell (eq. diameter 112.8 px) should be 56.4 px: scale 0.5 -> no 2nd pass
    assert calls == [0.5]
    calls.clear()
    predict_cell_size(None, img, mode="three_class", cell_diameter=28.2, first_short_side=100)
    assert calls == [0.5, pytest.approx(0.25, rel=1e-2)]
    calls.clear()
    predict_cell_size(None, img, mode="three_class", cell_diameter=1000, first_short_side=100)
    assert calls == [0.5, 1.5]  # never more than 3x away from the first pass
    assert largest_cell_diameter(np.zeros((5, 5), np.uint8)) is None


# -- the shipped model ---------------------------------------------------------------------------
def test_wbc_v1_is_shipped_small_and_documented():
    files = shipped_weights()
    assert "wbc-v1" in files
    assert files["wbc-v1"].stat().st_size < 20e6
    assert files["wbc-v1"].with_suffix(".md").exists()
    meta = read_weights_meta(files["wbc-v1"])
    assert meta["scale_rule"] == "cell_size" and meta["architecture"] in learned.ARCHITECTURES
    assert not any("wbc-crops" in d for d in meta["training"]["data"])  # GPL-3.0 data never trains it


def test_wbc_v1_segments_a_real_crop(shared_data):
    from PIL import Image

    img = np.asarray(Image.open(shared_data / "wbc-crops" / "cellavision" / "001.bmp").convert("RGB"))
    img = np.asarray(Image.fromarray(img).resize((96, 96), Image.BILINEAR))
    truth = np.asarray(Image.open(shared_data / "wbc-crops" / "cellavision" / "001.png").resize((96, 96)))
    net, meta = load_weights("wbc-v1")
    mask = predict_with_meta(net, img, meta)
    assert mask.shape == (96, 96) and mask.dtype == np.uint8 and mask.max() <= 2
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_segment_sources import centre_component, dice

    # the centre cell is found (accuracy is measured in benchmarks/bench_segment_sources.py)
    assert dice(centre_component(mask > 0), centre_component(truth > 64)) > 0.5
