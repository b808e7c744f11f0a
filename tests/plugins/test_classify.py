from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError, HemaflowError
from hemaflow.lib import imageio as io
from hemaflow.plugins.artifacts import CellSet, FeatureTable, ImageSet, Split
from hemaflow.plugins.classify import (
    COMPONENTS,
    ImageClassifier,
    MultiModal,
    SklearnClassifier,
    TabularAttention,
)
from hemaflow.lib.training import load_checkpoint
from hemaflow.testing import check_component, make, make_context

CLASSES = ["A", "B"]
N_PAT = 12  # patients P00..P11, even = A, odd = B
PER_PAT = 2
S = 32
TINY = {"epochs": 2, "batch_size": 8, "patience": 0, "warmup_epochs": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _draw(label: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 32 px field with one round cell: class A red-ish nucleus, class B blue-ish and larger."""
    img = np.full((S, S, 3), 220, np.uint8) + rng.integers(0, 20, (S, S, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:S, :S]
    cy, cx = rng.integers(12, 20, 2)
    r = 7 if label == "A" else 10
    cell = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    nuc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r // 2) ** 2
    img[cell] = (200, 150, 190)
    img[nuc] = (150, 40, 90) if label == "A" else (60, 50, 170)
    mask = np.zeros((S, S), np.uint8)
    mask[cell] = 1
    mask[nuc] = 2
    return img, mask


def _image_set(root: Path, *, poison_patients: set[str] = frozenset()) -> ImageSet:
    """Tiny ImageSet; images of ``poison_patients`` are replaced by noise and their labels flipped."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(N_PAT):
        pid = f"P{k:02d}"
        label = CLASSES[k % 2]
        for i in range(PER_PAT):
            img, mask = _draw(label, rng)
            if pid in poison_patients:
                img = np.random.default_rng(k * 10 + i).integers(0, 255, img.shape).astype(np.uint8)
                label_out = CLASSES[(k + 1) % 2]
            else:
                label_out = label
            iid = f"{pid}_{i}"
            io.write_png(root / "img" / f"{iid}.png", img)
            io.write_png(root / "img" / f"{iid}_m.png", mask)
            rows.append({"image_id": iid, "patient_id": pid, "label": label_out, "path": f"img/{iid}.png",
                         "mask_path": f"img/{iid}_m.png"})
    meta = {"classes": CLASSES, "mask_spec": {"mode": "canonical"}, "patients_are_images": False}
    return ImageSet(root, pd.DataFrame(rows), meta).save()


def _split(root: Path, folds: int = 2) -> Split:
    """Fold f: test = patients 4f..4f+3, val = the next 2 (mod 12), train = the rest."""
    rows = []
    for f in range(folds):
        test = {(4 * f + j) % N_PAT for j in range(4)}
        val = {(4 * f + 4 + j) % N_PAT for j in range(2)}
        for k in range(N_PAT):
            part = "test" if k in test else "val" if k in val else "train"
            rows.append({"fold": f, "patient_id": f"P{k:02d}", "partition": part})
    return Split(root, pd.DataFrame(rows), {"kind": "manual", "n_folds": folds}).save()


def _cell_set(root: Path, images: ImageSet) -> CellSet:
    rows, crops, masks = [], [], []
    for _, r in images.table.iterrows():
        img, mask = images.read_image(r), images.read_mask(r)
        for j, (y0, x0) in enumerate([(4, 4)]):
            crops.append(img[y0:y0 + 24, x0:x0 + 24])
            masks.append(mask[y0:y0 + 24, x0:x0 + 24])
            rows.append({"cell_id": f"{r['image_id']}:{j + 1}", "image_id": r["image_id"], "patient_id": r["patient_id"],
                         "label": r["label"], "crop_index": len(rows)})
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "crops.npy", np.stack(crops))
    np.save(root / "crop_masks.npy", np.stack(masks))
    return CellSet(root, pd.DataFrame(rows), {"crop_size": 24, "classes": CLASSES, "patients_are_images": False}).save()


def _features(root: Path, table: pd.DataFrame, *, n: int = 6, per_cell: bool = True, seed: int = 0) -> FeatureTable:
    """Features where f0 separates the classes and the rest is noise (NaNs sprinkled in f5)."""
    rng = np.random.default_rng(seed)
    ids = table[["cell_id", "image_id", "patient_id", "label"] if per_cell else ["image_id", "patient_id", "label"]]
    df = ids.reset_index(drop=True).copy()
    cols = [f"radiomics_f{j}" for j in range(n)]
    for j, c in enumerate(cols):
        df[c] = rng.normal(size=len(df))
    df["radiomics_f0"] += np.where(df["label"] == "A", 3.0, -3.0)
    df.loc[::5, "radiomics_f5"] = np.nan
    return FeatureTable(root, df, {"classes": CLASSES, "feature_columns": cols}).save()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    images = _image_set(root / "images")
    cells = _cell_set(root / "cells", images)
    return {"root": root, "images": images, "cells": cells, "split": _split(root / "split"),
            "split1": _split(root / "split1", folds=1),
            "cell_features": _features(root / "feat_cells", cells.table),
            "image_features": _features(root / "feat_images", images.table, per_cell=False)}


@pytest.mark.parametrize("cls", COMPONENTS)
def test_conformance(cls, registry):
    check_component(cls)
    assert registry.get("classifier", cls.name) is cls


def _check_predictions(out, ids, level, n_folds=2):
    pred = out["predictions"]
    t = pred.table
    assert pred.classes == CLASSES
    assert list(t.columns[:7]) == ["id", "level", "fold", "y_true", "y_pred", "prob_A", "prob_B"]
    assert set(t["level"]) == {level}
    assert sorted(t["fold"].unique()) == list(range(n_folds))
    assert set(t["id"]) <= set(ids)
    np.testing.assert_allclose(t[["prob_A", "prob_B"]].sum(axis=1), 1, atol=1e-5)
    # every prediction is for a test patient of its fold
    for f, g in t.groupby("fold"):
        test = {f"P{(4 * f + j) % N_PAT:02d}" for j in range(4)}
        assert set(g["patient_id"]) == test
    return t


def test_image_classifier_one_fold_step(tmp_path, data):
    comp = make(ImageClassifier, backbone="test_resnet", image_size=32, **TINY)
    ctx = make_context(tmp_path)
    out = comp.run(ctx, images=data["images"], split=data["split"])
    t = _check_predictions(out, data["images"].table["image_id"], "image")
    assert len(t) == 2 * 4 * PER_PAT
    model = out["model"]
    assert model.meta["classes"] == CLASSES and model.meta["backbone"] == "test_resnet"
    assert sorted(model.meta["files"]) == ["fold0.safetensors", "fold1.safetensors", "history.csv"]
    state, meta = load_checkpoint(model.path / "fold0.safetensors")
    assert meta["classes"] == CLASSES and meta["component"] == "image_classifier" and len(meta["recipe_hash"]) == 16
    assert meta["epoch"] in (1, 2)
    hist = pd.read_csv(model.path / "history.csv")
    assert list(hist["run"]) == ["fold0", "fold0", "fold1", "fold1"]
    items = json.loads((ctx.workdir / "_report" / "items.json").read_text())
    assert [i["title"] for i in items] == ["Learning curves (image_classifier)", "Folds (image_classifier)"]


def test_image_classifier_is_deterministic(tmp_path, data):
    outs = []
    for d in ("a", "b"):
        comp = make(ImageClassifier, backbone="test_resnet", image_size=32, **TINY)
        outs.append(comp.run(make_context(tmp_path / d), images=data["images"], split=data["split1"]))
    pd.testing.assert_frame_equal(outs[0]["predictions"].table, outs[1]["predictions"].table)
    h0 = pd.read_csv(outs[0]["model"].path / "history.csv").drop(columns="seconds")
    h1 = pd.read_csv(outs[1]["model"].path / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h0, h1)


def test_test_partition_never_reaches_model_selection(tmp_path, data):
    """Poison the test patients of fold 0 (noise images, flipped labels): fold 0's training
    history, selected epoch and weights must not change; only its test predictions may."""
    poisoned = {f"P{j:02d}" for j in range(4)}
    bad = _image_set(tmp_path / "poisoned", poison_patients=poisoned)
    split1 = _split(tmp_path / "s1", folds=1)
    runs = []
    for d, images in (("clean", data["images"]), ("poison", bad)):
        comp = make(ImageClassifier, backbone="test_resnet", image_size=32, **dict(TINY, epochs=3))
        runs.append(comp.run(make_context(tmp_path / d), images=images, split=split1))
    h = [pd.read_csv(r["model"].path / "history.csv").drop(columns="seconds") for r in runs]
    pd.testing.assert_frame_equal(h[0], h[1])
    s0, m0 = load_checkpoint(runs[0]["model"].path / "fold0.safetensors")
    s1, m1 = load_checkpoint(runs[1]["model"].path / "fold0.safetensors")
    assert m0["epoch"] == m1["epoch"]
    assert all(np.array_equal(s0[k].numpy(), s1[k].numpy()) for k in s0)
    # the poison did reach the test predictions, so the check above is not vacuous
    p0, p1 = runs[0]["predictions"].table, runs[1]["predictions"].table
    assert not np.allclose(p0["prob_A"], p1["prob_A"])
    assert (p0["y_true"] != p1["y_true"]).all()


@pytest.mark.parametrize("mode", ["valve", "channel", "spatial"])
def test_image_classifier_mask_attention_on_fields(tmp_path, data, mode):
    comp = make(ImageClassifier, backbone="test_resnet", image_size=32, mask_attention=mode, **dict(TINY, epochs=1))
    out = comp.run(make_context(tmp_path), images=data["images"], split=_split(tmp_path / "s", folds=1))
    state, _ = load_checkpoint(out["model"].path / "fold0.safetensors")
    assert "net.mask_conv.weight" in state
    # trained: the zero-initialised mask path has moved away from zero
    assert float(state["net.mask_conv.weight"].abs().sum()) > 0


def test_image_classifier_cells_and_masked_inputs(tmp_path, data):
    comp = make(ImageClassifier, backbone="test_vit", image_size=32, input="masked_cell", background="black",
                **dict(TINY, epochs=1))
    out = comp.run(make_context(tmp_path / "c"), cells=data["cells"], split=data["split1"])
    t = _check_predictions(out, data["cells"].table["cell_id"], "cell", n_folds=1)
    assert set(t["image_id"]) <= set(data["images"].table["image_id"])
    comp = make(ImageClassifier, backbone="test_convnext", image_size=32, input="masked_field", **dict(TINY, epochs=1))
    _check_predictions(comp.run(make_context(tmp_path / "f"), images=data["images"], split=data["split1"]),
                       data["images"].table["image_id"], "image", n_folds=1)


def test_image_classifier_errors(tmp_path, data):
    with pytest.raises(HemaflowError, match=r"unknown timm model 'resnet5O'; did you mean 'resnet50'"):
        make(ImageClassifier, backbone="resnet5O").run(make_context(tmp_path), images=data["images"],
                                                       split=data["split"])
    with pytest.raises(HemaflowError, match="cannot be downloaded: hemaflow runs offline.*pretrained: /path/to/"):
        make(ImageClassifier, backbone="test_resnet", image_size=32, pretrained=True, **TINY).run(
            make_context(tmp_path), images=data["images"], split=data["split"])
    with pytest.raises(HemaflowError, match="pretrained weights file '/nope.safetensors' not found"):
        make(ImageClassifier, backbone="test_resnet", image_size=32, pretrained="/nope.safetensors", **TINY).run(
            make_context(tmp_path), images=data["images"], split=data["split"])
    with pytest.raises(DataError, match="input: cell needs a `cells: CellSet` input"):
        make(ImageClassifier, backbone="test_resnet", input="cell").run(make_context(tmp_path), images=data["images"],
                                                                        split=data["split"])
    other = ImageSet(tmp_path / "x", data["images"].table.assign(label="C"), dict(data["images"].meta)).save()
    with pytest.raises(DataError, match=r"labels \['C'\] are not in meta\['classes'\] \['A', 'B'\]"):
        make(ImageClassifier, backbone="test_resnet", image_size=32, **TINY).run(make_context(tmp_path), images=other,
                                                                                 split=data["split"])


def test_image_classifier_local_pretrained_file(tmp_path, data):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    from hemaflow.lib.nets import create_backbone

    net = create_backbone("test_resnet", num_classes=2, pretrained=str(path))
    assert torch_equal(net.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    assert net.get_classifier().out_features == 2
    with pytest.raises(HemaflowError, match=r"w.safetensors: checkpoint does not fit the model"):
        create_backbone("test_vit", num_classes=2, pretrained=str(path))


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


@pytest.mark.parametrize("model", ["logistic_regression", "random_forest", "gradient_boosting"])
def test_sklearn_classifier(tmp_path, data, model):
    ctx = make_context(tmp_path)
    kw = {"C": 100.0} if model == "logistic_regression" else {"n_estimators": 20}
    comp = make(SklearnClassifier, model=model, **kw)
    out = comp.run(ctx, features=data["cell_features"], split=data["split"])
    t = _check_predictions(out, data["cells"].table["cell_id"], "cell")
    assert (t["y_true"] == t["y_pred"]).mean() >= 0.8  # f0 separates the classes (12 training rows only)
    imp = pd.read_csv(out["model"].path / "feature_importance.csv")
    top = imp.groupby("feature")["importance"].mean().idxmax()
    assert top == "radiomics_f0"
    assert sorted(out["model"].meta["files"]) == ["feature_importance.csv", "fold0.joblib", "fold1.joblib"]
    again = make(SklearnClassifier, model=model, **kw).run(make_context(tmp_path / "b"),
                                                                      features=data["cell_features"], split=data["split"])
    pd.testing.assert_frame_equal(t, again["predictions"].table)


def test_sklearn_scaler_is_fitted_on_train_only(tmp_path, data):
    """Shifting the test patients' features by a huge constant must not change how the
    training rows are scaled: the saved scaler is identical."""
    import joblib

    ft = data["image_features"]
    split = _split(tmp_path / "s", folds=1)
    test = split.patients(0, "test")
    shifted = ft.table.copy()
    rows = shifted["patient_id"].isin(test)
    shifted.loc[rows, ft.feature_columns] += 1000.0
    ft2 = FeatureTable(tmp_path / "f2", shifted, dict(ft.meta)).save()
    a = make(SklearnClassifier).run(make_context(tmp_path / "a"), features=ft, split=split)
    b = make(SklearnClassifier).run(make_context(tmp_path / "b"), features=ft2, split=split)
    sa = joblib.load(a["model"].path / "fold0.joblib")["scaler"]
    sb = joblib.load(b["model"].path / "fold0.joblib")["scaler"]
    assert sa == sb
    assert a["predictions"].table["level"].iloc[0] == "image"


def test_sklearn_errors(tmp_path, data):
    ft = data["cell_features"]
    with pytest.raises(DataError, match=r"missing values in feature columns \['radiomics_f5'\]"):
        make(SklearnClassifier, impute="none").run(make_context(tmp_path), features=ft, split=data["split"])
    no_cols = FeatureTable(tmp_path / "nc", ft.table, dict(ft.meta, feature_columns=[])).save()
    with pytest.raises(DataError, match=r"meta\['feature_columns'\] is empty"):
        make(SklearnClassifier).run(make_context(tmp_path), features=no_cols, split=data["split"])
    one = FeatureTable(tmp_path / "one", ft.table, dict(ft.meta, classes=["A"])).save()
    with pytest.raises(DataError, match=r"at least two classes"):
        make(SklearnClassifier).run(make_context(tmp_path), features=one, split=data["split"])
    other = Split(tmp_path / "os", data["split"].table.assign(patient_id="Z" + data["split"].table["patient_id"]),
                  {}).save()
    with pytest.raises(DataError, match="none of the 12 patients of the input are in the split"):
        make(SklearnClassifier).run(make_context(tmp_path), features=ft, split=other)


def _many_rows(root: Path, per_patient: int = 20) -> FeatureTable:
    """240 image-level rows (20 per patient) of the same kind of features: enough to learn from."""
    rows = [{"image_id": f"P{k:02d}_{i}", "patient_id": f"P{k:02d}", "label": CLASSES[k % 2]}
            for k in range(N_PAT) for i in range(per_patient)]
    return _features(root, pd.DataFrame(rows), per_cell=False)


def test_tabular_attention_saves_feature_attention(tmp_path, data):
    ctx = make_context(tmp_path)
    comp = make(TabularAttention, epochs=6, batch_size=32, token_dim=8, heads=2, depth=1, lr=1e-2)
    out = comp.run(ctx, features=_many_rows(tmp_path / "f"), split=data["split1"])
    t = out["predictions"].table
    assert len(t) == 4 * 20 and set(t["level"]) == {"image"}
    att = pd.read_csv(out["model"].path / "feature_attention.csv")
    assert list(att.columns) == ["fold", "feature", "attention"]
    assert len(att) == 6
    np.testing.assert_allclose(att["attention"].sum(), 1.0, atol=1e-5)  # renormalised over the features
    _, meta = load_checkpoint(out["model"].path / "fold0.safetensors")
    assert meta["feature_columns"] == [f"radiomics_f{j}" for j in range(6)]
    assert len(meta["scaler"]["mean"]) == 6
    titles = [i["title"] for i in json.loads((ctx.workdir / "_report" / "items.json").read_text())]
    assert "Feature attention (tabular)" in titles
    assert (t["y_true"] == t["y_pred"]).mean() > 0.9


def test_tabular_mlp_and_determinism(tmp_path, data):
    runs = [make(TabularAttention, encoder=e, **TINY).run(make_context(tmp_path / f"{e}{i}"),
                                                          features=data["image_features"], split=data["split"])
            for e in ("mlp", "mlp", "attention") for i in [len(e)]]
    pd.testing.assert_frame_equal(runs[0]["predictions"].table, runs[1]["predictions"].table)
    assert not (runs[0]["model"].path / "feature_attention.csv").exists()
    assert (runs[2]["model"].path / "feature_attention.csv").exists()


@pytest.mark.parametrize("fusion,tabular,backbone", [("concat", "mlp", "test_vit"), ("gated", "attention", "test_convnext"),
                                                     ("attention", "mlp", "test_resnet")])
def test_multimodal_one_step(tmp_path, data, fusion, tabular, backbone):
    ctx = make_context(tmp_path)
    comp = make(MultiModal, backbone=backbone, image_size=32, input="cell", fusion=fusion, tabular=tabular,
                hidden=16, token_dim=8, heads=2, depth=1, mask_attention="valve", **TINY)
    out = comp.run(ctx, cells=data["cells"], features=data["cell_features"], split=data["split1"])
    _check_predictions(out, data["cells"].table["cell_id"], "cell", n_folds=1)
    files = set(out["model"].meta["files"])
    assert {"fold0.safetensors", "history.csv"} <= files
    if tabular == "attention":
        assert (out["model"].path / "feature_attention.csv").exists()
    if fusion != "concat":
        mw = pd.read_csv(out["model"].path / "modality_weights.csv")
        np.testing.assert_allclose(mw["image"] + mw["features"], 1.0, atol=1e-5)


def test_multimodal_fields_with_per_cell_features(tmp_path, data):
    # per-cell features averaged per image; one image's cells dropped -> that image is left out (warned)
    ft = data["cell_features"]
    drop = ft.table["image_id"] == "P00_0"
    ft2 = FeatureTable(tmp_path / "f", ft.table[~drop].reset_index(drop=True), dict(ft.meta)).save()
    ctx = make_context(tmp_path)
    out = make(MultiModal, backbone="test_resnet", image_size=32, input="field", **TINY).run(
        ctx, images=data["images"], features=ft2, split=data["split1"])
    t = out["predictions"].table
    assert "P00_0" not in set(t["id"]) and "P00_1" in set(t["id"])
    assert any("1 image(s) have no features" in w for w in ctx.warnings)


def test_multimodal_errors(tmp_path, data):
    ft = data["cell_features"]
    other = FeatureTable(tmp_path / "o", ft.table, dict(ft.meta, classes=["B", "A"])).save()
    with pytest.raises(DataError, match=r"class list of the feature table \['B', 'A'\] differs from the cells"):
        make(MultiModal, backbone="test_resnet", image_size=32, **TINY).run(
            make_context(tmp_path), cells=data["cells"], features=other, split=data["split"])
    missing = FeatureTable(tmp_path / "m", ft.table.drop(columns=["radiomics_f2"]), dict(ft.meta)).save()
    with pytest.raises(DataError, match=r"missing 1 column\(s\) the model was trained on: \['radiomics_f2'\]"):
        make(MultiModal, backbone="test_resnet", image_size=32, **TINY).run(
            make_context(tmp_path), cells=data["cells"], features=missing, split=data["split"])
    with pytest.raises(DataError, match="no cell of the images/cells has a row in the feature table"):
        make(MultiModal, backbone="test_resnet", image_size=32, **TINY).run(
            make_context(tmp_path), cells=data["cells"], features=data["image_features"].__class__(
                tmp_path / "x", ft.table.assign(cell_id="zz" + ft.table["cell_id"]), dict(ft.meta)).save(),
            split=data["split"])


def _fold0_rows(out):
    t = out["predictions"].table
    return t[t["fold"] == 0].set_index("id").sort_index()


@pytest.mark.parametrize("which", ["image", "tabular", "sklearn", "multimodal"])
def test_apply_classifier_reproduces_fold_predictions(tmp_path, data, which):
    """Applying fold 0's saved model to the data gives exactly fold 0's test predictions."""
    from hemaflow.plugins.classify import ApplyClassifier

    if which == "image":
        out = make(ImageClassifier, backbone="test_resnet", image_size=32, mask_attention="valve",
                   **dict(TINY, epochs=1)).run(make_context(tmp_path / "t"), images=data["images"], split=data["split1"])
        inputs = {"images": data["images"]}
    elif which == "tabular":
        out = make(TabularAttention, token_dim=8, heads=2, depth=1, **TINY).run(
            make_context(tmp_path / "t"), features=data["cell_features"], split=data["split1"])
        inputs = {"features": data["cell_features"]}
    elif which == "sklearn":
        out = make(SklearnClassifier).run(make_context(tmp_path / "t"), features=data["cell_features"],
                                          split=data["split1"])
        inputs = {"features": data["cell_features"]}
    else:
        out = make(MultiModal, backbone="test_resnet", image_size=32, input="cell", hidden=16,
                   **dict(TINY, epochs=1)).run(make_context(tmp_path / "t"), cells=data["cells"],
                                               features=data["cell_features"], split=data["split1"])
        inputs = {"cells": data["cells"], "features": data["cell_features"]}
    applied = make(ApplyClassifier, fold=0).run(make_context(tmp_path / "a"), model=out["model"], **inputs)
    a = applied["predictions"].table.set_index("id")
    own = _fold0_rows(out)
    np.testing.assert_allclose(a.loc[own.index, ["prob_A", "prob_B"]].to_numpy(),
                               own[["prob_A", "prob_B"]].to_numpy(), rtol=1e-5, atol=1e-6)
    assert len(a) == len(inputs.get("cells", inputs.get("images", inputs.get("features"))).table)


def test_apply_classifier_errors(tmp_path, data):
    from hemaflow.plugins.classify import ApplyClassifier

    ft = data["cell_features"]
    out = make(SklearnClassifier).run(make_context(tmp_path / "t"), features=ft, split=data["split1"])
    missing = FeatureTable(tmp_path / "m", ft.table.drop(columns=["radiomics_f3"]), dict(ft.meta)).save()
    with pytest.raises(DataError, match=r"missing 1 column\(s\) the model was trained on: \['radiomics_f3'\]"):
        make(ApplyClassifier).run(make_context(tmp_path), model=out["model"], features=missing)
    other = FeatureTable(tmp_path / "o", ft.table.assign(label="B"), dict(ft.meta, classes=["B", "C"])).save()
    with pytest.raises(DataError, match=r"class list \['B', 'C'\] differs from the one the model was trained on "
                                        r"\['A', 'B'\]"):
        make(ApplyClassifier).run(make_context(tmp_path), model=out["model"], features=other)
    with pytest.raises(DataError, match=r"the model has no fold 3 \(folds \[0\]\)"):
        make(ApplyClassifier, fold=3).run(make_context(tmp_path), model=out["model"], features=ft)
    ens = make(ApplyClassifier).run(make_context(tmp_path / "e"), model=out["model"], features=ft)
    assert set(ens["predictions"].table["fold"]) == {0}  # one fold: its own number


def test_check_params_reports_what_the_schema_cannot_see(tmp_path):
    problems = make(ImageClassifier, backbone="resnet5O", pretrained=True).check_params()
    assert [p for p, _ in problems] == ["/backbone", "/pretrained"]
    assert "did you mean 'resnet50'" in problems[0][1]
    assert make(TabularAttention, token_dim=10, heads=4).check_params() == [
        ("/token_dim", "token_dim 10 must be divisible by heads 4")]
    assert make(MultiModal, backbone="test_vit").check_params() == []
    with pytest.raises(HemaflowError, match="/backbone: unknown timm model 'resnet5O'.*; /pretrained: pretrained"):
        make(ImageClassifier, backbone="resnet5O", pretrained=True).run(make_context(tmp_path), split=None)
