from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.cells import CellCrops, _take, extract_cells
from hemaflow.plugins.postprocess import MorphologyPostprocessor
from hemaflow.plugins.segment import ClassicalSegmenter, GroundTruthSegmenter
from hemaflow.testing import check_component, make, make_context
from tests.plugins.seg_fixtures import field, image_set


def test_contract(registry):
    check_component(CellCrops)
    assert registry.get("cells", "cell_crops") is CellCrops


def test_take_pads_outside_the_image():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(_take(a, -1, -1, 2, 2, "constant", 9), [[9, 9, 9], [9, 0, 1], [9, 4, 5]])
    np.testing.assert_array_equal(_take(a, -1, 0, 1, 2, "reflect", 0), [[4, 5], [0, 1]])
    assert _take(a, -10, -10, 13, 14, "reflect", 0).shape == (23, 24)  # pads larger than the image


@pytest.mark.parametrize("scale", ["window", "resize"])
def test_extract_cells_geometry(scale):
    img, mask = field(size=(96, 128), wbcs=((48, 40, 18), (10, 118, 8)), rbcs=())
    from scipy import ndimage as ndi
    inst = ndi.label(mask > 0)[0]
    rows, crops, cmasks = extract_cells(img, mask, inst, crop_size=48, scale=scale, padding="constant")
    assert crops.shape == (2, 48, 48, 3) and cmasks.shape == (2, 48, 48)
    big = next(r for r in rows if r["area"] > 500)
    assert abs(big["centroid_y"] - 48) < 0.5 and abs(big["centroid_x"] - 40) < 0.5
    assert big["bbox_y0"] == 30 and big["bbox_y1"] == 67
    assert big["nucleus_area"] == int((mask == 2)[:, :80].sum())
    i = rows.index(big)
    # crop centre is the nucleus colour; the crop mask is nucleus there
    assert cmasks[i, 24, 24] == 2
    assert np.abs(crops[i, 24, 24].astype(int) - (92, 52, 158)).max() < 20
    small = rows[1 - i]
    if scale == "window":  # the window leaves the image at the top-right corner: constant 0 there
        assert crops[1 - i, 0, -1].tolist() == [0, 0, 0] and small["bbox_y0"] == 2


def test_component_end_to_end_with_truth(tmp_path):
    fields = [field(wbcs=((48, 40, 20), (48, 74, 20)), rbcs=()), field(seed=1), field(wbcs=(), seed=2)]
    truth = pd.DataFrame({"image_id": ["im0", "im0", "im1"], "centroid_y": [47.0, 49.0, 48.0],
                          "centroid_x": [41.0, 75.0, 40.0], "truth": ["abnormal", "normal", "normal"],
                          "cell_type": ["blast", "lymphocyte", "neutrophil"]})
    images = image_set(tmp_path / "data", fields, cell_truth=truth)
    masks = make(GroundTruthSegmenter).run(make_context(tmp_path / "gt"), images=images)["masks"]
    masks = make(MorphologyPostprocessor).run(make_context(tmp_path / "pp"), masks=masks)["masks"]
    ctx = make_context(tmp_path / "w")
    cells = make(CellCrops, crop_size=32).run(ctx, images=images, masks=masks)["cells"]
    t = cells.table
    assert list(t["cell_id"]) == ["im0:1", "im0:2", "im1:1"]
    assert list(t["truth"]) == ["abnormal", "normal", "normal"]
    assert list(t["cell_type"]) == ["blast", "lymphocyte", "neutrophil"]
    assert list(t["patient_id"]) == ["p0", "p0", "p0"] and list(t["label"]) == ["ALL", "ALL", "normal"]
    assert list(t["crop_index"]) == [0, 1, 2]
    assert cells.crops.shape == (3, 32, 32, 3) and cells.crop_masks.shape == (3, 32, 32)
    # neighbours are masked out of a crop's mask
    assert cells.crop_masks[0, 16, 16] == 2 and cells.crop_masks[0][:, 31].max() <= 1
    assert ctx.warnings == ["1 image(s) have no cell"]
    assert cells.meta["crop_size"] == 32 and cells.meta["classes"] == ["ALL", "normal"]
    reloaded = type(cells).load(cells.path)
    assert len(reloaded.table) == 3 and reloaded.crops[2].shape == (32, 32, 3)


def test_component_from_classical_without_instances(tmp_path):
    images = image_set(tmp_path / "data", [field(), field(seed=1)])
    masks = make(ClassicalSegmenter, min_nucleus_area=50, cytoplasm_ratio=0.4).run(
        make_context(tmp_path / "seg"), images=images)["masks"]
    cells = make(CellCrops, crop_size=40, scale="resize").run(
        make_context(tmp_path / "w"), images=images, masks=masks)["cells"]
    assert list(cells.table["cell_id"]) == ["im0:1", "im1:1"]
    assert "truth" not in cells.table.columns
    assert (cells.table["nucleus_area"] > 300).all()


def test_component_size_mismatch(tmp_path):
    images = image_set(tmp_path / "data", [field()])
    masks = make(GroundTruthSegmenter).run(make_context(tmp_path / "gt"), images=images)["masks"]
    from hemaflow.lib import imageio as io
    io.write_png(masks.resolve(masks.table.iloc[0]["path"]), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="mask is 10x10 but the image is 128x96"):
        make(CellCrops).run(make_context(tmp_path / "w"), images=images, masks=masks)
    ctx = make_context(tmp_path / "w2")
    cells = make(CellCrops, on_error="skip").run(ctx, images=images, masks=masks)["cells"]
    assert len(cells.table) == 0 and cells.crops.shape == (0, 96, 96, 3)


def test_synthetic_smears_pipeline(tmp_path, registry):
    """classical -> morphology -> cell_crops on the built-in synthetic fields, truth matched."""
    synthetic = registry.get("dataset", "synthetic_smears")
    images = make(synthetic, patients_per_class=1, images_per_patient=1, image_size=192).run(
        make_context(tmp_path / "data"))["images"]
    masks = make(ClassicalSegmenter).run(make_context(tmp_path / "seg"), images=images)["masks"]
    masks = make(MorphologyPostprocessor).run(make_context(tmp_path / "pp"), masks=masks)["masks"]
    from tests.plugins.seg_fixtures import dice
    d = [dice(masks.read_mask(i) == 2, images.read_mask(i) == 2) for i in images.table["image_id"]]
    assert np.mean(d) > 0.8, d  # nucleus Dice; measured 0.907 on these five fields
    cells = make(CellCrops, crop_size=48).run(make_context(tmp_path / "w"), images=images, masks=masks)["cells"]
    truth = images.cell_truth()
    assert 0.8 * len(truth) <= len(cells.table) <= 1.2 * len(truth)  # measured: 16 of 16
    assert cells.table["truth"].notna().mean() > 0.8
    assert set(cells.table["truth"].dropna()) <= set(truth["truth"])
