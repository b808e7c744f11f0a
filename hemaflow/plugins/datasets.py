"""Data-set components: the built-in synthetic smears, folder and manifest readers, real-data readers.

Every data set returns an :class:`~hemaflow.plugins.artifacts.ImageSet`, an *index* of images
(ids, patient, label, paths): pixels are read one image at a time by whoever needs them, so a data
set of 100k images costs a table of 100k rows, not 100k decoded images.

Components:
    ``synthetic_smears``  procedurally generated Giemsa-like fields with ground-truth masks
                          (the built-in default; see :mod:`hemaflow.plugins.synthetic`).
                          ``patients_per_class: 2, images_per_patient: 1, image_size: 96``
                          generates in well under a second: use that in tests.
    ``manifest``          a CSV/Parquet file with ``image, patient, label[, mask][, split]``.
    ``class_folders``     ``<root>/<split>/<CLASS>/<image>``, masks in a parallel tree.
    ``patient_folders``   ``<root>/<patient>/.../<image>`` plus a labels CSV (patient -> label).
    ``bccd_fields``       ``../shared/data/bccd-fields`` (fields, white-cell masks, BCCD splits).
    ``wbc_crops``         ``../shared/data/wbc-crops`` (single-cell crops, 5 white-cell types).

Validation is lazy where it is cheap: with ``validate: header`` (the default) each image and mask
is opened with PIL without decoding the pixels (format, size, mode), which catches unreadable
files, non-images and image/mask size mismatches for 100k images in seconds; truncated files and
mask values are caught when a step reads the pixels (a ``DataError`` naming the file) or up front
with ``validate: full``. ``on_error: skip`` drops bad items (recorded with ``ctx.warn`` and in
``meta["skipped"]``); ``stop`` raises the first ``DataError``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins import io
from hemaflow.plugins.artifacts import ImageSet

# -- shared schema pieces ---------------------------------------------------------------------------
ON_ERROR = {"enum": ["skip", "stop"], "default": "stop",
            "description": "what to do with a bad image, mask or row: skip it (recorded in the report "
                           "and provenance) or stop with an error naming the file"}
VALIDATE = {"enum": ["none", "header", "full"], "default": "header",
            "description": "up-front checks: none; header (open each file without decoding: catches "
                           "unreadable files and image/mask size mismatches, cheap for 100k images); "
                           "full (decode every image and mask: also catches truncated files and bad "
                           "mask values)"}
MASK_SPEC = {
    "type": "object",
    "description": "how stored mask values map to background / cytoplasm / nucleus "
                   "(see hemaflow.plugins.io.read_mask)",
    "properties": {
        "mode": {"enum": ["binary", "threshold", "values", "canonical"], "default": "binary",
                 "description": "binary: value > threshold is cell; threshold: value > cell is cell, "
                                "value > nucleus is nucleus; values: exact values listed; canonical: "
                                "already 0 background / 1 cytoplasm / 2 nucleus"},
        "threshold": {"type": "integer", "minimum": 0, "description": "binary mode: values above are cell (default 0)"},
        "cell": {"type": "integer", "minimum": 0, "description": "threshold mode: values above are cell"},
        "nucleus": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"},
                              {"type": "array", "items": {"type": "integer"}}],
                    "description": "threshold mode: values above are nucleus (null: none); "
                                   "values mode: the list of nucleus values"},
        "background": {"type": "array", "items": {"type": "integer"},
                       "description": "values mode: background values (default [0])"},
        "cytoplasm": {"type": "array", "items": {"type": "integer"}, "description": "values mode: cytoplasm values"},
        "strict": {"type": "boolean",
                   "description": "values mode: any other value is an error (default) or counts as cytoplasm"},
    },
    "additionalProperties": False,
    "default": {"mode": "binary"},
}
CLASSES = {"type": ["array", "null"], "items": {"type": "string"}, "uniqueItems": True, "default": None,
           "description": "class names in order; a label outside the list is a bad row; null: the sorted "
                          "labels found"}
IMAGE_EXTENSIONS = io.IMAGE_EXTENSIONS


# -- synthetic smears -------------------------------------------------------------------------------
def _render_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Render and write one synthetic field (top-level so process executors can pickle it)."""
    from hemaflow.plugins.synthetic import render_field

    image, mask, cells = render_field(item["plan"], item["index"], item["size"])
    io.write_png(item["image_file"], image)
    io.write_png(item["mask_file"], mask)
    for c in cells:
        c["image_id"] = item["image_id"]
    return cells


