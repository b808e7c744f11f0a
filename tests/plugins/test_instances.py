"""whole_images and patches: CellSets like cell_crops, from single-cell exports and grid patches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
from hemaflow.plugins import instances
from hemaflow.plugins.artifacts import CellSet, ImageSet
from hemaflow.testing import check_component, make, make_context


@pytest.mark.parametrize("cls", instances.COMPONENTS, ids=lambda c: c.name)
def test_conformance(cls, registry):
    check_component(cls)
    assert registry.get("cells", cls.name) is cls


@pytest.fixture()
def field_set(tmp_path):
    """One 64x64 field whose mask covers rows 0-19, cols 0-19 (nucleus) and nothing else."""
    root = tmp_path / "data"
    root.mkdir()
    img = np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3) % 251
    img = img.astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:20, :20] = 2
    io.write_png(root / "f.png", img)
    io.write_png(root / "f_mask.png", mask)
    table = pd.DataFrame([{"image_id": "f", "patient_id": "P1", "label": "AML", "path": "f.png", "mask_path": "f_mask.png"}])
    return ImageSet(root, table, {"classes": ["AML", "NORMAL"], "mask_spec": {"mode": "canonical"}}).save(), img


@pytest.mark.parametrize("min_cov,expected", [(0.5, [(0, 0)]), (0.2, [(0, 0), (0, 16), (16, 0)]), (0.05, [(0, 0), (0, 16), (16, 0), (16, 16)])])
def test_patches_keep_where_mask_covers_enough(tmp_path, field_set, min_cov, expected):
    images, img = field_set
    out = make(instances.Patches, size=16, stride=16, min_coverage=min_cov).run(make_context(tmp_path / "run"), images=images)
    cells = out["cells"]
    t = cells.table
    assert [(r.bbox_y0, r.bbox_x0) for r in t.itertuples()] == expected
    assert list(t["cell_id"]) == [f"f:{k}" for k in range(len(expected))]
    assert list(t["crop_index"]) == list(range(len(expected)))
    assert set(CellSet.required_columns) <= set(t.columns) and (t["patient_id"] == "P1").all()
    assert cells.crops.shape == (len(expected), 16, 16, 3) and cells.crop_masks.shape == (len(expected), 16, 16)
    y0, x0 = expected[-1]
    assert np.array_equal(cells.crops[len(expected) - 1], img[y0:y0 + 16, x0:x0 + 16])
    assert t["area"].iloc[0] == 256 and cells.meta["crop_size"] == 16
    reloaded = CellSet.load(cells.path)
    assert reloaded.table.equals(t)


def test_patches_overlap_resize_and_cap(tmp_path, field_set):
    images, _ = field_set
    out = make(instances.Patches, size=16, stride=8, min_coverage=0.25, crop_size=8, max_per_image=2).run(
        make_context(tmp_path / "run"), images=images)
    t = out["cells"].table
    assert len(t) == 2 and out["cells"].crops.shape[1:] == (8, 8, 3)
    assert set(zip(t.bbox_y0, t.bbox_x0)) <= {(0, 0), (0, 8), (8, 0), (8, 8)}


def test_patches_without_any_mask_is_reported(tmp_path, field_set):
    images, _ = field_set
    images.table["mask_path"] = None
    ctx = make_context(tmp_path / "run")
    out = make(instances.Patches).run(ctx, images=images)
    assert len(out["cells"].table) == 0
    assert any("no mask" in w for w in ctx.warnings)
    with pytest.raises(DataError, match="no mask"):
        make(instances.Patches, on_error="stop").run(make_context(tmp_path / "run2"), images=images)


def test_whole_images_one_cell_per_image(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate([(30, 20), (12, 12)]):
        io.write_png(root / f"c{i}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        rows.append({"image_id": f"c{i}", "patient_id": "P7", "label": "CLL", "path": f"c{i}.png"})
    rows.append({"image_id": "bad", "patient_id": "P7", "label": "CLL", "path": "missing.png"})
    images = ImageSet(root, pd.DataFrame(rows), {"classes": ["CLL", "NORMAL"]}).save()
    ctx = make_context(tmp_path / "run")
    cells = make(instances.WholeImages, crop_size=16).run(ctx, images=images)["cells"]
    t = cells.table
    assert list(t["cell_id"]) == ["c0:0", "c1:0"] and list(t["bbox_y1"]) == [30, 12] and list(t["bbox_x1"]) == [20, 12]
    assert cells.crops.shape == (2, 16, 16, 3) and (cells.crop_masks[1] == 1).all()
    # the 30x20 image is padded to 30x30 (5 columns each side): padding is not cell
    m0 = np.asarray(cells.crop_masks[0])
    assert (m0[:, :2] == 0).all() and (m0[:, -2:] == 0).all() and (m0[:, 4:12] == 1).all()
    assert ctx.warnings and "skipped image bad" in ctx.warnings[0] and "file not found" in ctx.warnings[0]
    with pytest.raises(DataError, match="missing.png: file not found"):
        make(instances.WholeImages, on_error="stop").run(make_context(tmp_path / "run2"), images=images)


def test_patches_on_synthetic_smears_carry_generator_truth(tmp_path, registry):
    cls = registry.get("dataset", "synthetic_smears")
    images = make(cls, classes=["AML", "NORMAL"], patients_per_class=1, images_per_patient=1, image_size=128,
                  seed=0).run(make_context(tmp_path / "data"))["images"]
    cells = make(instances.Patches, size=32, stride=32, min_coverage=0.1).run(
        make_context(tmp_path / "run"), images=images)["cells"]
    t = cells.table
    assert len(t) > 0 and set(t["truth"]) <= {"abnormal", "normal", "none"}
    assert set(t["patient_id"]) <= set(images.table["patient_id"])
