"""single_cells: the centre cell of each single-cell crop, alone, at a fixed scale; non-crops rejected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
from hemaflow.plugins import single_cells
from hemaflow.plugins.artifacts import CellSet, ImageSet, MaskSet
from hemaflow.plugins.instances import CELL_COLUMNS
from hemaflow.testing import check_component, make, make_context

from tests.plugins.seg_fixtures import BG, dice, disc, field


def test_conformance(registry):
    check_component(single_cells.SingleCells)
    assert registry.get("cells", "single_cells") is single_cells.SingleCells


def _images(root, imgs, *, extra=None, suffix=".png") -> ImageSet:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, img in enumerate(imgs):
        name = f"c{i}{suffix}"
        if suffix == ".png":
            io.write_png(root / name, img)
        else:
            Image.fromarray(img).save(root / name, quality=95)
        rows.append({"image_id": f"c{i}", "patient_id": f"P{i % 2}", "label": ["AML", "NORMAL"][i % 2],
                     "path": name, **((extra or [{}] * len(imgs))[i])})
    return ImageSet(root, pd.DataFrame(rows), {"classes": ["AML", "NORMAL"]}).save()


def _run(tmp_path, images, masks=None, **params):
    ctx = make_context(tmp_path / "run")
    cells = make(single_cells.SingleCells, **params).run(ctx, images=images, masks=masks)["cells"]
    return cells, ctx


def test_centre_cell_kept_neighbour_blanked(tmp_path):
    img, _ = field(size=(120, 120), wbcs=((60, 60, 16), (18, 102, 12)), rbcs=((100, 20, 10),))
    images = _images(tmp_path / "d", [img])
    cells, ctx = _run(tmp_path, images, crop_size=96)
    t = cells.table
    assert list(t.columns) == CELL_COLUMNS[:-1] + ["nucleus_area", "crop_index"] and list(t["cell_id"]) == ["c0:0"]
    assert abs(t["centroid_y"].iloc[0] - 60) < 2 and abs(t["centroid_x"].iloc[0] - 60) < 2
    crop, m = np.asarray(cells.crops[0]), np.asarray(cells.crop_masks[0])
    assert crop.shape == (96, 96, 3) and m.shape == (96, 96)
    # the window covers source rows/cols 12..107: the neighbour (18, 102) lands at (6, 90), the red cell at (88, 8)
    assert (crop[6, 90] == 128).all() and (crop[88, 8] == 128).all() and (crop[0, 0] == 128).all()
    assert m[48, 48] == 2 and m[48, 48 + 13] == 1 and m[6, 90] == 0
    from scipy import ndimage as ndi

    assert ndi.label(m > 0)[1] == 1 and t["nucleus_area"].iloc[0] == (m == 2).sum()
    assert (crop[m == 0] == 128).all() and not ctx.warnings and cells.meta["rejected"] == {}
    kept, _ = _run(tmp_path / "keep", images, crop_size=96, background="keep")
    assert not (np.asarray(kept.crops[0])[6, 90] == 128).all()
    assert np.array_equal(np.asarray(kept.crop_masks[0]), m)


def test_physical_scale_same_cell_size(tmp_path):
    # the same cell photographed at 0.2 and at 0.1 um/px (radius 10 um)
    a, _ = field(size=(100, 100), wbcs=((50, 50, 20),), rbcs=())
    b, _ = field(size=(200, 200), wbcs=((100, 100, 40),), rbcs=(), seed=1)
    images = _images(tmp_path / "d", [a, b], extra=[{"um_per_px": 0.2}, {"um_per_px": 0.1}])
    cells, _ = _run(tmp_path, images, crop_size=64, target_um_per_px=0.2, segment_size=None)
    areas = [(np.asarray(cells.crop_masks[i]) > 0).sum() for i in range(2)]
    assert abs(areas[0] - areas[1]) / areas[0] < 0.04 and abs(areas[0] - np.pi * 20 ** 2) / areas[0] < 0.1
    assert cells.meta["scales"] == [0.5, 1.0]
    # native pixels: the second cell is twice as big
    native, _ = _run(tmp_path / "native", images, crop_size=96, segment_size=None)
    n = [(np.asarray(native.crop_masks[i]) > 0).sum() for i in range(2)]
    assert 3.6 < n[1] / n[0] < 4.4
    with pytest.raises(DataError, match="source pixel size is unknown"):
        _run(tmp_path / "x", _images(tmp_path / "d2", [a]), target_um_per_px=0.2)


def test_rejections_recorded_and_counted(tmp_path):
    good = [field(size=(96, 96), wbcs=((48, 48, 18),), rbcs=((10, 85, 8),), seed=s)[0] for s in range(3)]
    overview = field(size=(400, 400), wbcs=((100, 100, 18), (300, 250, 18)), rbcs=())[0]
    blank = field(size=(96, 96), wbcs=(), rbcs=())[0]
    two = field(size=(96, 96), wbcs=((48, 30, 14), (48, 66, 14)), rbcs=())[0]
    wide = field(size=(96, 150), wbcs=((48, 75, 18),), rbcs=())[0]
    big = field(size=(96, 96), wbcs=((48, 48, 40),), rbcs=())[0]
    images = _images(tmp_path / "d", [*good, overview, blank, two, wide, big, good[0]])
    # a truncated JPEG: the header (size) is intact, the pixels are not
    Image.fromarray(good[1]).save(tmp_path / "d" / "trunc.jpg", quality=95)
    data = (tmp_path / "d" / "trunc.jpg").read_bytes()
    (tmp_path / "d" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    images.table.loc[len(images.table) - 1, "path"] = "trunc.jpg"
    images.save()
    cells, ctx = _run(tmp_path, images, crop_size=72)
    assert list(cells.table["image_id"]) == ["c0", "c1", "c2"] and list(cells.table["crop_index"]) == [0, 1, 2]
    rej = pd.read_parquet(cells.path / "rejected.parquet").set_index("image_id")
    assert rej["reason"].to_dict() == {
        "c3": "size far from the set's median", "c4": "no cell found", "c5": "several cells of equal claim",
        "c6": "aspect far from the set's median", "c7": "cell larger than the crop", "c8": "unreadable image"}
    assert "400x400 px, the set's median 96x96" in rej.loc["c3", "detail"] and "truncated" in rej.loc["c8", "detail"]
    assert cells.meta["rejected"] == {r: 1 for r in rej["reason"]} and cells.meta["n_input"] == 9
    assert len(ctx.warnings) == 6 and any(w.startswith("rejected 1 image(s): no cell found") for w in ctx.warnings)
    table = next(i for i in ctx.report.items if i["type"] == "table")
    assert table["title"] == "Single-cell crops: 3 of 9 images kept" and len(table["rows"]) == 7
    assert CellSet.load(cells.path).meta["rejected_file"] == "rejected.parquet"
    with pytest.raises(DataError, match="trunc.jpg: .*truncated"):
        _run(tmp_path / "stop", images, crop_size=72, on_error="stop")


def test_size_median_per_group(tmp_path):
    # two sources of different crop sizes: the minority would be rejected whole against the set's median
    small = [field(size=(64, 64), wbcs=((32, 32, 12),), rbcs=(), seed=s)[0] for s in range(3)]
    large = field(size=(160, 160), wbcs=((80, 80, 30),), rbcs=())[0]
    extra = [{"cohort": "A"}] * 3 + [{"cohort": "B"}]
    images = _images(tmp_path / "d", [*small, large], extra=extra)
    cells, _ = _run(tmp_path, images, crop_size=96)
    assert cells.meta["rejected"] == {"size far from the set's median": 1}
    cells, _ = _run(tmp_path / "g", images, crop_size=96, size_group_column="cohort")
    assert len(cells.table) == 4 and cells.meta["rejected"] == {}
    with pytest.raises(DataError, match="size_group_column 'site' is not a column"):
        _run(tmp_path / "x", images, size_group_column="site")


def test_equal_claim_needs_two_similar_central_cells(tmp_path):
    # a small fragment touching the central region is no rival
    mask = np.zeros((96, 96), np.uint8)
    mask[disc((96, 96), 48, 44, 16)] = 1
    mask[disc((96, 96), 48, 44, 9)] = 2
    mask[disc((96, 96), 48, 68, 5)] = 2  # 2 px apart from the big cell, inside the central region
    cell, reason, _ = single_cells.select_centre_cell(mask)
    assert reason is None and cell[48, 44] and not cell[48, 68]
    two = np.zeros((96, 96), np.uint8)
    two[disc((96, 96), 48, 30, 14)] = 1
    two[disc((96, 96), 48, 66, 13)] = 1  # both within 5 px of the centre, areas 1.0 : 0.86
    cell, reason, detail = single_cells.select_centre_cell(two)
    assert reason == "several cells of equal claim" and detail.startswith("2 cells reach the central region")


def test_masks_input_used(tmp_path):
    # the image shows no cell the segmenter would find; the given mask says where the cell is
    img = np.full((80, 80, 3), BG, np.uint8)
    images = _images(tmp_path / "d", [img, img])
    mroot = tmp_path / "m"
    mroot.mkdir()
    mask = np.zeros((80, 80), np.uint8)
    mask[disc((80, 80), 40, 40, 12)] = 1
    mask[disc((80, 80), 40, 40, 6)] = 2
    mask[disc((80, 80), 8, 8, 6)] = 1  # a neighbour in the corner
    io.write_png(mroot / "c0.png", mask)
    masks = MaskSet(mroot, pd.DataFrame([{"image_id": "c0", "path": "c0.png"}]), {"source": "test"}).save()
    cells, ctx = _run(tmp_path, images, masks=masks, crop_size=48)
    m = np.asarray(cells.crop_masks[0])
    assert list(cells.table["image_id"]) == ["c0"] and m[24, 24] == 2 and (m > 0).sum() == disc((80, 80), 40, 40, 12).sum()
    rej = pd.read_parquet(cells.path / "rejected.parquet")
    assert rej[["image_id", "reason"]].values.tolist() == [["c1", "no cell found"]]
    assert "no mask for this image" in rej["detail"].iloc[0]
    blank, _ = _run(tmp_path / "nomask", images, crop_size=48)
    assert len(blank.table) == 0 and blank.meta["rejected"] == {"no cell found": 2}
    # the data set's own masks, with dataset_masks: true
    images.table["mask_path"] = [str(mroot / "c0.png"), None]
    images.meta["mask_spec"] = {"mode": "canonical"}
    own, _ = _run(tmp_path / "own", images.save(), crop_size=48, dataset_masks=True)
    assert list(own.table["image_id"]) == ["c0"] and np.array_equal(np.asarray(own.crop_masks[0]), m)


def test_real_cellavision_crops_and_a_field(tmp_path, shared_data):
    base = shared_data / "wbc-crops" / "cellavision"
    ids = ["001", "002", "003", "004", "005"]
    rows = [{"image_id": i, "patient_id": "P", "label": "", "path": str(base / f"{i}.bmp")} for i in ids]
    rows.append({"image_id": "field", "patient_id": "P", "label": "",
                 "path": str(shared_data / "bccd-fields" / "images" / "BloodImage_00001.jpg")})
    images = ImageSet(tmp_path / "d", pd.DataFrame(rows), {"classes": []}).save()
    cells, _ = _run(tmp_path, images)
    rej = pd.read_parquet(cells.path / "rejected.parquet")
    assert rej["image_id"].tolist() == ["field"] and rej["reason"].iloc[0] == "size far from the set's median"
    dices = []
    for _, r in cells.table.iterrows():
        gt = io.read_mask(base / f"{r['image_id']}.png", {"mode": "values", "cytoplasm": [128], "nucleus": [255]})
        m = np.asarray(cells.crop_masks[int(r["crop_index"])])
        assert m[128, 128] > 0 and (m > 0).sum() == r["area"]
        # back to source pixels: the 256 px window starts 128 px before the centroid
        y0, x0 = int(round(r["centroid_y"] + 0.5 - 128)), int(round(r["centroid_x"] + 0.5 - 128))
        src = np.pad(m > 0, 300)[300 - y0:600 - y0, 300 - x0:600 - x0]
        dices.append(dice(src, gt > 0))
    assert np.mean(dices) > 0.85, dices
    assert len(cells.table) >= 4 and cells.crops.shape[1:] == (256, 256, 3)
