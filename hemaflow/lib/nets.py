"""Neural network modules used by the classifier components (not a plugin module).

* :func:`~hemaflow.lib.backbones.create_backbone` (re-exported) — any timm model by name, offline.
* :class:`MaskGuided` — the mask-attention ablation: the segmentation mask steers a backbone's
  first feature map. ``valve`` is the original design (a zero-initialised 3x3 convolution of the
  resized mask *added* to the first feature map); ``channel`` is the mask as extra input
  channels of the first convolution (zero-initialised weights); ``spatial`` is multiplicative
  spatial attention ``f * (1 + tanh(conv(mask)))`` (zero-initialised). All three are exact
  no-ops at initialisation, so a pretrained backbone starts where it was.
* :class:`FTTransformer` — FT-Transformer-style tabular attention: one token per feature
  (``x_j * w_j + b_j``), a [CLS] token and a few pre-norm transformer blocks; the last block's
  [CLS]->feature attention is kept as ``last_attention`` (which features mattered).
* :class:`TabularNet`, :class:`ImageNet`, :class:`MultiModalNet` — the networks the
  components train (tabular only, image only, image + features with ``concat``, ``gated`` or
  ``attention`` fusion).

Example::

    from hemaflow.lib.nets import create_backbone, MaskGuided
    net = MaskGuided(create_backbone("test_resnet", num_classes=2), mode="valve")
    logits = net(images, masks)  # images float (B,3,H,W), masks uint8 (B,H,W) 0/1/2
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from hemaflow.core.errors import HemaflowError
from hemaflow.lib.backbones import create_backbone  # noqa: F401  (the one factory; imported from here too)

MASK_MODES = ("none", "valve", "channel", "spatial")


# -- timm backbones ------------------------------------------------------------------------------
def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first convolution of a timm model (``pretrained_cfg['first_conv']``, else the first Conv2d)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("first_conv")
    if isinstance(names, (list, tuple)):
        names = names[0] if names else None
    if names:
        try:
            mod = model.get_submodule(names)
            if isinstance(mod, nn.Conv2d):
                return names, mod
        except AttributeError:
            pass
    for n, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return n, mod
    raise HemaflowError(f"{type(model).__name__} has no Conv2d: mask attention needs a convolutional stem")


def mask_channels(mask: torch.Tensor) -> torch.Tensor:
    """uint8 masks (B,H,W) with 0/1/2 -> float (B,2,H,W): cell (>0) and nucleus (==2) channels."""
    m = mask.long()
    return torch.stack([(m > 0), (m == 2)], 1).float()


class MaskGuided(nn.Module):
    """Wrap a backbone so a segmentation mask steers its first feature map.

    Modes: ``none`` (plain backbone), ``valve`` (zero-init 3x3 conv of the area-resized mask
    added to the first conv's output, the original design), ``channel`` (the mask as extra input
    channels: a zero-init conv with the first conv's kernel/stride on the full-size mask, added
    to its output, which equals concatenating the mask to the input), ``spatial`` (the first
    feature map multiplied by ``1 + tanh(conv3x3(mask))``, zero-init). All are exact no-ops at
    initialisation.
    """

    def __init__(self, backbone: nn.Module, mode: str = "valve") -> None:
        super().__init__()
        if mode not in MASK_MODES:
            raise ValueError(f"mask attention mode must be one of {MASK_MODES}; got {mode!r}")
        self.backbone = backbone
        self.mode = mode
        self._mask: torch.Tensor | None = None
        self.num_features = getattr(backbone, "num_features", None)
        if mode == "none":
            self.mask_conv = None
            return
        _, conv = first_conv(backbone)
        c = conv.out_channels
        if mode == "valve":
            self.mask_conv = nn.Conv2d(2, c, 3, padding=1)
        elif mode == "channel":
            self.mask_conv = nn.Conv2d(2, c, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                                       dilation=conv.dilation, bias=False)
        else:  # spatial
            self.mask_conv = nn.Conv2d(2, 1, 3, padding=1)
        nn.init.zeros_(self.mask_conv.weight)
        if self.mask_conv.bias is not None:
            nn.init.zeros_(self.mask_conv.bias)
        conv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        m = self._mask
        if m is None:
            raise RuntimeError("MaskGuided: the backbone was called without a mask")
        if self.mode == "channel":
            return out + self.mask_conv(m.to(out.dtype))
        m = F.adaptive_avg_pool2d(m, out.shape[-2:]).to(out.dtype)
        if self.mode == "valve":
            return out + self.mask_conv(m)
        return out * (1 + torch.tanh(self.mask_conv(m)))

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "none":
            return self.backbone(image)
        if mask is None:
            raise ValueError(f"mask attention {self.mode!r} needs a mask with every image")
        self._mask = mask_channels(mask).to(image.device)
        try:
            return self.backbone(image)
        finally:
            self._mask = None


# -- tabular attention ---------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.attn_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        a, w = self.attn(h, h, h, need_weights=True, average_attn_weights=True)
        self.attn_weights = w.detach()
        x = x + a
        return x + self.ff(self.norm2(x))


class FTTransformer(nn.Module):
    """Feature tokens + [CLS] + transformer blocks; returns the [CLS] embedding (B, dim).

    ``last_attention`` (B, n_features) holds the last block's [CLS]->feature attention of the
    latest forward pass (heads averaged, renormalised over the features: rows sum to 1).
    """

    def __init__(self, n_features: int, dim: int = 32, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"token dim {dim} must be divisible by heads {heads}")
        self.n_features = n_features
        self.weight = nn.Parameter(torch.empty(n_features, dim))
        self.bias = nn.Parameter(torch.empty(n_features, dim))
        bound = 1 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[..., None] * self.weight + self.bias  # (B, F, D)
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        for blk in self.blocks:
            h = blk(h)
        # share of the [CLS] token's attention that goes to each feature (renormalised without [CLS] itself)
        a = self.blocks[-1].attn_weights[:, 0, 1:]
        self.last_attention = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        return self.norm(h[:, 0])


def tabular_encoder(kind: str, n_features: int, hidden: int, *, dim: int = 32, depth: int = 2, heads: int = 4,
                    dropout: float = 0.1) -> tuple[nn.Module, int]:
    """Return (encoder, output dim): ``mlp`` (two layers) or ``attention`` (FT-Transformer)."""
    if kind == "attention":
        return FTTransformer(n_features, dim=dim, depth=depth, heads=heads, dropout=dropout), dim
    if kind != "mlp":
        raise ValueError(f"tabular encoder must be 'mlp' or 'attention'; got {kind!r}")
    mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Dropout(dropout),
                        nn.Linear(hidden, hidden), nn.GELU())
    return mlp, hidden


class TabularNet(nn.Module):
    """A classifier on a feature vector: encoder (``mlp`` or ``attention``) + linear head."""

    def __init__(self, n_features: int, n_classes: int, *, encoder: str = "attention", hidden: int = 64,
                 dim: int = 32, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder, out = tabular_encoder(encoder, n_features, hidden, dim=dim, depth=depth, heads=heads,
                                            dropout=dropout)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(out, n_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(features))

    @property
    def feature_attention(self) -> torch.Tensor | None:
        return getattr(self.encoder, "last_attention", None)


# -- image and multi-modal networks -----------------------------------------------------------------
class ImageNet(nn.Module):
    """timm classifier, optionally mask-guided; ``forward(image, mask=None) -> logits``."""

    def __init__(self, name: str, n_classes: int, *, pretrained: str | bool | None = None, img_size: int | None = None,
                 mask_attention: str = "none", drop_rate: float = 0.0) -> None:
        super().__init__()
        backbone = create_backbone(name, num_classes=n_classes, pretrained=pretrained, img_size=img_size,
                                   drop_rate=drop_rate)
        self.net = MaskGuided(backbone, mask_attention)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(image, mask)


FUSIONS = ("concat", "gated", "attention")


class MultiModalNet(nn.Module):
    """timm image backbone + tabular encoder, fused, trained end to end.

    Fusion: ``concat`` (late fusion: the two embeddings side by side into the head), ``gated``
    (both projected to ``hidden``; a sigmoid gate from both mixes them per dimension), or
    ``attention`` (a learned query attends over the two modality tokens; the weights are kept in
    ``modality_weights`` (B, 2) = image, features).
    """

    def __init__(self, name: str, n_features: int, n_classes: int, *, fusion: str = "concat", tabular: str = "mlp",
                 hidden: int = 128, pretrained: str | bool | None = None, img_size: int | None = None,
                 mask_attention: str = "none", dropout: float = 0.1, token_dim: int = 32, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
        backbone = create_backbone(name, num_classes=0, pretrained=pretrained, img_size=img_size)
        self.image = MaskGuided(backbone, mask_attention)
        img_dim = int(backbone.num_features)
        self.tab, tab_dim = tabular_encoder(tabular, n_features, hidden, dim=token_dim, depth=depth, heads=heads,
                                            dropout=dropout)
        self.fusion = fusion
        self.drop = nn.Dropout(dropout)
        if fusion == "concat":
            self.head = nn.Linear(img_dim + tab_dim, n_classes)
        else:
            self.proj_img = nn.Sequential(nn.Linear(img_dim, hidden), nn.LayerNorm(hidden))
            self.proj_tab = nn.Sequential(nn.Linear(tab_dim, hidden), nn.LayerNorm(hidden))
            if fusion == "gated":
                self.gate = nn.Linear(2 * hidden, hidden)
            else:
                self.query = nn.Parameter(torch.zeros(hidden))
                self.key = nn.Linear(hidden, hidden)
            self.head = nn.Linear(hidden, n_classes)
        self.modality_weights: torch.Tensor | None = None

    @property
    def feature_attention(self) -> torch.Tensor | None:
        return getattr(self.tab, "last_attention", None)

    def forward(self, image: torch.Tensor, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        zi = self.image(image, mask)
        zt = self.tab(features)
        if self.fusion == "concat":
            return self.head(self.drop(torch.cat([zi, zt], 1)))
        pi, pt = self.proj_img(zi), self.proj_tab(zt)
        if self.fusion == "gated":
            g = torch.sigmoid(self.gate(torch.cat([pi, pt], 1)))
            self.modality_weights = torch.stack([g.mean(1), 1 - g.mean(1)], 1).detach()
            z = g * pi + (1 - g) * pt
        else:
            tokens = torch.stack([pi, pt], 1)  # (B, 2, H)
            scores = (self.key(tokens) * self.query).sum(-1) / math.sqrt(tokens.shape[-1])
            w = torch.softmax(scores, 1)
            self.modality_weights = w.detach()
            z = (w[..., None] * tokens).sum(1)
        return self.head(self.drop(F.gelu(z)))
