"""Readers: manifest, class folders, patient folders, the real shared data; bad input."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.core.errors import DataError
from hemaflow.plugins.datasets import BCCDFields, ClassFolders, Manifest, PatientFolders, WBCCrops
from hemaflow.testing import check_component, make, make_context

RNG = np.random.default_rng(0)


def write_image(path, kind="rgb", size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if kind == "rgb":
        arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "grey":
        arr = RNG.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind == "grey16":
        arr = RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    else:
        raise ValueError(kind)
    Image.fromarray(arr).save(path)
    return path


def write_mask(path, size=(20, 24), values=(0, 128, 255), rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = values[1]
    m[h // 2 - 2: h // 2 + 2, w // 2 - 2: w // 2 + 2] = values[2]
    Image.fromarray(np.stack([m] * 3, -1) if rgb else m).save(path)
    return path


def run(cls, tmp_path, **params):
    ctx = make_context(tmp_path / "_work")
    return make(cls, **params).run(ctx)["images"], ctx


@pytest.mark.parametrize("cls", [Manifest, ClassFolders, PatientFolders, BCCDFields, WBCCrops])
def test_conformance(cls):
    check_component(cls)


# -- manifest ------------------------------------------------------------------------------------
@pytest.fixture()
def manifest_dir(tmp_path):
    root = tmp_path / "data"
    write_image(root / "img" / "a.png")
    write_image(root / "img" / "b.jpg")
    write_image(root / "img" / "c.bmp", kind="grey")
    write_image(root / "img" / "d.tif", kind="grey16")
    for s in "abcd":
        write_mask(root / "mask" / f"{s}.png", rgb=(s == "c"))
    rows = [("img/a.png", "p1", "AML", "mask/a.png", "train", "s1"),
            ("img/b.jpg", "p1", "AML", "mask/b.png", "train", "s1"),
            ("img/c.bmp", "p2", "ALL", "mask/c.png", "test", "s2"),
            ("img/d.tif", "p3", "ALL", "mask/d.png", "val", "s2")]
    pd.DataFrame(rows, columns=["image", "patient", "label", "mask", "split", "site"]).to_csv(
        root / "manifest.csv", index=False)
    return root


MASK_VALUES = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}


def test_manifest_csv_and_formats(manifest_dir, tmp_path):
    images, ctx = run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), mask_spec=MASK_VALUES)
    t = images.table
    assert t["image_id"].tolist() == ["img/a", "img/b", "img/c", "img/d"]
    assert t["patient_id"].tolist() == ["p1", "p1", "p2", "p3"]
    assert list(t.columns) == ["image_id", "patient_id", "label", "path", "mask_path", "site", "split"]
    assert images.classes == ["ALL", "AML"] and images.meta["patients_are_images"] is False
    for _, row in t.iterrows():
        img, mask = images.read_image(row), images.read_mask(row)
        assert img.shape == (20, 24, 3) and img.dtype == np.uint8
        assert sorted(np.unique(mask)) == [0, 1, 2]
    assert ctx.warnings == [] and images.meta["skipped"] == []


def test_manifest_parquet_without_patients(manifest_dir, tmp_path):
    df = pd.read_csv(manifest_dir / "manifest.csv").drop(columns=["patient", "mask"])
    df.to_parquet(manifest_dir / "m.parquet")
    images, ctx = run(Manifest, tmp_path, path=str(manifest_dir / "m.parquet"), classes=["AML", "ALL"])
    assert images.meta["patients_are_images"] is True
    assert images.table["patient_id"].tolist() == images.table["image_id"].tolist()
    assert images.classes == ["AML", "ALL"] and not images.has_masks()
    assert any(i["title"] == "Patients are images" for i in ctx.report.items)


def _edit_manifest(root, changes):
    df = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    for (i, col), value in changes.items():
        df.loc[i, col] = value
    df.to_csv(root / "manifest.csv", index=False)
    return str(root / "manifest.csv")


def test_manifest_outside_folder_and_missing(manifest_dir, tmp_path):
    write_image(tmp_path / "outside.png")
    path = _edit_manifest(manifest_dir, {(1, "image"): "../outside.png"})
    with pytest.raises(DataError) as exc:
        run(Manifest, tmp_path, path=path)
    assert str(exc.value) == (f"{manifest_dir / 'manifest.csv'}:3: path '../outside.png' points outside the "
                              f"manifest's folder {manifest_dir} (set on_error: skip to leave it out)")
    path = _edit_manifest(manifest_dir, {(1, "image"): "img/gone.png"})
    with pytest.raises(DataError, match=r"manifest.csv:3: file 'img/gone.png' not found"):
        run(Manifest, tmp_path, path=path)
    images, ctx = run(Manifest, tmp_path, path=path, on_error="skip")
    assert len(images.table) == 3
    assert images.meta["skipped"][0]["file"].endswith("manifest.csv:3")
    assert ctx.warnings[0].startswith("skipped ") and "img/gone.png' not found" in ctx.warnings[0]


def test_manifest_symlink_leading_outside_needs_allow_outside(manifest_dir, tmp_path):
    # checked on the resolved path: a link inside the folder must not lead out of it unnoticed
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "z.png")
    (manifest_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    pd.DataFrame({"image": ["linked/z.png"], "patient": ["p9"], "label": ["AML"]}).to_csv(
        manifest_dir / "m2.csv", index=False)
    with pytest.raises(DataError) as exc:
        run(Manifest, tmp_path, path=str(manifest_dir / "m2.csv"))
    assert str(exc.value) == (f"{manifest_dir / 'm2.csv'}:2: path 'linked/z.png' leads outside the manifest's folder "
                              f"{manifest_dir} through a symbolic link (to {elsewhere / 'z.png'}); set "
                              f"allow_outside: true to allow it (set on_error: skip to leave it out)")
    images, _ = run(Manifest, tmp_path, path=str(manifest_dir / "m2.csv"), allow_outside=True)
    assert images.table["image_id"].tolist() == ["linked/z"]


def test_manifest_label_not_in_classes(manifest_dir, tmp_path):
    with pytest.raises(DataError, match=r"manifest.csv:4: label 'ALL' is not in the class list \['AML'\]"):
        run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), classes=["AML"])


def test_manifest_patient_without_image(manifest_dir, tmp_path):
    path = _edit_manifest(manifest_dir, {(3, "image"): ""})
    with pytest.raises(DataError, match=r"manifest.csv:5: patient 'p3' has no image"):
        run(Manifest, tmp_path, path=path)


def test_manifest_row_without_patient_id(manifest_dir, tmp_path):
    path = _edit_manifest(manifest_dir, {(2, "patient"): ""})
    with pytest.raises(DataError, match=r"manifest.csv:4: row has no patient id \(column 'patient'\)"):
        run(Manifest, tmp_path, path=path)


def test_class_without_images_warns(manifest_dir, tmp_path):
    _, ctx = run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), classes=["ALL", "AML", "CLL"])
    assert ctx.warnings == ["class(es) ['CLL'] of the class list have no images"]


def test_manifest_missing_column_and_file(manifest_dir, tmp_path):
    with pytest.raises(DataError, match=r"manifest has no column 'diagnosis'; its columns are \['image', "):
        run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), label_column="diagnosis")
    with pytest.raises(DataError, match=r"nope.csv: manifest not found"):
        run(Manifest, tmp_path, path=str(manifest_dir / "nope.csv"))


def test_mask_size_mismatch_found_from_headers(manifest_dir, tmp_path):
    write_mask(manifest_dir / "mask" / "b.png", size=(10, 12))
    with pytest.raises(DataError) as exc:
        run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"))
    assert str(exc.value).startswith(f"{manifest_dir / 'mask' / 'b.png'}: mask is 12x10 but its image")
    assert "is 24x20 (width x height)" in str(exc.value)


def test_truncated_image_header_vs_full(manifest_dir, tmp_path):
    f = manifest_dir / "img" / "a.png"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    images, _ = run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), validate="header")  # header is fine
    with pytest.raises(DataError, match=r"a.png: cannot read image"):
        images.read_image(images.table.iloc[0])  # found when the pixels are read
    for level in ("full", "auto"):  # auto (the default) decodes images of up to 1 Mpx
        with pytest.raises(DataError, match=r"img/a.png: cannot read image"):
            run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), validate=level)


def test_unreadable_image_and_bad_mask_values(manifest_dir, tmp_path):
    (manifest_dir / "img" / "a.png").write_bytes(b"garbage")
    Image.fromarray(np.full((20, 24), 77, np.uint8)).save(manifest_dir / "mask" / "c.png")
    images, ctx = run(Manifest, tmp_path, path=str(manifest_dir / "manifest.csv"), validate="full",
                      mask_spec=MASK_VALUES, on_error="skip")
    assert images.table["image_id"].tolist() == ["img/b", "img/d"]
    reasons = [s["reason"] for s in images.meta["skipped"]]
    assert reasons[0].startswith("cannot read image") or reasons[0].startswith("not a readable image")
    assert reasons[1].startswith("mask has unexpected values [77]")


def test_empty_dataset(tmp_path):
    (tmp_path / "m.csv").write_text("image,patient,label\n")
    with pytest.raises(DataError, match=r"m.csv: the data set is empty: no usable images found"):
        run(Manifest, tmp_path, path=str(tmp_path / "m.csv"))


def test_fingerprint_tracks_files_not_pixels(manifest_dir):
    comp = make(Manifest, path=str(manifest_dir / "manifest.csv"))
    fp = comp.fingerprint()
    assert fp == make(Manifest, path=str(manifest_dir / "manifest.csv")).fingerprint()
    f = manifest_dir / "img" / "b.jpg"
    os.utime(f, ns=(0, 12345))
    assert make(Manifest, path=str(manifest_dir / "manifest.csv")).fingerprint() != fp


# -- class folders -------------------------------------------------------------------------------
def test_class_folders_with_splits_and_parallel_masks(tmp_path):
    root, masks = tmp_path / "ds", tmp_path / "ds_masks"
    for split in ("train", "val", "test"):
        for cls in ("ALL", "HEM"):
            for i in range(2):
                write_image(root / split / cls / f"{cls}_{split}_{i}.jpg")
                write_mask(masks / split / cls / f"{cls}_{split}_{i}_mask.png", values=(0, 255, 255))
    images, _ = run(ClassFolders, tmp_path, root=str(root), mask_root=str(masks), require_masks=True)
    t = images.table
    assert len(t) == 12 and images.classes == ["ALL", "HEM"]
    assert t.groupby("split").size().to_dict() == {"test": 4, "train": 4, "val": 4}
    assert t.iloc[0]["image_id"] == "test/ALL/ALL_test_0"
    assert images.meta["patients_are_images"] is True
    assert sorted(np.unique(images.read_mask(t.iloc[0]))) == [0, 1]
    (masks / "val" / "HEM" / "HEM_val_1_mask.png").unlink()
    with pytest.raises(DataError, match=r"HEM_val_1.jpg: no mask HEM_val_1_mask.png found"):
        run(ClassFolders, tmp_path, root=str(root), mask_root=str(masks), require_masks=True)


def test_class_folders_without_split_level_and_patient_pattern(tmp_path):
    root = tmp_path / "ds"
    for cls in ("AML", "NORMAL"):
        for p in range(2):
            for c in range(3):
                write_image(root / cls / f"pat{cls}{p}_cell{c}.png", kind="grey")
    write_mask(root / "AML" / "patAML0_cell0_mask.png")  # masks beside the images are not images
    images, _ = run(ClassFolders, tmp_path, root=str(root), patient_pattern=r"^(?P<patient>[^_]+)_")
    t = images.table
    assert len(t) == 12 and "split" not in t.columns
    assert t["patient_id"].nunique() == 4 and images.meta["patients_are_images"] is False
    assert t["mask_path"].notna().sum() == 1
    with pytest.raises(DataError, match=r"has no group named 'patient'"):
        run(ClassFolders, tmp_path, root=str(root), patient_pattern=r"^([^_]+)_")


def test_class_folders_bad_split_name(tmp_path):
    write_image(tmp_path / "ds" / "train" / "A" / "x.png")
    write_image(tmp_path / "ds" / "holdout" / "A" / "y.png")
    with pytest.raises(DataError, match=r"split folder 'holdout' is not one of"):
        run(ClassFolders, tmp_path, root=str(tmp_path / "ds"), split_level="yes")


# -- patient folders -----------------------------------------------------------------------------
@pytest.fixture()
def patient_root(tmp_path):
    root = tmp_path / "cv"
    write_image(root / "P1" / "slide1" / "neutrophil" / "c1.jpg")
    write_image(root / "P1" / "slide1" / "blast" / "c2.jpg")
    write_image(root / "P2" / "c1.png")
    write_mask(root / "P2" / "c1_mask.png")
    write_image(root / "P3" / "a" / "b" / "c" / "d" / "deep.bmp")
    pd.DataFrame({"case": ["P1", "P2", "P3"], "dx": ["AML", "NORMAL", "AML"], "site": ["x", "y", "x"]}).to_csv(
        tmp_path / "labels.csv", index=False)
    return root


def test_patient_folders_any_depth(patient_root, tmp_path):
    images, _ = run(PatientFolders, tmp_path, root=str(patient_root), labels=str(tmp_path / "labels.csv"),
                    patient_column="case", label_column="dx")
    t = images.table
    assert t["image_id"].tolist() == ["P1/slide1/blast/c2", "P1/slide1/neutrophil/c1", "P2/c1",
                                      "P3/a/b/c/d/deep"]
    assert t["patient_id"].tolist() == ["P1", "P1", "P2", "P3"]
    assert t["label"].tolist() == ["AML", "AML", "NORMAL", "AML"] and t["site"].tolist() == ["x", "x", "y", "x"]
    assert t["mask_path"].notna().tolist() == [False, False, True, False]
    assert images.meta["patients_are_images"] is False


def test_patient_folders_unlabelled_and_imageless(patient_root, tmp_path):
    write_image(patient_root / "P9" / "x.png")
    (patient_root / "P3" / "a" / "b" / "c" / "d" / "deep.bmp").unlink()
    kw = dict(root=str(patient_root), labels=str(tmp_path / "labels.csv"), patient_column="case", label_column="dx")
    with pytest.raises(DataError, match=r"P3: patient 'P3' has no images \(set on_error: skip"):
        run(PatientFolders, tmp_path, **kw)
    images, ctx = run(PatientFolders, tmp_path, on_error="skip", **kw)
    assert sorted(images.table["patient_id"].unique()) == ["P1", "P2"]
    reasons = sorted(s["reason"] for s in images.meta["skipped"])
    assert reasons == ["patient 'P3' has no images", "patient folder 'P9' has no row in labels.csv"]
    assert len(ctx.warnings) == 2


def test_patient_folders_missing_labels(patient_root, tmp_path):
    with pytest.raises(DataError, match=r"labels.csv: labels file not found"):
        run(PatientFolders, tmp_path, root=str(patient_root))


# -- the real data in ../shared/data ------------------------------------------------------------------
def test_bccd_fields(shared_data, tmp_path):
    images, _ = run(BCCDFields, tmp_path, path=str(shared_data / "bccd-fields"), limit=2)
    t = images.table
    assert t.groupby("split").size().to_dict() == {"test": 2, "train": 2, "val": 2}
    assert images.meta["patients_are_images"] is True
    assert images.meta["mask_spec"] == {"mode": "threshold", "cell": 64, "nucleus": 208}
    row = t.iloc[0]
    img, mask = images.read_image(row), images.read_mask(row)
    assert img.shape == (480, 640, 3) and mask.shape == (480, 640)
    assert (mask == 2).sum() > 500 and (mask == 1).sum() > 500  # one white cell, nucleus and cytoplasm
    assert set(t["label"]) <= {"", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"}


def test_bccd_full_listing_counts(shared_data, tmp_path):
    images, _ = run(BCCDFields, tmp_path, path=str(shared_data / "bccd-fields"), validate="none")
    assert images.table.groupby("split").size().to_dict() == {"test": 72, "train": 205, "val": 87}


def test_wbc_crops(shared_data, tmp_path):
    images, ctx = run(WBCCrops, tmp_path, path=str(shared_data / "wbc-crops"), limit=3)
    t = images.table
    assert t.groupby("site").size().to_dict() == {"cellavision": 3, "tecom": 3}
    assert t["image_id"].iloc[0] == "cellavision/001"
    for _, row in t.iterrows():
        img, mask = images.read_image(row), images.read_mask(row)
        assert img.shape[:2] == mask.shape and sorted(np.unique(mask)) == [0, 1, 2]
    assert images.classes == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    assert any("basophil (0)" in w for w in ctx.warnings)


def test_wbc_crops_counts_and_rare_basophils(shared_data, tmp_path):
    images, ctx = run(WBCCrops, tmp_path, path=str(shared_data / "wbc-crops"), validate="none")
    counts = images.table.groupby("label").size().to_dict()
    assert counts == {"basophil": 4, "eosinophil": 34, "lymphocyte": 90, "monocyte": 63, "neutrophil": 209}
    assert ctx.warnings == ["too few images to learn or evaluate these classes reliably: basophil (4); "
                            "consider classes: without them"]


def test_shared_data_missing_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"the bccd-fields data set was not found here"):
        make(BCCDFields, path=str(tmp_path / "nowhere")).fingerprint()


def test_wbc_crops_strict_mask_values_find_the_stray_files(shared_data, tmp_path):
    # five cellavision masks carry a few stray values (2-50) besides 0/128/255: a strict spec
    # with full validation names them; the default threshold spec reads them fine
    strict = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}
    images, ctx = run(WBCCrops, tmp_path, path=str(shared_data / "wbc-crops"), subsets=["cellavision"],
                      mask_spec=strict, validate="full", on_error="skip")
    skipped = sorted(s["file"].rsplit("/", 2)[-2] + "/" + s["file"].rsplit("/", 1)[-1] for s in images.meta["skipped"])
    assert skipped == ["cellavision/034.png", "cellavision/035.png", "cellavision/047.png",
                       "cellavision/050.png", "cellavision/076.png"]
    assert images.meta["skipped"][0]["reason"].startswith("mask has unexpected values [2, 7, 25, 42, 44]")
    assert len(images.table) == 95


# -- colour-coded masks and the data step's mask check ----------------------------------------
COLOURS = {"mode": "colors", "background": [[255, 255, 255]], "cytoplasm": [[0, 0, 255]],
           "nucleus": [[0, 255, 255]]}


def _colour_crops(root, n=3, size=16):
    """``n`` tiny crops with white / blue / cyan masks (the convention of the issue's crops)."""
    palette = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255]], np.uint8)
    rows = []
    for i in range(n):
        truth = np.zeros((size, size), np.uint8)
        truth[3:13, 3:13] = 1
        truth[6:10, 6:10] = 2
        write_image(root / f"c{i}.png", size=(size, size))
        Image.fromarray(palette[truth]).save(root / f"c{i}_mask.png")
        rows.append((f"c{i}.png", f"c{i}_mask.png", "lymphocyte" if i % 2 else "neutrophil"))
    pd.DataFrame(rows, columns=["image", "mask", "label"]).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_colour_masks_through_a_reader(tmp_path):
    manifest = _colour_crops(tmp_path / "d")
    images, ctx = run(Manifest, tmp_path, path=str(manifest), mask_spec=COLOURS)
    mask = images.read_mask(images.table.iloc[0])
    assert np.bincount(mask.ravel()).tolist() == [256 - 100, 100 - 16, 16]
    assert images.meta["mask_spec"]["mode"] == "colors" and ctx.warnings == []


