"""Foundation-model encoders from local weights: DinoBloom / DINOv2 checkpoints through the one
weights loader, and embeddings cached by the weights file's content."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from hemaflow.core.errors import DataError
from hemaflow.plugins import pretrain
from hemaflow.plugins.artifacts import CellSet
from hemaflow.plugins.features import EmbeddingFeatures, load_backbone_weights, weights_sha256
from hemaflow.testing import make, make_context

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DINO = "vit_small_patch14_dinov2"  # DinoBloom-S's architecture (ViT-S/14, 384-d)


@pytest.fixture()
def shallow_vit(monkeypatch):
    """Build DinoBloom-S's architecture with one transformer block instead of twelve: the same key
    layout and shapes per block, a 7 MB checkpoint instead of 88 MB."""
    import timm

    real = timm.create_model

    def create(name, *args, **kwargs):
        if name == DINO:
            kwargs.setdefault("depth", 1)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    return create


def reference_vit(shallow_vit, seed: int = 0, img_size: int = 224):
    torch.manual_seed(seed)
    return shallow_vit(DINO, pretrained=False, num_classes=0, img_size=img_size).eval()


def write_dinobloom(path, model) -> dict:
    """A checkpoint in exactly DinoBloom's layout: {"teacher": backbone.* (DINOv2 names, with
    mask_token), dino_head.*, ibot_head.*}."""
    dim = model.embed_dim
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    teacher["backbone.mask_token"] = torch.zeros(1, dim)
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, dim)
    teacher["dino_head.last_layer.weight_g"] = torch.ones(32, 1)
    teacher["ibot_head.mlp.0.weight"] = torch.randn(16, dim)
    torch.save({"teacher": teacher}, path)
    return teacher


@pytest.fixture()
def cells(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cells"
    d.mkdir()
    np.save(d / "crops.npy", rng.integers(0, 255, (4, 40, 40, 3), dtype=np.uint8))
    np.save(d / "crop_masks.npy", np.ones((4, 40, 40), np.uint8))
    t = pd.DataFrame({"cell_id": [f"i{k}:0" for k in range(4)], "image_id": [f"i{k}" for k in range(4)],
                      "patient_id": ["P0", "P0", "P1", "P1"], "label": ["AML", "AML", "NORMAL", "NORMAL"],
                      "crop_index": range(4)})
    return CellSet(d, t, {"crop_size": 40, "classes": ["AML", "NORMAL"]}).save()


def test_dinobloom_layout_is_loaded_exactly(tmp_path, shallow_vit, cells):
    ref = reference_vit(shallow_vit)
    teacher = write_dinobloom(tmp_path / "dinobloom-s.pth", ref)
    assert tuple(teacher["backbone.pos_embed"].shape) == (1, 257, 384)  # 16 x 16 patches of 14 px + class token
    x = pretrain.crops_to_tensor(np.array(cells.crops), 224)
    with torch.no_grad():
        want = ref(x).numpy()
    # instance_encoder, frozen (pretrain: none), as the docs recommend for DinoBloom
    enc = make(pretrain.InstanceEncoder, backbone=DINO, pretrained=str(tmp_path / "dinobloom-s.pth"),
               pretrain="none", image_size=224, batch_size=2)
    out = enc.run(make_context(tmp_path / "a"), cells=cells)["embeddings"]
    got = out.table[out.feature_columns].to_numpy(np.float32)
    assert got.shape == (4, 384)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the embeddings component through the same loader: same vectors, and it says what it loaded
    ft = make(EmbeddingFeatures, model=DINO, checkpoint=str(tmp_path / "dinobloom-s.pth"), input_size=224).run(
        make_context(tmp_path / "b"), cells=cells)["features"]
    np.testing.assert_allclose(ft.table[ft.feature_columns].to_numpy(np.float32), want, atol=1e-4)
    w = ft.meta["provenance"]["weights"]
    assert w["layout"] == "dino_teacher" and w["prefix"] == "backbone." and w["ignored_keys"] == 1  # mask_token
    assert w["sha256"] == weights_sha256(tmp_path / "dinobloom-s.pth")


def test_plain_dinov2_and_timm_state_dicts(tmp_path, shallow_vit):
    # original DINOv2 release: no prefix, mask_token, position embeddings for 518 px (37 x 37 + 1)
    big = reference_vit(shallow_vit, seed=1, img_size=518)
    state = dict(big.state_dict())
    assert tuple(state["pos_embed"].shape) == (1, 1370, 384)
    state["mask_token"] = torch.zeros(1, 384)
    torch.save(state, tmp_path / "dinov2_vits14.pth")
    model = shallow_vit(DINO, pretrained=False, num_classes=0, img_size=224)
    info = load_backbone_weights(model, tmp_path / "dinov2_vits14.pth")
    assert info["layout"] == "state_dict" and info["prefix"] == ""
    assert tuple(model.pos_embed.shape) == (1, 257, 384)  # resampled to the 224 px grid by timm's filter
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed[:, 0], big.pos_embed[:, 0])  # the class token's is kept as is
    # a timm (safetensors) state dict of the same architecture
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference_vit(shallow_vit, seed=2).state_dict().items()},
              str(tmp_path / "timm.safetensors"))
    m2 = pretrain.create_backbone(DINO, pretrained=str(tmp_path / "timm.safetensors"), img_size=224)
    torch.testing.assert_close(m2.norm.weight, reference_vit(shallow_vit, seed=2).norm.weight)


def test_wrong_architecture_is_a_clear_error(tmp_path, shallow_vit):
    write_dinobloom(tmp_path / "s.pth", reference_vit(shallow_vit))
    with pytest.raises(DataError, match=r"s.pth: checkpoint does not fit the model \(.*weight\(s\) missing"):
        pretrain.create_backbone("vit_base_patch14_dinov2", pretrained=str(tmp_path / "s.pth"), img_size=224)


def test_cache_key_follows_the_weights_content_not_the_path(tmp_path, shallow_vit):
    write_dinobloom(tmp_path / "w.pth", reference_vit(shallow_vit, seed=0))
    shutil.copy(tmp_path / "w.pth", tmp_path / "copy.pth")

    def enc(path, **kw):
        return make(pretrain.InstanceEncoder, backbone=DINO, pretrained=str(path), pretrain="none", image_size=224, **kw)

    a, b = enc(tmp_path / "w.pth"), enc(tmp_path / "copy.pth")
    assert a.fingerprint() == b.fingerprint() == weights_sha256(tmp_path / "w.pth")
    assert a.cache_params() == b.cache_params()  # the path is not in the key: the content is
    assert enc(tmp_path / "w.pth", epochs=7).cache_params() == a.cache_params()  # frozen: training options unused
    assert make(pretrain.InstanceEncoder, backbone=DINO, pretrain="weak", epochs=7).cache_params() != \
        make(pretrain.InstanceEncoder, backbone=DINO, pretrain="weak").cache_params()
    before = a.fingerprint()
    write_dinobloom(tmp_path / "w.pth", reference_vit(shallow_vit, seed=1))  # new weights, same file name
    assert enc(tmp_path / "w.pth").fingerprint() != before
    e = make(EmbeddingFeatures, model=DINO, checkpoint=str(tmp_path / "w.pth"))
    assert e.fingerprint() == weights_sha256(tmp_path / "w.pth") != before


def test_runner_reuses_frozen_embeddings_until_the_weights_change(tmp_path, shallow_vit, monkeypatch):
    """Through the runner (the tiny MIL headline with a frozen DinoBloom-layout encoder): the
    encoder step's cache key follows the file's content, not its name."""
    import json
    from pathlib import Path

    from hemaflow.core.cli import main

    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    headline = str(Path(__file__).resolve().parents[2] / "recipes" / "mil_multimodal.yaml")

    def encoder_step(run: str, weights: Path) -> dict:
        args = ["--set", "steps.data.with.classes=[AML, NORMAL]", "--set", "steps.data.with.patients_per_class=2",
                "--set", "steps.data.with.images_per_patient=1", "--set", "steps.data.with.image_size=96",
                "--set", "steps.split.with.k=2", "--set", "steps.split.with.val_fraction=0",
                "--set", "steps.radiomics.with.classes=[firstorder]",
                "--set", f"steps.encoder.with={{backbone: {DINO}, pretrained: '{weights}', pretrain: none, "
                         "image_size: 56, batch_size: 8}",
                "--set", "steps.mil.with.epochs=1", "--executor", "serial"]
        assert main(["run", headline, "--out", str(tmp_path / run), *args]) == 0
        prov = json.loads((tmp_path / run / "provenance.json").read_text())
        return next(s for s in prov["steps"] if s["id"] == "encoder")

    write_dinobloom(tmp_path / "w.pth", reference_vit(shallow_vit, seed=0))
    first = encoder_step("r1", tmp_path / "w.pth")
    assert first["cache_hit"] is False
    shutil.move(tmp_path / "w.pth", tmp_path / "renamed.pth")  # same content under another name: reused
    second = encoder_step("r2", tmp_path / "renamed.pth")
    assert second["cache_hit"] is True and second["cache_key"] == first["cache_key"]
    write_dinobloom(tmp_path / "renamed.pth", reference_vit(shallow_vit, seed=3))  # new content: recomputed
    third = encoder_step("r3", tmp_path / "renamed.pth")
    assert third["cache_hit"] is False and third["cache_key"] != first["cache_key"]
