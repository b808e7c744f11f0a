"""The ``topk_attention_mil`` component, registered as a hemaflow plugin.

Everything but the pooling (bags, folds, scaling, the training loop, predictions, attention
table, report, the end-to-end ``encoder`` option) comes from :class:`MILAggregator`; this module
imports no torch, so ``hemaflow plugins`` stays fast: the network is imported in ``make_net``.
"""

from __future__ import annotations

from hemaflow import hookimpl
from hemaflow.plugins.mil import MILAggregator


class TopKAttentionMIL(MILAggregator):
    """Attention MIL pooling over each bag's ``k`` highest-scored instances only.

    A bag of 300 cells with 5 blasts should not average the blasts away: instances outside the
    top ``k`` get exactly zero weight, so the bag vector and the attention shown in the report
    come from at most ``k`` cells.
    """

    name = "topk_attention_mil"
    version = "1"
    schema = MILAggregator.extend_schema({
        "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 8,
              "description": "instances per bag that share the attention (a smaller bag: all of them)"},
        "attention_dim": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 64,
                          "description": "width of the instance scoring network"},
    })

    def make_net(self, in_dim, n_classes):
        from hemaflow_example_mil.nets import TopKAttentionNet

        p = self.params
        return TopKAttentionNet(in_dim, n_classes, p["hidden"], p["dropout"], k=p["k"],
                                attention_dim=p["attention_dim"])


@hookimpl
def register_mil_models(register):
    register(TopKAttentionMIL)
