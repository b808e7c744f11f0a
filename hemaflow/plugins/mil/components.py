"""The built-in MIL aggregators (kind ``mil``), each a :class:`~.base.MILAggregator` supplying its
network: mean, max, attention, gated attention, transformer and majority vote.

This is the plugin module that registers them (``register_mil_models``), exactly as a third
party registers its own aggregator.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hemaflow.core.component import RunContext
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.mil.base import COMMON_PROPERTIES, MILAggregator, _schema  # noqa: F401  (re-exported)
from hemaflow.lib.mil_training import predict_by_vote

MILComponent = MILAggregator  # the former name


def _size(params: dict[str, Any]) -> tuple[int, float]:
    return int(params.get("hidden", 128)), float(params.get("dropout", 0.25))


class MeanMIL(MILAggregator):
    """Mean pooling of the projected instances (every instance scores 1/n)."""

    name = "mean_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "mean"

    def make_net(self, in_dim, n_classes):
        from hemaflow.lib.mil_nets import MeanNet

        return MeanNet(in_dim, n_classes, *_size(self.params))


class MaxMIL(MILAggregator):
    """Max pooling per hidden unit; an instance's score is its share of the maxima."""

    name = "max_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "max"

    def make_net(self, in_dim, n_classes):
        from hemaflow.lib.mil_nets import MaxNet

        return MaxNet(in_dim, n_classes, *_size(self.params))


_ATT = {"attention_dim": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 64,
                          "description": "width of the attention network (V, U in Ilse et al. 2018)"},
        "branches": {"enum": ["one", "per_class"], "default": "one",
                     "description": "one attention over the bag, or one attention branch and classifier per "
                                    "class (CLAM multi-branch, Lu et al. 2021)"}}


class AttentionMIL(MILAggregator):
    """Attention-based MIL pooling (Ilse, Tomczak, Welling, ICML 2018)."""

    name = "attention_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "attention"
    schema = _schema(_ATT)
    gated: ClassVar[bool] = False

    def make_net(self, in_dim, n_classes):
        from hemaflow.lib.mil_nets import AttentionNet

        return AttentionNet(in_dim, n_classes, *_size(self.params), attention_dim=int(self.params.get("attention_dim", 64)),
                            gated=self.gated, branches=str(self.params.get("branches", "one")))


class GatedAttentionMIL(AttentionMIL):
    """Gated attention MIL pooling (Ilse et al. 2018): tanh(Vh) * sigmoid(Uh)."""

    name = "gated_attention_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "gated_attention"
    schema = _schema(_ATT)
    gated = True


class TransformerMIL(MILAggregator):
    """Small TransMIL-style aggregator: self-attention over the bag, class-token pooling."""

    name = "transformer_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "transformer"
    schema = _schema({
        "layers": {"type": "integer", "minimum": 0, "maximum": 8, "default": 1,
                   "description": "self-attention layers before the class-token pooling"},
        "heads": {"type": "integer", "minimum": 1, "maximum": 16, "default": 4,
                  "description": "attention heads (must divide hidden)"},
    })

    def make_net(self, in_dim, n_classes):
        from hemaflow.lib.mil_nets import TransformerNet

        return TransformerNet(in_dim, n_classes, *_size(self.params), layers=int(self.params.get("layers", 1)),
                              heads=int(self.params.get("heads", 4)))


class MajorityVoteMIL(MILAggregator):
    """The original code's baseline: random sub-bags of fixed size, each classified by a
    mean-pooling network with the patient's label; the patient gets the majority vote."""

    name = "majority_vote_mil"
    version = "2"  # 2: bags trained as padded batches
    aggregator = "majority_vote"
    schema = _schema({
        "sub_bag_size": {"type": "integer", "minimum": 1, "default": 8,
                         "description": "instances per sub-bag (training and inference)"},
    })

    def make_net(self, in_dim, n_classes):
        from hemaflow.lib.mil_nets import MeanNet

        return MeanNet(in_dim, n_classes, *_size(self.params))

    def sub_bag_size(self) -> int:
        return int(self.params.get("sub_bag_size", 8))

    def predict(self, net, x, rng, crops=None):
        return predict_by_vote(net, x, self.sub_bag_size(), rng, crops=crops)

    def check_bags(self, ctx: RunContext, bags: dict[str, Any]) -> None:
        """Warn when no bag is larger than a sub-bag: every sub-bag is then the whole bag, and the
        vote is exactly mean pooling (same losses, same predictions as ``mean_mil``)."""
        size, largest = self.sub_bag_size(), max((len(b) for b in bags.values()), default=0)
        if bags and largest <= size:
            ctx.warn(f"every bag has at most {largest} instance(s), not more than sub_bag_size {size}: each sub-bag "
                     f"is the whole bag, so majority_vote_mil is exactly mean pooling (mean_mil) here; set "
                     f"sub_bag_size below the bag sizes (e.g. {max(1, largest // 2)}) for a vote")


def defaults_for(aggregator: str, **overrides: Any) -> dict[str, Any]:
    """Validated parameters (schema defaults + ``overrides``) of the component for ``aggregator``."""
    import copy

    from hemaflow.core.schema import fill_defaults

    cls = next(c for c in COMPONENTS if c.aggregator == aggregator)
    allowed = cls.schema["properties"]
    return fill_defaults(cls.schema, {k: copy.deepcopy(v) for k, v in overrides.items() if k in allowed})


COMPONENTS = (MeanMIL, MaxMIL, AttentionMIL, GatedAttentionMIL, TransformerMIL, MajorityVoteMIL)


def build_net(aggregator: str, in_dim: int, n_classes: int, params: dict[str, Any], seed: int = 0):
    """The network of the built-in component whose ``aggregator`` is ``aggregator`` (``mean``,
    ``max``, ``attention``, ``gated_attention``, ``transformer``, ``majority_vote``), built with
    ``params`` over the schema defaults (tests and benchmarks; steps call
    :meth:`MILAggregator.build_network`)."""
    by_name = {c.aggregator: c for c in COMPONENTS}
    if aggregator not in by_name:
        raise ValueError(f"unknown aggregator {aggregator!r}; built-in: {sorted(by_name)}")
    return by_name[aggregator](**defaults_for(aggregator, **params)).build_network(in_dim, n_classes, seed=seed)


@hookimpl
def register_mil_models(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
