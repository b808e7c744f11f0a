"""The synthetic smear generator: determinism, masks, ground truth, class signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow.plugins.datasets import SyntheticSmears
from hemaflow.lib.smear_generator import ABNORMAL_MIX, CELL_TYPES, NORMAL_MIX, patient_plan, render_field
from hemaflow.testing import check_component, make, make_context
from tests.plugins.synthetic_helpers import bag_vs_one_cell, cell_features

SMALL = dict(patients_per_class=2, images_per_patient=1, image_size=96)


def _run(tmp_path, name="data", recipe_seed=0, **params):
    ctx = make_context(tmp_path / name, seed=recipe_seed)
    return make(SyntheticSmears, **params).run(ctx)["images"], ctx


def test_conformance():
    check_component(SyntheticSmears)


def test_every_cell_type_in_a_mix_exists():
    for mix in [NORMAL_MIX, *ABNORMAL_MIX.values()]:
        assert set(mix) <= set(CELL_TYPES)


def test_small_run_shape_and_masks(tmp_path):
    images, _ = _run(tmp_path, **SMALL)
    t = images.table
    assert len(t) == 10 and t["patient_id"].nunique() == 10
    assert sorted(t["label"].unique()) == ["ALL", "AML", "CLL", "CML", "NORMAL"]
    assert images.classes == ["ALL", "AML", "CLL", "CML", "NORMAL"]
    assert images.meta["mask_spec"] == {"mode": "canonical"}
    for _, row in t.iterrows():
        img, mask = images.read_image(row), images.read_mask(row)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 1, 2}
        assert (mask == 2).any()  # every field has at least one white cell with a nucleus
    # the artifact round-trips through its directory
    again = type(images).load(images.path)
    pd.testing.assert_frame_equal(again.table, t)


def test_deterministic_and_seed_dependent(tmp_path):
    a, _ = _run(tmp_path, "a", recipe_seed=0, **SMALL)
    b, _ = _run(tmp_path, "b", recipe_seed=0, **SMALL)
    c, _ = _run(tmp_path, "c", recipe_seed=1, **SMALL)
    d, _ = _run(tmp_path, "d", recipe_seed=5, **dict(SMALL, seed=1))  # the param overrides the recipe seed
    row = a.table.iloc[0]
    assert np.array_equal(a.read_image(row), b.read_image(b.table.iloc[0]))
    pd.testing.assert_frame_equal(a.cell_truth(), b.cell_truth())
    assert not np.array_equal(a.read_image(row), c.read_image(c.table.iloc[0]))
    pd.testing.assert_frame_equal(c.cell_truth(), d.cell_truth())


def test_process_executor_gives_the_same_data(tmp_path):
    from hemaflow.plugins.executors import ProcessExecutor

    serial, _ = _run(tmp_path, "serial", **SMALL)
    ctx = make_context(tmp_path / "pool", executor=ProcessExecutor(workers=2, chunksize=1, start_method="fork"))
    pooled = make(SyntheticSmears, **SMALL).run(ctx)["images"]
    pd.testing.assert_frame_equal(serial.cell_truth(), pooled.cell_truth())
    for iid in serial.table["image_id"]:
        assert np.array_equal(serial.read_image(iid), pooled.read_image(iid))


def test_adding_patients_keeps_existing_ones(tmp_path):
    # patient k of class c is drawn from its own stream: more patients do not change it
    p1 = patient_plan("AML", seed=(0, 1, 0), n_images=2, wbc_per_image=(1, 4), abnormal_rate=(0.3, 0.7),
                      stain_variation=1.0, difficulty=0.5)
    p2 = patient_plan("AML", seed=(0, 1, 0), n_images=2, wbc_per_image=(1, 4), abnormal_rate=(0.3, 0.7),
                      stain_variation=1.0, difficulty=0.5)
    assert np.array_equal(render_field(p1, 1, 64)[0], render_field(p2, 1, 64)[0])


def test_cell_truth_matches_masks_and_rates(tmp_path):
    images, _ = _run(tmp_path, patients_per_class=3, images_per_patient=2, image_size=128,
                     abnormal_rate=[0.4, 0.6])
    truth = images.cell_truth()
    assert list(truth.columns) == ["image_id", "centroid_y", "centroid_x", "truth", "cell_type"]
    for iid, cells in truth.groupby("image_id"):
        mask = images.read_mask(iid)
        for _, c in cells.iterrows():  # each centroid lies on a white cell
            assert mask[int(round(c.centroid_y)), int(round(c.centroid_x))] > 0
    merged = truth.merge(images.table[["image_id", "patient_id", "label"]], on="image_id")
    normal = merged[merged["label"] == "NORMAL"]
    assert (normal["truth"] == "normal").all()
    assert set(normal["cell_type"]) <= set(NORMAL_MIX)
    for label in ["ALL", "AML", "CLL", "CML"]:
        sub = merged[merged["label"] == label]
        assert set(sub.loc[sub["truth"] == "abnormal", "cell_type"]) <= set(ABNORMAL_MIX[label])
        per_patient = sub.groupby("patient_id")["truth"].apply(lambda s: (s == "abnormal").sum())
        assert (per_patient >= 1).all()  # every leukemic patient shows at least one abnormal cell
    rate = (merged.loc[merged["label"] != "NORMAL", "truth"] == "abnormal").mean()
    assert 0.3 < rate < 0.75  # a mix, not all abnormal


def test_sites_have_distinct_stains(tmp_path):
    images, _ = _run(tmp_path, patients_per_class=4, images_per_patient=1, image_size=64, sites=2,
                     classes=["AML", "NORMAL"], stain_variation=2.0)
    t = images.table
    assert sorted(t["site"].unique()) == ["site1", "site2"]
    # stratified: each class has patients at both sites
    assert (t.groupby("label")["site"].nunique() == 2).all()
    means = {s: np.mean([images.read_image(r).reshape(-1, 3).mean(0) for _, r in g.iterrows()], axis=0)
             for s, g in t.groupby("site")}
    assert np.abs(means["site1"] - means["site2"]).max() > 3.0


def test_zero_stain_variation_gives_same_colours(tmp_path):
    a = patient_plan("ALL", seed=(0, 0, 0), n_images=1, wbc_per_image=(1, 1), abnormal_rate=(0.5, 0.5),
                     stain_variation=0.0, difficulty=0.5)
    b = patient_plan("CML", seed=(0, 3, 1), n_images=1, wbc_per_image=(1, 1), abnormal_rate=(0.5, 0.5),
                     stain_variation=0.0, difficulty=0.5)
    assert np.allclose(a.stains, b.stains) and np.allclose(a.stain_scale, b.stain_scale)


def test_apl_optional_and_report(tmp_path):
    images, ctx = _run(tmp_path, patients_per_class=1, images_per_patient=1, image_size=64,
                       classes=["APL", "NORMAL"])
    assert images.classes == ["APL", "NORMAL"]
    kinds = [i["type"] for i in ctx.report.items]
    assert kinds == ["table", "gallery"]


def test_tiny_field_still_gets_cells(tmp_path):
    images, _ = _run(tmp_path, patients_per_class=1, images_per_patient=1, image_size=48,
                     wbc_per_image=[3, 3], classes=["AML", "NORMAL"])
    assert len(images.cell_truth()) >= 2


# -- the class signal is real, and lives in the bag, not in any single cell -------------------------
def test_class_signal_needs_the_bag(tmp_path):
    images, _ = _run(tmp_path, patients_per_class=10, images_per_patient=2, image_size=144)
    acc_bag, acc_one = bag_vs_one_cell(cell_features(images), seed=0)
    # 5 classes: chance is 0.2; all of a patient's cells carry the diagnosis
    assert acc_bag >= 0.6, acc_bag
    # a single random cell is often a normal one: clearly below perfect, and below the bag
    assert acc_one <= 0.75, acc_one
    assert acc_bag - acc_one >= 0.15, (acc_bag, acc_one)
