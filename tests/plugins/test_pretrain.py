"""instance_encoder: embeddings per fold, pre-training on training patients only (weak, simclr)."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.core.errors import DataError, HemaflowError
from hemaflow.plugins import pretrain
from hemaflow.testing import check_component, make, make_context
from tests.plugins.mil_helpers import kfold_split, synthetic_instances

TINY = {"backbone": "test_convnext", "image_size": 32, "batch_size": 16, "epochs": 1}


@pytest.fixture()
def data(tmp_path):
    _, cells = synthetic_instances(tmp_path, n_patients=6, cells=(3, 5), crop_size=16)
    pl = cells.table.groupby("patient_id")["label"].first()
    return cells, kfold_split(tmp_path, list(pl.index), list(pl.values), k=3)


def test_conformance(registry):
    check_component(pretrain.InstanceEncoder)
    assert registry.get("features", "instance_encoder") is pretrain.InstanceEncoder


def test_no_pretraining_gives_one_embedding_per_cell(tmp_path, data):
    cells, _ = data
    out = make(pretrain.InstanceEncoder, **TINY, pretrain="none").run(make_context(tmp_path / "a"), cells=cells)
    emb = out["embeddings"]
    assert "fold" not in emb.table.columns and len(emb.table) == len(cells.table)
    assert list(emb.table["cell_id"]) == list(cells.table["cell_id"])
    assert len(emb.feature_columns) == 64 and emb.feature_columns[0] == "emb_000"
    assert (out["model"].path / "encoder.safetensors").exists()
    again = make(pretrain.InstanceEncoder, **TINY, pretrain="none").run(make_context(tmp_path / "b"), cells=cells)
    assert np.array_equal(emb.table[emb.feature_columns].to_numpy(), again["embeddings"].table[emb.feature_columns].to_numpy())


@pytest.mark.parametrize("mode", ["weak", "simclr"])
def test_pretraining_sees_only_the_folds_training_patients(tmp_path, data, monkeypatch, mode):
    cells, split = data
    seen = []
    real = pretrain.pretrain_fold

    def spy(backbone, crops, y, val_crops, val_y, *args, **kwargs):
        seen.append((len(crops), len(val_crops)))
        return real(backbone, crops, y, val_crops, val_y, *args, **kwargs)

    from hemaflow.plugins import encoders

    monkeypatch.setattr(encoders, "pretrain_fold", spy)
    out = make(pretrain.InstanceEncoder, **TINY, pretrain=mode).run(make_context(tmp_path / mode), cells=cells, split=split)
    per_patient = cells.table.groupby("patient_id").size()
    for fold, (n_train, n_val) in zip(split.folds(), seen):
        tr = per_patient[sorted(split.patients(fold, "train"))].sum()
        va = per_patient[sorted(split.patients(fold, "val"))].sum()
        assert (n_train, n_val) == ((tr, va) if mode == "weak" else (tr + va, va))
    emb = out["embeddings"].table
    assert sorted(emb["fold"].unique()) == split.folds() and len(emb) == 3 * len(cells.table)
    assert sorted(p.name for p in out["model"].path.glob("fold*.safetensors")) == ["fold0.safetensors", "fold1.safetensors", "fold2.safetensors"]
    hist = out["model"].meta["folds"][0]["history"]
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
    assert ("val_loss" in hist[0]) == (mode == "weak")
    # folds differ: each fold's encoder was trained on other patients
    cols = out["embeddings"].feature_columns
    assert not np.allclose(emb.loc[emb.fold == 0, cols].to_numpy(), emb.loc[emb.fold == 1, cols].to_numpy())


def test_nt_xent_prefers_matching_views():
    import torch

    torch.manual_seed(0)
    z = torch.randn(8, 4)
    assert float(pretrain.nt_xent(z, z, 0.1)) < float(pretrain.nt_xent(z, torch.randn(8, 4), 0.1))


def test_errors_are_clear(tmp_path, data):
    cells, _ = data
    with pytest.raises(DataError, match="pretrain: weak needs a `split` input"):
        make(pretrain.InstanceEncoder, **TINY).run(make_context(tmp_path / "a"), cells=cells)
    with pytest.raises(DataError, match="pretrained weights file not found; `pretrained` must be a local file"):
        make(pretrain.InstanceEncoder, **TINY, pretrain="none", pretrained=str(tmp_path / "nope.pth")).run(
            make_context(tmp_path / "b"), cells=cells)
    with pytest.raises(HemaflowError, match="unknown timm model 'no_such_net'"):
        make(pretrain.InstanceEncoder, **{**TINY, "backbone": "no_such_net"}, pretrain="none").run(
            make_context(tmp_path / "c"), cells=cells)


def test_local_pretrained_file_is_loaded(tmp_path, data):
    from safetensors.torch import save_file

    cells, _ = data
    backbone = pretrain.create_backbone("test_convnext")
    state = {k: v.clone().fill_(0.5) if v.is_floating_point() else v.clone() for k, v in backbone.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = pretrain.create_backbone("test_convnext", pretrained=str(tmp_path / "w.safetensors"))
    assert all(float(v.float().mean()) == pytest.approx(0.5) for k, v in loaded.state_dict().items() if v.is_floating_point())


def test_augment_keeps_the_cell_size():
    """Crops are fixed windows: a cell's size in pixels is a cue, augmentation must not zoom it away."""
    import torch

    yy, xx = np.mgrid[:48, :48]
    disk = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2 <= 10 ** 2)
    x = torch.from_numpy(np.where(disk, -2.0, 2.0).astype(np.float32))[None, None].repeat(64, 3, 1, 1)
    out = pretrain.augment(x, torch.Generator().manual_seed(0)).mean(dim=1)
    lo, hi = out.amin(dim=(1, 2), keepdim=True), out.amax(dim=(1, 2), keepdim=True)
    area = (out < (lo + hi) / 2).sum(dim=(1, 2)).float() / disk.sum()
    assert area.min() > 0.75 and area.max() < 1.35, (float(area.min()), float(area.max()))


