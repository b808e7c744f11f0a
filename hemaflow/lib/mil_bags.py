"""MIL instances and bags: join instance tables on ``cell_id``, one bag per patient, per-fold
scaling and PCA fitted on training instances only, and precision of the top-scored cells
against generator ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import TableArtifact
from hemaflow.core.errors import DataError

ID_COLUMNS = ("cell_id", "image_id", "patient_id", "label")
NORMAL_TRUTH = {"normal", "", "nan", "none"}


# -- instances and bags ----------------------------------------------------------------------
@dataclass
class Instances:
    """The instance table of a MIL step, with a way to get a fold's feature matrix.

    ``table`` has one row per instance: ``cell_id, image_id, patient_id, label`` plus
    ``centroid_y, centroid_x``, ``crop_index`` and ``truth`` where known. ``blocks`` are the
    feature sources: (name, per-fold or fold-independent matrix aligned with ``table``).
    """

    table: pd.DataFrame
    blocks: list[tuple[str, dict[int, np.ndarray] | np.ndarray]]
    classes: list[str]

    def fold_blocks(self, fold: int) -> list[tuple[str, np.ndarray]]:
        """(name, matrix) of every feature source for ``fold``."""
        out = []
        for name, block in self.blocks:
            if isinstance(block, dict):
                if fold not in block:
                    raise DataError(name, f"has no rows for fold {fold}; was it computed with the same split?")
                out.append((name, block[fold]))
            else:
                out.append((name, block))
        return out

    def matrix(self, fold: int) -> np.ndarray:
        parts = [b for _, b in self.fold_blocks(fold)]
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(self.table), 0), np.float32)

    @property
    def dim(self) -> int:
        return sum((next(iter(b.values())) if isinstance(b, dict) else b).shape[1] for _, b in self.blocks)


def _feature_columns(ft: TableArtifact) -> list[str]:
    cols = list(ft.meta.get("feature_columns") or [])
    if not cols:
        skip = set(ID_COLUMNS) | {"fold", "crop_index", "truth", "centroid_y", "centroid_x", "area", "cell_type"}
        cols = [c for c in ft.table.columns if c not in skip and pd.api.types.is_numeric_dtype(ft.table[c])]
    return cols


def _by_cell(t: pd.DataFrame) -> pd.DataFrame:
    t = t.drop_duplicates("cell_id")
    return t.set_axis(pd.Index([str(v) for v in t["cell_id"]]), axis=0)


def _aligned(ft: TableArtifact, ids: pd.Index, name: str) -> dict[int, np.ndarray] | np.ndarray:
    """Return ``ft``'s features aligned with ``ids`` (NaN rows where a cell is missing)."""
    t = ft.table
    if "cell_id" not in t.columns:
        raise DataError(ft.path, f"{name} has no cell_id column; MIL needs one row per instance")
    cols = _feature_columns(ft)
    if not cols:
        raise DataError(ft.path, f"{name} has no feature columns")
    if "fold" in t.columns and t["fold"].nunique() > 0 and (t["fold"] >= 0).any():
        out = {}
        for fold, sub in t.groupby("fold"):
            out[int(fold)] = _by_cell(sub).reindex(ids)[cols].to_numpy(np.float32)
        return out
    return _by_cell(t).reindex(ids)[cols].to_numpy(np.float32)


def select_modalities(modalities: list[str] | None, embeddings: TableArtifact | None,
                      features: TableArtifact | None) -> tuple[TableArtifact | None, TableArtifact | None]:
    """Keep only the instance inputs a step's ``modalities`` parameter names (all when it is empty).

    Raises:
        DataError: a listed modality has no input in the step.
    """
    if not modalities:
        return embeddings, features
    given = {"embeddings": embeddings, "features": features}
    for m in modalities:
        if given[m] is None:
            raise DataError("<recipe>", f"modalities lists {m!r} but the step has no {m!r} input")
    return (embeddings if "embeddings" in modalities else None,
            features if "features" in modalities else None)


def build_instances(*, embeddings: TableArtifact | None = None, features: TableArtifact | None = None,
                    cells: TableArtifact | None = None, all_cells: bool = False) -> Instances:
    """Join the instance sources on ``cell_id``.

    The instance universe is the embeddings' cells, else the features' cells (``all_cells``:
    every cell of ``cells``, for end-to-end MIL on the crops). Metadata (centroid, crop index,
    generator truth) comes from ``cells`` where given. A cell missing from ``features`` keeps NaN
    features (imputed with the fold's training mean later).
    """
    base = cells if all_cells else (embeddings if embeddings is not None else features)
    if base is None:
        raise DataError("<recipe>", "a MIL step needs an `embeddings` or a `features` input (instance features), "
                                    "or `cells` with an end-to-end `encoder`")
    bt = base.table
    if "cell_id" not in bt.columns:
        raise DataError(base.path, "has no cell_id column; MIL needs one row per instance")
    table = bt.drop_duplicates("cell_id")[[c for c in ID_COLUMNS if c in bt.columns]].copy()
    table["cell_id"] = table["cell_id"].astype(str)
    table["patient_id"] = table["patient_id"].astype(str)
    table = table.reset_index(drop=True)
    extra = ["centroid_y", "centroid_x", "crop_index", "truth", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]
    if cells is not None and not all_cells:
        ct = cells.table.copy()
        ct["cell_id"] = ct["cell_id"].astype(str)
        cols = [c for c in extra if c in ct.columns]
        table = table.merge(ct[["cell_id", *cols]], on="cell_id", how="left")
    else:
        for c in extra:
            if c in bt.columns:
                table[c] = bt.drop_duplicates("cell_id")[c].to_numpy()
    ids = pd.Index(table["cell_id"])
    blocks: list[tuple[str, Any]] = []
    if embeddings is not None:
        blocks.append(("embeddings", _aligned(embeddings, ids, "embeddings")))
    if features is not None:
        blocks.append(("features", _aligned(features, ids, "features")))
    classes = []
    for src in (embeddings, features, cells):
        if src is not None and src.meta.get("classes"):
            classes = list(src.meta["classes"])
            break
    if not classes:
        classes = sorted(str(v) for v in table["label"].dropna().unique() if str(v) != "")
    return Instances(table, blocks, classes)


