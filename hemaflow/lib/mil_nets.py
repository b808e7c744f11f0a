"""MIL networks: the public :class:`MILNet` contract (instance projection -> ``pool`` ->
classifier, on one bag or a padded, masked batch of bags), the built-in poolings (mean, max,
attention, gated attention, transformer) and the end-to-end wrapper that trains a timm backbone
on the crops through the bag loss.

This module imports torch; the MIL components import it only when a MIL step builds its
network (:meth:`hemaflow.plugins.mil.MILAggregator.make_net`), so listing plugins stays fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionNet", "EndToEndNet", "MILNet", "MaxNet", "MeanNet", "TransformerNet"]


class MILNet(nn.Module):
    """Base of every MIL network: instance projection -> :meth:`pool` -> linear classifier.

    A new aggregator subclasses this and implements :meth:`pool`; its extra layers are made in
    ``__init__`` after ``super().__init__(...)`` (in that order: the seeded initialisation of
    the built-ins depends on it). Training, padding, masking, folds, scaling, the attention
    table and the report are shared by every aggregator.

    ``forward(x)`` takes one bag ``x`` (n, d) and returns ``(logits (C,), scores (n,))``, or a
    padded batch of bags ``x`` (B, n, d) with ``mask`` (B, n), True where an instance is real,
    and returns ``(logits (B, C), scores (B, n))``. Scores are non-negative, zero on padding
    and sum to one over each bag. Padding never changes a bag's output: a batch of bags gives
    the same logits as the bags one by one.

    Args:
        in_dim: instance feature width ``d``.
        n_classes: number of classes ``C``.
        hidden: width of the projection ``self.project`` (and of the pooled bag vector).
        dropout: dropout after the projection.

    Example::

        class MaxNet(MILNet):
            def pool(self, h, mask):
                z, arg = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1)
                hits = torch.nn.functional.one_hot(arg, h.shape[1]).sum(1).to(h.dtype)
                return z, hits / hits.sum(1, keepdim=True)
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool a padded batch of projected bags into one vector per bag: the contract.

        Args:
            h: float (B, n, hidden), the projected instances; rows where ``mask`` is False
                are padding and must not change the result.
            mask: bool (B, n), True on real instances (every bag has at least one).

        Returns:
            ``(z, scores)``: ``z`` float (B, hidden), the bag vectors the head classifies;
            ``scores`` float (B, n), each instance's share in the decision: non-negative,
            zero on padding, summing to one over each bag (shown as attention in the report,
            ranked for precision@k).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement pool(h, mask) -> (z, scores)")

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
    """Mean pooling: every instance scores 1/n."""

    def pool(self, h, mask):
        w = mask.to(h.dtype)
        w = w / w.sum(1, keepdim=True).clamp_min(1)
        return (w.unsqueeze(-1) * h).sum(1), w


class MaxNet(MILNet):
    """Max pooling per hidden unit; an instance's score is its share of the maxima."""

    def pool(self, h, mask):
        z, arg = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1)
        # share of hidden units for which an instance is the maximum: sums to one
        counts = F.one_hot(arg, h.shape[1]).sum(1).to(h.dtype)  # (B, n)
        return z, counts / counts.sum(1, keepdim=True)


class AttentionNet(MILNet):
    """Ilse et al. 2018: a = softmax(w^T tanh(V h)) (gated: times sigm(U h)).

    ``branches="per_class"`` (CLAM's multi-branch variant, Lu et al. 2021): one attention
    branch and one pooled vector per class, each scored by its own linear classifier, so
    each diagnosis can look for its own kind of abnormal cell; the instance score is the
    attention of the predicted class's branch."""

    def __init__(self, in_dim, n_classes, hidden, dropout, attention_dim: int = 64, gated: bool = False,
                 branches: str = "one"):
        super().__init__(in_dim, n_classes, hidden, dropout)
        self.per_class = branches == "per_class"
        self.V = nn.Linear(hidden, attention_dim)
        self.U = nn.Linear(hidden, attention_dim) if gated else None
        self.w = nn.Linear(attention_dim, n_classes if self.per_class else 1)
        if self.per_class:
            self.head = nn.Linear(hidden, n_classes)  # row c scores the pooled vector of branch c

    def attention(self, h, mask):
        """Attention (B, K, n) over each bag's instances; K = 1 or the number of classes."""
        a = torch.tanh(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        return torch.softmax(self.w(a).transpose(1, 2).masked_fill(~mask[:, None, :], float("-inf")), dim=-1)

    def pool(self, h, mask):
        a = self.attention(h, mask)[:, 0]
        return (a.unsqueeze(1) @ h).squeeze(1), a

    def forward(self, x, mask=None):
        if not self.per_class:
            return super().forward(x, mask)
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        h = self.project(x)
        a = self.attention(h, mask)  # (B, C, n)
        z = a @ h  # (B, C, hidden): one pooled vector per class
        logits = (z * self.head.weight).sum(-1) + self.head.bias
        scores = a.gather(1, logits.argmax(1)[:, None, None].expand(-1, 1, a.shape[2]))[:, 0]
        return (logits[0], scores[0]) if single else (logits, scores)


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
        from hemaflow.lib.encoder_training import augment, crops_to_tensor

        step = len(crops) if self.training else self.chunk
        out = []
        for i in range(0, len(crops), max(1, step)):
            c = crops_to_tensor(crops[i:i + step], self.size)
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


def end_to_end(make_mil, encoder: dict, in_dim: int, seed: int = 0) -> EndToEndNet:
    """Wrap the network ``make_mil(width)`` (a :class:`MILNet` on ``width`` = embedding size +
    ``in_dim`` instance features) in an :class:`EndToEndNet` whose timm backbone (``encoder``:
    ``backbone``, ``pretrained``, ``image_size``) embeds the crops; ``seed`` drives its crop
    augmentation. The backbone is built first, then the MIL network."""
    from hemaflow.lib.backbones import create_backbone
    from hemaflow.lib.encoder_training import feature_dim

    size = int(encoder.get("image_size", 64))
    backbone = create_backbone(str(encoder.get("backbone", "mobilenetv3_small_050")),
                               pretrained=encoder.get("pretrained"), img_size=size)
    dim = feature_dim(backbone, size)
    return EndToEndNet(backbone, make_mil(dim + in_dim), size, dim, seed=seed)
