"""Cell instances for segmentation scoring: connected cells, the centre cell of a crop, and one-to-one
matching of predicted to true instances at an IoU threshold."""

from __future__ import annotations

from typing import Any

import numpy as np


# -- instances: the centre cell and matching ----------------------------------------------------
def label_cells(foreground: np.ndarray) -> np.ndarray:
    """Connected components (8-connected) of a boolean mask as int32 labels 1..N."""
    from scipy import ndimage as ndi

    return ndi.label(foreground, structure=np.ones((3, 3), int))[0].astype(np.int32)


def centre_instance(labels: np.ndarray) -> int:
    """The label of the instance under the image centre, else of the one nearest to it (0: none).

    "Nearest" is the labelled pixel closest (Euclidean) to the geometric centre ``((h-1)/2,
    (w-1)/2)``; on a tie the first in raster order wins.
    """
    ys, xs = np.nonzero(labels)
    if len(ys) == 0:
        return 0
    h, w = labels.shape
    i = int(np.argmin((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2))
    return int(labels[ys[i], xs[i]])


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel instances 1..N in label order (0 stays background)."""
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    return inverse + 1 if values[0] != 0 else inverse


def match_instances(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Match true and predicted instances (int labels, 0 background) one to one by IoU.

    The assignment maximises the summed IoU (Hungarian, ``scipy.optimize.linear_sum_assignment``);
    a pair counts as a true positive when its IoU >= ``threshold`` (at 0.5 and above a match is
    unique, so this equals the greedy matching of the Data Science Bowl 2018 and cellpose).

    Returns:
        ``n_true``, ``n_pred``, ``tp``, ``matched_dice`` (list of the Dice of each matched pair)
        and ``ap`` = tp / (tp + fp + fn) (None when the image has no instance at all).
    """
    from scipy.optimize import linear_sum_assignment

    t, p = _consecutive(truth), _consecutive(pred)
    nt, npred = int(t.max()), int(p.max())
    out: dict[str, Any] = {"n_true": nt, "n_pred": npred, "tp": 0, "matched_dice": []}
    if nt and npred:
        cont = np.bincount((t * (npred + 1) + p).ravel(), minlength=(nt + 1) * (npred + 1)).reshape(nt + 1, npred + 1)
        inter = cont[1:, 1:].astype(float)
        at, ap = cont[1:, :].sum(1).astype(float), cont[:, 1:].sum(0).astype(float)
        iou_m = inter / (at[:, None] + ap[None, :] - inter)
        rows, cols = linear_sum_assignment(-iou_m)
        keep = iou_m[rows, cols] >= threshold
        rows, cols = rows[keep], cols[keep]
        out["tp"] = int(keep.sum())
        out["matched_dice"] = (2 * inter[rows, cols] / (at[rows] + ap[cols])).tolist()
    fp, fn = npred - out["tp"], nt - out["tp"]
    denom = out["tp"] + fp + fn
    out["ap"] = out["tp"] / denom if denom else None
    return out
