"""Input checks for exports: bad files are decided in the data step (on_error), junk files are
ignored and counted, and paths never end up relative to the working directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
from hemaflow.plugins.artifacts import ImageSet
from hemaflow.plugins.datasets import ClassFolders, FileDataset, Listing, PatientFolders
from hemaflow.plugins.instances import WholeImages
from hemaflow.plugins.single_cells import SingleCells
from hemaflow.testing import make, make_context

from tests.plugins.seg_fixtures import field


def _export(root: Path, n_per_patient: int = 2) -> Path:
    """A tiny CellaVision-like export: <root>/<patient>/<cell>.jpg (one centred cell each) + labels.csv."""
    img, _ = field(size=(64, 64), wbcs=((32, 32, 12),), rbcs=())
    for pid in ("P1", "P2"):
        (root / pid).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_patient):
            Image.fromarray(img).save(root / pid / f"c{k}.jpg", quality=95)
    pd.DataFrame({"patient": ["P1", "P2"], "diagnosis": ["AML", "NORMAL"]}).to_csv(root / "labels.csv", index=False)
    return root


#: PIL's message for a cut JPEG: "... truncated (N bytes not processed))", N depends on the cut
TRUNCATED = "cannot read image (OSError: image file is truncated ("


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def _run(cls, tmp_path, step_id="data", **params):
    ctx = make_context(tmp_path / "_work", step_id=step_id)
    return make(cls, **params).run(ctx)["images"], ctx


# -- truncated files: refused in the data step -------------------------------------------------------
def test_truncated_jpeg_skipped_in_the_data_step_and_recorded(tmp_path):
    root = _export(tmp_path / "export")
    bad = root / "P2" / "c1.jpg"
    _truncate(bad)
    assert io.image_size(bad) == (64, 64)  # the header is intact: header validation lets it through
    images, _ = _run(PatientFolders, tmp_path, root=str(root), validate="header")
    assert len(images.table) == 4
    images, ctx = _run(PatientFolders, tmp_path, root=str(root), on_error="skip")  # default validate: auto
    assert images.table["image_id"].tolist() == ["P1/c0", "P1/c1", "P2/c0"]
    reason = images.meta["skipped"][0]["reason"]
    assert reason.startswith(TRUNCATED) and reason.endswith(" bytes not processed))")
    assert images.meta["skipped"] == [{"file": str(bad), "reason": reason, "step": "data"}]
    assert images.meta["on_error"] == "skip" and images.meta["validate"] == "auto"
    rec = pd.read_parquet(images.path / images.meta["skipped_file"])
    assert rec.to_dict("records") == [{"file": str(bad), "reason": reason, "step": "data"}]
    assert ctx.warnings == [f"skipped {bad}: {reason}"]
    assert images.summary() == "ImageSet (3 images, 2 patients, 2 classes, 1 skipped)"
    # a later step never meets it: single_cells reads every image it gets
    cells = make(SingleCells, crop_size=48).run(make_context(tmp_path / "c"), images=images)["cells"]
    assert len(cells.table) == 3 and cells.meta["rejected"] == {}


def test_truncated_jpeg_stops_the_data_step_with_the_file_named(tmp_path):
    root = _export(tmp_path / "export")
    bad = root / "P1" / "c0.jpg"
    _truncate(bad)
    with pytest.raises(DataError) as exc:
        _run(PatientFolders, tmp_path, root=str(root))  # on_error: stop is the default
    msg = str(exc.value)
    assert msg.startswith(f"{bad}: {TRUNCATED}") and msg.endswith(" bytes not processed)) (set on_error: skip "
                                                                  "to leave it out)")


def test_real_jpeg_cut_short_is_refused_by_default(shared_data, tmp_path):
    """A BCCD field (640x480 JPEG) and a wbc-crops BMP cut to two thirds: headers intact, data short."""
    root = tmp_path / "export"
    (root / "P1").mkdir(parents=True)
    for src in (shared_data / "bccd-fields/images/BloodImage_00001.jpg", shared_data / "wbc-crops/tecom/001.bmp"):
        data = src.read_bytes()
        (root / "P1" / src.name).write_bytes(data[: len(data) * 2 // 3])
        (root / "P1" / ("ok_" + src.name)).write_bytes(data)
    pd.DataFrame({"patient": ["P1"], "diagnosis": ["AML"]}).to_csv(root / "labels.csv", index=False)
    images, _ = _run(PatientFolders, tmp_path, root=str(root), validate="header")
    assert len(images.table) == 4
    images, _ = _run(PatientFolders, tmp_path, root=str(root), on_error="skip")
    assert images.table["image_id"].tolist() == ["P1/ok_001", "P1/ok_BloodImage_00001"]
    assert [(Path(s["file"]).name, s["reason"][:43]) for s in images.meta["skipped"]] == [
        ("001.bmp", "cannot read image (OSError: image file is t"),
        ("BloodImage_00001.jpg", "cannot read image (OSError: image file is t")]


def test_auto_decodes_small_images_only(tmp_path, monkeypatch):
    from hemaflow.plugins.datasets import common

    root = _export(tmp_path / "export")
    _truncate(root / "P1" / "c0.jpg")
    monkeypatch.setattr(common, "AUTO_FULL_PIXELS", 64 * 64 - 1)  # the 64x64 crops are now "large"
    images, _ = _run(PatientFolders, tmp_path, root=str(root))
    assert len(images.table) == 4  # header check only


def test_pil_truncated_loading_is_not_switched_on():
    from PIL import ImageFile

    import hemaflow.plugins  # noqa: F401 - every built-in plugin imported
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    build_registry(make_plugin_manager())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_later_step_records_what_it_skips(tmp_path):
    root = _export(tmp_path / "export")
    bad = root / "P1" / "c1.jpg"
    _truncate(bad)
    images, _ = _run(PatientFolders, tmp_path, root=str(root), validate="header")
    ctx = make_context(tmp_path / "w", step_id="instances")
    cells = make(WholeImages, crop_size=16).run(ctx, images=images)["cells"]
    assert len(cells.table) == 3
    reason = cells.meta["skipped"][0]["reason"]
    assert reason.startswith(TRUNCATED)
    assert cells.meta["skipped"] == [{"file": str(bad), "reason": reason, "step": "instances"}]
    rec = pd.read_parquet(cells.path / "skipped.parquet")
    assert rec.to_dict("records") == cells.meta["skipped"]


# -- junk files: ignored and counted ------------------------------------------------------------------
def _junk(root: Path) -> None:
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    for pid in ("P1", "P2"):
        (root / pid / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (root / pid / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (root / pid / "._c0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # has a .jpg extension
    (root / "P1" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "P1" / "notes.txt").write_text("smear 2")
    (root / "__MACOSX" / "P1").mkdir(parents=True)
    (root / "__MACOSX" / "P1" / "._c0.jpg").write_bytes(b"\0\5\26\7")


def test_junk_files_in_patient_folders_are_ignored_and_counted(tmp_path):
    root = _export(tmp_path / "export")
    _junk(root)
    images, ctx = _run(PatientFolders, tmp_path, root=str(root))  # on_error: stop, and no error
    assert images.table["image_id"].tolist() == ["P1/c0", "P1/c1", "P2/c0", "P2/c1"]
    assert images.meta["ignored_files"] == {"Thumbs.db": 3, "AppleDouble (._*)": 2, ".DS_Store": 2,
                                            "desktop.ini": 2, "__MACOSX": 1, "non-image": 1}
    assert images.meta["skipped"] == []
    assert images.summary() == "ImageSet (4 images, 2 patients, 2 classes, 11 non-image files ignored)"
    assert len(ctx.warnings) == 1
    assert ctx.warnings[0].startswith("ignored 11 file(s) that are not images: Thumbs.db 3, .DS_Store 2, "
                                      "AppleDouble (._*) 2, desktop.ini 2, __MACOSX 1, non-image 1 (e.g. ")


def test_junk_files_in_class_folders_are_ignored_and_counted(tmp_path):
    root = tmp_path / "classes"
    img, _ = field(size=(32, 32), wbcs=((16, 16, 6),), rbcs=())
    for split in ("train", "test"):
        for cls in ("AML", "NORMAL"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(img).save(root / split / cls / "a.png")
            (root / split / cls / "Thumbs.db").write_bytes(b"x")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "train" / "desktop.ini").write_text("x")
    images, ctx = _run(ClassFolders, tmp_path, root=str(root))
    assert len(images.table) == 4 and set(images.table["split"]) == {"train", "test"}
    assert images.meta["ignored_files"] == {"Thumbs.db": 4, ".DS_Store": 1, "desktop.ini": 1}


def test_ignored_kind_names():
    assert [io.ignored_kind(n) for n in ("THUMBS.DB", ".DS_Store", "Desktop.ini", "._x.jpg", ".hidden",
                                         "__MACOSX", "a.txt")] == [
        "Thumbs.db", ".DS_Store", "desktop.ini", "AppleDouble (._*)", "hidden", "__MACOSX", "non-image"]


# -- relative paths -----------------------------------------------------------------------------------
class _RelativeListing(FileDataset):
    """A reader that lists paths as given (relative to the working directory), like a third party's."""

    name = "relative_listing"
    version = "1"
    schema = {"type": "object", "properties": {"root": {"type": "string"}}, "additionalProperties": False}

    def listing(self) -> Listing:
        recs = [{"image": f, "mask": None, "patient": f.parent.name, "label": "AML", "image_id": f.stem,
                 "source": str(f)} for f in io.list_images(Path(self.params["root"]) / "P1")]
        return Listing(recs, [])


