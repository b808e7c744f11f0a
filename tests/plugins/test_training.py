from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hemaflow.core.errors import DataError
from hemaflow.lib.training import (
    TRAIN_SCHEMA,
    Augment,
    TensorDictDataset,
    balanced_accuracy,
    class_weights,
    fit,
    load_checkpoint,
    predict_proba,
    recipe_hash,
    report_learning_curves,
    save_checkpoint,
    seed_everything,
    train_config,
    write_history,
    _lr_factor,
)
from hemaflow.testing import make_context


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=48, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


def _forward(m, b):
    return m(b["x"])


def _fit(tmp_path, seed=0, **cfg):
    x, y = _data()
    train = TensorDictDataset(x=x[:32], y=y[:32])
    val = TensorDictDataset(x=x[32:], y=y[32:])
    seed_everything(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ctx = make_context(tmp_path, seed=seed)
    res = fit(model, train, val, forward=_forward, config=train_config(cfg), ctx=ctx, classes=["a", "b"], name="fold0")
    return model, res, val, ctx


def test_train_config_defaults_and_overrides():
    cfg = train_config({"epochs": 2, "not_a_train_key": 1}, lr=0.1)
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.1 and "not_a_train_key" not in cfg
    assert cfg["augment"] == {"flip": True, "rot90": True, "affine": 0.0, "color_jitter": 0.1, "blur": 0.0}
    assert all("description" in v for v in TRAIN_SCHEMA.values())


def test_fit_learns_and_selects_on_val(tmp_path):
    model, res, val, _ = _fit(tmp_path, epochs=15, batch_size=8, lr=0.05, patience=0, warmup_epochs=0)
    assert len(res.history) == 15
    assert set(res.history[0]) >= {"epoch", "lr", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy"}
    best = res.history[res.best_epoch - 1]
    assert best["val_balanced_accuracy"] == max(h["val_balanced_accuracy"] for h in res.history)
    model.load_state_dict(res.best_state_dict)
    probs = predict_proba(model, val, forward=_forward)
    assert probs.shape == (16, 2)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    assert balanced_accuracy(val.labels, probs.argmax(1)) == pytest.approx(best["val_balanced_accuracy"])
    assert best["val_balanced_accuracy"] > 0.75


def test_fit_is_deterministic_for_a_seed(tmp_path):
    _, r1, _, _ = _fit(tmp_path / "a", epochs=3, batch_size=8, class_weighting="sampler")
    _, r2, _, _ = _fit(tmp_path / "b", epochs=3, batch_size=8, class_weighting="sampler")
    _, r3, _, _ = _fit(tmp_path / "c", seed=5, epochs=3, batch_size=8, class_weighting="sampler")
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(r1.history) == drop(r2.history)
    for k in r1.best_state_dict:
        assert torch.equal(r1.best_state_dict[k], r2.best_state_dict[k])
    assert drop(r1.history) != drop(r3.history)


def test_early_stopping_stops_after_patience(tmp_path):
    # lr 0: validation never improves after epoch 1, so training stops `patience` epochs later
    _, res, _, _ = _fit(tmp_path, epochs=30, batch_size=8, lr=0.0, patience=2)
    assert res.stopped_early
    assert res.best_epoch == 1 and len(res.history) == 3
    assert [h["selected"] for h in res.history] == [True, False, False]


def test_lr_schedule_warmup_then_cosine():
    assert _lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert _lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert _lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert _lr_factor(100, 100, 10, "cosine") == pytest.approx(0.01)
    assert _lr_factor(55, 100, 10, "constant") == 1.0


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [4 / 6, 2.0, 0.0])


def test_augment_moves_image_and_mask_together():
    seed_everything(0)
    aug = Augment({"flip": True, "rot90": True, "affine": 1.0, "color_jitter": 0.0, "blur": 0.0})
    img = torch.zeros(3, 16, 16)
    img[:, 2:6, 3:9] = 1.0
    mask = (img[0] > 0).to(torch.uint8)
    for _ in range(10):
        a, m = aug(img, mask)
        assert a.shape == img.shape and m.shape == mask.shape and m.dtype == torch.uint8
        # the mask still marks where the bright object went
        assert a[0][m.bool()].mean() > 0.8
        assert a[0][~m.bool()].mean() < 0.2


def test_augment_colour_leaves_mask_untouched():
    seed_everything(0)
    aug = Augment({"flip": False, "rot90": False, "affine": 0.0, "color_jitter": 0.3, "blur": 1.0})
    img = torch.rand(3, 8, 8)
    mask = torch.randint(0, 3, (8, 8), dtype=torch.uint8)
    a, m = aug(img, mask)
    assert torch.equal(m, mask)
    assert not torch.equal(a, img)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_checkpoint_roundtrip_keeps_metadata(tmp_path):
    model, res, _, _ = _fit(tmp_path, epochs=1)
    meta = {"recipe_hash": recipe_hash({"name": "x"}), "classes": ["a", "b"], "epoch": res.best_epoch}
    path = save_checkpoint(tmp_path / "m" / "fold0.safetensors", res.best_state_dict, meta)
    state, got = load_checkpoint(path)
    assert got == meta
    assert set(state) == set(res.best_state_dict)
    assert all(torch.equal(state[k], res.best_state_dict[k]) for k in state)
    assert recipe_hash({"name": "x"}) != recipe_hash({"name": "y"})


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable safetensors checkpoint"):
        load_checkpoint(bad)


def test_history_csv_and_report_figure(tmp_path):
    _, res, _, ctx = _fit(tmp_path, epochs=2)
    path = write_history(tmp_path / "history.csv", {"fold0": res.history, "fold1": res.history})
    lines = path.read_text().splitlines()
    assert lines[0].startswith("run,epoch,lr,train_loss,val_loss")
    assert len(lines) == 5
    report_learning_curves(ctx, {"fold0": res.history})
    items = json.loads((ctx.workdir / "_report" / "items.json").read_text())
    assert items[-1]["type"] == "svg" and items[-1]["title"] == "Learning curves"


def test_fit_without_val_keeps_last_epoch(tmp_path):
    x, y = _data()
    model = torch.nn.Linear(6, 2)
    res = fit(model, TensorDictDataset(x=x, y=y), None, forward=_forward, config=train_config(epochs=3),
              ctx=make_context(tmp_path))
    assert res.best_epoch == 3 and "val_loss" not in res.history[0]
