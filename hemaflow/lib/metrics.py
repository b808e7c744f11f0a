"""Metric functions: segmentation overlap and classification scores, with bootstrap CIs.

Pure functions on numpy arrays; no hemaflow state. Classification point estimates come from
scikit-learn. Two things are computed here directly because they run in tight loops:

* :func:`dice` / :func:`iou` on pixel masks (numpy counts; identical to scikit-learn's
  ``f1_score`` / ``jaccard_score`` on the flattened masks, which is 20-50x slower);
* the bootstrap (:func:`bootstrap_ci`) recomputes accuracy, balanced accuracy, macro F1 and
  AUROC for a thousand resamples at once from confusion counts and ranks (:func:`batch_scores`);
  the tests check that it equals scikit-learn on every resample.

Example:
    >>> import numpy as np
    >>> dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    0.6666666666666666
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


# -- segmentation ----------------------------------------------------------------------------
def _binary_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    inter = int(np.count_nonzero(pred & truth))
    return inter, int(np.count_nonzero(pred)), int(np.count_nonzero(truth))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)`` of two binary masks (non-zero is foreground).

    Both empty counts as a perfect match (1.0).
    """
    inter, p, t = _binary_counts(pred, truth)
    return 1.0 if p + t == 0 else 2.0 * inter / (p + t)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|`` of two binary masks; both empty is 1.0."""
    inter, p, t = _binary_counts(pred, truth)
    union = p + t - inter
    return 1.0 if union == 0 else inter / union


# -- classification --------------------------------------------------------------------------
def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def clean(obj: Any) -> Any:
    """Return ``obj`` with numpy scalars turned into Python ones and NaN into None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return _nan_to_none(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def format_metric(section: dict[str, Any], key: str, missing: str = "n/a") -> str:
    """``section[key]`` to 3 decimals with its 95% interval (``section[key + "_ci"]``) if any,
    e.g. ``0.812 [0.700, 0.900]``; ``missing`` when the metric is absent or None."""
    v = section.get(key)
    if v is None:
        return missing
    ci = section.get(f"{key}_ci")
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def auroc(y_true: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> tuple[float | None, dict[str, float | None]]:
    """AUROC: binary for two classes, else macro one-vs-rest over classes present in ``y_true``.

    Args:
        y_true: true class names, length N.
        probs: float array (N, C), column ``j`` the probability of ``classes[j]``.
        classes: class names in column order.

    Returns:
        (auroc, per-class one-vs-rest AUROC). ``None`` where undefined: a class absent from
        ``y_true`` (or every sample of it), or fewer than two classes present.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(str)
    per: dict[str, float | None] = {}
    for j, c in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            per[c] = None
        else:
            per[c] = float(roc_auc_score(pos, probs[:, j]))
    if len(classes) == 2:
        return per[classes[1]], per
    vals = [v for v in per.values() if v is not None]
    return (float(np.mean(vals)) if len(vals) >= 2 else None), per


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str],
                           probs: np.ndarray | None = None) -> dict[str, Any]:
    """All classification metrics for one set of units, by scikit-learn.

    Args:
        y_true: true class names.
        y_pred: predicted class names.
        classes: every class name, in probability-column order.
        probs: optional (N, len(classes)) probabilities; without them ``auroc`` is None.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "auroc", "n", "per_class":
        {class: {"precision", "recall", "f1", "support", "auroc"}}, "confusion_matrix":
        {"labels": classes, "matrix": [[...]]}}`` (rows true, columns predicted). Classes that
        occur in neither ``y_true`` nor ``y_pred`` do not enter ``macro_f1`` or
        ``balanced_accuracy``; their per-class values are None.
    """
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support)

    yt = np.asarray(y_true).astype(str)
    yp = np.asarray(y_pred).astype(str)
    classes = [str(c) for c in classes]
    if len(yt) == 0:
        return {"accuracy": None, "balanced_accuracy": None, "macro_f1": None, "auroc": None, "n": 0}
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected on small folds
        warnings.simplefilter("ignore")
        out: dict[str, Any] = {
            "accuracy": float(accuracy_score(yt, yp)),
            "balanced_accuracy": float(balanced_accuracy_score(yt, yp)),
            "macro_f1": float(f1_score(yt, yp, average="macro", zero_division=0)),
        }
        prec, rec, f1, sup = precision_recall_fscore_support(yt, yp, labels=classes, zero_division=np.nan)
    if probs is not None:
        out["auroc"], per_auc = auroc(yt, np.asarray(probs, dtype=float), classes)
    else:
        out["auroc"], per_auc = None, {c: None for c in classes}
    out["n"] = int(len(yt))
    present = set(yt) | set(yp)
    out["per_class"] = {
        c: ({"precision": prec[j], "recall": rec[j], "f1": f1[j], "support": int(sup[j]), "auroc": per_auc.get(c)}
            if c in present else
            {"precision": None, "recall": None, "f1": None, "support": 0, "auroc": None})
        for j, c in enumerate(classes)
    }
    out["confusion_matrix"] = {"labels": classes,
                               "matrix": confusion_matrix(yt, yp, labels=classes).tolist()}
    return clean(out)


# -- vectorized versions for the bootstrap -----------------------------------------------------------
def batch_scores(yt: np.ndarray, yp: np.ndarray, probs: np.ndarray | None, n_classes: int) -> dict[str, np.ndarray]:
    """Headline metrics for a batch of label vectors at once; NaN where undefined.

    Equal to :func:`classification_metrics` row by row (the tests check it against scikit-learn).

    Args:
        yt, yp: int arrays (B, N) of class indices in ``range(n_classes)``.
        probs: float array (B, N, n_classes) or None.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "auroc"}`` -> float arrays (B,).
    """
    from scipy.stats import rankdata

    k = n_classes
    b, n = yt.shape
    flat = (np.arange(b)[:, None] * k * k + yt * k + yp).ravel()
    cm = np.bincount(flat, minlength=b * k * k).reshape(b, k, k).astype(float)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_n = cm.sum(2)
    pred_n = cm.sum(1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as intended
        out["accuracy"] = tp.sum(1) / n
        out["balanced_accuracy"] = np.nanmean(np.where(true_n > 0, tp / true_n, np.nan), axis=1)
        denom = true_n + pred_n
        out["macro_f1"] = np.nanmean(np.where(denom > 0, 2 * tp / denom, np.nan), axis=1)
        if probs is None:
            out["auroc"] = np.full(b, np.nan)
            return out
        aucs = np.full((b, k), np.nan)
        for j in range(k):
            pos = yt == j
            n_pos = pos.sum(1)
            n_neg = n - n_pos
            ranks = rankdata(probs[:, :, j], axis=1)  # ties get their mean rank, as in the U statistic
            u = (ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2
            aucs[:, j] = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
        if k == 2:
            out["auroc"] = aucs[:, 1]
        else:
            valid = (~np.isnan(aucs)).sum(1)
            out["auroc"] = np.where(valid >= 2, np.nanmean(aucs, axis=1), np.nan)
    return out


def fast_scores(yt: np.ndarray, yp: np.ndarray, probs: np.ndarray | None, n_classes: int) -> dict[str, float]:
    """:func:`batch_scores` for one label vector (N,): a dict of floats, NaN where undefined."""
    res = batch_scores(yt[None], yp[None], None if probs is None else probs[None], n_classes)
    return {m: float(v[0]) for m, v in res.items()}


def bootstrap_ci(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str], probs: np.ndarray | None,
                 *, rng: np.random.Generator, n_bootstrap: int = 1000, level: float = 0.95,
                 stratified: bool = True, metrics: Sequence[str] = HEADLINE) -> dict[str, list[float] | None]:
    """Percentile bootstrap confidence intervals, resampling units (patients) with replacement.

    ``stratified`` resamples within each true class, keeping the class counts of the data: on a
    small cohort a plain resample often draws one class only, where balanced accuracy and AUROC
    mean something else or nothing.

    Resamples where a metric is undefined (e.g. AUROC with one class drawn) are left out of
    that metric's interval; a metric defined in fewer than half of the resamples gets None.

    Returns:
        ``{"<metric>_ci": [lo, hi] | None}`` for each metric.
    """
    index = {str(c): i for i, c in enumerate(classes)}
    yt = np.array([index[str(c)] for c in y_true], dtype=np.int64)
    yp = np.array([index[str(c)] for c in y_pred], dtype=np.int64)
    n = len(yt)
    out: dict[str, list[float] | None] = {f"{m}_ci": None for m in metrics}
    if n == 0 or n_bootstrap <= 0:
        return out
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    # resample in chunks: vectorized, with memory bounded for large cohorts
    chunk = max(1, min(n_bootstrap, 2_000_000 // max(n * len(classes), 1)))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        if stratified:
            groups = [np.flatnonzero(yt == c) for c in range(len(classes))]
            idx = np.hstack([g[rng.integers(0, len(g), (size, len(g)))] for g in groups if len(g)])
        else:
            idx = rng.integers(0, n, (size, n))
        s = batch_scores(yt[idx], yp[idx], None if probs is None else np.asarray(probs, float)[idx], len(classes))
        for m in metrics:
            values[m].append(s[m])
        done += size
    alpha = (1 - level) / 2
    for m in metrics:
        v = np.concatenate(values[m])
        v = v[~np.isnan(v)]
        if len(v) >= n_bootstrap / 2:
            out[f"{m}_ci"] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))]
    return out