def test_data_step_writes_absolute_paths_for_a_relative_listing(tmp_path, monkeypatch):
    _export(tmp_path / "export")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    comp = make(_RelativeListing, root="../export")
    assert [str(r["image"]) for r in comp.listing().records] == ["../export/P1/c0.jpg", "../export/P1/c1.jpg"]
    images = comp.run(make_context(tmp_path / "w", step_id="data"))["images"]
    assert images.table["path"].tolist() == [str(tmp_path / "export/P1/c0.jpg"), str(tmp_path / "export/P1/c1.jpg")]
    # the bug: these were stored relative and resolved against the artifact folder -> "unreadable image"
    cells = make(SingleCells, crop_size=48).run(make_context(tmp_path / "c"), images=images)["cells"]
    assert len(cells.table) == 2 and cells.meta["rejected"] == {}


def test_an_imageset_with_working_directory_paths_is_refused(tmp_path, monkeypatch):
    _export(tmp_path / "export")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    rows = [{"image_id": "c0", "patient_id": "P1", "label": "AML", "path": "../export/P1/c0.jpg"}]
    with pytest.raises(ValueError, match=r"ImageSet path '../export/P1/c0.jpg' is relative to the working "
                                         r"directory .* but paths in an ImageSet are relative to its folder"):
        ImageSet(tmp_path / "set", pd.DataFrame(rows), {"classes": ["AML"]}).save()
    # artifact-relative paths (synthetic data, normalizers) are fine
    (tmp_path / "set2").mkdir()
    (tmp_path / "set2" / "c0.jpg").write_bytes((tmp_path / "export/P1/c0.jpg").read_bytes())
    rows[0]["path"] = "c0.jpg"
    ImageSet(tmp_path / "set2", pd.DataFrame(rows), {"classes": ["AML"]}).save()


