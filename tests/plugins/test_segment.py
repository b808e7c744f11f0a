from __future__ import annotations

import numpy as np
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.segment import ClassicalSegmenter, GroundTruthSegmenter, classical_mask
from hemaflow.testing import check_component, make, make_context
from tests.plugins.seg_fixtures import bccd_image_set, dice, field, image_set


@pytest.mark.parametrize("cls", [ClassicalSegmenter, GroundTruthSegmenter])
def test_contract(cls, registry):
    check_component(cls)
    assert registry.get("segmenter", cls.name) is cls


def test_classical_finds_white_cell_not_red_cells():
    img, truth = field()
    mask = classical_mask(img, min_nucleus_area=50, cytoplasm_ratio=0.4)
    assert dice(mask == 2, truth == 2) > 0.9
    assert dice(mask > 0, truth > 0) > 0.8
    # red cells (centres (20, 100) and (75, 100)) stay background
    assert mask[20, 100] == 0 and mask[75, 100] == 0


@pytest.mark.parametrize("channel", ["blue_red", "hematoxylin", "saturation"])
def test_classical_channels_find_the_nucleus(channel):
    # saturation cannot tell pink red cells from nuclei (documented), so no red cells here
    img, truth = field(rbcs=()) if channel == "saturation" else field()
    mask = classical_mask(img, channel=channel, min_nucleus_area=50)
    assert dice(mask == 2, truth == 2) > 0.8, channel


def test_classical_blank_and_red_only_fields_are_empty():
    blank = np.full((64, 64, 3), 230, np.uint8)
    assert classical_mask(blank).max() == 0
    red_only, _ = field(wbcs=())
    assert classical_mask(red_only).max() == 0
    assert classical_mask(np.zeros((32, 32, 3), np.uint8)).max() == 0


def test_classical_component_writes_aligned_masks(tmp_path):
    fields = [field(seed=0), field(size=(80, 100), wbcs=((40, 50, 15),), rbcs=(), seed=1)]
    images = image_set(tmp_path / "data", fields)
    ctx = make_context(tmp_path / "w")
    out = make(ClassicalSegmenter, min_nucleus_area=50).run(ctx, images=images)
    masks = out["masks"]
    gallery = [i for i in ctx.report.items if i["type"] == "gallery"]
    assert [c["caption"] for c in gallery[0]["images"]] == ["im0", "im1"]
    assert list(masks.table["image_id"]) == ["im0", "im1"]
    for (img, truth), iid in zip(fields, ["im0", "im1"]):
        m = masks.read_mask(iid)
        assert m.shape == truth.shape and m.dtype == np.uint8
        assert dice(m == 2, truth == 2) > 0.85
    assert masks.meta["source"] == "classical"


def test_classical_on_error(tmp_path):
    images = image_set(tmp_path / "data", [field()])
    (tmp_path / "data" / "img" / "im0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="im0.png: cannot read image"):
        make(ClassicalSegmenter).run(make_context(tmp_path / "w"), images=images)
    ctx = make_context(tmp_path / "w2")
    out = make(ClassicalSegmenter, on_error="skip").run(ctx, images=images)
    assert len(out["masks"].table) == 0
    assert len(ctx.warnings) == 1 and "im0.png" in ctx.warnings[0]


def test_ground_truth_passes_masks_through(tmp_path):
    fields = [field(seed=0), field(seed=1)]
    images = image_set(tmp_path / "data", fields)
    masks = make(GroundTruthSegmenter).run(make_context(tmp_path / "w"), images=images)["masks"]
    for (_, truth), iid in zip(fields, ["im0", "im1"]):
        np.testing.assert_array_equal(masks.read_mask(iid), truth)


def test_ground_truth_without_masks_is_a_data_error(tmp_path):
    images = image_set(tmp_path / "data", [(field()[0], None)])
    with pytest.raises(DataError, match="the data set has no ground-truth masks"):
        make(GroundTruthSegmenter).run(make_context(tmp_path / "w"), images=images)


def test_classical_dice_on_real_bccd_fields(tmp_path, shared_data):
    images = bccd_image_set(shared_data, tmp_path / "bccd")
    masks = make(ClassicalSegmenter).run(make_context(tmp_path / "w"), images=images)["masks"]
    cell, nuc = [], []
    for iid in images.table["image_id"]:
        truth = images.read_mask(iid)
        pred = masks.read_mask(iid)
        cell.append(dice(pred > 0, truth > 0))
        nuc.append(dice(pred == 2, truth == 2))
    # measured: whole cell 0.841, nucleus 0.943 (mean over these four fields)
    assert np.mean(cell) > 0.75, cell
    assert np.mean(nuc) > 0.75, nuc


# -- deeplabv3 ---------------------------------------------------------------------------------
from hemaflow.plugins.segment import DeepLabSegmenter, augment_pair, build_model, predict_mask  # noqa: E402


def test_deeplab_contract(registry):
    check_component(DeepLabSegmenter)
    assert registry.get("segmenter", "deeplabv3") is DeepLabSegmenter


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "unet"])
def test_predict_any_size(arch):
    import torch

    torch.manual_seed(0)
    net = build_model(arch, "tu-test_resnet", 3)
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    m = predict_mask(net, img, mode="three_class", scale=0.7)
    assert m.shape == (37, 53) and m.dtype == np.uint8 and m.max() <= 2
    if arch == "unet":  # tiling gives the same shape on an image larger than the tile
        big = np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)
        assert predict_mask(net, big, mode="three_class", tile=64).shape == (90, 150)


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    img, mask = field(size=(64, 64), wbcs=((20, 44, 10),), rbcs=())
    img[mask == 0] = (255, 255, 255)
    for _ in range(20):
        a, m = augment_pair(img, mask, rng, crop=48, colour=0.0)
        assert a.shape == (48, 48, 3) and m.shape == (48, 48)
        # without colour jitter every background pixel is white and every cell pixel is not
        assert (a[m == 0] == 255).all() and not (a[m > 0] == 255).all(axis=1).any()
        a2, m2 = augment_pair(img, mask, np.random.default_rng(1), colour=0.2)
        assert m2.shape == mask.shape and set(np.unique(m2)) == {0, 1, 2}


