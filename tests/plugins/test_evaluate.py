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
    return make_seg_data(tmp_path)


def make_seg_data(tmp_path):
    """Three 32x32 images; ground truth 10x10 cells with 4x4 nuclei; predictions shifted."""
    d = tmp_path / "data"
    d.mkdir(parents=True)
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
    with pytest.raises(DataError, match=r"the split has no 'val' partition \(it has test, train\); set partition"):
        make(SegmentationEvaluator, partition="val").run(make_context(tmp_path / "w2"), masks=masks, images=images,
                                                         split=split)


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


# -- classification ----------------------------------------------------------------------------
from hemaflow.core.artifacts import Predictions  # noqa: E402
from hemaflow.plugins.evaluate import ClassificationEvaluator  # noqa: E402

# four patients, two images each; prob_HEM per image (hand-checked values in the tests below)
IMAGE_PROBS = {("P1", "ALL", 0): [0.2, 0.4], ("P2", "HEM", 0): [0.9, 0.3],
               ("P3", "ALL", 1): [0.7, 0.7], ("P4", "HEM", 1): [0.8, 0.6]}


def image_predictions(path, with_patient: bool = True) -> Predictions:
    rows = []
    for (pid, label, fold), probs in IMAGE_PROBS.items():
        for k, ph in enumerate(probs):
            rows.append({"id": f"{pid}_img{k}", "level": "image", "fold": fold, "y_true": label,
                         "y_pred": "HEM" if ph > 0.5 else "ALL", "prob_ALL": 1 - ph, "prob_HEM": ph,
                         "image_id": f"{pid}_img{k}", "patient_id": pid})
    t = pd.DataFrame(rows)
    if not with_patient:
        t = t.drop(columns=["patient_id"])
    return Predictions(path, t, {"classes": ["ALL", "HEM"]}).save()


def test_classification_component_contract():
    check_component(ClassificationEvaluator)


