"""Hand-made per-cell features (cell_features): shape, colour and texture values checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2hed, rgb2lab
from skimage.draw import disk
from skimage.feature import graycomatrix, graycoprops

from hemaflow.plugins.artifacts import CellSet
from hemaflow.plugins.handcrafted import GLCM_LEVELS, GLCM_PROPS, CellFeatures, _glcm, cell_features, feature_names
from hemaflow.testing import check_component, make, make_context

NUC_RGB, CYT_RGB = (90, 40, 140), (200, 170, 210)


def disk_cell(size: int = 64, r_cell: int = 24, r_nuc: int = 10, two_nuclei: bool = False):
    crop = np.full((size, size, 3), 230, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    c = size // 2
    mask[disk((c, c), r_cell)] = 1
    if two_nuclei:
        mask[disk((c, c - 12), 6)] = 2
        mask[disk((c, c + 12), 6)] = 2
    else:
        mask[disk((c, c), r_nuc)] = 2
    crop[mask == 1] = CYT_RGB
    crop[mask == 2] = NUC_RGB
    return crop, mask


def test_conformance(registry):
    check_component(CellFeatures)
    assert registry.get("features", "cell_features") is CellFeatures


def test_shape_of_a_disk_cell():
    crop, mask = disk_cell()
    f = cell_features(crop, mask)
    assert set(f) == set(feature_names())
    assert 70 <= len(f) <= 100
    n_cell, n_nuc = int((mask > 0).sum()), int((mask == 2).sum())
    assert f["shape_cell_area"] == n_cell and f["shape_nucleus_area"] == n_nuc
    assert f["shape_nc_ratio"] == pytest.approx(n_nuc / (n_cell - n_nuc))
    assert f["shape_nucleus_fraction"] == pytest.approx(n_nuc / n_cell)
    assert f["shape_cell_equivalent_diameter"] == pytest.approx(2 * math.sqrt(n_cell / math.pi))
    assert f["shape_cell_perimeter"] == pytest.approx(2 * math.pi * 24, rel=0.03)
    assert f["shape_cell_circularity"] > 0.95 and f["shape_cell_eccentricity"] < 0.15
    assert f["shape_cell_solidity"] > 0.97 and f["shape_cell_major_axis"] == pytest.approx(48, abs=1.5)
    assert f["shape_nucleus_lobes"] == 1 and f["shape_nucleus_offset"] < 0.02


def test_lobulated_nucleus():
    crop, mask = disk_cell(two_nuclei=True)
    f = cell_features(crop, mask)
    assert f["shape_nucleus_lobes"] == 2
    assert f["shape_nucleus_lobularity"] > 0.3  # two blobs: much less solid than one disk
    assert f["shape_nucleus_eccentricity"] > 0.9


def test_colour_statistics_are_the_planted_colours():
    crop, mask = disk_cell()
    f = cell_features(crop, mask)
    lab = rgb2lab(np.array([[NUC_RGB]], np.float64) / 255)[0, 0]
    hed = rgb2hed(np.array([[CYT_RGB]], np.float64) / 255)[0, 0]
    assert (f["colour_nucleus_R_mean"], f["colour_nucleus_G_mean"], f["colour_nucleus_B_mean"]) == pytest.approx(NUC_RGB)
    assert f["colour_nucleus_R_sd"] == pytest.approx(0, abs=1e-9)
    assert f["colour_nucleus_L_mean"] == pytest.approx(lab[0]) and f["colour_nucleus_b_mean"] == pytest.approx(lab[2])
    assert f["colour_cytoplasm_H_mean"] == pytest.approx(hed[0]) and f["colour_cytoplasm_E_mean"] == pytest.approx(hed[1])
    assert f["colour_diff_L"] == pytest.approx(lab[0] - rgb2lab(np.array([[CYT_RGB]], np.float64) / 255)[0, 0, 0])
    grey = 0.2125 * NUC_RGB[0] + 0.7154 * NUC_RGB[1] + 0.0721 * NUC_RGB[2]
    assert f["colour_nucleus_grey_p50"] == pytest.approx(grey)
    # a constant region has no texture: GLCM undefined (NaN), the LBP histogram is all 'flat'
    assert math.isnan(f["texture_nucleus_glcm_contrast"])


def test_glcm_equals_skimage_and_ignores_pixels_outside_the_region():
    rng = np.random.default_rng(0)
    q = rng.integers(0, GLCM_LEVELS, (12, 12))
    mine = _glcm(q, np.ones_like(q, bool))
    m = graycomatrix(q.astype(np.uint8), [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=GLCM_LEVELS,
                     symmetric=True, normed=True)
    for k in GLCM_PROPS:
        assert mine[k] == pytest.approx(float(graycoprops(m, k).mean()), rel=1e-9), k
    big = rng.integers(0, GLCM_LEVELS, (20, 20))
    region = np.zeros((20, 20), bool)
    region[4:16, 4:16] = True
    big[4:16, 4:16] = q
    inside = _glcm(big, region)
    big[~region] = 0  # whatever lies outside never enters the matrix
    assert _glcm(big, region) == inside
    assert inside == pytest.approx(mine)


def test_texture_responds_to_texture():
    rng = np.random.default_rng(1)
    crop, mask = disk_cell()
    noisy = crop.copy()
    nuc = mask == 2
    noisy[nuc] = np.clip(noisy[nuc].astype(int) + rng.integers(-60, 60, (int(nuc.sum()), 1)), 0, 255)
    f = cell_features(noisy, mask)
    assert f["texture_nucleus_glcm_contrast"] > 50 and f["texture_nucleus_glcm_homogeneity"] < 0.3
    assert sum(f[f"texture_nucleus_lbp_{i}"] for i in range(10)) == pytest.approx(1.0)


def test_component_table_skips_empty_masks_and_drops_colour(tmp_path):
    crops, masks = zip(*[disk_cell(r_cell=20 + k, r_nuc=8 + k) for k in range(3)])
    crops, masks = np.stack(crops), np.stack(masks)
    masks[1] = 0  # no cell in this crop
    d = tmp_path / "cells"
    d.mkdir()
    np.save(d / "crops.npy", crops)
    np.save(d / "crop_masks.npy", masks)
    t = pd.DataFrame({"cell_id": ["a:0", "a:1", "b:0"], "image_id": ["a", "a", "b"], "patient_id": ["P0", "P0", "P1"],
                      "label": ["AML", "AML", "NORMAL"], "crop_index": [0, 1, 2]})
    cells = CellSet(d, t, {"crop_size": 64, "classes": ["AML", "NORMAL"]}).save()
    ctx = make_context(tmp_path / "w")
    ft = make(CellFeatures).run(ctx, cells=cells)["features"]
    assert list(ft.table["cell_id"]) == ["a:0", "b:0"]
    assert ft.meta["skipped"] == [{"cell_id": "a:1", "image_id": "a", "reason": "empty crop mask"}]
    assert ft.feature_columns == feature_names() and ft.table.shape[1] == 4 + len(feature_names())
    assert ft.table.loc[1, "shape_nucleus_area"] == int((masks[2] == 2).sum())
    assert len(ctx.warnings) == 1
    free = make(CellFeatures, groups=["shape", "texture"]).run(make_context(tmp_path / "w2"), cells=cells)["features"]
    assert not [c for c in free.feature_columns if c.startswith("colour_")]
    assert free.table["shape_cell_area"].tolist() == ft.table["shape_cell_area"].tolist()