def test_bad_mask_is_refused_by_the_data_step_in_header_mode(tmp_path):
    manifest = _colour_crops(tmp_path / "d")
    bad = tmp_path / "d" / "c1_mask.png"
    arr = np.asarray(Image.open(bad)).copy()
    arr[0, 0] = (255, 0, 0)
    Image.fromarray(arr).save(bad)
    with pytest.raises(DataError) as exc:  # validate: header (the default) decodes masks
        run(Manifest, tmp_path, path=str(manifest), mask_spec=COLOURS)
    assert str(exc.value).startswith(f"{bad}: mask has 1 pixel(s) of 1 colour(s) farther than tolerance 127.5 "
                                     "from every listed colour, e.g. [255, 0, 0] (1 px)")
    assert str(exc.value).endswith("(set on_error: skip to leave it out)")
    images, ctx = run(Manifest, tmp_path, path=str(manifest), mask_spec=COLOURS, on_error="skip")
    assert images.table["image_id"].tolist() == ["c0", "c2"]
    assert images.meta["skipped"][0]["file"] == str(bad)
    assert ctx.warnings[0].startswith(f"skipped {bad}: mask has 1 pixel(s)")
    # colour masks read with a grey spec (the case: no spec read them) are refused up front
    with pytest.raises(DataError, match=r"c0_mask.png: mask is RGB with unequal channels"):
        run(Manifest, tmp_path, path=str(manifest), mask_spec={"mode": "values", "cytoplasm": [128]})
    # validate: none leaves the check to the step that reads the mask
    images, _ = run(Manifest, tmp_path, path=str(manifest), mask_spec=COLOURS, validate="none")
    assert len(images.table) == 3