def test_classification_known_values(tmp_path):
    preds = image_predictions(tmp_path / "preds")
    ctx = make_context(tmp_path / "w", seed=3)
    out = make(ClassificationEvaluator, n_bootstrap=200).run(ctx, predictions=preds)
    v = Metrics.load(out["metrics"].path).values
    img, pat = v["image"], v["patient"]
    assert img["n"] == 8 and img["aggregated_from"] is None
    assert img["accuracy"] == pytest.approx(5 / 8)
    assert img["balanced_accuracy"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert img["auroc"] == pytest.approx(11 / 16)
    # patients by mean prob_HEM: P1 0.3 ALL ok, P2 0.6 HEM ok, P3 0.7 HEM wrong, P4 0.7 HEM ok
    assert pat["n"] == 4 and pat["aggregated_from"] == "image"
    assert pat["accuracy"] == pytest.approx(3 / 4)
    assert pat["balanced_accuracy"] == pytest.approx(0.75)
    assert pat["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert pat["auroc"] == pytest.approx(2.5 / 4)  # a tie (0.7 vs 0.7) counts one half
    assert pat["confusion_matrix"]["matrix"] == [[1, 1], [0, 2]]
    assert pat["per_class"]["HEM"]["precision"] == pytest.approx(2 / 3)
    lo, hi = pat["balanced_accuracy_ci"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert set(pat) >= {"accuracy_ci", "macro_f1_ci", "auroc_ci"}
    assert "cell" not in v and "segmentation" not in v
    assert [f["fold"] for f in v["folds"]] == [0, 1]
    assert v["folds"][0]["patient"]["accuracy"] == 1.0
    assert v["folds"][1]["patient"]["accuracy"] == 0.5
    assert v["folds"][1]["image"] == {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": pytest.approx(1 / 3),
                                      "auroc": 0.5, "n": 4}
    json.dumps(v, allow_nan=False)
    # the same seed gives the same intervals; another seed others
    again = make(ClassificationEvaluator, n_bootstrap=200).run(make_context(tmp_path / "w2", seed=3), predictions=preds)
    assert again["metrics"].values["patient"]["balanced_accuracy_ci"] == [lo, hi]
    kinds = [(i["type"], i["title"]) for i in ctx.report.items]
    assert kinds == [("table", "Classification metrics (pooled over folds; 95% bootstrap CI over patients)"),
                     ("table", "Per fold"), ("table", "Per class (patient level)"),
                     ("svg", "Confusion matrices"), ("svg", "ROC curves (one vs rest)")]
    svg = (ctx.report.path / ctx.report.items[3]["file"]).read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_classification_majority_and_split(tmp_path):
    preds = image_predictions(tmp_path / "preds")
    out = make(ClassificationEvaluator, aggregate="majority", n_bootstrap=0).run(
        make_context(tmp_path / "w"), predictions=preds)
    pat = out["metrics"].values["patient"]
    # votes: P1 ALL,ALL; P2 HEM,ALL (a tie goes to the first class, ALL); P3 HEM,HEM; P4 HEM,HEM
    assert pat["confusion_matrix"]["matrix"] == [[1, 1], [1, 1]]
    assert pat["accuracy"] == 0.5 and pat["n"] == 4 and "balanced_accuracy_ci" not in pat
    split = Split(tmp_path / "split", pd.DataFrame({
        "fold": [0, 0, 0, 0, 1, 1, 1, 1], "patient_id": ["P1", "P2", "P3", "P4"] * 2,
        "partition": ["test", "test", "train", "train", "train", "train", "test", "val"]})).save()
    out = make(ClassificationEvaluator, n_bootstrap=0).run(make_context(tmp_path / "w2"), predictions=preds,
                                                           split=split)
    v = out["metrics"].values
    assert v["patient"]["n"] == 3  # P4 is val in fold 1
    assert v["image"]["n"] == 6
    with pytest.raises(DataError, match="no predictions fall in the 'train' partition"):
        make(ClassificationEvaluator, partition="train", n_bootstrap=0).run(
            make_context(tmp_path / "w3"), predictions=image_predictions(tmp_path / "p2").__class__(
                tmp_path / "p3", preds.table[preds.table.fold == 1].reset_index(drop=True),
                preds.meta).save(), split=Split(tmp_path / "s2", split.table[split.table.fold == 0]).save())


def test_classification_cell_level_and_missing_patient(tmp_path):
    preds = image_predictions(tmp_path / "preds", with_patient=False)
    ctx = make_context(tmp_path / "w")
    v = make(ClassificationEvaluator).run(ctx, predictions=preds)["metrics"].values
    assert "patient" not in v and v["image"]["n"] == 8
    assert ctx.warnings == ["cannot aggregate image predictions to patient level: no patient_id column in the predictions"]
    # cell rows with ids "<image_id>:<k>" aggregate to images, and to patients with patient_id
    t = image_predictions(tmp_path / "p2").table
    cells = pd.concat([t.assign(id=t["image_id"] + f":{k}", level="cell") for k in range(3)]).drop(columns=["image_id"])
    cp = Predictions(tmp_path / "cells", cells.reset_index(drop=True), {"classes": ["ALL", "HEM"]}).save()
    v = make(ClassificationEvaluator, n_bootstrap=0).run(make_context(tmp_path / "w2"), predictions=cp)["metrics"].values
    assert v["cell"]["n"] == 24 and v["image"]["n"] == 8 and v["patient"]["n"] == 4
    assert v["image"]["auroc"] == pytest.approx(11 / 16) and v["patient"]["accuracy"] == pytest.approx(3 / 4)
    assert v["image"]["aggregated_from"] == "cell"


def test_classification_bad_labels(tmp_path):
    preds = image_predictions(tmp_path / "preds")
    preds.table.loc[0, "y_true"] = "AML"
    with pytest.raises(DataError, match=r"y_true has classes \['AML'\] that are not among the predicted classes"):
        make(ClassificationEvaluator).run(make_context(tmp_path / "w"), predictions=preds)
