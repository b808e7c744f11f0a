"""The MIL extension contract: a new aggregator is a small :class:`MILAggregator` subclass whose
network (a :class:`MILNet`) implements ``pool(h, mask) -> (z, scores)``; it registers through the
ordinary ``register_mil_models`` hook and trains in the loop every built-in uses. The built-ins
are such subclasses, each with its own version, and their networks and cache keys are those of
before the contract existed."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hemaflow import hookimpl
from hemaflow.core.bases import MILModel
from hemaflow.core.cache import cache_key
from hemaflow.core.plugins import build_registry, make_plugin_manager
from hemaflow.plugins import mil
from hemaflow.plugins.mil import MILAggregator, MILNet
from hemaflow.plugins.mil.baseline import PooledBaseline
from hemaflow.testing import make, make_context
from tests.plugins.mil_helpers import kfold_split, synthetic_instances

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SoftTopKNet(MILNet):
    """Attention restricted to the k best-scored instances of a bag."""

    def __init__(self, in_dim, n_classes, hidden, dropout, k):
        super().__init__(in_dim, n_classes, hidden, dropout)
        self.score, self.k = nn.Linear(hidden, 1), k

    def pool(self, h, mask):
        s = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        top = s.topk(min(self.k, h.shape[1]), dim=1).indices
        keep = torch.zeros_like(mask).scatter(1, top, True) & mask
        w = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=1)
        return (w.unsqueeze(-1) * h).sum(1), w


class SoftTopKMIL(MILAggregator):
    name = "soft_topk_mil"
    version = "1"
    schema = MILAggregator.extend_schema({"k": {"type": "integer", "minimum": 1, "default": 3}})

    def make_net(self, in_dim, n_classes):
        return SoftTopKNet(in_dim, n_classes, self.params["hidden"], self.params["dropout"], self.params["k"])


class Plugin:
    @hookimpl
    def register_mil_models(register):
        register(SoftTopKMIL)


@pytest.fixture()
def data(tmp_path):
    feats, cells = synthetic_instances(tmp_path, n_patients=9, cells=(1, 8), dim=5, abnormal_rate=0.3)
    pl = feats.table.groupby("patient_id")["label"].first()
    return feats, cells, kfold_split(tmp_path, list(pl.index), list(pl.values), k=3)


def test_a_new_aggregator_registers_through_the_ordinary_hook():
    reg = build_registry(make_plugin_manager(entry_points=False, extra=[Plugin]))
    assert reg.get("mil", "soft_topk_mil") is SoftTopKMIL
    assert SoftTopKMIL.kind == "mil" and issubclass(SoftTopKMIL, MILModel)
    props = SoftTopKMIL.schema["properties"]
    assert props["k"]["default"] == 3 and {"epochs", "hidden", "encoder", "max_instances"} <= set(props)


def test_a_new_aggregator_is_trained_and_predicts_like_a_builtin(tmp_path, data):
    feats, cells, split = data
    res = make(SoftTopKMIL, epochs=2, k=2, hidden=8, gallery_patients=1, top_k=2).run(
        make_context(tmp_path / "run"), split=split, features=feats, cells=cells)
    pred = res["predictions"].table
    assert sorted(pred["id"]) == sorted(feats.table["patient_id"].unique())  # every patient, by its test fold
    assert np.allclose(pred[["prob_AML", "prob_NORMAL"]].sum(axis=1), 1.0)
    att = res["attention"].table
    assert np.allclose(att.groupby("patient_id")["score"].sum(), 1.0, atol=1e-5)
    # the pooling's own rule shows in the attention: at most k instances of a bag score above zero
    assert (att[att["score"] > 0].groupby("patient_id").size() <= 2).all()
    model = res["model"]
    assert model.meta["aggregator"] == "soft_topk_mil" and model.meta["params"]["k"] == 2
    from safetensors.torch import load_file

    state = load_file(str(model.path / "fold0.safetensors"))
    assert {"project.0.weight", "score.weight", "head.weight"} <= set(state)
    assert res["metrics"].values["mil"]["folds"][0]["epochs_run"] == 2


def test_a_new_aggregator_gets_the_end_to_end_encoder_for_free():
    comp = make(SoftTopKMIL, encoder={"backbone": "test_convnext", "image_size": 32}, hidden=8)
    torch.manual_seed(0)
    net = comp.build_network(4, 3, seed=0)
    assert isinstance(net, mil.EndToEndNet) and isinstance(net.mil, SoftTopKNet)
    assert net.mil.project[0].in_features == net.dim + 4  # embedding in front of the 4 instance features
    crops = torch.randint(0, 255, (5, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        logits, scores = net.eval()(torch.zeros(5, 4), crops=crops)
    assert logits.shape == (3,) and float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_missing_pieces_of_the_contract_say_what_to_implement():
    class NoPool(MILNet):
        pass

    with pytest.raises(NotImplementedError, match=r"NoPool must implement pool\(h, mask\) -> \(z, scores\)"):
        NoPool(3, 2, 4, 0.0)(torch.zeros(2, 3))

    class NoNet(MILAggregator):
        name = "no_net"

    with pytest.raises(NotImplementedError, match=r"NoNet must implement make_net\(in_dim, n_classes\)"):
        make(NoNet).build_network(3, 2)


def test_builtins_are_subclasses_with_their_own_version():
    names = {c.name for c in mil.COMPONENTS}
    assert names == {"mean_mil", "max_mil", "attention_mil", "gated_attention_mil", "transformer_mil",
                     "majority_vote_mil"}
    for cls in mil.COMPONENTS:
        assert issubclass(cls, MILAggregator) and cls.kind == "mil"
        assert "version" in cls.__dict__, f"{cls.__name__} inherits its version"
        assert cls.make_net is not MILAggregator.make_net
    assert issubclass(PooledBaseline, MILModel) and not issubclass(PooledBaseline, MILAggregator)


def test_registering_the_aggregators_does_not_import_torch():
    """The networks load when a step builds one: `hemaflow plugins` and `validate` stay fast."""
    code = ("import sys; from hemaflow.core.plugins import build_registry, make_plugin_manager; "
            "reg = build_registry(make_plugin_manager(entry_points=False)); "
            "print(len(reg.components['mil']), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["8", "False"]  # six aggregators, pooled_baseline, apply_bundle


def test_the_training_loop_never_branches_on_an_aggregator_name():
    from hemaflow.lib import mil_training

    src = inspect.getsource(mil_training)
    for cls in mil.COMPONENTS:
        assert repr(cls.aggregator) not in src and f'"{cls.aggregator}"' not in src, cls.aggregator


# Pinned before the refactor into MILAggregator/MILNet (commit cffddd0, the closed `build_net`):
# a changed number means a built-in's results or cache entries changed; bump its `version` then.
CACHE_KEYS = {
    "mean_mil": "729b1fbd64e418e51a32c9de898d5449efc21cc98d6cb251d6e9c82797f213de",
    "max_mil": "903caf9e5ae2749e7f07d7b8a0a38aad7265eeed2334b8690eb475b85c1a2315",
    "attention_mil": "990717dd8cc02ae74c2d6087532fcd2255e3981cc2dde70d16faf4d69320c270",
    "gated_attention_mil": "7afb9956904e08c6689fef586a01e94a663461de201f240908a2dfae24f70961",
    "transformer_mil": "3933333d2f42596ba4851a9abadc354370916efc603f14b31ad0c0e34b913921",
    "majority_vote_mil": "4aca1bd0962bcaf326c81416ea968f4d1974bdeca220ad5ddb4686880e381df7",
}
LOGITS = {  # torch.manual_seed(0); build_net(agg, 6, 3, hidden=8, heads=2, layers=1) on linspace(-1, 1) (5, 6)
    "mean": [-0.52467, 0.40482, 0.52071],
    "max": [-0.5807, 0.60296, 0.57879],
    "attention": [-0.52914, 0.3956, 0.52376],
    "gated_attention": [-0.52764, 0.39867, 0.52289],
    "transformer": [-0.29354, 0.87487, 0.21726],
    "majority_vote": [-0.52467, 0.40482, 0.52071],
    "per_class": [0.11753, -0.53902, -0.1208],
}


@pytest.mark.parametrize("cls", mil.COMPONENTS, ids=lambda c: c.name)
def test_builtin_cache_keys_are_those_of_before(cls):
    payload = {"component": cls.name, "kind": cls.kind, "version": cls.version,
               "params": mil.defaults_for(cls.aggregator)}
    assert cache_key(payload) == CACHE_KEYS[cls.name]


@pytest.mark.parametrize("agg", list(LOGITS))
def test_builtin_networks_are_those_of_before(agg):
    extra = {"branches": "per_class"} if agg == "per_class" else {}
    torch.manual_seed(0)
    net = mil.build_net("gated_attention" if extra else agg, 6, 3, {"hidden": 8, "heads": 2, "layers": 1, **extra})
    with torch.no_grad():
        logits, _ = net.eval()(torch.linspace(-1, 1, 30).reshape(5, 6))
    assert logits.tolist() == pytest.approx(LOGITS[agg], abs=1e-4)


def test_the_library_moved_out_of_the_plugins_keeps_its_old_import_paths():
    """MIL nets, bags and training live in hemaflow.lib; a plugin written against the old paths
    still imports the very same objects."""
    from hemaflow.lib import mil_bags, mil_nets, mil_training
    from hemaflow.plugins.mil.bags import _by_cell, build_instances
    from hemaflow.plugins.mil.nets import MILNet
    from hemaflow.plugins.mil.train import train_fold

    assert MILNet is mil_nets.MILNet is mil.MILNet and train_fold is mil_training.train_fold
    assert build_instances is mil_bags.build_instances and _by_cell is mil_bags._by_cell