class SyntheticSmears(Component):
    """Procedurally generated Giemsa-like blood-smear fields with ground-truth white-cell masks.

    One row per field; masks are canonical PNGs (0 background, 1 cytoplasm, 2 nucleus); the
    per-cell ground truth (``image_id, centroid_y, centroid_x, truth, cell_type``) is in
    ``cell_truth.parquet`` (``ImageSet.cell_truth()``). Deterministic for a given ``seed`` (or
    the recipe's seed); each patient is generated from its own random stream, so adding patients
    does not change the existing ones.
    """

    kind = "dataset"
    name = "synthetic_smears"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "classes": {"type": "array", "items": {"enum": ["ALL", "AML", "APL", "CLL", "CML", "NORMAL"]},
                        "minItems": 2, "uniqueItems": True, "default": ["ALL", "AML", "CLL", "CML", "NORMAL"],
                        "description": "diagnoses to generate (APL optional)"},
            "patients_per_class": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 8,
                                   "description": "patients per class"},
            "images_per_patient": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3,
                                   "description": "fields (images) per patient"},
            "image_size": {"type": "integer", "minimum": 48, "maximum": 4096, "default": 256,
                           "description": "side of the square fields in pixels"},
            "wbc_per_image": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 50},
                              "minItems": 2, "maxItems": 2, "default": [1, 4],
                              "description": "[min, max] white cells per field (fewer when they do not fit)"},
            "abnormal_rate": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                              "minItems": 2, "maxItems": 2, "default": [0.3, 0.7],
                              "description": "[min, max] of each leukemic patient's share of abnormal "
                                             "white cells; the rest are a normal differential"},
            "stain_variation": {"type": "number", "minimum": 0, "maximum": 3, "default": 1.0,
                                "description": "strength of each patient's (or site's) stain colour shift; "
                                               "0 = identical staining"},
            "sites": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1,
                      "description": "number of labs: with more than one, patients are spread over sites "
                                     "(column 'site', stratified by class) and each site has its own "
                                     "stain, with a smaller per-patient shift on top"},
            "difficulty": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                           "description": "0 easy .. 1 hard: widens the morphology ranges (more overlap "
                                          "between cell types) and adds blur and noise"},
            "pixels_per_um": {"type": "number", "minimum": 0.5, "maximum": 10, "default": 2.2,
                              "description": "drawing scale (a red cell is about 7.5 um across)"},
            "seed": {"type": ["integer", "null"], "minimum": 0, "default": None,
                     "description": "data seed; null uses the recipe's seed"},
        },
        "additionalProperties": False,
    }
    inputs: dict[str, str] = {}
    outputs = {"images": "ImageSet"}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from hemaflow.plugins.synthetic import patient_plan, stain_shift

        p = self.params
        lo, hi = sorted(p["wbc_per_image"])
        rlo, rhi = sorted(p["abnormal_rate"])
        seed = int(p["seed"] if p["seed"] is not None else ctx.seed)
        classes = list(p["classes"])
        n_pat = int(p["patients_per_class"])
        out = ctx.out_dir("images")
        (out / "img").mkdir(exist_ok=True)
        (out / "mask").mkdir(exist_ok=True)
        # neutral patient ids (P001...) in a seeded random order, so an id says nothing about a class
        order = np.random.default_rng([seed, 7]).permutation(len(classes) * n_pat)
        width = max(3, len(str(len(order))))
        sites = int(p["sites"])
        site_shifts = [stain_shift(np.random.default_rng([seed, 11, s]), p["stain_variation"]) for s in range(sites)]
        rows, items, patients = [], [], []
        for ci, label in enumerate(classes):
            site_of = np.random.default_rng([seed, 13, ci]).permutation(n_pat) % sites
            for k in range(n_pat):
                pid = f"P{order[ci * n_pat + k] + 1:0{width}d}"
                plan = patient_plan(label, seed=(seed, ci, k), n_images=int(p["images_per_patient"]),
                                    wbc_per_image=(lo, hi), abnormal_rate=(rlo, rhi),
                                    stain_variation=float(p["stain_variation"]), difficulty=float(p["difficulty"]),
                                    pixels_per_um=float(p["pixels_per_um"]),
                                    site_shift=site_shifts[site_of[k]] if sites > 1 else None)
                site = f"site{site_of[k] + 1}"
                patients.append({"patient_id": pid, "label": label, "site": site,
                                 "abnormal_rate": plan.abnormal_rate})
                for i in range(int(p["images_per_patient"])):
                    iid = f"{pid}_{i:02d}"
                    rows.append({"image_id": iid, "patient_id": pid, "label": label,
                                 "path": f"img/{iid}.png", "mask_path": f"mask/{iid}.png", "site": site})
                    items.append({"plan": plan, "index": i, "size": int(p["image_size"]), "image_id": iid,
                                  "image_file": str(out / "img" / f"{iid}.png"),
                                  "mask_file": str(out / "mask" / f"{iid}.png")})
        cells = [c for cs in ctx.map(_render_item, items, description="synthetic smears") for c in cs]
        table = pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)
        truth = pd.DataFrame(cells, columns=["image_id", "centroid_y", "centroid_x", "truth", "cell_type"])
        truth.to_parquet(out / "cell_truth.parquet", index=False)
        pat = pd.DataFrame(patients).sort_values("patient_id").reset_index(drop=True)
        pat.to_parquet(out / "patients.parquet", index=False)
        meta = {"classes": classes, "mask_spec": {"mode": "canonical"}, "patients_are_images": False,
                "cell_truth": "cell_truth.parquet", "patients": "patients.parquet", "skipped": [],
                "source": "synthetic_smears", "image_size": int(p["image_size"]), "seed": seed}
        images = ImageSet(out, table, meta).save()
        self._report(ctx, images, truth, pat)
        return {"images": images}

    @staticmethod
    def _report(ctx: RunContext, images: ImageSet, truth: pd.DataFrame, pat: pd.DataFrame) -> None:
        t = images.table
        per_img = truth.merge(t[["image_id", "label"]], on="image_id")
        rows = []
        for label in images.classes:
            sub = per_img[per_img["label"] == label]
            rows.append({"class": label, "patients": int((pat["label"] == label).sum()),
                         "images": int((t["label"] == label).sum()), "white cells": len(sub),
                         "abnormal cells": f"{(sub['truth'] == 'abnormal').mean():.0%}" if len(sub) else "-"})
        ctx.report.table("Synthetic data set", rows, section="data")
        samples = []
        for label in images.classes:
            first = t[t["label"] == label].iloc[0]
            samples.append((f"{label} ({first['image_id']})", io.png_bytes(images.read_image(first), max_side=256)))
        ctx.report.gallery("One field per class", samples, section="data")


