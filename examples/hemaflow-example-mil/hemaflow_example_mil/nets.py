"""Top-k attention pooling, a :class:`hemaflow.plugins.mil.MILNet`."""

from __future__ import annotations

import torch
from torch import nn

from hemaflow.plugins.mil import MILNet


class TopKAttentionNet(MILNet):
    """Scores every projected instance (tanh MLP), keeps a bag's ``k`` best and pools them with
    the softmax of their scores; the rest of the bag gets zero weight."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int, dropout: float, k: int = 8,
                 attention_dim: int = 64) -> None:
        super().__init__(in_dim, n_classes, hidden, dropout)
        self.k = int(k)
        self.score = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, n); padding never wins
        top = s.topk(min(self.k, s.shape[1]), dim=1).indices
        keep = torch.zeros_like(mask).scatter(1, top, True) & mask
        a = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=1)  # zero outside the top k
        return (a.unsqueeze(-1) * h).sum(1), a
