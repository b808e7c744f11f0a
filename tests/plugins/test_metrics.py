"""Metric functions on known inputs (hand-checked values) and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemaflow.lib.metrics import auroc, bootstrap_ci, classification_metrics, dice, fast_scores, iou


def test_dice_iou_hand_checked():
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    truth = np.array([[1, 0, 0], [0, 1, 1]])
    # |P|=3, |T|=3, |P∩T|=2 -> dice 4/6, iou 2/4
    assert dice(pred, truth) == pytest.approx(2 / 3)
    assert iou(pred, truth) == pytest.approx(0.5)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert dice(np.ones((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError, match=r"shapes differ: prediction \(2, 2\), truth \(3, 3\)"):
        dice(np.ones((2, 2)), np.ones((3, 3)))


def test_dice_iou_equal_sklearn():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(1)
    p, t = rng.random((40, 50)) > 0.5, rng.random((40, 50)) > 0.3
    assert dice(p, t) == pytest.approx(f1_score(t.ravel(), p.ravel()))
    assert iou(p, t) == pytest.approx(jaccard_score(t.ravel(), p.ravel()))


def test_classification_metrics_binary_hand_checked():
    classes = ["ALL", "HEM"]
    y_true = ["ALL", "ALL", "ALL", "HEM", "HEM"]
    y_pred = ["ALL", "ALL", "HEM", "HEM", "ALL"]
    p_hem = np.array([0.1, 0.3, 0.6, 0.8, 0.4])
    m = classification_metrics(y_true, y_pred, classes, np.c_[1 - p_hem, p_hem])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recall ALL 2/3, HEM 1/2
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # F1 ALL: P 2/3 R 2/3 -> 2/3; HEM: P 1/2 R 1/2 -> 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # positives (HEM) 0.8, 0.4 vs negatives 0.1, 0.3, 0.6: pairs won 3 + 2 = 5 of 6
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m["n"] == 5
    assert m["confusion_matrix"] == {"labels": classes, "matrix": [[2, 1], [1, 1]]}
    assert m["per_class"]["HEM"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2,
                                     "auroc": pytest.approx(5 / 6)}


def test_classification_metrics_absent_class():
    classes = ["A", "B", "C"]
    y_true = ["A", "A", "B", "B"]
    y_pred = ["A", "B", "B", "B"]
    probs = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    m = classification_metrics(y_true, y_pred, classes, probs)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    # F1 A: P 1 R 1/2 -> 2/3; B: P 2/3 R 1 -> 4/5; C absent from both -> not averaged
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # class C is absent from y_true: its AUROC is None and the macro OvR averages A and B (1.0 each)
    assert m["per_class"]["C"] == {"precision": None, "recall": None, "f1": None, "support": 0, "auroc": None}
    assert m["per_class"]["A"]["auroc"] == 1.0 and m["per_class"]["B"]["auroc"] == 1.0
    assert m["auroc"] == 1.0
    # one class only: AUROC undefined, still valid JSON values
    m1 = classification_metrics(["A", "A"], ["A", "B"], classes, probs[:2])
    assert m1["auroc"] is None and m1["accuracy"] == 0.5


def test_auroc_multiclass_equals_sklearn_ovr():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    y = rng.choice(classes, 60)
    p = rng.dirichlet(np.ones(3), 60)
    value, _ = auroc(y, p, classes)
    assert value == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes))


def test_fast_scores_equal_sklearn_on_resamples():
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    y = rng.integers(0, 3, 30)
    p = rng.dirichlet(np.ones(3), 30).round(1)  # rounding makes ties
    yp = p.argmax(1)
    for _ in range(25):
        idx = rng.integers(0, 30, 30)
        fast = fast_scores(y[idx], yp[idx], p[idx], 3)
        ref = classification_metrics(np.array(classes)[y[idx]], np.array(classes)[yp[idx]], classes, p[idx])
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
            if ref[k] is None:
                assert math.isnan(fast[k])
            else:
                assert fast[k] == pytest.approx(ref[k]), k


def test_bootstrap_ci_deterministic_and_sensible():
    rng = np.random.default_rng(5)
    classes = ["ALL", "HEM"]
    y = rng.choice(classes, 40)
    p_hem = np.clip((y == "HEM") * 0.4 + rng.random(40) * 0.6, 0, 1)
    probs = np.c_[1 - p_hem, p_hem]
    pred = np.where(p_hem > 0.5, "HEM", "ALL")
    a = bootstrap_ci(y, pred, classes, probs, rng=np.random.default_rng(7), n_bootstrap=200)
    b = bootstrap_ci(y, pred, classes, probs, rng=np.random.default_rng(7), n_bootstrap=200)
    c = bootstrap_ci(y, pred, classes, probs, rng=np.random.default_rng(8), n_bootstrap=200)
    assert a == b
    assert a != c
    point = classification_metrics(y, pred, classes, probs)
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        lo, hi = a[f"{k}_ci"]
        assert lo <= point[k] <= hi and hi - lo < 0.6, (k, lo, point[k], hi)


def test_bootstrap_ci_undefined_metric_is_none():
    # one class only: AUROC is undefined in every resample
    ci = bootstrap_ci(["A"] * 5, ["A", "A", "B", "A", "A"], ["A", "B"], np.full((5, 2), 0.5),
                      rng=np.random.default_rng(0), n_bootstrap=50)
    assert ci["auroc_ci"] is None
    assert ci["accuracy_ci"][1] == 1.0


def test_stratified_bootstrap_keeps_classes():
    # 1 HEM among 8: plain resamples often miss it (AUROC undefined, balanced accuracy = one recall);
    # stratified resamples always hold 7 ALL and 1 HEM, so the perfect ranking gives AUROC 1 every time
    y = np.array(["ALL"] * 7 + ["HEM"])
    p_hem = np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.4, 0.3, 0.9])
    probs = np.c_[1 - p_hem, p_hem]
    pred = np.where(p_hem > 0.5, "HEM", "ALL")
    strat = bootstrap_ci(y, pred, ["ALL", "HEM"], probs, rng=np.random.default_rng(0), n_bootstrap=300)
    assert strat["auroc_ci"] == [1.0, 1.0] and strat["balanced_accuracy_ci"] == [1.0, 1.0]
    plain = bootstrap_ci(y, pred, ["ALL", "HEM"], probs, rng=np.random.default_rng(0), n_bootstrap=300,
                         stratified=False)
    assert plain["balanced_accuracy_ci"] == [1.0, 1.0]
    assert plain["auroc_ci"] == [1.0, 1.0]  # defined in the ~66% of resamples that draw the HEM patient