# -- readers: common machinery --------------------------------------------------------------------
class Listing:
    """What a reader found, before any pixel is read: records plus problems found while listing.

    A record is a dict with ``image`` (Path), ``mask`` (Path or None), ``patient``, ``label``,
    ``image_id``, ``source`` (what to name in an error: the file, or ``manifest.csv:12``) and any
    extra columns (``split``, ``site``...).
    """

    def __init__(self, records: list[dict[str, Any]], problems: list[tuple[str, str]],
                 extra_files: Iterable[Path] = (), patients_are_images: bool = False) -> None:
        self.records = records
        self.problems = problems
        self.extra_files = [Path(f) for f in extra_files]
        self.patients_are_images = patients_are_images


def _check_item(rec: dict[str, Any], validate: str, mask_spec: dict[str, Any] | None) -> tuple[str, str] | None:
    """Return None if the image (and mask) pass the ``validate`` level, else (file, problem)."""
    try:
        if validate == "full":
            img = io.read_array(rec["image"])
            size = img.shape[:2]
        else:
            size = io.image_size(rec["image"])
        if rec.get("mask") is not None:
            if validate == "full":
                msize = io.read_mask(rec["mask"], mask_spec).shape[:2]
            else:
                msize = io.image_size(rec["mask"])
            if tuple(msize) != tuple(size):
                return str(rec["mask"]), (f"mask is {msize[1]}x{msize[0]} but its image {rec['image']} is "
                                          f"{size[1]}x{size[0]} (width x height)")
    except DataError as exc:
        return exc.path, exc.problem
    return None


def _check_chunk(args: tuple[list[dict[str, Any]], str, dict[str, Any] | None]) -> list[tuple[str, str] | None]:
    recs, validate, spec = args
    return [_check_item(r, validate, spec) for r in recs]


