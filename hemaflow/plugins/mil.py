"""Multiple-instance learning: one bag of instances per patient, one diagnosis per patient.

Pipeline position::

    cells (CellSet) ──> instance_encoder (FeatureTable, per fold) ─┐
    cells ──> radiomics (FeatureTable) ────────────────────────────┼─> <aggregator> ─> Predictions
    split (Split) ─────────────────────────────────────────────────┘      (level patient)

Every aggregator is a component of kind ``mil`` sharing :class:`MILComponent`: it joins the
instance tables on ``cell_id``, builds one bag per patient (all instances of all that patient's
images, never mixing patients), and for every fold of the Split trains on the fold's ``train``
patients (a random subset of at most ``max_instances`` per bag and epoch), stops early on the
fold's ``val`` patients and predicts the fold's ``test`` patients with all their instances.

Aggregators (``uses:``): ``mean_mil``, ``max_mil``, ``attention_mil`` (Ilse et al. 2018),
``gated_attention_mil`` (Ilse et al. 2018, gated), ``transformer_mil`` (TransMIL-style, small)
and ``majority_vote_mil`` (the original code's sub-bags with a majority vote).

Outputs: ``predictions`` (Predictions, level ``patient``), ``model`` (Model: one safetensors
file per fold plus the fold's scaler), ``attention`` (Table: one row per test instance with its
score; scores of a bag sum to one) and ``metrics`` (Metrics section ``mil``: bags, empty bags
and, when the instances carry generator ground truth, precision@k of the top-attention cells).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Model, Predictions, TableArtifact
from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl

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


# -- networks --------------------------------------------------------------------------------
def _nets():
    """Build the torch module classes lazily (torch is imported only when a MIL step runs)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MILNet(nn.Module):
        """Shared base: instance projection -> pooling -> classifier.

        ``forward(x)`` takes one bag ``x`` (n, d) and returns ``(logits (C,), scores (n,))``, or a
        padded batch of bags ``x`` (B, n, d) with ``mask`` (B, n), True where an instance is real,
        and returns ``(logits (B, C), scores (B, n))``. Scores are non-negative, zero on padding
        and sum to one over each bag. Padding never changes a bag's output: a batch of bags gives
        the same logits as the bags one by one.
        """

        def __init__(self, in_dim: int, n_classes: int, hidden: int, dropout: float) -> None:
            super().__init__()
            self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.head = nn.Linear(hidden, n_classes)

        def pool(self, h, mask):  # pragma: no cover - abstract
            raise NotImplementedError

        def forward(self, x, mask=None):
            single = x.dim() == 2
            if single:
                x = x.unsqueeze(0)
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            z, scores = self.pool(self.project(x), mask)
            logits = self.head(z)
            return (logits[0], scores[0]) if single else (logits, scores)

    class MeanNet(MILNet):
        def pool(self, h, mask):
            w = mask.to(h.dtype)
            w = w / w.sum(1, keepdim=True).clamp_min(1)
            return (w.unsqueeze(-1) * h).sum(1), w

    class MaxNet(MILNet):
        def pool(self, h, mask):
            z, arg = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1)
            # share of hidden units for which an instance is the maximum: sums to one
            counts = F.one_hot(arg, h.shape[1]).sum(1).to(h.dtype)  # (B, n)
            return z, counts / counts.sum(1, keepdim=True)

    class AttentionNet(MILNet):
        """Ilse et al. 2018: a = softmax(w^T tanh(V h)) (gated: times sigm(U h))."""

        def __init__(self, in_dim, n_classes, hidden, dropout, attention_dim: int = 64, gated: bool = False):
            super().__init__(in_dim, n_classes, hidden, dropout)
            self.V = nn.Linear(hidden, attention_dim)
            self.U = nn.Linear(hidden, attention_dim) if gated else None
            self.w = nn.Linear(attention_dim, 1)

        def pool(self, h, mask):
            a = torch.tanh(self.V(h))
            if self.U is not None:
                a = a * torch.sigmoid(self.U(h))
            a = torch.softmax(self.w(a).squeeze(-1).masked_fill(~mask, float("-inf")), dim=1)
            return (a.unsqueeze(1) @ h).squeeze(1), a

    class TransformerNet(MILNet):
        """TransMIL-style, small: self-attention layers over the bag (memory-efficient
        scaled-dot-product attention, so 10,000 instances fit), then a class token that attends
        to every instance; its attention (averaged over heads) is the instance score."""

        def __init__(self, in_dim, n_classes, hidden, dropout, layers: int = 1, heads: int = 4):
            super().__init__(in_dim, n_classes, hidden, dropout)
            if hidden % heads:
                raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
            self.heads = heads
            self.blocks = nn.ModuleList()
            for _ in range(layers):
                self.blocks.append(nn.ModuleDict({
                    "norm1": nn.LayerNorm(hidden), "qkv": nn.Linear(hidden, 3 * hidden),
                    "out": nn.Linear(hidden, hidden), "norm2": nn.LayerNorm(hidden),
                    "mlp": nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)),
                }))
            self.cls = nn.Parameter(torch.zeros(1, hidden))
            self.norm = nn.LayerNorm(hidden)
            self.q = nn.Linear(hidden, hidden)
            self.kv = nn.Linear(hidden, 2 * hidden)

        def pool(self, h, mask):
            b, n, d = h.shape
            hd = d // self.heads
            # padded keys are invisible to every query; no mask at all when nothing is padded,
            # so a single bag keeps the fused memory-efficient kernel
            keys = None if bool(mask.all()) else mask[:, None, None, :]
            for blk in self.blocks:
                y = blk["norm1"](h)
                q, k, v = blk["qkv"](y).view(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)  # (b, heads, n, hd)
                h = h + blk["out"](y.transpose(1, 2).reshape(b, n, d))
                h = h + blk["mlp"](blk["norm2"](h))
            y = self.norm(h)
            q = self.q(self.cls).view(1, self.heads, 1, hd)
            k, v = self.kv(y).view(b, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # (b, heads, 1, n)
            att = torch.softmax(logits.masked_fill(~mask[:, None, None, :], float("-inf")), dim=-1)
            z = (att @ v).reshape(b, d)
            return z + self.cls, att.mean(1)[:, 0]

    class EndToEndNet(nn.Module):
        """End-to-end MIL: a timm backbone embeds each instance's crop inside the MIL network, so
        the bag loss trains the backbone too. ``forward(x, mask, crops)`` as :class:`MILNet`
        plus ``crops``: uint8 (n, S, S, 3) for one bag or (B, n, S, S, 3) padded; the
        embeddings are concatenated in front of the tabular instance features ``x``."""

        def __init__(self, backbone, mil, image_size: int, dim: int, seed: int = 0, chunk: int = 256):
            super().__init__()
            self.backbone, self.mil, self.size, self.dim, self.chunk = backbone, mil, image_size, dim, chunk
            self.gen = torch.Generator().manual_seed(seed)

        def embed(self, crops):
            """Embeddings (m, dim) of uint8 crops (m, S, S, 3); augmented in training, and in
            chunks at inference so a bag of 10,000 cells fits in memory."""
            from hemaflow.plugins.pretrain import MEAN, STD, augment

            step = len(crops) if self.training else self.chunk
            out = []
            for i in range(0, len(crops), max(1, step)):
                c = crops[i:i + step].float() / 255.0
                c = ((c - torch.from_numpy(MEAN)) / torch.from_numpy(STD)).permute(0, 3, 1, 2)
                if c.shape[-1] != self.size:
                    c = F.interpolate(c, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                      antialias=True)
                out.append(self.backbone(augment(c, self.gen) if self.training else c))
            return torch.cat(out) if out else torch.zeros(0, self.dim)

        def forward(self, x, mask=None, crops=None):
            if crops is None:
                raise ValueError("end-to-end MIL needs the instances' crops")
            single = x.dim() == 2
            if single:
                x, crops = x.unsqueeze(0), crops.unsqueeze(0)
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            emb = self.embed(crops[mask])
            full = emb.new_zeros(*mask.shape, emb.shape[-1])
            full[mask] = emb
            logits, scores = self.mil(torch.cat([full, x.to(emb.dtype)], -1), mask)
            return (logits[0], scores[0]) if single else (logits, scores)

    return {"MILNet": MILNet, "mean": MeanNet, "max": MaxNet, "attention": AttentionNet,
            "transformer": TransformerNet, "end_to_end": EndToEndNet}


def build_net(aggregator: str, in_dim: int, n_classes: int, params: dict[str, Any], seed: int = 0):
    """Return the torch module for ``aggregator`` (``mean``, ``max``, ``attention``,
    ``gated_attention``, ``transformer``, ``majority_vote``); with ``params["encoder"]`` an
    end-to-end network whose timm backbone embeds the crops in front of the ``in_dim`` tabular
    features (``seed`` drives its crop augmentation)."""
    nets = _nets()
    enc = params.get("encoder")
    if enc:
        from hemaflow.plugins.pretrain import create_backbone, feature_dim

        size = int(enc.get("image_size", 64))
        backbone = create_backbone(str(enc.get("backbone", "mobilenetv3_small_050")), enc.get("pretrained"))
        dim = feature_dim(backbone, size)
        mil = build_net(aggregator, dim + in_dim, n_classes, {k: v for k, v in params.items() if k != "encoder"})
        return nets["end_to_end"](backbone, mil, size, dim, seed=seed)
    hidden, dropout = int(params.get("hidden", 128)), float(params.get("dropout", 0.25))
    if aggregator in ("mean", "majority_vote"):
        return nets["mean"](in_dim, n_classes, hidden, dropout)
    if aggregator == "max":
        return nets["max"](in_dim, n_classes, hidden, dropout)
    if aggregator in ("attention", "gated_attention"):
        return nets["attention"](in_dim, n_classes, hidden, dropout,
                                 attention_dim=int(params.get("attention_dim", 64)),
                                 gated=aggregator == "gated_attention")
    if aggregator == "transformer":
        return nets["transformer"](in_dim, n_classes, hidden, dropout,
                                   layers=int(params.get("layers", 1)), heads=int(params.get("heads", 4)))
    raise ValueError(f"unknown aggregator {aggregator!r}")


# -- training --------------------------------------------------------------------------------
def _sub_bags(idx: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(idx)
    n = max(1, math.ceil(len(perm) / size))
    return [s for s in np.array_split(perm, n) if len(s)]


def predict_bag(net, x, aggregator: str, params: dict[str, Any], rng: np.random.Generator,
                crops=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (class probabilities, instance scores summing to one) for one whole bag.

    ``crops`` (uint8 tensor (n, S, S, 3)) only for an end-to-end network."""
    import torch

    def run(rows):
        kw = {} if crops is None else {"crops": crops[rows]}
        return net(torch.from_numpy(x[rows]), **kw)

    net.eval()
    with torch.no_grad():
        if aggregator != "majority_vote":
            logits, scores = run(np.arange(len(x)))
            return torch.softmax(logits, -1).numpy().astype(np.float64), scores.numpy().astype(np.float64)
        size = int(params.get("sub_bag_size", 8))
        subs = _sub_bags(np.arange(len(x)), size, rng)
        probs = np.stack([torch.softmax(run(s)[0], -1).numpy() for s in subs])
        votes = np.bincount(probs.argmax(1), minlength=probs.shape[1]).astype(np.float64)
        # vote shares; mean probabilities break ties (and keep AUROC informative)
        p = votes / votes.sum() + 1e-3 * probs.mean(0)
        p = p / p.sum()
        winner = int(p.argmax())
        scores = np.zeros(len(x))
        for s, pr in zip(subs, probs):
            scores[s] = pr[winner] / len(s)
        scores = scores / scores.sum() if scores.sum() > 0 else np.full(len(x), 1.0 / len(x))
        return p, scores


class BagDataset:
    """Training/validation items for :func:`hemaflow.plugins.training.fit`: one bag per patient.

    Item ``i`` is ``{"x": (n, d) tensor, "y": class index}``. With ``cap`` > 0 a larger bag gives
    a fresh random subset of ``cap`` instances on every access (so every epoch sees a different
    subset); with ``sub_bag_size`` > 0 each patient contributes ``ceil(n / size)`` items, each a
    random sub-bag of that size with the patient's label (the majority-vote baseline).
    """

    def __init__(self, x, bags: dict[str, np.ndarray], labels: dict[str, int], patients: list[str],
                 rng: np.random.Generator, cap: int = 0, sub_bag_size: int = 0, crops=None) -> None:
        self.x, self.bags, self.rng, self.cap, self.sub, self.crops = x, bags, rng, cap, sub_bag_size, crops
        self.items = []
        for p in patients:
            reps = max(1, math.ceil(len(bags[p]) / sub_bag_size)) if sub_bag_size else 1
            self.items += [p] * reps
        self._labels = np.array([labels[p] for p in self.items], dtype=int)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        idx = self.bags[self.items[i]]
        if self.sub:
            idx = idx if len(idx) <= self.sub else np.sort(self.rng.choice(idx, size=self.sub, replace=False))
        else:
            idx = sample_bag(idx, self.cap, self.rng)
        item = {"x": self.x[idx], "y": int(self._labels[i])}
        if self.crops is not None:
            item["crops"] = self.crops[idx]
        return item


def collate_bags(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of bags into one batch: ``{"x": (B, n_max, d), "mask": (B, n_max) bool,
    "y": LongTensor}``; ``mask`` is True on real instances. One padded tensor lets a whole
    batch of bags go through the network at once (padding never changes a bag's output)."""
    import torch

    n = max(int(it["x"].shape[0]) for it in items)
    d = int(items[0]["x"].shape[1])
    x = torch.zeros(len(items), n, d, dtype=items[0]["x"].dtype)
    mask = torch.zeros(len(items), n, dtype=torch.bool)
    for i, it in enumerate(items):
        k = int(it["x"].shape[0])
        x[i, :k] = it["x"]
        mask[i, :k] = True
    out = {"x": x, "mask": mask, "y": torch.tensor([it["y"] for it in items], dtype=torch.long)}
    if "crops" in items[0]:
        crops = torch.zeros(len(items), n, *items[0]["crops"].shape[1:], dtype=items[0]["crops"].dtype)
        for i, it in enumerate(items):
            crops[i, :len(it["crops"])] = it["crops"]
        out["crops"] = crops
    return out


def forward_bags(net, batch: dict[str, Any]):
    """Logits (B, C) of a padded batch of bags."""
    if "crops" in batch:
        return net(batch["x"], batch["mask"], crops=batch["crops"])[0]
    return net(batch["x"], batch["mask"])[0]


def train_fold(net, x: np.ndarray, bags: dict[str, np.ndarray], labels: dict[str, int], train: list[str],
               val: list[str], aggregator: str, params: dict[str, Any], rng: np.random.Generator,
               ctx: RunContext | None = None, classes: list[str] | None = None, name: str = "fold0",
               seed: int | None = None, crops=None) -> dict[str, Any]:
    """Train ``net`` on the ``train`` bags with the project's one training loop
    (:func:`hemaflow.plugins.training.fit`: AdamW, warm-up + cosine, class weighting, early
    stopping and checkpoint selection on the ``val`` bags only); load the selected weights.

    Returns ``{"history", "best_epoch", "epochs_run", "best_loss"}``.
    """
    import torch

    from hemaflow.plugins.training import fit, train_config

    xt = torch.from_numpy(np.ascontiguousarray(x))
    sub = int(params.get("sub_bag_size", 0)) if aggregator == "majority_vote" else 0
    train_ds = BagDataset(xt, bags, labels, train, rng, cap=int(params["max_instances"]), sub_bag_size=sub,
                          crops=crops)
    val_ds = BagDataset(xt, bags, labels, val, rng, crops=crops) if val else None
    cfg = train_config(params, amp=False, num_workers=0)
    res = fit(net, train_ds, val_ds, forward=forward_bags, config=cfg, ctx=ctx, classes=classes,
              collate_fn=collate_bags, name=name, seed=seed, device="cpu")
    net.load_state_dict(res.best_state_dict)
    best = res.history[res.best_epoch - 1]
    return {"history": res.history, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
            "best_loss": float(best.get("val_loss", best["train_loss"]))}


# -- components ------------------------------------------------------------------------------
def _train_properties() -> dict[str, Any]:
    """The shared training loop's options (hemaflow.plugins.training.TRAIN_SCHEMA) that apply
    to bags, with MIL defaults (``batch_size`` counts bags)."""
    import copy

    from hemaflow.plugins.training import TRAIN_SCHEMA

    keep = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "schedule", "label_smoothing",
            "class_weighting", "patience", "select_metric", "grad_clip")
    props = {k: copy.deepcopy(TRAIN_SCHEMA[k]) for k in keep}
    for k, v in {"epochs": 40, "batch_size": 8, "lr": 0.001, "weight_decay": 0.0001, "patience": 8,
                 "select_metric": "loss"}.items():
        props[k]["default"] = v
    props["batch_size"]["description"] = "bags per optimizer step (padded to the largest bag of the batch and masked)"
    props["epochs"]["maximum"] = 1000
    return props


COMMON_PROPERTIES: dict[str, Any] = {
    **_train_properties(),
    "hidden": {"type": "integer", "minimum": 4, "maximum": 4096, "default": 128,
               "description": "width of the instance projection (and of the pooled bag vector)"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.25,
                "description": "dropout after the instance projection"},
    "modalities": {"type": ["array", "null"], "items": {"enum": ["embeddings", "features"]}, "minItems": 1,
                   "uniqueItems": True, "default": None,
                   "description": "instance inputs to use: embeddings (CNN), features (radiomics); null: every "
                                  "connected one. Ablations set [embeddings] (image only) or [features] (radiomics only)"},
    "embedding_pca": {"type": "integer", "minimum": 0, "default": 32,
                      "description": "reduce the CNN embeddings to this many principal components fitted on the "
                                     "fold's training instances (0: keep all); keeps a 500-1000-d embedding from "
                                     "drowning ~50 radiomics features on a few dozen training bags"},
    "encoder": {"type": ["object", "null"], "default": None, "additionalProperties": False,
                "description": "end-to-end MIL: a timm backbone embeds every instance's crop inside the MIL network "
                               "and is trained by the bag loss (needs the `cells` input, excludes an `embeddings` "
                               "input; `features` are concatenated). null: instances come from the inputs as they are "
                               "(a frozen, cached `embeddings` input is far cheaper: use it for aggregator ablations)",
                "properties": {
                    "backbone": {"type": "string", "minLength": 1, "default": "mobilenetv3_small_050",
                                 "description": "timm model name (built with num_classes=0)"},
                    "pretrained": {"type": ["string", "null"], "default": None,
                                   "description": "local weights file (.safetensors/.pth); nothing is downloaded"},
                    "image_size": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64,
                                   "description": "crops are resized to this many px"},
                }},
    "max_instances": {"type": "integer", "minimum": 0, "default": 512,
                      "description": "training only: a larger bag contributes a fresh random subset of this "
                                     "many instances each epoch (0: no cap); inference always uses all instances"},
    "standardize": {"type": "boolean", "default": True,
                    "description": "standardize instance features with mean/std of the fold's training "
                                   "instances (missing values take the training mean)"},
    "top_k": {"type": "integer", "minimum": 1, "default": 5,
              "description": "cells per patient shown in the gallery (top-k and bottom-k by score) and the k "
                             "of precision@k against generator ground truth"},
    "gallery_patients": {"type": "integer", "minimum": 0, "default": 6,
                         "description": "patients shown in the attention gallery of the report"},
}


def _schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**COMMON_PROPERTIES, **(extra or {})}, "additionalProperties": False}


