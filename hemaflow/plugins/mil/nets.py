"""MIL networks: instance projection, pooling (mean, max, attention, gated attention,
transformer) and classifier, on one bag or a padded, masked batch of bags; and the end-to-end
wrapper that trains a timm backbone on the crops through the bag loss."""

from __future__ import annotations

import math
from typing import Any

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
            from hemaflow.plugins.pretrain import augment, crops_to_tensor

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
        backbone = create_backbone(str(enc.get("backbone", "mobilenetv3_small_050")), enc.get("pretrained"), img_size=size)
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
                                 gated=aggregator == "gated_attention", branches=str(params.get("branches", "one")))
    if aggregator == "transformer":
        return nets["transformer"](in_dim, n_classes, hidden, dropout,
                                   layers=int(params.get("layers", 1)), heads=int(params.get("heads", 4)))
    raise ValueError(f"unknown aggregator {aggregator!r}")