class FileDataset(Component):
    """Base of the readers: list -> validate -> apply ``on_error`` -> ImageSet (paths absolute).

    Subclasses implement :meth:`listing`. Relative paths in parameters are relative to the
    current working directory (where ``hemaflow run`` is started).
    """

    kind = "dataset"
    inputs: dict[str, str] = {}
    outputs = {"images": "ImageSet"}
    default_mask_spec: dict[str, Any] | None = None
    chunk = 256

    def listing(self) -> Listing:
        raise NotImplementedError

    def _listing(self) -> Listing:
        if getattr(self, "_listing_", None) is None:
            self._listing_ = self.listing()
        return self._listing_

    def mask_spec(self) -> dict[str, Any] | None:
        spec = self.params.get("mask_spec") or self.default_mask_spec
        return {k: v for k, v in spec.items() if v is not None or k == "nucleus"} if spec else None

    def fingerprint(self) -> str:
        """Hash of every listed file's path, size and modification time (no pixel data)."""
        lst = self._listing()
        h = hashlib.sha256()
        for f in lst.extra_files:
            h.update(io.file_stamp(f).encode() + b"\n")
        for r in lst.records:
            h.update(io.file_stamp(r["image"]).encode() + b"\n")
            if r.get("mask") is not None:
                h.update(io.file_stamp(r["mask"]).encode() + b"\n")
        return h.hexdigest()[:32]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        lst = self._listing()
        skipped: list[dict[str, str]] = []

        def bad(file: str, reason: str) -> None:
            if p.get("on_error", "stop") == "stop":
                raise DataError(file, reason + " (set on_error: skip to leave it out)")
            skipped.append({"file": str(file), "reason": reason})
            ctx.warn(f"skipped {file}: {reason}")

        for file, reason in lst.problems:
            bad(file, reason)
        records = lst.records
        classes = p.get("classes")
        if classes:
            keep = []
            for r in records:
                if r["label"] in classes:
                    keep.append(r)
                else:
                    bad(r["source"], f"label {r['label']!r} is not in the class list {list(classes)}")
            records = keep
        validate = p.get("validate", "header")
        if validate != "none" and records:
            spec = self.mask_spec()
            chunks = [(records[i:i + self.chunk], validate, spec) for i in range(0, len(records), self.chunk)]
            results = [x for xs in ctx.map(_check_chunk, chunks, description=f"checking {len(records)} images")
                       for x in xs]
            keep = []
            for r, err in zip(records, results):
                if err is None:
                    keep.append(r)
                else:
                    bad(*err)
            records = keep
        if not records:
            where = getattr(self, "root_for_errors", lambda: "data set")()
            raise DataError(where, "the data set is empty: no usable images found"
                            + (f" ({len(skipped)} skipped)" if skipped else ""))
        ids = pd.Series([r["image_id"] for r in records])
        dup = ids[ids.duplicated()]
        if len(dup):
            first = [r for r in records if r["image_id"] == dup.iloc[0]]
            raise DataError(first[1]["source"], f"image id {dup.iloc[0]!r} appears twice "
                                                f"(also {first[0]['source']})")
        extra_cols = sorted({k for r in records for k in r} - {"image", "mask", "patient", "label", "image_id", "source"})
        rows = []
        for r in records:
            row = {"image_id": r["image_id"], "patient_id": str(r["patient"]), "label": r["label"],
                   "path": str(r["image"]), "mask_path": str(r["mask"]) if r.get("mask") is not None else None}
            row.update({c: r.get(c) for c in extra_cols})
            rows.append(row)
        table = pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)
        if not table["mask_path"].notna().any():
            table = table.drop(columns="mask_path")
        if not classes:
            classes = sorted(x for x in table["label"].unique() if x != "")
        empty = [c for c in classes if not (table["label"] == c).any()]
        if empty:
            ctx.warn(f"class(es) {empty} of the class list have no images")
        meta = {"classes": list(classes), "mask_spec": self.mask_spec() or {"mode": "binary"},
                "patients_are_images": lst.patients_are_images, "skipped": skipped, "source": self.name,
                "validate": validate}
        images = ImageSet(ctx.out_dir("images"), table, meta).save()
        ctx.report.table(f"Data set ({self.name})", [
            {"class": c, "patients": int(table.loc[table.label == c, "patient_id"].nunique()),
             "images": int((table.label == c).sum())} for c in classes] +
            ([{"class": "(unlabelled)", "patients": int(table.loc[table.label == "", "patient_id"].nunique()),
               "images": int((table.label == "").sum())}] if (table.label == "").any() else []), section="data")
        if skipped:
            ctx.report.table(f"Skipped files ({len(skipped)})", skipped[:200], section="data")
        if lst.patients_are_images:
            ctx.report.text("Patients are images", "This data set has no patient identifiers: each image is "
                            "its own patient.", section="data")
        return {"images": images}