class MILComponent(Component):
    """Base of all MIL aggregators: bags, per-fold training, predictions, attention, report.

    Subclasses set ``aggregator`` (see :func:`build_net`) and possibly extra schema keys.

    Example::

        steps:
          mil:
            uses: gated_attention_mil
            inputs: {embeddings: encode, features: radiomics, cells: cells, split: split}
            with: {epochs: 40}
    """

    kind = "mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator: str = ""
    schema = _schema()
    inputs = {"split": "Split", "embeddings": "FeatureTable?", "features": "FeatureTable?", "cells": "CellSet?"}
    outputs = {"predictions": "Predictions", "model": "Model", "attention": "Table", "metrics": "Metrics"}

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see: an unknown timm backbone or a missing weights file
        for the end-to-end ``encoder``."""
        enc = self.params.get("encoder") or {}
        out = []
        if enc:
            from pathlib import Path

            from hemaflow.plugins.features import timm_model_problem

            problem = timm_model_problem(str(enc.get("backbone", "mobilenetv3_small_050")))
            if problem:
                out.append(("/encoder/backbone", problem))
            if enc.get("pretrained") and not Path(enc["pretrained"]).expanduser().exists():
                out.append(("/encoder/pretrained", f"{enc['pretrained']}: file not found"))
        return out

    def run(self, ctx: RunContext, split, embeddings=None, features=None, cells=None) -> dict[str, Any]:
        import torch

        # bags are small matrices: one thread is faster than several fighting over 2 busy cores
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):  # numpy's BLAS too (the PCA): measured 1 s vs 5 ms per fold
                return self._run(ctx, split, embeddings, features, cells)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: RunContext, split, embeddings, features, cells) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        p = self.params
        if p.get("modalities"):
            given = {"embeddings": embeddings, "features": features}
            for m in p["modalities"]:
                if given[m] is None:
                    raise DataError("<recipe>", f"modalities lists {m!r} but the step has no {m!r} input")
            embeddings = embeddings if "embeddings" in p["modalities"] else None
            features = features if "features" in p["modalities"] else None
        enc = p.get("encoder")
        if enc:
            if cells is None:
                raise DataError("<recipe>", "an end-to-end `encoder` needs the `cells` input (the crops it trains on)")
            if embeddings is not None:
                raise DataError("<recipe>", "give either an `embeddings` input (a frozen encoder) or an end-to-end "
                                            "`encoder`, not both")
        inst = build_instances(embeddings=embeddings, features=features, cells=cells, all_cells=bool(enc))
        table, classes = inst.table, inst.classes
        source = (cells if enc else (embeddings or features)).path
        if not classes:
            raise DataError(source, "instances carry no class labels")
        labels_str = patient_labels(table, source)
        unknown = sorted({v for v in labels_str.values() if v not in classes})
        if unknown:
            raise DataError(source, f"labels {unknown} are not among the classes {classes}")
        labels = {pid: classes.index(v) for pid, v in labels_str.items()}
        bags = make_bags(table)
        has_truth = "truth" in table.columns and table["truth"].notna().any()
        abnormal = (~table["truth"].astype(str).str.lower().isin(NORMAL_TRUTH)).to_numpy() if has_truth else None

        crops = None
        if enc:
            ci = pd.to_numeric(table["crop_index"], errors="coerce")
            if ci.isna().any():
                raise DataError(cells.path, f"{int(ci.isna().sum())} instance(s) have no crop_index")
            crops = torch.from_numpy(np.ascontiguousarray(np.asarray(cells.crops)[ci.astype(int).to_numpy()]))
        model_dir = ctx.out_dir("model")
        pred_rows, att_rows, fold_info, empty = [], [], [], []
        for fold in ctx.progress(split.folds(), description=f"{self.name} folds"):
            parts = {part: sorted(split.patients(fold, part)) for part in ("train", "val", "test")}
            missing = {part: [q for q in pats if q not in bags] for part, pats in parts.items()}
            for part, pats in missing.items():
                for q in pats:
                    empty.append({"fold": fold, "patient_id": q, "partition": part})
                    ctx.warn(f"fold {fold}: patient {q!r} ({part}) has no instances (empty bag); "
                             f"{'excluded from predictions' if part == 'test' else 'not used for training'}")
            train = [q for q in parts["train"] if q in bags]
            val = [q for q in parts["val"] if q in bags]
            test = [q for q in parts["test"] if q in bags]
            if not train:
                raise DataError(split.path, f"fold {fold} has no training patient with instances")
            tr_rows = np.concatenate([bags[q] for q in train])
            parts, pca = [], {}
            for bname, block in inst.fold_blocks(fold):
                k = int(p["embedding_pca"])
                if bname == "embeddings" and k and block.shape[1] > k:
                    # PCA fitted on the fold's training instances only
                    block, pca = fit_pca(block, tr_rows, k)
                parts.append(block)
            x = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(table), 0), np.float32)
            mean = np.zeros(x.shape[1], np.float32)
            std = np.ones(x.shape[1], np.float32)
            if p["standardize"]:
                mean, std = fit_scaler(x[tr_rows])
            x = apply_scaler(x, mean, std)
            torch.manual_seed(ctx.torch_seed("fold", fold))
            net = build_net(self.aggregator, x.shape[1], len(classes), p, seed=ctx.torch_seed("augment", fold))
            rng = ctx.rng("train", fold)
            info = train_fold(net, x, bags, labels, train, val, self.aggregator, p, rng, ctx=ctx, classes=classes,
                              name=f"fold{fold}", seed=ctx.torch_seed("fit", fold), crops=crops)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(model_dir / f"fold{fold}.safetensors"))
            np.savez(model_dir / f"fold{fold}_scaler.npz", mean=mean, std=std, **pca)
            (model_dir / f"fold{fold}_history.json").write_text(json.dumps(info["history"]))
            fold_prec = []
            prng = ctx.rng("predict", fold)
            for q in test:
                probs, scores = predict_bag(net, x[bags[q]], self.aggregator, p, prng,
                                            crops=None if crops is None else crops[bags[q]])
                row = {"id": q, "level": "patient", "fold": int(fold), "y_true": classes[labels[q]],
                       "y_pred": classes[int(np.argmax(probs))], "n_instances": len(bags[q])}
                row.update({f"prob_{c}": float(v) for c, v in zip(classes, probs)})
                pred_rows.append(row)
                sub = table.iloc[bags[q]]
                order = np.argsort(-scores, kind="stable")
                rank = np.empty(len(order), np.int64)
                rank[order] = np.arange(1, len(order) + 1)
                att = pd.DataFrame({"patient_id": q, "cell_id": sub["cell_id"].to_numpy(),
                                    "image_id": sub["image_id"].to_numpy(), "fold": int(fold),
                                    "score": scores, "rank": rank})
                for c in ("centroid_y", "centroid_x", "crop_index", "truth"):
                    if c in sub.columns:
                        att[c] = sub[c].to_numpy()
                att_rows.append(att)
                if abnormal is not None and abnormal[bags[q]].any():
                    fold_prec.append(r_precision(scores, abnormal[bags[q]], int(p["top_k"])))
            fold_info.append({"fold": int(fold), "train": len(train), "val": len(val), "test": len(test),
                              "epochs_run": info["epochs_run"], "best_loss": info["best_loss"],
                              **({"r_precision_at_k": float(np.mean(fold_prec))} if fold_prec else {})})
            ctx.log(f"fold {fold}: {info['epochs_run']} epochs, best loss {info['best_loss']:.3f}")

        pred_df = pd.DataFrame(pred_rows)
        if pred_df.empty:
            pred_df = pd.DataFrame(columns=["id", "level", "fold", "y_true", "y_pred", *[f"prob_{c}" for c in classes]])
        preds = Predictions(ctx.out_dir("predictions"), pred_df,
                            {"classes": classes, "source": self.name, "level": "patient"}).save()
        att_df = pd.concat(att_rows, ignore_index=True) if att_rows else pd.DataFrame(
            columns=["patient_id", "cell_id", "image_id", "fold", "score", "rank"])
        attention = TableArtifact(ctx.out_dir("attention"), att_df, {"source": self.name}).save()
        mil_metrics = self._metrics(table, bags, att_df, abnormal, empty, fold_info, classes)
        metrics = Metrics(ctx.out_dir("metrics"), {"mil": mil_metrics}).save()
        model = Model(model_dir, {"aggregator": self.aggregator, "component": self.name, "classes": classes,
                                  "in_dim": inst.dim, "blocks": [b for b, _ in inst.blocks],
                                  "params": dict(p), "folds": [f["fold"] for f in fold_info],
                                  "empty_bags": empty}).save()
        self._report(ctx, cells, att_df, pred_df, mil_metrics)
        return {"predictions": preds, "model": model, "attention": attention, "metrics": metrics}

    def _metrics(self, table, bags, att_df, abnormal, empty, fold_info, classes) -> dict[str, Any]:
        sizes = np.array([len(v) for v in bags.values()]) if bags else np.zeros(0)
        out: dict[str, Any] = {
            "aggregator": self.name, "n_bags": int(len(bags)), "n_instances": int(len(table)),
            "bag_size_min": int(sizes.min()) if len(sizes) else 0,
            "bag_size_median": float(np.median(sizes)) if len(sizes) else 0.0,
            "bag_size_max": int(sizes.max()) if len(sizes) else 0,
            "empty_bags": sorted({e["patient_id"] for e in empty}),
            "folds": fold_info,
        }
        if abnormal is not None and len(att_df):
            k = int(self.params["top_k"])
            ab = dict(zip(table["cell_id"], abnormal))
            precs, rprecs, base = [], [], []
            for _, g in att_df.groupby("patient_id"):
                a = g["cell_id"].map(ab).to_numpy(bool)
                if a.any():
                    precs.append(precision_at_k(g["score"].to_numpy(), a, k))
                    rprecs.append(r_precision(g["score"].to_numpy(), a, k))
                    base.append(float(a.mean()))
            if precs:
                out.update({"k": k, "precision_at_k": float(np.mean(precs)), "r_precision_at_k": float(np.mean(rprecs)),
                            "abnormal_fraction": float(np.mean(base)), "n_patients_with_abnormal": len(precs)})
        return out

    def _report(self, ctx, cells, att_df, pred_df, m) -> None:
        section = "MIL"
        rows = [{"fold": f["fold"], "train": f["train"], "val": f["val"], "test": f["test"],
                 "epochs": f["epochs_run"], "best loss": round(f["best_loss"], 4),
                 **({"r-precision@k": round(f["r_precision_at_k"], 3)} if "r_precision_at_k" in f else {})}
                for f in m["folds"]]
        ctx.report.table(f"{self.name}: folds", rows, section=section)
        if "precision_at_k" in m:
            ctx.report.text("Top-attention cells vs generator ground truth",
                            f"precision@{m['k']} of the highest-scored cells against the generator's abnormal "
                            f"cells: {m['precision_at_k']:.3f}; r-precision (k capped at the bag's number of "
                            f"abnormal cells, so a perfect ranking scores 1): {m['r_precision_at_k']:.3f}; over "
                            f"{m['n_patients_with_abnormal']} test patients (chance level for both, the abnormal "
                            f"fraction of those bags: {m['abnormal_fraction']:.3f}).",
                            section=section)
        if m["empty_bags"]:
            ctx.report.text("Empty bags", "patients without any instance (no prediction): "
                            + ", ".join(m["empty_bags"]), section=section)
        n_show = int(self.params["gallery_patients"])
        if cells is None or n_show == 0 or att_df.empty or "crop_index" not in att_df.columns:
            return
        from hemaflow.plugins.io import png_bytes

        crops = cells.crops
        k = int(self.params["top_k"])
        shown = pred_df.sort_values(["y_true", "id"]).groupby("y_true", sort=True).head(max(1, n_show // max(1, pred_df["y_true"].nunique())))
        for _, pr in shown.head(n_show).iterrows():
            g = att_df[att_df["patient_id"] == pr["id"]].sort_values("rank")
            picks = [("top", r) for _, r in g.head(k).iterrows()]
            if len(g) > k:
                picks += [("bottom", r) for _, r in g.tail(min(k, len(g) - k)).iterrows()]
            images = []
            for tag, r in picks:
                if pd.isna(r.get("crop_index")):
                    continue
                cap = f"{tag} #{int(r['rank'])} {r['score']:.3f} {r['image_id']}"
                if "centroid_y" in r and pd.notna(r["centroid_y"]):
                    cap += f" (y={int(r['centroid_y'])}, x={int(r['centroid_x'])})"
                if "truth" in r and pd.notna(r["truth"]):
                    cap += f" [{r['truth']}]"
                images.append((cap, png_bytes(np.asarray(crops[int(r["crop_index"])]))))
            if images:
                ctx.report.gallery(f"patient {pr['id']}: true {pr['y_true']}, predicted {pr['y_pred']} "
                                   f"(top-{k} and bottom-{k} cells by score)", images, section=section)


class MeanMIL(MILComponent):
    """Mean pooling of the projected instances (every instance scores 1/n)."""

    name = "mean_mil"
    aggregator = "mean"


class MaxMIL(MILComponent):
    """Max pooling per hidden unit; an instance's score is its share of the maxima."""

    name = "max_mil"
    aggregator = "max"