def _recipe(tmp_path, manifest, mask_spec):
    import yaml

    recipe = {"name": "colour_crops", "seed": 0, "device": "cpu", "steps": {
        "data": {"uses": "manifest", "with": {"path": str(manifest), "mask_spec": mask_spec}},
        "segment": {"uses": "ground_truth", "inputs": {"images": "data"}},
        "evaluate": {"uses": "segmentation", "inputs": {"masks": "segment", "images": "data"},
                     "with": {"partition": "all", "n_overlays": 0}}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_recipe_with_a_bad_mask_stops_in_the_data_step(tmp_path, capsys):
    import json

    from hemaflow.core.cli import main

    manifest = _colour_crops(tmp_path / "d")
    recipe = _recipe(tmp_path, manifest, COLOURS)
    assert main(["run", str(recipe), "--out", str(tmp_path / "ok")]) == 0
    seg = json.loads((tmp_path / "ok" / "metrics.json").read_text())["segmentation"]
    assert seg["dice"] == 1.0 and seg["dice_nucleus"] == 1.0 and seg["n"] == 3
    bad = tmp_path / "d" / "c2_mask.png"
    arr = np.asarray(Image.open(bad)).copy()
    arr[5, 5:7] = (200, 0, 40)  # two pixels of an unlisted colour
    Image.fromarray(arr).save(bad)
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(tmp_path / "bad")]) == 3
    err = capsys.readouterr().err
    assert f"{bad}: mask has 2 pixel(s) of 1 colour(s) farther than tolerance 127.5" in err
    assert "[200, 0, 40] (2 px)" in err and "Traceback" not in err
    prov = json.loads((tmp_path / "bad" / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["steps"] == []  # nothing ran after the data step
    # a colour spec that is wrong is refused by validate, with its location
    bad_spec = _recipe(tmp_path, manifest, dict(COLOURS, cytoplasm=[128]))
    assert main(["validate", str(bad_spec)]) == 1
    assert "/steps/data/with/mask_spec/cytoplasm/0: must be a list; got 128" in capsys.readouterr().err