def _path_param(value: str, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise DataError(path, f"{what} not found (relative paths are relative to the current folder, "
                              f"{Path.cwd()})")
    return path.resolve()


def _find_mask(image: Path, root: Path, mask_root: Path | None, suffix: str) -> Path | None:
    """The mask of ``image``: ``<mask_root>/<same relative folder>/<stem><suffix>`` (or beside it)."""
    folder = (mask_root / image.parent.relative_to(root)) if mask_root is not None else image.parent
    cand = folder / (image.stem + suffix)
    return cand if cand.exists() else None


def _image_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


COMMON = {
    "classes": CLASSES,
    "mask_spec": MASK_SPEC,
    "validate": VALIDATE,
    "on_error": ON_ERROR,
}
MASKS_PARALLEL = {
    "mask_root": {"type": ["string", "null"], "default": None,
                  "description": "root of a parallel tree holding the masks (same sub-folders as the "
                                 "images); null: masks sit beside their images"},
    "mask_suffix": {"type": "string", "default": "_mask.png",
                    "description": "a mask is named <image stem><mask_suffix>; such files are never "
                                   "read as images"},
    "require_masks": {"type": "boolean", "default": False,
                      "description": "an image without a mask is a bad item (else it just has none)"},
}


# -- manifest ----------------------------------------------------------------------------------------
class Manifest(FileDataset):
    """Images listed in a CSV or Parquet manifest: ``image, patient, label[, mask][, split]``.

    Paths in the manifest are relative to the manifest's folder; a path that points outside that
    folder (``../x.png``, or an absolute path elsewhere) or to a missing file is a bad row. Other
    columns (``site``, ``cohort``...) are kept. Without a patient column each image is its own
    patient.
    """

    name = "manifest"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "default": "manifest.csv",
                     "description": "the manifest file (.csv, .tsv or .parquet)"},
            "image_column": {"type": "string", "default": "image", "description": "column with image paths"},
            "patient_column": {"type": ["string", "null"], "default": "patient",
                               "description": "column with patient ids (null or absent: each image is a patient)"},
            "label_column": {"type": "string", "default": "label", "description": "column with the class label"},
            "mask_column": {"type": ["string", "null"], "default": "mask",
                            "description": "column with mask paths (optional)"},
            "id_column": {"type": ["string", "null"], "default": None,
                          "description": "column with image ids (default: the image path without extension)"},
            "allow_outside": {"type": "boolean", "default": False,
                              "description": "allow paths outside the manifest's folder"},
            **COMMON,
        },
        "additionalProperties": False,
    }

    def root_for_errors(self) -> str:
        return str(self.params["path"])

    def listing(self) -> Listing:
        p = self.params
        mf = _path_param(p["path"], "manifest")
        try:
            if mf.suffix.lower() == ".parquet":
                df = pd.read_parquet(mf)
            else:
                df = pd.read_csv(mf, sep="\t" if mf.suffix.lower() == ".tsv" else ",", dtype=str,
                                 keep_default_na=False)
        except Exception as exc:
            raise DataError(mf, f"cannot read manifest ({type(exc).__name__}: {exc})") from None
        df.columns = [str(c).strip() for c in df.columns]
        for need in (p["image_column"], p["label_column"]):
            if need not in df.columns:
                raise DataError(mf, f"manifest has no column {need!r}; its columns are {list(df.columns)}")
        base = mf.parent
        pcol = p["patient_column"] if p["patient_column"] in df.columns else None
        mcol = p["mask_column"] if p["mask_column"] in df.columns else None
        icol = p["id_column"]
        if icol and icol not in df.columns:
            raise DataError(mf, f"manifest has no column {icol!r}; its columns are {list(df.columns)}")
        known = {p["image_column"], p["label_column"], pcol, mcol, icol}
        extra = [c for c in df.columns if c not in known]
        line0 = 1 if mf.suffix.lower() == ".parquet" else 2  # CSV: header is line 1
        records, problems = [], []

        def resolve(value: str, src: str) -> tuple[Path | None, str | None]:
            # lexical check (no symlink resolution): a linked data folder inside is fine
            rel = Path(value)
            path = Path(os.path.normpath(rel if rel.is_absolute() else base / rel))
            if not p["allow_outside"] and not path.is_relative_to(base):
                return None, f"path {value!r} points outside the manifest's folder {base}"
            if not path.is_file():
                return None, f"file {value!r} not found ({path})"
            return path, None

        for i, row in enumerate(df.to_dict("records")):
            src = f"{mf}:{i + line0}" if line0 == 2 else f"{mf}[row {i}]"
            img_val = _cell(row[p["image_column"]])
            pid = _cell(row[pcol]) if pcol else ""
            if not img_val:
                problems.append((src, f"patient {pid!r} has no image" if pid else "row has no image path"))
                continue
            if pcol and not pid:
                problems.append((src, f"row has no patient id (column {pcol!r})"))
                continue
            img, err = resolve(img_val, src)
            if err:
                problems.append((src, err))
                continue
            mask = None
            if mcol and _cell(row[mcol]):
                mask, err = resolve(_cell(row[mcol]), src)
                if err:
                    problems.append((src, "mask " + err))
                    continue
            iid = _cell(row[icol]) if icol else (img.relative_to(base).with_suffix("").as_posix()
                                                 if img.is_relative_to(base) else img.with_suffix("").as_posix())
            rec = {"image": img, "mask": mask, "patient": pid or iid, "label": _cell(row[p["label_column"]]),
                   "image_id": iid, "source": src}
            rec.update({c: _cell(row[c]) for c in extra})
            records.append(rec)
        if pcol is None:
            pai = True
        else:
            pai = False
        return Listing(records, problems, extra_files=[mf], patients_are_images=pai)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v).strip()


# -- class folders -----------------------------------------------------------------------------------
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


