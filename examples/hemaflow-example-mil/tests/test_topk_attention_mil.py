"""The example aggregator: its pooling keeps the MIL contract, it is found through its entry
point, it passes hemaflow's conformance kit and its recipe runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hemaflow_example_mil.nets import TopKAttentionNet
from hemaflow_example_mil.plugin import TopKAttentionMIL

RECIPE = Path(__file__).resolve().parents[1] / "example_mil.yaml"


def test_pooling_keeps_the_contract_and_uses_at_most_k_instances():
    torch.manual_seed(0)
    net = TopKAttentionNet(5, 3, hidden=8, dropout=0.0, k=3).eval()
    bags = [torch.randn(n, 5) for n in (1, 2, 9)]
    batch = torch.zeros(3, 9, 5)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, b in enumerate(bags):
        batch[i, :len(b)], mask[i, :len(b)] = b, True
    with torch.no_grad():
        logits, scores = net(batch, mask)
        for i, b in enumerate(bags):
            one_logits, one_scores = net(b)
            assert torch.allclose(logits[i], one_logits, atol=1e-5)  # padding changes nothing
            assert torch.allclose(scores[i, :len(b)], one_scores, atol=1e-6)
    assert logits.shape == (3, 3) and scores.shape == (3, 9)
    assert torch.allclose(scores.sum(1), torch.ones(3)) and bool((scores >= 0).all())
    assert float(scores[~mask].abs().sum()) == 0.0
    assert (scores > 0).sum(1).tolist() == [1, 2, 3]  # a bag of 9 shares the attention among k = 3


def test_found_through_the_entry_point():
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    reg = build_registry(make_plugin_manager())
    entry = reg.components["mil"]["topk_attention_mil"]
    assert entry.cls is TopKAttentionMIL and entry.distribution == "hemaflow-example-mil"


def test_listing_plugins_does_not_import_torch():
    code = ("import sys; from hemaflow.core.plugins import get_registry; "
            "print('topk_attention_mil' in get_registry().components['mil'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_passes_the_conformance_kit():
    from hemaflow.testing import check_component

    check_component(TopKAttentionMIL, params={"epochs": 2, "hidden": 8, "k": 2})


def test_recipe_runs(tmp_path, monkeypatch):
    from hemaflow.core.cli import main

    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", str(RECIPE), "--out", str(tmp_path / "run"), "--executor", "serial"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mil"]["aggregator"] == "topk_attention_mil"
    assert metrics["patient"]["n"] == 12
    # AML bags carry abnormal cells, NORMAL bags none: the top-k cells find them
    assert metrics["patient"]["balanced_accuracy"] >= 0.75
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["plugins"]["topk_attention_mil"]["distribution"] == "hemaflow-example-mil"
