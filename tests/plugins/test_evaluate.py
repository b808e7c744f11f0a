"""Evaluators on small artifacts with hand-checked values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.artifacts import Metrics
from hemaflow.core.errors import DataError
from hemaflow.plugins import io
from hemaflow.plugins.artifacts import ImageSet, MaskSet, Split
from hemaflow.plugins.evaluate import SegmentationEvaluator
from hemaflow.testing import check_component, make, make_context


def _square(size: int, y0: int, y1: int, x0: int, x1: int, nucleus: tuple[int, int, int, int] | None = None):
    m = np.zeros((size, size), np.uint8)
    m[y0:y1, x0:x1] = 1
    if nucleus:
        a, b, c, d = nucleus
        m[a:b, c:d] = 2
    return m


@pytest.fixture()
def seg_data(tmp_path):
    """Three 32x32 images; ground truth 10x10 cells with 4x4 nuclei; predictions shifted."""
    d = tmp_path / "data"
    d.mkdir()
    rows, preds = [], []
    truth = _square(32, 10, 20, 10, 20, (13, 17, 13, 17))
    predicted = {
        "a": truth.copy(),                                    # perfect
        "b": _square(32, 10, 20, 15, 25, (13, 17, 18, 22)),   # shifted 5 px: cell 50/100 overlap
        "c": np.zeros((32, 32), np.uint8),                    # nothing found
    }
    pdir = tmp_path / "pred"
    pdir.mkdir()
    for i, (iid, pm) in enumerate(predicted.items()):
        img = np.full((32, 32, 3), 200, np.uint8)
        img[truth > 0] = (120, 60, 160)
        io.write_png(d / f"{iid}.png", img)
        io.write_png(d / f"{iid}_mask.png", truth)
        io.write_png(pdir / f"{iid}.png", pm)
        rows.append({"image_id": iid, "patient_id": f"p{i}", "label": "ALL", "path": f"{iid}.png",
                     "mask_path": f"{iid}_mask.png"})
        preds.append({"image_id": iid, "path": f"{iid}.png"})
    images = ImageSet(d, pd.DataFrame(rows), {"classes": ["ALL"], "mask_spec": {"mode": "canonical"}})
    images.save()
    masks = MaskSet(pdir, pd.DataFrame(preds), {"source": "test"}).save()
    return images, masks


def test_segmentation_component_contract():
    check_component(SegmentationEvaluator)


def test_segmentation_known_values(tmp_path, seg_data):
    images, masks = seg_data
    ctx = make_context(tmp_path / "w")
    out = make(SegmentationEvaluator).run(ctx, masks=masks, images=images)
    m = Metrics.load(out["metrics"].path).values["segmentation"]
    # cell dice: a 1, b 2*50/200 = 0.5, c 0 -> mean 0.5; iou: 1, 50/150, 0
    assert m["dice"] == pytest.approx(0.5)
    assert m["dice_cell"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # nucleus: a 1, b (4x4 shifted by 5 px: no overlap) 0, c 0
    assert m["dice_nucleus"] == pytest.approx(1 / 3)
    assert m["n"] == 3 and m["target"] == "cell"
    per = pd.read_csv(out["metrics"].path / "per_image.csv")
    assert list(per["image_id"]) == ["a", "b", "c"]
    assert per["dice_cell"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    items = ctx.report.items
    assert [i["type"] for i in items] == ["table", "table", "gallery"]
    assert len(items[2]["images"]) == 3
    assert items[2]["images"][0]["caption"] == "c: Dice 0.000"
    json.dumps(out["metrics"].values, allow_nan=False)


def test_segmentation_partition_and_target(tmp_path, seg_data):
    images, masks = seg_data
    split = Split(tmp_path / "split", pd.DataFrame({"fold": [0, 0, 0], "patient_id": ["p0", "p1", "p2"],
                                                      "partition": ["train", "test", "test"]})).save()
    ctx = make_context(tmp_path / "w")
    out = make(SegmentationEvaluator, target="nucleus", n_overlays=0).run(ctx, masks=masks, images=images, split=split)
    m = out["metrics"].values["segmentation"]
    assert m["n"] == 2 and m["target"] == "nucleus"
    assert m["dice"] == 0.0 and "dice_cell" not in m
    assert [i["type"] for i in ctx.report.items] == ["table", "table"]


def test_segmentation_binary_truth_and_errors(tmp_path, seg_data):
    images, masks = seg_data
    images.meta["mask_spec"] = {"mode": "binary"}
    ctx = make_context(tmp_path / "w")
    out = make(SegmentationEvaluator).run(ctx, masks=masks, images=images)
    assert "dice_nucleus" not in out["metrics"].values["segmentation"]
    assert ctx.warnings == ["ground-truth masks carry no nucleus label; scoring whole cells only"]
    with pytest.raises(DataError, match="carry no nucleus label"):
        make(SegmentationEvaluator, target="nucleus").run(make_context(tmp_path / "w2"), masks=masks, images=images)
    # a predicted mask of the wrong size names the file
    io.write_png(masks.resolve("b.png"), np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"b\.png.*16x16 px but the ground truth"):
        make(SegmentationEvaluator).run(make_context(tmp_path / "w3"), masks=masks, images=images)


def test_segmentation_missing_predictions_warns(tmp_path, seg_data):
    images, masks = seg_data
    masks.table = masks.table[masks.table.image_id != "c"].reset_index(drop=True)
    ctx = make_context(tmp_path / "w")
    out = make(SegmentationEvaluator).run(ctx, masks=masks, images=images)
    assert out["metrics"].values["segmentation"]["n"] == 2
    assert "1 image(s) without a predicted mask skipped (e.g. c)" in ctx.warnings
