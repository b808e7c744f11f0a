"""Patient-level splitters: stratification, leak checks, patients-are-images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.artifacts import ImageSet, Split
from hemaflow.plugins.splits import ColumnSplit, Holdout, PatientKFold, stratified_folds
from hemaflow.testing import check_component, make, make_context


def image_set(tmp_path, n_per_class=(10, 10, 6), images_per_patient=2, extra=None, pai=False) -> ImageSet:
    rows = []
    for ci, n in enumerate(n_per_class):
        for k in range(n):
            pid = f"c{ci}p{k:02d}"
            for i in range(images_per_patient):
                iid = f"{pid}_{i}" if not pai else pid
                row = {"image_id": iid, "patient_id": pid, "label": f"C{ci}", "path": f"{iid}.png"}
                if extra:
                    row.update(extra(ci, k, i))
                rows.append(row)
    meta = {"classes": [f"C{ci}" for ci in range(len(n_per_class))], "patients_are_images": pai}
    return ImageSet(tmp_path / "images", pd.DataFrame(rows), meta)


@pytest.mark.parametrize("cls", [PatientKFold, Holdout, ColumnSplit])
def test_conformance(cls):
    check_component(cls)


def test_kfold_partitions_each_patient_once(tmp_path):
    images = image_set(tmp_path)
    ctx = make_context(tmp_path / "w")
    split = make(PatientKFold, k=5, val_fraction=0.25).run(ctx, images=images)["split"]
    t = split.table
    assert split.folds() == [0, 1, 2, 3, 4]
    assert len(t) == 5 * 26
    # every patient is tested exactly once over the folds
    tests = t[t["partition"] == "test"]
    assert tests["patient_id"].value_counts().eq(1).all() and tests["patient_id"].nunique() == 26
    for f in split.folds():
        test = split.patients(f, "test")
        train, val = split.patients(f, "train"), split.patients(f, "val")
        assert not (test & train) and not (test & val) and not (train & val)
        assert len(test | train | val) == 26
        # stratified: 10/10/6 patients over 5 folds -> 2/2/1-2 of each class in each test fold
        counts = t[(t.fold == f) & (t.partition == "test")]["label"].value_counts()
        assert counts["C0"] == 2 and counts["C1"] == 2 and counts["C2"] in (1, 2)
        # validation: a quarter of each class's training patients
        vc = t[(t.fold == f) & (t.partition == "val")]["label"].value_counts()
        assert vc["C0"] == 2 and vc["C1"] == 2 and vc["C2"] == 1
    assert len(split.meta["hash"]) == 16
    assert Split.load(split.path).meta["hash"] == split.meta["hash"]


def test_kfold_deterministic_and_seeded(tmp_path):
    images = image_set(tmp_path)
    a = make(PatientKFold).run(make_context(tmp_path / "a", seed=0), images=images)["split"]
    b = make(PatientKFold).run(make_context(tmp_path / "b", seed=0), images=images)["split"]
    c = make(PatientKFold).run(make_context(tmp_path / "c", seed=1), images=images)["split"]
    assert a.meta["hash"] == b.meta["hash"] != c.meta["hash"]


def test_kfold_too_few_patients(tmp_path):
    images = image_set(tmp_path, n_per_class=(2, 1))
    with pytest.raises(DataError, match=r"3 patient\(s\) cannot make 5 folds; lower k"):
        make(PatientKFold, k=5).run(make_context(tmp_path / "w"), images=images)


def test_kfold_warns_on_small_class(tmp_path):
    images = image_set(tmp_path, n_per_class=(6, 2))
    ctx = make_context(tmp_path / "w")
    make(PatientKFold, k=3).run(ctx, images=images)
    assert ctx.warnings == ["class(es) C1 (2) have fewer patients than folds (3): some test folds have none of them"]


def test_stratified_folds_balanced():
    pats = pd.DataFrame({"label": ["a"] * 7 + ["b"] * 3})
    fold = stratified_folds(pats, 5, np.random.default_rng(0))
    assert sorted(np.bincount(fold, minlength=5)) == [2, 2, 2, 2, 2]


def test_patient_with_two_labels(tmp_path):
    images = image_set(tmp_path)
    images.table.loc[1, "label"] = "C1"  # second image of c0p00
    with pytest.raises(DataError, match=r"patient 'c0p00' has images with different labels \['C0', 'C1'\]"):
        make(PatientKFold).run(make_context(tmp_path / "w"), images=images)


def test_empty_dataset(tmp_path):
    images = ImageSet(tmp_path / "i", pd.DataFrame(columns=["image_id", "patient_id", "label", "path"]), {})
    with pytest.raises(DataError, match="the data set is empty"):
        make(Holdout).run(make_context(tmp_path / "w"), images=images)


def test_holdout_fractions(tmp_path):
    images = image_set(tmp_path, n_per_class=(10, 10, 5))
    split = make(Holdout, train=0.6, val=0.2, test=0.2).run(make_context(tmp_path / "w"), images=images)["split"]
    t = split.table
    assert split.folds() == [0]
    counts = t.groupby(["label", "partition"]).size().unstack(fill_value=0)
    assert counts.loc["C0"].to_dict() == {"test": 2, "train": 6, "val": 2}
    assert counts.loc["C2"].to_dict() == {"test": 1, "train": 3, "val": 1}


def test_holdout_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(DataError, match=r"train \+ val \+ test must be 1; got 0.5 \+ 0.2 \+ 0.2 = 0.9"):
        make(Holdout, train=0.5).run(make_context(tmp_path / "w"), images=image_set(tmp_path))


def test_column_split_by_site_with_val(tmp_path):
    images = image_set(tmp_path, extra=lambda c, k, i: {"site": "A" if k % 2 == 0 else "B"})
    ctx = make_context(tmp_path / "w")
    split = make(ColumnSplit, column="site", mapping={"A": "train", "B": "test"},
                 val_fraction=0.2).run(ctx, images=images)["split"]
    t = split.table
    site_of = images.table.drop_duplicates("patient_id").set_index("patient_id")["site"]
    assert (t.loc[t.partition == "test", "patient_id"].map(site_of) == "B").all()
    assert set(t.loc[t.partition != "test", "patient_id"].map(site_of)) == {"A"}
    assert (t.partition == "val").sum() == 3  # 20% of 5, 5 and 3 training patients: 1 + 1 + 1
    assert split.meta["column"] == "site"


def test_column_split_leak_names_patient(tmp_path):
    images = image_set(tmp_path, extra=lambda c, k, i: {"split": "train" if i == 0 else "test"})
    with pytest.raises(DataError) as exc:
        make(ColumnSplit).run(make_context(tmp_path / "w"), images=images)
    msg = str(exc.value)
    assert "patient leak in column 'split': patient 'c0p00' has images in test and train" in msg
    assert "(test: c0p00_1; train: c0p00_0); 26 patient(s) in all" in msg


def test_column_split_unmapped_value(tmp_path):
    images = image_set(tmp_path, extra=lambda c, k, i: {"split": "train" if k else "holdout"})
    with pytest.raises(DataError, match=r"column 'split' has value\(s\) \['holdout'\] that the mapping"):
        make(ColumnSplit).run(make_context(tmp_path / "w"), images=images)
    ctx = make_context(tmp_path / "w2")
    split = make(ColumnSplit, unmapped="drop").run(ctx, images=images)["split"]
    assert len(split.table) == 23
    assert "dropped (unmapped)" in ctx.warnings[0]


def test_column_split_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"the data set has no column 'cohort' to split on; its extra columns are none"):
        make(ColumnSplit, column="cohort").run(make_context(tmp_path / "w"), images=image_set(tmp_path))


def test_patients_are_images_is_reported(tmp_path):
    images = image_set(tmp_path, images_per_patient=1, pai=True)
    ctx = make_context(tmp_path / "w")
    split = make(Holdout).run(ctx, images=images)["split"]
    assert split.meta["patients_are_images"] is True
    titles = [i["title"] for i in ctx.report.items]
    assert "Patients are images" in titles


def test_split_exports_csv_and_hash(tmp_path):
    split = make(PatientKFold, k=2).run(make_context(tmp_path / "w"), images=image_set(tmp_path))["split"]
    split.export(tmp_path, "split")
    assert (tmp_path / "split.hash").read_text().strip() == split.meta["hash"]
    csv = pd.read_csv(tmp_path / "split.csv")
    assert list(csv.columns) == ["fold", "patient_id", "partition", "label"]


def test_refit_fold_trains_on_every_fitted_patient_and_never_an_external_cohort(tmp_path):
    from hemaflow.plugins.splits import refit_epochs

    images = image_set(tmp_path, extra=lambda c, k, i: {"site": "A" if k % 2 == 0 else "B"})
    plain = make(PatientKFold, k=3).run(make_context(tmp_path / "p"), images=images)["split"]
    kf = make(PatientKFold, k=3, refit=True).run(make_context(tmp_path / "k"), images=images)["split"]
    # the folds are untouched (same table, same hash); the refit fold is one past them
    assert kf.meta["hash"] == plain.meta["hash"] and kf.folds() == [0, 1, 2] and plain.refit_fold() is None
    assert kf.refit_fold() == 3 and kf.fit_folds() == [0, 1, 2, 3] and plain.fit_folds() == [0, 1, 2]
    assert kf.patients(3, "train") == set(images.table["patient_id"]) and not kf.patients(3, "val")
    assert not kf.patients(3, "test")
    assert Split.load(kf.path).refit_fold() == 3
    # an external cohort (test in every fold) is never refitted on
    cs = make(ColumnSplit, column="site", mapping={"A": "train", "B": "test"}, val_fraction=0.2,
              refit=True).run(make_context(tmp_path / "c"), images=images)["split"]
    site_of = images.table.drop_duplicates("patient_id").set_index("patient_id")["site"]
    assert cs.refit_fold() == 1
    assert cs.patients(1, "train") == cs.patients(0, "train") | cs.patients(0, "val")
    assert set(pd.Series(sorted(cs.patients(1, "train"))).map(site_of)) == {"A"}
    # refit: false stays out of the cache key (splits from before the option keep their entries)
    assert "refit" not in make(PatientKFold).cache_params() and make(PatientKFold, refit=True).cache_params()["refit"]
    assert refit_epochs([3, 9, 5]) == 5 and refit_epochs([4, 5]) == 5 and refit_epochs([1]) == 1