_ATT = {"attention_dim": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 64,
                          "description": "width of the attention network (V, U in Ilse et al. 2018)"}}


class AttentionMIL(MILComponent):
    """Attention-based MIL pooling (Ilse, Tomczak, Welling, ICML 2018)."""

    name = "attention_mil"
    aggregator = "attention"
    schema = _schema(_ATT)


class GatedAttentionMIL(MILComponent):
    """Gated attention MIL pooling (Ilse et al. 2018): tanh(Vh) * sigmoid(Uh)."""

    name = "gated_attention_mil"
    aggregator = "gated_attention"
    schema = _schema(_ATT)


class TransformerMIL(MILComponent):
    """Small TransMIL-style aggregator: self-attention over the bag, class-token pooling."""

    name = "transformer_mil"
    aggregator = "transformer"
    schema = _schema({
        "layers": {"type": "integer", "minimum": 0, "maximum": 8, "default": 1,
                   "description": "self-attention layers before the class-token pooling"},
        "heads": {"type": "integer", "minimum": 1, "maximum": 16, "default": 4,
                  "description": "attention heads (must divide hidden)"},
    })


class MajorityVoteMIL(MILComponent):
    """The original code's baseline: random sub-bags of fixed size, each classified by a
    mean-pooling network with the patient's label; the patient gets the majority vote."""

    name = "majority_vote_mil"
    aggregator = "majority_vote"
    schema = _schema({
        "sub_bag_size": {"type": "integer", "minimum": 1, "default": 8,
                         "description": "instances per sub-bag (training and inference)"},
    })


def defaults_for(aggregator: str, **overrides: Any) -> dict[str, Any]:
    """Validated parameters (schema defaults + ``overrides``) of the component for ``aggregator``."""
    import copy

    from hemaflow.core.schema import fill_defaults

    cls = next(c for c in COMPONENTS if c.aggregator == aggregator)
    allowed = cls.schema["properties"]
    return fill_defaults(cls.schema, {k: copy.deepcopy(v) for k, v in overrides.items() if k in allowed})


COMPONENTS = (MeanMIL, MaxMIL, AttentionMIL, GatedAttentionMIL, TransformerMIL, MajorityVoteMIL)


@hookimpl
def register_mil_models(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
