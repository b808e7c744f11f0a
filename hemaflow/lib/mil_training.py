"""Training and inference of a MIL network on bags, with the project's one training loop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hemaflow.core.component import RunContext
from hemaflow.lib.mil_bags import sample_bag

# -- training --------------------------------------------------------------------------------
def _sub_bags(idx: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(idx)
    n = max(1, math.ceil(len(perm) / size))
    return [s for s in np.array_split(perm, n) if len(s)]


def _bag_forward(net, x, rows, crops):
    import torch

    kw = {} if crops is None else {"crops": crops[rows]}
    return net(torch.from_numpy(x[rows]), **kw)


def predict_bag(net, x: np.ndarray, crops=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (class probabilities, instance scores summing to one) for one whole bag ``x``
    (n, d), all its instances at once.

    ``crops`` (uint8 tensor (n, S, S, 3)) only for an end-to-end network."""
    import torch

    net.eval()
    with torch.no_grad():
        logits, scores = _bag_forward(net, x, np.arange(len(x)), crops)
        return torch.softmax(logits, -1).numpy().astype(np.float64), scores.numpy().astype(np.float64)


def predict_by_vote(net, x: np.ndarray, size: int, rng: np.random.Generator,
                    crops=None) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`predict_bag`, by a majority vote over random sub-bags of ``size`` instances
    (the original code's baseline): probabilities are the vote shares, mean probabilities
    break ties; an instance scores its sub-bag's probability of the winner, shared out."""
    import torch

    net.eval()
    with torch.no_grad():
        subs = _sub_bags(np.arange(len(x)), size, rng)
        probs = np.stack([torch.softmax(_bag_forward(net, x, s, crops)[0], -1).numpy() for s in subs])
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
    """Training/validation items for :func:`hemaflow.lib.training.fit`: one bag per patient.

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
               val: list[str], params: dict[str, Any], rng: np.random.Generator, *, sub_bag_size: int = 0,
               ctx: RunContext | None = None, classes: list[str] | None = None, name: str = "fold0",
               seed: int | None = None, crops=None) -> dict[str, Any]:
    """Train ``net`` on the ``train`` bags with the project's one training loop
    (:func:`hemaflow.lib.training.fit`: AdamW, warm-up + cosine, class weighting, early
    stopping and checkpoint selection on the ``val`` bags only); load the selected weights.

    Every aggregator trains here. ``sub_bag_size`` > 0 trains on random sub-bags of that size
    instead of whole (capped) bags: see :class:`BagDataset`.

    Returns ``{"history", "best_epoch", "epochs_run", "best_loss"}``.
    """
    import torch

    from hemaflow.lib.training import fit, train_config

    xt = torch.from_numpy(np.ascontiguousarray(x))
    train_ds = BagDataset(xt, bags, labels, train, rng, cap=int(params["max_instances"]), sub_bag_size=sub_bag_size,
                          crops=crops)
    val_ds = BagDataset(xt, bags, labels, val, rng, crops=crops) if val else None
    cfg = train_config(params, amp=False, num_workers=0)
    res = fit(net, train_ds, val_ds, forward=forward_bags, config=cfg, ctx=ctx, classes=classes,
              collate_fn=collate_bags, name=name, seed=seed, device="cpu")
    net.load_state_dict(res.best_state_dict)
    best = res.history[res.best_epoch - 1]
    return {"history": res.history, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
            "best_loss": float(best.get("val_loss", best["train_loss"]))}
