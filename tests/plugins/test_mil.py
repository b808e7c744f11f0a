"""MIL: bags, aggregators, per-fold training, attention, empty bags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins import mil
from hemaflow.plugins.artifacts import FeatureTable, Split
from hemaflow.testing import check_component, make, make_context
from tests.plugins.mil_helpers import kfold_split, synthetic_instances

AGGREGATORS = ["mean", "max", "attention", "gated_attention", "transformer", "majority_vote"]


def component_for(agg: str, **params):
    cls = next(c for c in mil.COMPONENTS if c.aggregator == agg)
    return cls(**mil.defaults_for(agg, **params))


@pytest.fixture()
def data(tmp_path):
    feats, cells = synthetic_instances(tmp_path, n_patients=12, cells=(3, 12), dim=6, abnormal_rate=0.3)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=3)
    return feats, cells, split


@pytest.mark.parametrize("cls", mil.COMPONENTS, ids=lambda c: c.name)
def test_conformance(cls, registry):
    check_component(cls)
    assert registry.get("mil", cls.name) is cls


def test_bags_never_mix_patients(data):
    feats, cells, _ = data
    inst = mil.build_instances(features=feats, cells=cells)
    bags = mil.make_bags(inst.table)
    seen = np.concatenate(list(bags.values()))
    assert sorted(seen) == list(range(len(inst.table)))  # every instance in exactly one bag
    for pid, idx in bags.items():
        assert set(inst.table["patient_id"].iloc[idx]) == {pid}
    # a patient's bag holds the instances of all its images
    assert inst.table.groupby("patient_id")["image_id"].nunique().max() == 3
    assert {pid: len(idx) for pid, idx in bags.items()} == inst.table.groupby("patient_id").size().to_dict()


def test_patient_with_two_labels_is_a_data_error(tmp_path, data):
    feats = data[0]
    t = feats.table.copy()
    t.loc[t.index[0], "label"] = "NORMAL" if t.loc[t.index[0], "label"] == "AML" else "AML"
    bad = FeatureTable(tmp_path / "bad", t, feats.meta).save()
    inst = mil.build_instances(features=bad)
    with pytest.raises(DataError, match=r"patient 'P00' has instances with different labels \['AML', 'NORMAL'\]"):
        mil.patient_labels(inst.table, bad.path)


def test_sample_bag_caps_training_bags_only():
    rng = np.random.default_rng(0)
    idx = np.arange(100, 1100)
    a, b = mil.sample_bag(idx, 64, rng), mil.sample_bag(idx, 64, rng)
    assert len(a) == 64 and len(set(a)) == 64 and set(a) <= set(idx)
    assert not np.array_equal(a, b)  # a fresh subset each epoch
    assert np.array_equal(mil.sample_bag(idx[:10], 64, rng), idx[:10])
    assert np.array_equal(mil.sample_bag(idx, 0, rng), idx)


def test_precision_at_k_breaks_ties_in_expectation():
    assert mil.precision_at_k(np.full(10, 0.1), np.array([1, 1] + [0] * 8), 5) == pytest.approx(0.2)
    assert mil.precision_at_k(np.array([0.5, 0.3, 0.1, 0.1]), np.array([1, 0, 1, 0]), 3) == pytest.approx(0.5)
    assert mil.precision_at_k(np.array([0.9, 0.1]), np.array([1, 0]), 5) == pytest.approx(0.5)


def test_r_precision_caps_k_at_the_number_of_abnormal_cells():
    scores, abnormal = np.array([0.5, 0.3, 0.1, 0.05, 0.05]), np.array([1, 1, 0, 0, 0])
    assert mil.precision_at_k(scores, abnormal, 5) == pytest.approx(0.4)  # the ceiling of plain precision@5
    assert mil.r_precision(scores, abnormal, 5) == pytest.approx(1.0)  # a perfect ranking scores one
    assert mil.r_precision(scores[::-1], abnormal, 5) == pytest.approx(0.0)
    assert mil.r_precision(np.full(5, 0.2), abnormal, 5) == pytest.approx(0.4)  # ties: the abnormal fraction
    assert np.isnan(mil.r_precision(scores, np.zeros(5), 5))


@pytest.mark.parametrize("agg", AGGREGATORS)
@pytest.mark.parametrize("n", [1, 10_000])
def test_aggregators_on_bags_of_size_1_and_10000(agg, n):
    import torch

    torch.manual_seed(0)
    net = mil.build_net(agg, 12, 3, {"hidden": 16, "heads": 4, "layers": 1})
    comp = component_for(agg, sub_bag_size=8)
    probs, scores = comp.predict(net, np.random.default_rng(0).normal(size=(n, 12)).astype(np.float32),
                                 np.random.default_rng(1))
    assert probs.shape == (3,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert scores.shape == (n,) and (scores >= 0).all()
    assert scores.sum() == pytest.approx(1.0, abs=1e-4)  # attention weights sum to one per bag


@pytest.mark.parametrize("agg", AGGREGATORS)
def test_padded_batch_gives_each_bag_its_own_output(agg):
    """Training runs bags as one padded, masked batch: padding must not change any bag."""
    import torch

    torch.manual_seed(0)
    net = mil.build_net(agg, 6, 3, {"hidden": 8, "heads": 2, "layers": 1}).eval()
    rng = np.random.default_rng(0)
    bags = [torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32)) for n in (1, 5, 12)]
    batch = mil.collate_bags([{"x": b, "y": 0} for b in bags])
    assert batch["x"].shape == (3, 12, 6) and batch["mask"].sum(1).tolist() == [1, 5, 12]
    with torch.no_grad():
        logits, scores = net(batch["x"], batch["mask"])
        for i, b in enumerate(bags):
            one_logits, one_scores = net(b)
            assert torch.allclose(logits[i], one_logits, atol=1e-5)
            assert torch.allclose(scores[i, :len(b)], one_scores, atol=1e-6)
            assert float(scores[i, len(b):].abs().sum()) == 0.0  # padding gets no attention
            assert float(scores[i].sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("agg", AGGREGATORS)
def test_one_training_step_per_aggregator(agg):
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    bags = {"a": np.arange(0, 7), "b": np.arange(7, 8), "c": np.arange(8, 20)}
    labels = {"a": 0, "b": 1, "c": 1}
    net = mil.build_net(agg, 5, 2, {"hidden": 8, "heads": 2})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = mil.defaults_for(agg, epochs=1, hidden=8, heads=2, warmup_epochs=0, sub_bag_size=4, max_instances=5)
    sub = component_for(agg, **params).sub_bag_size()
    assert sub == (4 if agg == "majority_vote" else 0)
    info = mil.train_fold(net, x, bags, labels, ["a", "b", "c"], ["b"], params, rng, sub_bag_size=sub)
    assert info["epochs_run"] == 1 and np.isfinite(info["history"][0]["train_loss"])
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert "head.weight" in changed and "project.0.weight" in changed


def test_attention_beats_mean_where_signal_sits_in_a_minority(tmp_path):
    feats, cells = synthetic_instances(tmp_path, n_patients=24, cells=(20, 40), dim=8, abnormal_rate=0.15, seed=3)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=3)
    out = {}
    for cls in (mil.MeanMIL, mil.GatedAttentionMIL):
        res = make(cls, epochs=25, patience=0, gallery_patients=0).run(
            make_context(tmp_path / cls.name), split=split, features=feats, cells=cells)
        out[cls.name] = res["metrics"].values["mil"]
    mean, att = out["mean_mil"], out["gated_attention_mil"]
    # mean pooling scores every cell alike: precision@k is the chance level
    assert mean["precision_at_k"] == pytest.approx(mean["abnormal_fraction"])
    assert att["precision_at_k"] > 2 * att["abnormal_fraction"]


def test_run_outputs_predictions_attention_and_model(tmp_path, data):
    feats, cells, split = data
    ctx = make_context(tmp_path / "run")
    res = make(mil.AttentionMIL, epochs=2, top_k=2, gallery_patients=2).run(ctx, split=split, features=feats, cells=cells)
    pred = res["predictions"].table
    assert list(pred.columns[:5]) == ["id", "level", "fold", "y_true", "y_pred"]
    assert {"prob_AML", "prob_NORMAL"} <= set(pred.columns)
    assert (pred["level"] == "patient").all() and sorted(pred["id"]) == sorted(split.table["patient_id"].unique())
    assert np.allclose(pred[["prob_AML", "prob_NORMAL"]].sum(axis=1), 1.0)
    att = res["attention"].table
    # a patient's instances all land in one fold (its test fold), each instance exactly once
    assert (att.groupby("patient_id")["fold"].nunique() == 1).all()
    assert not att["cell_id"].duplicated().any() and len(att) == len(feats.table)
    for pid, g in att.groupby("patient_id"):
        assert g["score"].sum() == pytest.approx(1.0, abs=1e-5)
        assert g["fold"].iloc[0] == pred.loc[pred["id"] == pid, "fold"].iloc[0]
        assert split.patients(int(g["fold"].iloc[0]), "test") >= {pid}
    model = res["model"]
    assert sorted(p.name for p in model.path.glob("fold*.safetensors")) == [f"fold{f}.safetensors" for f in range(3)]
    assert model.meta["classes"] == ["AML", "NORMAL"]
    galleries = [i for i in ctx.report.items if i["type"] == "gallery"]
    assert len(galleries) == 2 and all(len(g["images"]) <= 4 for g in galleries)
    assert "top #1" in galleries[0]["images"][0]["caption"]
    m = res["metrics"].values["mil"]
    assert m["n_bags"] == 12 and m["empty_bags"] == [] and 0 <= m["precision_at_k"] <= 1


def test_empty_bag_is_reported_not_crashed_on(tmp_path, data):
    feats, cells, split = data
    t = split.table.copy()
    extra = pd.DataFrame([{"fold": f, "patient_id": "GHOST", "partition": "test" if f == 1 else "train"}
                          for f in split.folds()])
    split2 = Split(tmp_path / "split2", pd.concat([t, extra], ignore_index=True), split.meta).save()
    ctx = make_context(tmp_path / "run")
    res = make(mil.MeanMIL, epochs=1, gallery_patients=0).run(ctx, split=split2, features=feats)
    assert "GHOST" not in set(res["predictions"].table["id"])
    assert res["metrics"].values["mil"]["empty_bags"] == ["GHOST"]
    assert "fold 1: patient 'GHOST' (test) has no instances (empty bag); excluded from predictions" in ctx.warnings
    assert res["model"].meta["empty_bags"][1] == {"fold": 1, "patient_id": "GHOST", "partition": "test"}


def test_per_fold_embeddings_and_radiomics_are_joined_on_cell_id(tmp_path, data):
    feats, cells, split = data
    t = feats.table
    emb = pd.concat([t[["cell_id", "image_id", "patient_id", "label"]].assign(fold=f, e0=float(f), e1=1.0)
                     for f in split.folds()], ignore_index=True)
    embeddings = FeatureTable(tmp_path / "emb", emb, {"feature_columns": ["e0", "e1"], "classes": ["AML", "NORMAL"]}).save()
    # radiomics missing for one cell: kept, imputed later
    partial = FeatureTable(tmp_path / "rad", t.iloc[1:], feats.meta).save()
    inst = mil.build_instances(embeddings=embeddings, features=partial, cells=cells)
    assert inst.dim == 2 + 6 and len(inst.table) == len(t)
    x2 = inst.matrix(2)
    assert (x2[:, 0] == 2.0).all() and np.isnan(x2[0, 2:]).all() and not np.isnan(x2[1:]).any()
    mean, std = mil.fit_scaler(x2[5:])
    z = mil.apply_scaler(x2, mean, std)
    assert np.isfinite(z).all() and (z[0, 2:] == 0).all()
    assert "truth" in inst.table.columns and inst.table["crop_index"].notna().all()


def test_needs_instance_features(tmp_path, data):
    with pytest.raises(DataError, match="needs an `embeddings` or a `features` input"):
        make(mil.MeanMIL).run(make_context(tmp_path), split=data[2], cells=data[1])


def test_embedding_pca_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 20)).astype(np.float32)
    train = np.arange(30)
    z, fitted = mil.fit_pca(x, train, 4)
    x2 = x.copy()
    x2[30:] *= 100  # test rows changed: the fitted projection must not move
    z2, fitted2 = mil.fit_pca(x2, train, 4)
    assert z.shape == (50, 4) and np.allclose(fitted["pca_components"], fitted2["pca_components"])
    assert np.allclose(z[:30], z2[:30], atol=1e-4)


def test_modalities_select_instance_inputs(tmp_path, data):
    feats, cells, split = data
    t = feats.table
    emb = FeatureTable(tmp_path / "emb", t[["cell_id", "image_id", "patient_id", "label"]].assign(e0=1.0, e1=2.0),
                       {"feature_columns": ["e0", "e1"], "classes": ["AML", "NORMAL"]}).save()
    res = make(mil.MeanMIL, epochs=1, modalities=["features"], gallery_patients=0).run(
        make_context(tmp_path / "a"), split=split, embeddings=emb, features=feats)
    assert res["model"].meta["blocks"] == ["features"] and res["model"].meta["in_dim"] == 6
    with pytest.raises(DataError, match="modalities lists 'embeddings' but the step has no 'embeddings' input"):
        make(mil.MeanMIL, modalities=["embeddings"]).run(make_context(tmp_path / "b"), split=split, features=feats)


E2E = {"backbone": "test_convnext", "image_size": 32}


def test_end_to_end_mil_trains_the_backbone_and_predicts_every_patient(tmp_path):
    import torch

    feats, cells = synthetic_instances(tmp_path, n_patients=8, cells=(3, 6), dim=4, seed=0, crop_size=16)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=2)
    comp = make(mil.GatedAttentionMIL, encoder=E2E, epochs=2, patience=0, gallery_patients=0, batch_size=4)
    res = comp.run(make_context(tmp_path / "e2e"), split=split, cells=cells)  # crops only, no features
    pred = res["predictions"].table
    assert sorted(pred["id"]) == sorted(pl.index)  # every patient predicted once, by its own test fold
    att = res["attention"].table
    assert np.allclose(att.groupby("patient_id")["score"].sum(), 1.0, atol=1e-5)
    # the saved fold weights hold a trained backbone: it differs from a freshly built one
    from safetensors.torch import load_file

    state = load_file(str(res["model"].path / "fold0.safetensors"))
    fresh = mil.build_net("gated_attention", 0, 2, {"encoder": E2E, "hidden": 128}).state_dict()
    bb = [k for k in state if k.startswith("backbone.") and state[k].is_floating_point() and state[k].ndim > 1]
    assert bb and any(not torch.equal(state[k], fresh[k]) for k in bb)


def test_end_to_end_mil_input_errors(tmp_path):
    from hemaflow.core.errors import DataError

    feats, cells = synthetic_instances(tmp_path, n_patients=4, cells=(2, 3), dim=4, seed=0, crop_size=16)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=2)
    comp = make(mil.MeanMIL, encoder=E2E, epochs=1)
    with pytest.raises(DataError, match="needs the `cells` input"):
        comp.run(make_context(tmp_path / "a"), split=split, features=feats)
    with pytest.raises(DataError, match="not both"):
        comp.run(make_context(tmp_path / "b"), split=split, embeddings=feats, cells=cells)
    assert make(mil.MeanMIL, encoder={"backbone": "no_such_net"}).check_params()[0][0] == "/encoder/backbone"


@pytest.mark.parametrize("n", [1, 7, 10_000])
def test_per_class_attention_branches(n):
    import torch

    torch.manual_seed(0)
    net = mil.build_net("gated_attention", 6, 3, {"hidden": 8, "branches": "per_class"}).eval()
    assert net.w.out_features == 3  # one attention branch per class
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32))
    with torch.no_grad():
        logits, scores = net(x)
        batch = mil.collate_bags([{"x": x, "y": 0}, {"x": x[:1], "y": 1}])
        b_logits, b_scores = net(batch["x"], batch["mask"])
    assert logits.shape == (3,) and scores.shape == (n,)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-4) and float(scores.min()) >= 0
    assert torch.allclose(b_logits[0], logits, atol=1e-5) and torch.allclose(b_scores[0, :n], scores, atol=1e-6)
    # the score shown is the predicted class's branch
    a = net.attention(net.project(x[None]), torch.ones(1, n, dtype=torch.bool))[0]
    assert torch.allclose(scores, a[int(logits.argmax())], atol=1e-6)
