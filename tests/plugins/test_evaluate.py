"""Evaluators on small artifacts with hand-checked values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.artifacts import Metrics
from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
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
    # 32x32 crops whose true cell covers the centre: centre-cell scoring is on (auto), matching off
    assert m["centre_cell"] is True and m["instances"] is False and "detection_f1" not in m
    assert m["centre_dice"] == pytest.approx(0.5) and m["centre_missing"] == 1
    assert m["by_label"] == {"ALL": {"n": 3, "dice": 0.5, "dice_cell": 0.5, "centre_dice_cell": 0.5,
                                     "dice_nucleus": pytest.approx(1 / 3), "centre_dice_nucleus": pytest.approx(1 / 3)}}
    items = ctx.report.items
    assert [i["type"] for i in items] == ["table", "text", "table", "table", "gallery"]
    assert items[1]["text"].startswith("on: images are small and square")
    assert [i["caption"] for i in items[4]["images"]] == ["c: Dice 0.000 (ALL)", "b: Dice 0.500 (ALL)",
                                                         "a: Dice 1.000 (ALL)"]  # worst first
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
    assert [i["type"] for i in ctx.report.items] == ["table", "text", "table", "table"]
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


def _write_pair(d, iid, truth, pred, *, label="x", inst=None):
    """Write an image, its 0/1/2 truth and a 0/1/2 prediction (and optional instance labels)."""
    img = np.full(truth.shape + (3,), 220, np.uint8)
    img[truth > 0] = (150, 90, 170)
    io.write_png(d / f"{iid}.png", img)
    io.write_png(d / f"{iid}_mask.png", truth)
    io.write_png(d / f"{iid}_pred.png", pred)
    row = {"image_id": iid, "patient_id": iid, "label": label, "path": f"{iid}.png", "mask_path": f"{iid}_mask.png"}
    prow = {"image_id": iid, "path": f"{iid}_pred.png"}
    if inst is not None:
        np.save(d / f"{iid}_inst.npy", inst.astype(np.int32))
        prow["instances_path"] = f"{iid}_inst.npy"
    return row, prow


def _sets(d, pairs, meta=None):
    rows, prows = zip(*pairs)
    images = ImageSet(d, pd.DataFrame(list(rows)), {"classes": sorted({r["label"] for r in rows}),
                                                     "mask_spec": {"mode": "canonical"}, **(meta or {})}).save()
    masks = MaskSet(d, pd.DataFrame(list(prows)), {"source": "test"}).save()
    return images, masks


def test_centre_cell_ignores_the_neighbour_at_the_border(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    centre = _square(24, 8, 16, 8, 16, (10, 14, 10, 14))     # 64 px cell, 16 px nucleus
    truth = centre.copy()
    truth[0:4, 0:24] = 1                                        # a neighbour cut by the top border,
    truth[0:2, 8:16] = 2                                        # with its nucleus: truth masks it too
    pred_ok = centre.copy()                                     # the centre cell exactly; neighbour missed
    pred_off = _square(24, 12, 20, 12, 20, (14, 18, 14, 18))    # centre cell shifted by 4 px in y and x
    pred_off[0:4, 0:24] = 1                                     # ... plus the neighbour, exactly
    pred_nb = np.zeros((24, 24), np.uint8)                      # only the neighbour: nothing at the centre
    pred_nb[0:4, 0:24] = 1
    pairs = [_write_pair(d, "ok", truth, pred_ok, label="lymphocyte"),
             _write_pair(d, "off", truth, pred_off, label="lymphocyte"),
             _write_pair(d, "nb", truth, pred_nb, label="neutrophil")]
    images, masks = _sets(d, pairs)
    out = make(SegmentationEvaluator, n_overlays=1).run(make_context(tmp_path / "w"), masks=masks, images=images)
    m = out["metrics"].values["segmentation"]
    per = pd.read_csv(out["metrics"].path / "per_image.csv").set_index("image_id")
    # raw foreground Dice counts the neighbour: 2*64 / (64 + 160) for "ok"
    assert per.loc["ok", "dice_cell"] == pytest.approx(128 / 224)
    # the centre cell: "ok" is perfect, cell and nucleus
    assert per.loc["ok", "centre_dice_cell"] == 1.0 and per.loc["ok", "centre_dice_nucleus"] == 1.0
    # "off": its cell does not cover the centre pixel but is the nearest; overlap 4x4 of 8x8 cells
    assert per.loc["off", "centre_dice_cell"] == pytest.approx(2 * 16 / 128)
    assert per.loc["off", "centre_dice_nucleus"] == 0.0  # nuclei 14..18 vs 10..14: no overlap
    # "nb": the nearest predicted cell is the neighbour, which is not the true centre cell
    assert per.loc["nb", "centre_dice_cell"] == 0.0 and bool(per.loc["nb", "centre_found"])
    assert m["centre_cell"] is True and m["centre_dice"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert m["centre_dice_median"] == pytest.approx(0.25)
    assert m["by_label"]["lymphocyte"]["centre_dice_cell"] == pytest.approx(0.625)
    assert m["by_label"]["neutrophil"] == {"n": 1, "dice": pytest.approx(2 * 96 / (96 + 160)),
                                           "dice_cell": pytest.approx(2 * 96 / (96 + 160)),
                                           "centre_dice_cell": 0.0, "dice_nucleus": 0.0, "centre_dice_nucleus": 0.0}
    # centre scoring forced off: no centre keys, the instance matching is on instead (auto)
    off = make(SegmentationEvaluator, centre_cell=False, n_overlays=0).run(
        make_context(tmp_path / "w2"), masks=masks, images=images)["metrics"].values["segmentation"]
    assert off["centre_cell"] is False and "centre_dice" not in off and off["instances"] is True
    # the data set's meta decides auto: single_cell false keeps it off for the same images
    images.meta["single_cell"] = False
    ctx = make_context(tmp_path / "w3")
    auto = make(SegmentationEvaluator, n_overlays=0).run(ctx, masks=masks, images=images)
    assert auto["metrics"].values["segmentation"]["centre_cell"] is False
    assert ctx.report.items[1]["text"] == "off: the data set says single_cell: false"


def test_centre_cell_auto_is_off_for_fields():
    from hemaflow.plugins.evaluate import _is_crop_set

    crops = pd.DataFrame({"height": [120, 128], "width": [120, 120], "centre_in_truth": [True, True]})
    assert _is_crop_set(crops, {})[0] is True
    fields = crops.assign(height=[480, 480], width=[640, 640])  # BCCD-like 640x480 fields
    assert _is_crop_set(fields, {})[0] is False
    off_centre = crops.assign(centre_in_truth=[True, False])   # square tiles whose cells lie anywhere
    assert _is_crop_set(off_centre, {})[0] is False
    assert _is_crop_set(fields, {"single_cell": True}) == (True, "the data set says single_cell: true")


def _field():
    """A 40x40 field with 4 true cells and a prediction with known matches.

    true: A 8x8 at (2,2), B 8x8 at (2,20), C 8x8 at (20,2), D 6x6 at (30,30)
    pred: A exactly (IoU 1); B shifted 2 px right (IoU 48/80 = 0.6, matched); C shifted 5 px
          down (IoU 24/104 < 0.5: a false positive and a false negative); D missed;
          an extra cell at (22,22) (false positive).
    """
    truth = np.zeros((40, 40), np.uint8)
    pred = np.zeros((40, 40), np.uint8)
    truth[2:10, 2:10] = 1
    truth[2:10, 20:28] = 1
    truth[20:28, 2:10] = 1
    truth[30:36, 30:36] = 1
    pred[2:10, 2:10] = 1
    pred[2:10, 22:30] = 1
    pred[25:33, 2:10] = 1
    pred[20:26, 20:26] = 1
    return truth, pred


def test_match_instances_known_answer():
    from hemaflow.lib.instance_matching import label_cells, match_instances

    truth, pred = _field()
    m = match_instances(label_cells(truth > 0), label_cells(pred > 0), 0.5)
    assert (m["n_true"], m["n_pred"], m["tp"]) == (4, 4, 2)
    assert sorted(m["matched_dice"]) == pytest.approx([2 * 48 / 128, 1.0])
    assert m["ap"] == pytest.approx(2 / 6)  # tp / (tp + fp + fn)
    # at a stricter threshold B no longer matches
    assert match_instances(label_cells(truth > 0), label_cells(pred > 0), 0.7)["tp"] == 1
    # labels need not be consecutive, nothing vs nothing has no AP
    sparse = label_cells(truth > 0) * 7
    assert match_instances(sparse, label_cells(truth > 0))["tp"] == 4
    empty = np.zeros((5, 5), np.int32)
    assert match_instances(empty, empty) == {"n_true": 0, "n_pred": 0, "tp": 0, "matched_dice": [], "ap": None}


def test_instance_matching_on_fields_and_postprocessor_instances(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    truth, pred = _field()
    # a second field: two true cells touching a predicted blob that the post-processor split
    truth2 = np.zeros((40, 40), np.uint8)
    truth2[5:15, 5:15] = 1
    truth2[5:15, 16:26] = 1
    pred2 = np.zeros((40, 40), np.uint8)
    pred2[5:15, 5:26] = 1                      # one connected blob over both cells
    inst2 = np.zeros((40, 40), np.int32)
    inst2[5:15, 5:15] = 3                      # ... split by the post-processor's instances
    inst2[5:15, 15:26] = 9
    pairs = [_write_pair(d, "f1", truth, pred, label="a"),
             _write_pair(d, "f2", truth2, pred2, label="b", inst=inst2)]
    rows, prows = zip(*pairs)
    images = ImageSet(d, pd.DataFrame(list(rows)).assign(source=["lab1", "lab2"]),
                      {"classes": ["a", "b"], "mask_spec": {"mode": "canonical"}}).save()
    masks = MaskSet(d, pd.DataFrame([dict(prows[0], instances_path=None), prows[1]]), {"source": "t"}).save()
    out = make(SegmentationEvaluator, target="cell", n_overlays=0).run(
        make_context(tmp_path / "w"), masks=masks, images=images)
    m = out["metrics"].values["segmentation"]
    assert m["centre_cell"] is False and m["instances"] is True  # 40x40, but cells are off the centre
    # f1: tp 2 of 4 true / 4 predicted; f2: the instances split the blob: 2 of 2 (IoU 1 and 100/110)
    assert (m["n_true_cells"], m["n_pred_cells"], m["n_matched"]) == (6, 6, 4)
    assert m["detection_precision"] == pytest.approx(4 / 6) and m["detection_recall"] == pytest.approx(4 / 6)
    assert m["detection_f1"] == pytest.approx(4 / 6)
    assert m["ap50"] == pytest.approx((2 / 6 + 1.0) / 2)
    assert m["matched_dice"] == pytest.approx((1 + 96 / 128 + 1 + 200 / 210) / 4)
    assert m["by_source"]["lab2"]["detection_f1"] == 1.0 and m["by_source"]["lab1"]["detection_f1"] == 0.5
    assert set(m["by_label"]) == {"a", "b"} and "by_site" not in m  # no site column: left out
    # without the instances the blob is one cell: IoU 100/210 < 0.5 for both: no match in f2
    masks.table = masks.table.drop(columns="instances_path")
    m2 = make(SegmentationEvaluator, target="cell", n_overlays=0).run(
        make_context(tmp_path / "w2"), masks=masks, images=images)["metrics"].values["segmentation"]
    assert (m2["n_pred_cells"], m2["n_matched"]) == (5, 2)
    per = pd.read_csv(out["metrics"].path / "per_image.csv")
    assert list(per.columns[:3]) == ["image_id", "label", "source"]
    assert per["tp"].tolist() == [2, 2]


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