def test_stain_jitter_changes_stain_not_shape_and_is_off_by_default():
    import torch

    from hemaflow.plugins.pretrain import crops_to_tensor, stain_jitter

    crops = np.full((4, 32, 32, 3), 128, np.uint8)
    crops[:, 8:24, 8:24] = (90, 50, 140)  # a purple nucleus on neutral grey
    x = crops_to_tensor(crops, 32)
    assert stain_jitter(x, torch.Generator().manual_seed(0), 0.0) is x
    y = stain_jitter(x, torch.Generator().manual_seed(0), 0.1)
    assert y.shape == x.shape and torch.isfinite(y).all()
    d = (y - x).abs()
    assert float(d[:, :, 8:24, 8:24].mean()) > 0.02  # the stained region changes colour ...
    assert float(d[:, :, 14, 14].std()) > 0.0  # ... differently per crop
    # ... and stays one flat region: no new structure inside the nucleus
    assert float(y[:, :, 9:23, 9:23].std(dim=(2, 3)).max()) < 1e-4
    y2 = stain_jitter(x, torch.Generator().manual_seed(0), 0.1)
    assert torch.equal(y, y2)  # seeded


def test_stain_jitter_off_keeps_the_cache_key_of_earlier_runs():
    from hemaflow.plugins.pretrain import InstanceEncoder
    from hemaflow.testing import make

    assert "stain_jitter" not in make(InstanceEncoder).cache_params()
    assert make(InstanceEncoder, stain_jitter=0.05).cache_params()["stain_jitter"] == 0.05


def test_pretraining_and_embedding_follow_the_run_device(tmp_path, data, monkeypatch):
    """The run's device reaches the pre-training loop and the embedding (``device: auto`` is CUDA
    on a GPU machine); on CUDA, the embeddings agree with the CPU's (skipped without a GPU)."""
    import torch

    from hemaflow.plugins import encoders

    cells, split = data
    seen = []
    real_fit, real_embed = encoders.pretrain_fold, encoders.embed
    monkeypatch.setattr(encoders, "pretrain_fold", lambda *a, **k: seen.append(("fit", k["device"])) or real_fit(*a, **k))
    monkeypatch.setattr(encoders, "embed", lambda *a, **k: seen.append(("embed", k["device"])) or real_embed(*a, **k))
    cpu = make(pretrain.InstanceEncoder, **TINY, pretrain="weak").run(make_context(tmp_path / "c", device="cpu"),
                                                                       cells=cells, split=split)
    assert set(seen) == {("fit", "cpu"), ("embed", "cpu")} and len(seen) == 2 * len(split.folds())
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CPU half ran")
    gpu = make(pretrain.InstanceEncoder, **TINY, pretrain="weak").run(make_context(tmp_path / "g", device="cuda"),
                                                                       cells=cells, split=split)
    cols = cpu["embeddings"].feature_columns
    a = cpu["embeddings"].table[cols].to_numpy()
    b = gpu["embeddings"].table[cols].to_numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert cos.min() > 0.99
