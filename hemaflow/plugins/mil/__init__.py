"""Multiple-instance learning: one bag of instances per patient, one diagnosis per patient.

Pipeline position::

    cells (CellSet) ──> instance_encoder (FeatureTable, per fold) ─┐
    cells ──> radiomics (FeatureTable) ────────────────────────────┼─> <aggregator> ─> Predictions
    split (Split) ─────────────────────────────────────────────────┘      (level patient)

Every aggregator is a component of kind ``mil`` sharing :class:`MILAggregator`: it joins the
instance tables on ``cell_id``, builds one bag per patient (all instances of all that patient's
images, never mixing patients), and for every fold of the Split trains on the fold's ``train``
patients (a random subset of at most ``max_instances`` per bag and epoch), stops early on the
fold's ``val`` patients and predicts the fold's ``test`` patients with all their instances.
An aggregator only says which network pools a bag: :meth:`MILAggregator.make_net` returns a
:class:`MILNet` whose ``pool(h, mask) -> (z, scores)`` is the contract (:mod:`hemaflow.lib.mil_nets`,
with the bags in :mod:`hemaflow.lib.mil_bags` and the training in :mod:`hemaflow.lib.mil_training`); a third
party's aggregator is the same small class, registered through ``register_mil_models``.

Aggregators (``uses:``): ``mean_mil``, ``max_mil``, ``attention_mil`` (Ilse et al. 2018),
``gated_attention_mil`` (Ilse et al. 2018, gated), ``transformer_mil`` (TransMIL-style, small)
and ``majority_vote_mil`` (the original code's sub-bags with a majority vote). Beside them, with
the same inputs and outputs, the classical baseline ``pooled_baseline`` (:mod:`.baseline`: per-patient
statistics of the instance features, a scikit-learn model per fold).

Outputs: ``predictions`` (Predictions, level ``patient``), ``model`` (Model: one safetensors
file per fold plus the fold's scaler), ``attention`` (Table: one row per test instance with its
score; scores of a bag sum to one) and ``metrics`` (Metrics section ``mil``: bags, empty bags
and, when the instances carry generator ground truth, precision@k of the top-attention cells).
"""

from __future__ import annotations

from hemaflow.lib.mil_bags import (ID_COLUMNS, NORMAL_TRUTH, Instances, apply_scaler, build_instances, fit_pca,
                                   fit_scaler, make_bags, patient_labels, precision_at_k, r_precision, sample_bag)
from hemaflow.lib.mil_training import BagDataset, collate_bags, forward_bags, predict_bag, predict_by_vote, train_fold
from hemaflow.plugins.mil.base import MILAggregator
from hemaflow.plugins.mil.components import (COMPONENTS, AttentionMIL, GatedAttentionMIL, MajorityVoteMIL, MaxMIL,
                                             MeanMIL, MILComponent, TransformerMIL, build_net, defaults_for)

_NETS = ("MILNet", "MeanNet", "MaxNet", "AttentionNet", "TransformerNet", "EndToEndNet")

__all__ = ["COMPONENTS", "ID_COLUMNS", "NORMAL_TRUTH", "AttentionMIL", "BagDataset", "GatedAttentionMIL", "Instances",
           "MILAggregator", "MILComponent", "MajorityVoteMIL", "MaxMIL", "MeanMIL", "TransformerMIL", "apply_scaler",
           "build_instances", "build_net", "collate_bags", "defaults_for", "fit_pca", "fit_scaler", "forward_bags",
           "make_bags", "patient_labels", "precision_at_k", "predict_bag", "predict_by_vote", "r_precision",
           "sample_bag", "train_fold", *_NETS]


def __getattr__(name: str):
    # the torch modules load on first use, so registering the MIL components does not import torch
    if name in _NETS:
        from hemaflow.lib import mil_nets

        return getattr(mil_nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
