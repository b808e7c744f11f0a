"""Tests for the radiomics and embeddings feature extractors (hemaflow.plugins.features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError, RecipeError
from hemaflow.plugins.artifacts import CellSet, FeatureTable, ImageSet
from hemaflow.plugins.executors import ProcessExecutor
from hemaflow.plugins.features import (EmbeddingFeatures, RadiomicsFeatures, load_backbone_weights,
                                       merge_feature_tables)
from hemaflow.testing import check_component, make, make_context

FAST = ["firstorder", "glcm"]


# -- fixtures ---------------------------------------------------------------------------------------
def make_cellset(path: Path, crops: np.ndarray, masks: np.ndarray, image_ids: list[str] | None = None,
                 labels: list[str] | None = None) -> CellSet:
    """A CellSet from arrays: crops (N,S,S,3) uint8 and masks (N,S,S) uint8 0/1/2."""
    n = len(crops)
    image_ids = image_ids or [f"img{i}" for i in range(n)]
    table = pd.DataFrame({
        "cell_id": [f"{iid}:{i}" for i, iid in enumerate(image_ids)],
        "image_id": image_ids, "patient_id": image_ids,
        "label": labels or ["x"] * n, "crop_index": np.arange(n),
    })
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "crops.npy", np.ascontiguousarray(crops, dtype=np.uint8))
    np.save(path / "crop_masks.npy", np.ascontiguousarray(masks, dtype=np.uint8))
    cs = CellSet(path, table, {"crop_size": int(crops.shape[1]), "classes": sorted(set(table["label"])),
                               "patients_are_images": True})
    return cs.save()


def wbc_cells(root: Path, names: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real tecom cells resized to size x size (image bilinear, mask nearest; 0/128/255 -> 0/1/2)."""
    from PIL import Image

    crops, masks = [], []
    for n in names:
        im = Image.open(root / f"{n}.bmp").convert("RGB").resize((size, size), Image.BILINEAR)
        m = np.asarray(Image.open(root / f"{n}.png").resize((size, size), Image.NEAREST))
        crops.append(np.asarray(im))
        masks.append(np.select([m == 255, m == 128], [2, 1], 0).astype(np.uint8))
    return np.stack(crops), np.stack(masks)


@pytest.fixture(scope="module")
def real_cells(tmp_path_factory, shared_data):
    crops, masks = wbc_cells(shared_data / "wbc-crops" / "tecom", ["001", "002", "010", "150"], 64)
    return make_cellset(tmp_path_factory.mktemp("cells"), crops, masks)