class ClassFolders(FileDataset):
    """``<root>/<split>/<CLASS>/<image>`` (the original research code's layout), or ``<root>/<CLASS>/<image>``.

    The split folder becomes the ``split`` column (``train``/``val``/``test``; use the
    ``column_split`` splitter to keep it). Masks sit in a parallel tree (``mask_root``) named
    ``<stem>_mask.png``. Each image is its own patient unless ``patient_pattern`` (a regular
    expression with a group named ``patient``, matched against the file name) says otherwise.
    """

    name = "class_folders"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "root": {"type": "string", "default": "data", "description": "the data folder"},
            "split_level": {"enum": ["auto", "yes", "no"], "default": "auto",
                            "description": "whether the first folder level is the split (train/val/test); "
                                           "auto: yes when every sub-folder has a split name"},
            "patient_pattern": {"type": ["string", "null"], "default": None,
                                "description": "regular expression with a (?P<patient>...) group matched "
                                               "against the image file name; null: each image is a patient"},
            **MASKS_PARALLEL,
            **COMMON,
        },
        "additionalProperties": False,
    }

    def root_for_errors(self) -> str:
        return str(self.params["root"])

    def listing(self) -> Listing:
        p = self.params
        root = _path_param(p["root"], "data folder")
        mask_root = _path_param(p["mask_root"], "mask folder") if p["mask_root"] else None
        subdirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not subdirs:
            raise DataError(root, "no class folders found (expected <root>/<split>/<CLASS>/<image> or "
                                  "<root>/<CLASS>/<image>)")
        lvl = p["split_level"]
        has_split = all(d.lower() in SPLIT_NAMES for d in subdirs) if lvl == "auto" else lvl == "yes"
        if has_split:
            unknown = [d for d in subdirs if d.lower() not in SPLIT_NAMES]
            if unknown:
                raise DataError(root / unknown[0], f"split folder {unknown[0]!r} is not one of "
                                                   f"{sorted(set(SPLIT_NAMES))}")
        pattern = _compile(p["patient_pattern"])
        records, problems = [], []
        groups = [(root / s, SPLIT_NAMES[s.lower()]) for s in subdirs] if has_split else [(root, None)]
        for folder, split in groups:
            for cdir in sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
                              key=lambda e: e.name):
                for img in io.list_images(cdir.path, exclude_suffix=p["mask_suffix"]):
                    mask = _find_mask(img, root, mask_root, p["mask_suffix"])
                    if mask is None and p["require_masks"]:
                        problems.append((str(img), f"no mask {img.stem + p['mask_suffix']} found"))
                        continue
                    iid = _image_id(img, root)
                    rec = {"image": img, "mask": mask, "label": cdir.name, "image_id": iid, "source": str(img),
                           "patient": _patient_from_name(pattern, img, iid)}
                    if split is not None:
                        rec["split"] = split
                    records.append(rec)
        return Listing(records, problems, patients_are_images=pattern is None)