def test_relative_root_through_a_recipe(tmp_path, monkeypatch):
    """The colleague's report, end to end: root and labels relative to the working directory."""
    from hemaflow.core.cli import main

    _export(tmp_path / "export")
    work = tmp_path / "work"
    work.mkdir()
    recipe = {"name": "rel", "seed": 0, "device": "cpu", "steps": {
        "data": {"uses": "patient_folders", "with": {"root": "../export", "labels": "../export/labels.csv"}},
        "cells": {"uses": "single_cells", "inputs": {"images": "data"}, "with": {"crop_size": 48}}}}
    (work / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.chdir(work)
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", "r.yaml", "--out", "out"]) == 0
    prov = json.loads((work / "out" / "provenance.json").read_text())
    assert [s["cache_hit"] for s in prov["steps"]] == [False, False]
    entries = sorted((tmp_path / "cache").rglob("cells/meta.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["rejected"] == {}
    imgs = pd.read_parquet(next((tmp_path / "cache").rglob("images/table.parquet")))
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in imgs["path"])
    # the same relative root from another folder is other data: no cache hit on the first run's files
    other = tmp_path / "b" / "work"
    other.mkdir(parents=True)
    _export(tmp_path / "b" / "export", n_per_patient=1)
    (other / "r.yaml").write_text((work / "r.yaml").read_text())
    monkeypatch.chdir(other)
    assert main(["run", "r.yaml", "--out", "out"]) == 0
    prov = json.loads((other / "out" / "provenance.json").read_text())
    assert [s["cache_hit"] for s in prov["steps"]] == [False, False]


def test_recipe_report_counts_skipped_and_ignored_files(tmp_path, monkeypatch, capsys):
    from hemaflow.core.cli import main

    root = _export(tmp_path / "export")
    _truncate(root / "P2" / "c0.jpg")
    (root / "P1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "P1" / "._c1.jpg").write_bytes(b"\0\5\26\7")
    recipe = {"name": "export", "seed": 0, "device": "cpu", "steps": {
        "data": {"uses": "patient_folders", "with": {"root": str(root), "on_error": "skip"}},
        "cells": {"uses": "single_cells", "inputs": {"images": "data"}, "with": {"crop_size": 48}}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "ImageSet (3 images, 2 patients, 2 classes, 1 skipped, 2 non-image files ignored)" in out
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Skipped files (1; on_error: skip; the full list is skipped.parquet of step data)" in html
    assert "Ignored files, not images (2)" in html and "AppleDouble (._*)" in html
    cells = json.loads(next((tmp_path / "cache").rglob("cells/meta.json")).read_text())
    assert cells["n_input"] == 3 and cells["rejected"] == {}  # single_cells never met the cut file


def test_auto_decodes_tiffs_like_the_readers_do(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    ok, cut = tmp_path / "rgb16.tif", tmp_path / "cut.tif"
    tifffile.imwrite(ok, np.arange(20 * 24 * 3, dtype=np.uint16).reshape(20, 24, 3) * 20)
    cut.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    assert io.decode_check(ok, max_pixels=1 << 20) == (20, 24) and io.image_size(cut) == (20, 24)
    with pytest.raises(DataError, match=r"cut.tif: cannot read image \(ValueError: failed to read"):
        io.decode_check(cut, max_pixels=1 << 20)
    assert io.decode_check(cut, max_pixels=100) == (20, 24)  # large for auto: header only