def test_deeplab_trains_one_step_and_infers_odd_sizes(tmp_path):
    fields = [field(size=(64, 64), wbcs=((32, 30, 14),), rbcs=((10, 55, 8),), seed=i) for i in range(3)]
    fields.append(field(size=(45, 71), wbcs=((22, 35, 12),), seed=9))
    images = image_set(tmp_path / "data", fields)
    images.table["split"] = ["train", "train", "val", "test"]
    images.save()
    comp = make(DeepLabSegmenter, encoder="tu-test_resnet", epochs=1, steps_per_epoch=1, batch_size=2,
                input_scale=1.0, crop_size=32)
    ctx = make_context(tmp_path / "w")
    out = comp.run(ctx, images=images)
    masks, model = out["masks"], out["model"]
    assert list(masks.table["image_id"]) == ["im0", "im1", "im2", "im3"]
    assert masks.read_mask("im3").shape == (45, 71)
    assert model.meta["n_train"] == 2 and model.meta["n_val"] == 1 and model.meta["best_epoch"] == 1
    assert (model.path / "model.safetensors").exists()
    # the saved model segments again without training, identically
    again = make(DeepLabSegmenter, epochs=0).run(make_context(tmp_path / "w2"), images=images, model=model)
    np.testing.assert_array_equal(again["masks"].read_mask("im3"), masks.read_mask("im3"))


def test_deeplab_errors(tmp_path):
    images = image_set(tmp_path / "data", [(field()[0], None)])
    with pytest.raises(DataError, match="deeplabv3 trains on ground-truth masks, and this data set has none"):
        make(DeepLabSegmenter, encoder="tu-test_resnet").run(make_context(tmp_path / "w"), images=images)
    with pytest.raises(DataError, match="encoder weights file not found. hemaflow never downloads weights"):
        build_model("unet", "tu-test_resnet", 3, str(tmp_path / "missing.pth"))
    with pytest.raises(DataError, match="cannot build encoder 'no-such-encoder'"):
        build_model("unet", "no-such-encoder", 3)


def test_encoder_weights_from_local_file(tmp_path):
    import torch

    src = build_model("unet", "tu-test_resnet", 3)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pth")
    dst = build_model("unet", "tu-test_resnet", 3, str(tmp_path / "enc.pth"))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, dst.encoder.state_dict()[k]), k
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="no parameter of the file matches the encoder"):
        build_model("unet", "tu-test_resnet", 3, str(tmp_path / "other.pth"))


# -- sam ---------------------------------------------------------------------------------------
from hemaflow.plugins.segment import SamSegmenter, prompt_boxes  # noqa: E402


def test_sam_contract(registry):
    check_component(SamSegmenter)
    assert registry.get("segmenter", "sam") is SamSegmenter


def test_sam_clear_errors(tmp_path, monkeypatch):
    images = image_set(tmp_path / "data", [field()])
    with pytest.raises(DataError, match="no checkpoint: set checkpoint: to a local SAM or MedSAM .pth file"):
        make(SamSegmenter).run(make_context(tmp_path / "w"), images=images)
    with pytest.raises(DataError, match="sam_vit_b.pth: SAM checkpoint not found"):
        make(SamSegmenter, checkpoint=str(tmp_path / "sam_vit_b.pth")).run(make_context(tmp_path / "w"), images=images)
    (tmp_path / "sam_vit_b.pth").write_bytes(b"x")
    monkeypatch.setitem(__import__("sys").modules, "segment_anything", None)  # package not installed
    with pytest.raises(DataError, match="needs the optional package segment-anything: pip install segment-anything"):
        make(SamSegmenter, checkpoint=str(tmp_path / "sam_vit_b.pth")).run(make_context(tmp_path / "w"), images=images)


def test_sam_prompt_boxes_from_classical_mask():
    img, truth = field(wbcs=((48, 40, 18), (20, 100, 8)), rbcs=())
    boxes = prompt_boxes(truth, margin=0.0)
    assert boxes == [(92, 12, 109, 29), (22, 30, 59, 67)]  # label order: top cell first
    assert prompt_boxes(truth, margin=1.0)[0] == (75, 0, 126, 46)