def _compile(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError("patient_pattern", f"invalid regular expression {pattern!r}: {exc}") from None
    if "patient" not in rx.groupindex:
        raise DataError("patient_pattern", f"{pattern!r} has no group named 'patient' (write (?P<patient>...))")
    return rx


def _patient_from_name(rx: re.Pattern | None, img: Path, iid: str) -> str:
    if rx is None:
        return iid
    m = rx.search(img.name)
    if not m:
        raise DataError(img, f"file name does not match patient_pattern {rx.pattern!r}")
    return m.group("patient")


# -- patient folders ---------------------------------------------------------------------------------
class PatientFolders(FileDataset):
    """``<root>/<patient>/.../<image>`` (images at any depth) plus a labels CSV patient -> diagnosis.

    The layout digital morphology systems (e.g. CellaVision) export. A patient folder without a
    label, and a labelled patient without images, are bad items (``on_error``). Extra columns of
    the labels file (``site``, ``cohort``...) are kept on every image of the patient.
    """

    name = "patient_folders"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "root": {"type": "string", "default": "data", "description": "folder with one sub-folder per patient"},
            "labels": {"type": ["string", "null"], "default": None,
                       "description": "CSV (or Parquet) with patient -> diagnosis; null: <root>/labels.csv"},
            "patient_column": {"type": "string", "default": "patient", "description": "patient id column"},
            "label_column": {"type": "string", "default": "diagnosis", "description": "diagnosis column"},
            **MASKS_PARALLEL,
            **COMMON,
        },
        "additionalProperties": False,
    }

    def root_for_errors(self) -> str:
        return str(self.params["root"])

    def listing(self) -> Listing:
        p = self.params
        root = _path_param(p["root"], "data folder")
        mask_root = _path_param(p["mask_root"], "mask folder") if p["mask_root"] else None
        lab_path = _path_param(p["labels"], "labels file") if p["labels"] else root / "labels.csv"
        if not lab_path.exists():
            raise DataError(lab_path, "labels file not found (set labels: to its path)")
        try:
            labels = (pd.read_parquet(lab_path) if lab_path.suffix.lower() == ".parquet"
                      else pd.read_csv(lab_path, dtype=str, keep_default_na=False))
        except Exception as exc:
            raise DataError(lab_path, f"cannot read labels ({type(exc).__name__}: {exc})") from None
        for need in (p["patient_column"], p["label_column"]):
            if need not in labels.columns:
                raise DataError(lab_path, f"labels file has no column {need!r}; its columns are "
                                          f"{list(labels.columns)}")
        labels = labels.astype(str)
        dup = labels[labels[p["patient_column"]].duplicated()]
        if len(dup):
            raise DataError(lab_path, f"patient {dup.iloc[0][p['patient_column']]!r} is listed twice")
        extra = [c for c in labels.columns if c not in (p["patient_column"], p["label_column"])]
        info = {r[p["patient_column"]].strip(): r for r in labels.to_dict("records")}
        records, problems = [], []
        folders = sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
                         key=lambda e: e.name)
        seen = set()
        for pdir in folders:
            pid = pdir.name
            if mask_root is not None and Path(pdir.path).resolve() == mask_root:
                continue
            if pid not in info:
                problems.append((pdir.path, f"patient folder {pid!r} has no row in {lab_path.name}"))
                continue
            seen.add(pid)
            row = info[pid]
            found = list(io.list_images(pdir.path, exclude_suffix=p["mask_suffix"]))
            if not found:
                problems.append((pdir.path, f"patient {pid!r} has no images"))
                continue
            for img in found:
                mask = _find_mask(img, root, mask_root, p["mask_suffix"])
                if mask is None and p["require_masks"]:
                    problems.append((str(img), f"no mask {img.stem + p['mask_suffix']} found"))
                    continue
                rec = {"image": img, "mask": mask, "patient": pid, "label": row[p["label_column"]].strip(),
                       "image_id": _image_id(img, root), "source": str(img)}
                rec.update({c: row[c] for c in extra})
                records.append(rec)
        for pid in info:
            if pid not in seen:
                problems.append((str(lab_path), f"patient {pid!r} has no images (no folder {root / pid})"))
        return Listing(records, problems, extra_files=[lab_path])


# -- the real data sets in ../shared/data ---------------------------------------------------------------
def _shared(path: str, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(p, f"the {name} data set was not found here (relative paths are relative to the "
                           f"current folder, {Path.cwd()}); run from the project root, or set "
                           f"path: to the folder (see docs/data.md)")
    return p.resolve()


WBC_TYPES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


class BCCDFields(FileDataset):
    """BCCD smear fields (640x480 JPEG) with the white cell masked, and the BCCD splits.

    ``split`` comes from ``splits/{train,val,test}.txt``; ``label`` is the white-cell type from
    ``wbc_types.csv`` (lower case; empty where the row is blank or lists two different types).
    Masks are grey with anti-aliased edges: read with a threshold (cell > 64, nucleus > 208).
    There are no patient ids: each image is its own patient.
    """

    name = "bccd_fields"
    version = "1"
    default_mask_spec = {"mode": "threshold", "cell": 64, "nucleus": 208}
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "default": "../shared/data/bccd-fields",
                     "description": "the bccd-fields folder"},
            "unlisted": {"enum": ["drop", "keep"], "default": "drop",
                         "description": "images in no split list: drop them, or keep them with split ''"},
            "limit": {"type": ["integer", "null"], "minimum": 1, "default": None,
                      "description": "keep only the first N images of each split (quick tries)"},
            "mask_spec": dict(MASK_SPEC, default=None, type=["object", "null"]),
            "validate": VALIDATE,
            "on_error": ON_ERROR,
        },
        "additionalProperties": False,
    }

    def root_for_errors(self) -> str:
        return str(self.params["path"])

    def listing(self) -> Listing:
        p = self.params
        root = _shared(p["path"], "bccd-fields")
        split_of: dict[str, str] = {}
        for part in ("train", "val", "test"):
            f = root / "splits" / f"{part}.txt"
            if not f.exists():
                raise DataError(f, "split list not found")
            for line in f.read_text().split():
                split_of[line.strip()] = part
        types = {}
        tf = root / "wbc_types.csv"
        if tf.exists():
            wt = pd.read_csv(tf, dtype=str, keep_default_na=False)
            for img, cat in zip(wt["Image"], wt["Category"]):
                kinds = {c.strip().lower() for c in cat.split(",") if c.strip()}
                types[int(img)] = kinds.pop() if len(kinds) == 1 else ""
        records, problems, counts = [], [], {}
        for img in io.list_images(root / "images"):
            stem = img.stem
            split = split_of.get(stem, "")
            if not split and p["unlisted"] == "drop":
                continue
            if p["limit"] and counts.get(split, 0) >= p["limit"]:
                continue
            counts[split] = counts.get(split, 0) + 1
            num = stem.rsplit("_", 1)[-1]
            mask = root / "masks" / f"BloodImage_Mask_{num}.png"
            if not mask.exists():
                problems.append((str(img), f"no mask {mask.name}"))
                continue
            records.append({"image": img, "mask": mask, "patient": stem, "image_id": stem, "source": str(img),
                            "label": types.get(int(num), "") if num.isdigit() else "", "split": split})
        return Listing(records, problems, extra_files=[root / "splits" / "train.txt", root / "splits" / "val.txt",
                                                       root / "splits" / "test.txt"], patients_are_images=True)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        out = super().run(ctx)
        out["images"].meta["classes"] = [c for c in WBC_TYPES if (out["images"].table["label"] == c).any()]
        out["images"].save()
        return out