def synthetic_crops(n: int = 4, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    crops = np.full((n, size, size, 3), 235, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cell = r < size * (0.3 + 0.03 * i)
        nuc = r < size * 0.15
        masks[i][cell] = 1
        masks[i][nuc] = 2
        crops[i][cell] = rng.integers(120, 200, size=(int(cell.sum()), 3))
        crops[i][nuc] = rng.integers(40, 110, size=(int(nuc.sum()), 3))
    return crops, masks


def direct_pyradiomics(grey: np.ndarray, roi: np.ndarray, classes: list[str], **settings) -> dict[str, float]:
    """pyradiomics called directly: (1, H, W) image, force2D=True."""
    import SimpleITK as sitk
    from radiomics import featureextractor

    ex = featureextractor.RadiomicsFeatureExtractor(force2D=True, additionalInfo=False, **settings)
    ex.disableAllFeatures()
    for c in classes:
        ex.enableFeatureClassByName(c)
    res = ex.execute(sitk.GetImageFromArray(grey.astype(np.float64)[None]),
                     sitk.GetImageFromArray(roi.astype(np.uint8)[None]))
    return {k: float(v) for k, v in res.items()}


# -- contract -------------------------------------------------------------------------------------
def test_components_follow_the_contract(registry):
    check_component(RadiomicsFeatures)
    check_component(EmbeddingFeatures)
    assert registry.get("features", "radiomics") is RadiomicsFeatures
    assert registry.get("features", "embeddings") is EmbeddingFeatures


def test_schema_rejects_bad_parameters():
    import jsonschema

    v = jsonschema.Draft202012Validator(RadiomicsFeatures.schema)
    assert not v.is_valid({"classes": ["shape"]})  # 3-D shape is not offered
    assert not v.is_valid({"settings": {"binwidth": 5}})  # pyradiomics would silently ignore this
    assert not v.is_valid({"settings": {"force2D": False}})  # hemaflow owns the geometry
    assert not v.is_valid({"grey": "red"})
    assert v.is_valid({"classes": ["glcm"], "settings": {"binCount": 16}, "region": "nucleus"})


# -- agreement with pyradiomics -------------------------------------------------------------------
def test_values_equal_direct_pyradiomics_on_real_cells(tmp_path, real_cells):
    classes = ["firstorder", "shape2D", "glcm", "glszm"]
    out = make(RadiomicsFeatures, classes=classes).run(make_context(tmp_path), cells=real_cells)["features"]
    assert len(out) == 4 and out.meta["skipped"] == []
    crops, masks = real_cells.crops, real_cells.crop_masks
    for k in range(4):
        grey = crops[k].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
        ref = direct_pyradiomics(grey, masks[k] > 0, classes, binWidth=25)
        row = out.table.iloc[k]
        assert row["cell_id"] == f"img{k}:{k}"
        assert out.feature_columns == ["radiomics_" + key for key in ref]
        got = np.array([row["radiomics_" + key] for key in ref])
        np.testing.assert_allclose(got, np.array(list(ref.values())), rtol=0, atol=1e-9)


def test_nucleus_hematoxylin_bincount_equal_direct_pyradiomics(tmp_path, real_cells, capfd):
    from skimage.color import rgb2hed

    out = make(RadiomicsFeatures, classes=["firstorder", "glrlm"], region="nucleus", grey="hematoxylin",
               settings={"binCount": 16}).run(make_context(tmp_path), cells=real_cells)["features"]
    assert capfd.readouterr().err == ""  # pyradiomics' "Fixed bin Count enabled" warning is silenced
    k = 2
    h = rgb2hed(np.asarray(real_cells.crops[k]))[..., 0] * (255 / (1.87798274 + 0))
    ref = direct_pyradiomics(h, real_cells.crop_masks[k] == 2, ["firstorder", "glrlm"], binCount=16)
    got = out.table.iloc[k]
    for key, val in ref.items():
        assert got["radiomics_" + key] == pytest.approx(val, rel=1e-7, abs=1e-9), key
    assert out.meta["provenance"]["pyradiomics_settings"]["binCount"] == 16


def test_texture_is_two_dimensional(tmp_path):
    """GLCM contrast equals a hand-computed 2-D GLCM; the plain-2-D force2D trap does not."""
    import SimpleITK as sitk
    from radiomics import featureextractor
    from skimage.feature import graycomatrix, graycoprops

    patch = np.array([[0, 0, 1, 1, 2, 3],
                      [0, 1, 1, 2, 3, 3],
                      [3, 0, 2, 2, 1, 0],
                      [2, 3, 3, 0, 0, 1],
                      [1, 1, 0, 3, 2, 2],
                      [0, 2, 3, 1, 1, 0]], np.uint8)
    # luminance of a grey pixel v*50 is v*50 (weights sum to 1); binWidth 50 -> bins 1..4
    crops = np.repeat((patch * 50)[None, ..., None], 3, axis=3)
    masks = np.full((1, 6, 6), 2, np.uint8)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    out = make(RadiomicsFeatures, classes=["glcm", "glrlm", "glszm"], settings={"binWidth": 50},
               min_pixels=4).run(make_context(tmp_path / "run"), cells=cells)["features"].table.iloc[0]

    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(patch, distances=[1], angles=angles, levels=4, symmetric=True, normed=True)
    hand = float(graycoprops(glcm, "contrast")[0].mean())
    assert out["radiomics_original_glcm_Contrast"] == pytest.approx(hand, abs=1e-9)
    assert out["radiomics_original_glszm_SmallAreaEmphasis"] != pytest.approx(
        out["radiomics_original_glrlm_ShortRunEmphasis"], rel=1e-3)

    # the trap: a plain 2-D image with force2D=True treats rows as slices (1-D texture)
    ex = featureextractor.RadiomicsFeatureExtractor(force2D=True, binWidth=50, additionalInfo=False)
    ex.disableAllFeatures()
    for c in ("glcm", "glrlm", "glszm"):
        ex.enableFeatureClassByName(c)
    trap = ex.execute(sitk.GetImageFromArray(patch.astype(float) * 50), sitk.GetImageFromArray(masks[0] // 2))
    assert float(trap["original_glcm_Contrast"]) != pytest.approx(hand, rel=1e-3)
    assert float(trap["original_glszm_SmallAreaEmphasis"]) == pytest.approx(
        float(trap["original_glrlm_ShortRunEmphasis"]), abs=1e-12)


# -- skips ----------------------------------------------------------------------------------------
def _skip_cells(tmp_path: Path) -> CellSet:
    crops, masks = synthetic_crops(4, 32)
    crops[1][masks[1] > 0] = 150  # constant intensity
    masks[2][:] = 0
    masks[2][10, 10:12] = 2  # a 2-pixel cell
    masks[3][:] = 0  # no cell at all
    return make_cellset(tmp_path / "cells", crops, masks)


def test_constant_and_tiny_cells_are_recorded_skips(tmp_path):
    cells = _skip_cells(tmp_path)
    ctx = make_context(tmp_path / "run")
    out = make(RadiomicsFeatures, classes=FAST).run(ctx, cells=cells)["features"]
    assert out.table["cell_id"].tolist() == ["img0:0"]
    assert out.meta["skipped"] == [
        {"cell_id": "img1:1", "image_id": "img1", "reason": "constant intensity in the cell region (luminance = 150)"},
        {"cell_id": "img2:2", "image_id": "img2",
         "reason": "too small: 2 pixel(s) in the cell region (min_pixels 16)"},
        {"cell_id": "img3:3", "image_id": "img3", "reason": "empty cell region"},
    ]
    assert ctx.warnings == ["skipped 3 cell(s) with no features (1 constant intensity in the cell region, "
                            "1 too small, 1 empty cell region); listed in meta['skipped']"]
    assert np.isfinite(out.table[out.feature_columns].to_numpy()).all()


def test_pyradiomics_failure_is_a_skip_and_stop_raises(tmp_path):
    cells = _skip_cells(tmp_path)
    # min_pixels 1 lets the 2-pixel line through to pyradiomics, which rejects a 1-D ROI
    out = make(RadiomicsFeatures, classes=FAST, min_pixels=1).run(make_context(tmp_path / "a"), cells=cells)
    reasons = {s["cell_id"]: s["reason"] for s in out["features"].meta["skipped"]}
    assert reasons["img2:2"] == ("pyradiomics failed: ValueError: mask has too few dimensions "
                                 "(number of dimensions 1, minimum required 2)")
    with pytest.raises(DataError, match=r"img1:1: radiomics extraction failed: constant intensity"):
        make(RadiomicsFeatures, classes=FAST, on_error="stop").run(make_context(tmp_path / "b"), cells=cells)


# -- artifact -------------------------------------------------------------------------------------
def test_feature_table_round_trips_through_parquet(tmp_path):
    import pyarrow.parquet as pq

    crops, masks = synthetic_crops(3, 32)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    ft = make(RadiomicsFeatures, classes=["firstorder"]).run(make_context(tmp_path / "run"), cells=cells)["features"]
    md = json.loads(pq.read_schema(ft.path / "table.parquet").metadata[b"hemaflow"])
    assert md["type"] == "FeatureTable"
    assert md["feature_columns"] == ft.feature_columns
    assert md["feature_columns"][:2] == ["radiomics_original_firstorder_10Percentile",
                                         "radiomics_original_firstorder_90Percentile"]
    assert len(md["feature_columns"]) == 18
    prov = md["provenance"]
    assert prov["pyradiomics"].lstrip("v").startswith("3.")
    assert prov["pyradiomics_settings"]["force2D"] is True and prov["pyradiomics_settings"]["binWidth"] == 25
    back = FeatureTable.load(ft.path)
    pd.testing.assert_frame_equal(back.table, ft.table)
    assert back.feature_columns == ft.feature_columns
    assert list(back.table.columns[:4]) == ["cell_id", "image_id", "patient_id", "label"]


# -- parameter files ------------------------------------------------------------------------------
def test_params_file_is_applied(tmp_path):
    pf = tmp_path / "params.yaml"
    pf.write_text("setting:\n  binWidth: 10\nfeatureClass:\n  glcm: [Contrast, JointEnergy]\n  firstorder:\n")
    crops, masks = synthetic_crops(2, 32)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    comp = make(RadiomicsFeatures, params_file=str(pf))
    assert comp.check_params() == []
    assert comp.fingerprint() is not None
    ft = comp.run(make_context(tmp_path / "run"), cells=cells)["features"]
    assert len(ft.feature_columns) == 18 + 2
    assert ft.feature_columns[18:] == ["radiomics_original_glcm_Contrast", "radiomics_original_glcm_JointEnergy"]
    grey = crops[0].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    ref = direct_pyradiomics(grey, masks[0] > 0, ["glcm"], binWidth=10)
    assert ft.table.iloc[0]["radiomics_original_glcm_Contrast"] == pytest.approx(ref["original_glcm_Contrast"], abs=1e-9)
    assert ft.meta["provenance"]["params_file"]["sha256"] == comp.fingerprint()


def test_params_file_unknown_names_are_errors(tmp_path):
    pf = tmp_path / "bad.yaml"
    pf.write_text("setting:\n  binwidth: 10\n  force2D: false\nfeatureClass:\n  glcm: [Contrasts]\n  shape:\n"
                  "imageType:\n  Orignal: {}\nvoxelSetting: {}\n")
    comp = make(RadiomicsFeatures, params_file=str(pf))
    assert comp.check_params() == [
        ("/params_file", f"{pf}: /voxelSetting: unknown key 'voxelSetting' (voxel-based extraction is not supported)"),
        ("/params_file", f"{pf}: /setting/binwidth: unknown setting 'binwidth'; did you mean 'binWidth'?"),
        ("/params_file", f"{pf}: /setting/force2D: unknown setting 'force2D' (hemaflow always extracts 2-D "
                         "features from a (1, H, W) image (force2D=True))"),
        ("/params_file", f"{pf}: /featureClass/glcm/0: unknown glcm feature 'Contrasts'; did you mean 'Contrast'?"),
        ("/params_file", f"{pf}: /featureClass/shape: unknown feature class 'shape' (3-D shape; cells are 2-D: "
                         "use shape2D)"),
        ("/params_file", f"{pf}: /imageType/Orignal: unknown image type 'Orignal'; did you mean 'Original'?"),
    ]
    crops, masks = synthetic_crops(1, 32)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    with pytest.raises(DataError, match=r"bad.yaml: invalid pyradiomics parameter file: /voxelSetting"):
        comp.run(make_context(tmp_path / "run"), cells=cells)
    missing = make(RadiomicsFeatures, params_file=str(tmp_path / "nope.yaml"))
    assert missing.check_params() == [("/params_file", f"{tmp_path / 'nope.yaml'}: file not found")]


# -- execution ------------------------------------------------------------------------------------
def test_two_workers_give_the_serial_table(tmp_path):
    crops, masks = synthetic_crops(5, 32)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    comp = make(RadiomicsFeatures, classes=FAST, chunk_size=2)
    serial = comp.run(make_context(tmp_path / "s"), cells=cells)["features"].table
    par = comp.run(make_context(tmp_path / "p", executor=ProcessExecutor(workers=2, chunksize=1, start_method="fork")),
                   cells=cells)["features"].table
    pd.testing.assert_frame_equal(serial, par)
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    default_threads = make(RadiomicsFeatures, classes=FAST, itk_threads=0).run(make_context(tmp_path / "d"),
                                                                               cells=cells)["features"].table
    pd.testing.assert_frame_equal(serial, default_threads)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before  # restored after the step


def test_per_image_on_ground_truth_masks(tmp_path, shared_data):
    root = shared_data / "wbc-crops" / "tecom"
    images = ImageSet(tmp_path / "images", pd.DataFrame({
        "image_id": ["001", "002"], "patient_id": ["001", "002"], "label": ["lymphocyte", "neutrophil"],
        "path": [str(root / "001.bmp"), str(root / "002.bmp")],
        "mask_path": [str(root / "001.png"), str(tmp_path / "missing.png")],
    }), {"classes": ["lymphocyte", "neutrophil"], "patients_are_images": True,
         "mask_spec": {"mode": "values", "cytoplasm": [128], "nucleus": [255]}}).save()
    ctx = make_context(tmp_path / "run")
    ft = make(RadiomicsFeatures, per="image", classes=["firstorder"]).run(ctx, images=images)["features"]
    assert ft.meta["level"] == "image" and ft.table["image_id"].tolist() == ["001"]
    assert ft.meta["skipped"][0]["image_id"] == "002"
    assert ft.meta["skipped"][0]["reason"].startswith("unreadable: ") and "file not found" in ft.meta["skipped"][0]["reason"]
    from PIL import Image

    rgb = np.asarray(Image.open(root / "001.bmp").convert("RGB"))
    roi = np.asarray(Image.open(root / "001.png")) > 0
    ref = direct_pyradiomics(rgb.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]), roi, ["firstorder"])
    assert ft.table.iloc[0]["radiomics_original_firstorder_Mean"] == pytest.approx(ref["original_firstorder_Mean"],
                                                                                   abs=1e-9)
    with pytest.raises(RecipeError, match="per: cell needs a `cells` input"):
        make(RadiomicsFeatures).run(make_context(tmp_path / "x"), images=images)


def test_magnitude_grey_is_rgb_vector_magnitude(tmp_path):
    crops, masks = synthetic_crops(1, 32)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    ft = make(RadiomicsFeatures, classes=["firstorder"], grey="magnitude").run(make_context(tmp_path / "r"),
                                                                                cells=cells)["features"]
    mag = np.sqrt((crops[0].astype(np.float64) ** 2).sum(-1))[masks[0] > 0]
    assert ft.table.iloc[0]["radiomics_original_firstorder_Maximum"] == pytest.approx(mag.max(), abs=1e-9)
    assert ft.table.iloc[0]["radiomics_original_firstorder_Mean"] == pytest.approx(mag.mean(), abs=1e-9)


# -- embeddings -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cells(tmp_path_factory):
    crops, masks = synthetic_crops(5, 32, seed=1)
    return make_cellset(tmp_path_factory.mktemp("emb"), crops, masks)


def test_embeddings_are_batched_deterministic_and_seeded(tmp_path, small_cells):
    comp = make(EmbeddingFeatures, model="test_resnet", batch_size=2)
    a = comp.run(make_context(tmp_path / "a"), cells=small_cells)["features"]
    b = comp.run(make_context(tmp_path / "b"), cells=small_cells)["features"]
    c = comp.run(make_context(tmp_path / "c", seed=1), cells=small_cells)["features"]
    assert a.feature_columns == [f"emb_{i}" for i in range(96)]
    assert a.table["cell_id"].tolist() == [f"img{i}:{i}" for i in range(5)]
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not np.allclose(a.table[a.feature_columns], c.table[c.feature_columns])
    one = make(EmbeddingFeatures, model="test_resnet", batch_size=64).run(make_context(tmp_path / "d"),
                                                                          cells=small_cells)["features"]
    np.testing.assert_allclose(one.table[one.feature_columns], a.table[a.feature_columns], atol=1e-5)
    assert a.meta["provenance"]["weights"]["init"] == "random"


def test_embeddings_resize_background_and_vit(tmp_path, small_cells):
    keep = make(EmbeddingFeatures, model="test_vit", input_size=48).run(make_context(tmp_path / "a"),
                                                                        cells=small_cells)["features"]
    black = make(EmbeddingFeatures, model="test_vit", input_size=48, background="black").run(
        make_context(tmp_path / "b"), cells=small_cells)["features"]
    assert keep.meta["provenance"]["input_size"] == 48
    assert len(keep.feature_columns) == keep.meta["provenance"]["embedding_dim"]
    assert not np.allclose(keep.table[keep.feature_columns], black.table[black.feature_columns])
    native = make(EmbeddingFeatures, model="test_vit").run(make_context(tmp_path / "c"), cells=small_cells)["features"]
    assert native.meta["provenance"]["input_size"] == 32  # a ViT is built for the crop size


def test_embeddings_load_a_hemaflow_checkpoint(tmp_path, small_cells):
    import timm
    import torch
    from safetensors.torch import save_file

    trained = timm.create_model("test_resnet", num_classes=3)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    ck = tmp_path / "fold0.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in trained.state_dict().items()}
              | {"fusion.weight": torch.zeros(2, 2)}, str(ck))
    ft = make(EmbeddingFeatures, model="test_resnet", checkpoint=str(ck)).run(make_context(tmp_path / "a"),
                                                                             cells=small_cells)["features"]
    w = ft.meta["provenance"]["weights"]
    assert w["init"] == "checkpoint" and w["prefix"] == "backbone." and w["ignored_keys"] == 3
    trained.reset_classifier(0)
    trained.eval()
    x = torch.from_numpy(np.array(small_cells.crops[:1])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = trained(x).numpy()[0]
    np.testing.assert_allclose(ft.table.iloc[0][ft.feature_columns].to_numpy(dtype=np.float32), ref, atol=1e-5)
    # a directory with one checkpoint works too; a wrong architecture is a clear DataError
    model = timm.create_model("test_convnext", num_classes=0)
    with pytest.raises(DataError, match=r"fold0.safetensors: checkpoint does not fit the model"):
        load_backbone_weights(model, tmp_path)


def test_embeddings_bad_names_get_clear_errors(tmp_path, small_cells):
    with pytest.raises(RecipeError, match=r"/steps/test/with/model: unknown timm model 'test_resnett'; "
                                          r"did you mean 'test_resnet'"):
        make(EmbeddingFeatures, model="test_resnett").run(make_context(tmp_path), cells=small_cells)
    assert make(EmbeddingFeatures, model="hf-hub:timm/resnet18.a1_in1k").check_params()[0][1].startswith(
        "'hf-hub:timm/resnet18.a1_in1k' is a hub model; hemaflow never downloads weights")
    with pytest.raises(DataError, match="hub weights cannot be downloaded here"):
        load_backbone_weights(None, "timm/resnet18.a1_in1k")
    assert make(EmbeddingFeatures, checkpoint=str(tmp_path / "w.pth")).check_params() == [
        ("/checkpoint", f"{tmp_path / 'w.pth'}: file not found")]


# -- merging --------------------------------------------------------------------------------------
def test_merge_feature_tables_joins_on_cell_id(tmp_path):
    cells = _skip_cells(tmp_path)
    rad = make(RadiomicsFeatures, classes=["firstorder"]).run(make_context(tmp_path / "r"), cells=cells)["features"]
    emb = make(EmbeddingFeatures, model="test_resnet").run(make_context(tmp_path / "e"), cells=cells)["features"]
    df = merge_feature_tables([emb, rad])
    assert df["cell_id"].tolist() == ["img0:0"]  # skipped radiomics cells drop out
    assert df.attrs["feature_columns"] == emb.feature_columns + rad.feature_columns
    assert list(df.columns[:4]) == ["cell_id", "image_id", "patient_id", "label"]
    with pytest.raises(ValueError, match="repeats feature columns"):
        merge_feature_tables([rad, rad])