def make_bags(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Return patient_id -> row indices of that patient's instances (all of its images)."""
    return {str(pid): np.asarray(idx, dtype=np.int64)
            for pid, idx in table.groupby(table["patient_id"].astype(str), sort=True).indices.items()}


def patient_labels(table: pd.DataFrame, path: object = "<instances>") -> dict[str, str]:
    """Return patient_id -> label; a patient with two labels is a DataError."""
    lab = table.groupby(table["patient_id"].astype(str))["label"].agg(lambda s: sorted(set(map(str, s))))
    bad = {p: v for p, v in lab.items() if len(v) != 1}
    if bad:
        p, v = next(iter(bad.items()))
        raise DataError(path, f"patient {p!r} has instances with different labels {v}; a bag needs one label")
    return {p: v[0] for p, v in lab.items()}


def sample_bag(idx: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Return at most ``cap`` instances of a bag, drawn without replacement (training only)."""
    if cap <= 0 or len(idx) <= cap:
        return idx
    return np.sort(rng.choice(idx, size=cap, replace=False))


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column ignoring NaN (fitted on the fold's training instances only)."""
    with np.errstate(all="ignore"):
        mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
        std = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def fit_pca(x: np.ndarray, train_rows: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Project ``x`` on the first ``k`` principal components of its (standardized) training rows.

    Returns the projected matrix and the fitted parameters (``pca_mean``, ``pca_std``,
    ``pca_components``). Missing values take the training mean.
    """
    mean, std = fit_scaler(x[train_rows])
    z = apply_scaler(x, mean, std).astype(np.float64)
    zt = z[train_rows] - z[train_rows].mean(0)
    # the principal axes from the smaller of the two Gram matrices (n x n or d x d): an
    # eigendecomposition of a few hundred rows is ~100x faster than a full SVD of n x 1024
    if zt.shape[0] < zt.shape[1]:
        w, u = np.linalg.eigh(zt @ zt.T)
        order = np.argsort(w)[::-1][:k]
        comps = (u[:, order].T @ zt) / np.sqrt(np.maximum(w[order], 1e-12))[:, None]
    else:
        w, v = np.linalg.eigh(zt.T @ zt)
        comps = v[:, np.argsort(w)[::-1][:k]].T
    comps = comps.astype(np.float32)
    return (z @ comps.T).astype(np.float32), {"pca_mean": mean, "pca_std": std, "pca_components": comps}


def r_precision(scores: np.ndarray, abnormal: np.ndarray, k: int) -> float:
    """Precision of the top ``min(k, number of abnormal instances)`` instances.

    Plain precision@k cannot reach one when a bag holds fewer than ``k`` abnormal cells (a bag
    with 2 abnormal cells tops out at 0.4 for k = 5); this variant can, and a perfect ranking
    always scores one. Chance level is still the bag's abnormal fraction.
    """
    n_abnormal = int(np.asarray(abnormal, bool).sum())
    return precision_at_k(scores, abnormal, min(k, n_abnormal)) if n_abnormal else float("nan")


def apply_scaler(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean) / std
    z[~np.isfinite(z)] = 0.0  # missing values take the training mean
    return np.clip(z, -10, 10).astype(np.float32)


def precision_at_k(scores: np.ndarray, abnormal: np.ndarray, k: int) -> float:
    """Fraction of the ``k`` highest-scoring instances that are abnormal (k capped at bag size).

    Ties at the cut are broken at random in expectation, so uniform scores (mean pooling) give
    the bag's abnormal fraction, not an artefact of instance order.
    """
    scores = np.asarray(scores, np.float64)
    abnormal = np.asarray(abnormal, np.float64)
    k = min(k, len(scores))
    if k == 0:
        return float("nan")
    kth = np.sort(scores)[::-1][k - 1]
    tol = 1e-9 + 1e-6 * abs(kth)
    above = scores > kth + tol
    tied = np.abs(scores - kth) <= tol
    need = k - int(above.sum())
    return float((abnormal[above].sum() + need * abnormal[tied].mean()) / k)