class WBCCrops(FileDataset):
    """Single white-cell crops (Zheng et al. 2018) with nucleus/cytoplasm masks and 5 cell types.

    Subsets ``tecom`` (rapid stain, ~120 px) and ``cellavision`` (standard stain, 300 px); the
    subset is the ``site`` column, so ``column_split`` with ``column: site`` trains on one and
    tests on the other. Masks: 0 background, 128 cytoplasm, 255 nucleus (a few files carry small
    stray values, hence a threshold). Each image is its own patient.
    """

    name = "wbc_crops"
    version = "1"
    default_mask_spec = {"mode": "threshold", "cell": 64, "nucleus": 192}
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "default": "../shared/data/wbc-crops", "description": "the wbc-crops folder"},
            "subsets": {"type": "array", "items": {"enum": ["tecom", "cellavision"]}, "minItems": 1,
                        "uniqueItems": True, "default": ["tecom", "cellavision"], "description": "which subsets"},
            "classes": {"type": "array", "items": {"enum": WBC_TYPES}, "minItems": 1, "uniqueItems": True,
                        "default": WBC_TYPES, "description": "cell types to keep (others are left out)"},
            "limit": {"type": ["integer", "null"], "minimum": 1, "default": None,
                      "description": "keep only the first N images of each subset (quick tries)"},
            "mask_spec": dict(MASK_SPEC, default=None, type=["object", "null"]),
            "validate": VALIDATE,
            "on_error": ON_ERROR,
        },
        "additionalProperties": False,
    }

    def root_for_errors(self) -> str:
        return str(self.params["path"])

    def listing(self) -> Listing:
        p = self.params
        root = _shared(p["path"], "wbc-crops")
        records, problems, extra = [], [], []
        for sub in p["subsets"]:
            lab = root / sub / "labels.csv"
            if not lab.exists():
                raise DataError(lab, "labels file not found")
            extra.append(lab)
            df = pd.read_csv(lab, dtype=str)
            df.columns = [c.strip() for c in df.columns]
            if len(df.columns) < 2:
                raise DataError(lab, "expected two columns: image ID and class label")
            n = 0
            for i, (iid, code) in enumerate(zip(df.iloc[:, 0], df.iloc[:, 1])):
                try:
                    label = WBC_TYPES[int(code) - 1]
                except (ValueError, IndexError):
                    problems.append((f"{lab}:{i + 2}", f"class label {code!r} is not 1-5"))
                    continue
                if label not in p["classes"]:
                    continue
                if p["limit"] and n >= p["limit"]:
                    break
                stem = f"{int(iid):03d}"
                img = root / sub / f"{stem}.bmp"
                mask = root / sub / f"{stem}.png"
                if not img.exists():
                    problems.append((f"{lab}:{i + 2}", f"image {img} not found"))
                    continue
                n += 1
                records.append({"image": img, "mask": mask if mask.exists() else None, "label": label,
                                "image_id": f"{sub}/{stem}", "patient": f"{sub}/{stem}", "source": str(img),
                                "site": sub})
        return Listing(records, problems, extra_files=extra, patients_are_images=True)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        out = super().run(ctx)
        counts = out["images"].table["label"].value_counts()
        few = [f"{c} ({int(counts.get(c, 0))})" for c in self.params["classes"] if counts.get(c, 0) < 10]
        if few:
            msg = (f"too few images to learn or evaluate these classes reliably: {', '.join(few)}; "
                   "consider classes: without them")
            ctx.warn(msg)
            ctx.report.text("Rare classes", msg, section="data")
        return out


@hookimpl
def register_datasets(register: Any) -> None:
    register(SyntheticSmears)
    register(Manifest)
    register(ClassFolders)
    register(PatientFolders)
    register(BCCDFields)
    register(WBCCrops)
