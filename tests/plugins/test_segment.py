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
    out = make(ClassicalSegmenter, min_nucleus_area=50).run(make_context(tmp_path / "w"), images=images)
    masks = out["masks"]
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
    # measured: whole cell 0.86, nucleus 0.86 (mean of these four fields)
    assert np.mean(cell) > 0.75, cell
    assert np.mean(nuc) > 0.75, nuc
