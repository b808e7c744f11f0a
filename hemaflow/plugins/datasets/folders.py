"""Readers of your own data: ``manifest`` (a CSV/Parquet list), ``class_folders`` and ``patient_folders``.

* ``manifest``: a CSV/Parquet file with ``image, patient, label[, mask][, split]``.
* ``class_folders``: ``<root>/<split>/<CLASS>/<image>``, masks in a parallel tree.
* ``patient_folders``: ``<root>/<patient>/.../<image>`` plus a labels CSV (patient -> label).

Each lists its records; validation, ``on_error`` and the ImageSet are :class:`.common.FileDataset`'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib import imageio as io
from hemaflow.plugins.datasets.common import CLASSES, MASK_SPEC, ON_ERROR, VALIDATE, FileDataset, Listing, _schema


# -- shared by the three readers -----------------------------------------------------------------------
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
    root_param = "path"
    schema = _schema({
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
    })

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

        real_base = base.resolve()

        def resolve(value: str, src: str) -> tuple[Path | None, str | None]:
            rel = Path(value)
            path = Path(os.path.normpath(rel if rel.is_absolute() else base / rel))
            if not p["allow_outside"] and not path.is_relative_to(base):
                return None, f"path {value!r} points outside the manifest's folder {base}"
            # checked on the resolved path too: a symbolic link inside the folder must not lead out of it
            if not p["allow_outside"] and not path.resolve().is_relative_to(real_base):
                return None, (f"path {value!r} leads outside the manifest's folder {base} through a symbolic link "
                              f"(to {path.resolve()}); set allow_outside: true to allow it")
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


# -- folder trees: class_folders, patient_folders -------------------------------------------------------
def _roots(p: dict[str, Any]) -> tuple[Path, Path | None]:
    """The data folder and the mask folder (None: masks beside their images)."""
    root = _path_param(p["root"], "data folder")
    return root, _path_param(p["mask_root"], "mask folder") if p["mask_root"] else None


def _subfolders(path: str | Path, ignored: list[Path] | None = None,
                expected: tuple[Path, ...] = ()) -> list[os.DirEntry]:
    """The folders in ``path``, sorted by name. Hidden ones and :data:`io.IGNORED_FOLDERS`
    (``__MACOSX``) are left out, and so are files; both are appended to ``ignored`` when given,
    except the files in ``expected`` (the labels file)."""
    out = []
    for e in sorted(os.scandir(path), key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith(".") and e.name not in io.IGNORED_FOLDERS:
            out.append(e)
        elif ignored is not None and Path(e.path) not in expected:
            ignored.append(Path(e.path))
    return out


def _mask_of(img: Path, root: Path, mask_root: Path | None, p: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The mask of ``img`` (None when it has none), or the problem when ``require_masks`` and it has none."""
    mask = _find_mask(img, root, mask_root, p["mask_suffix"])
    if mask is None and p["require_masks"]:
        return None, f"no mask {img.stem + p['mask_suffix']} found"
    return mask, None


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
    root_param = "root"
    schema = _schema({
        "root": {"type": "string", "default": "data", "description": "the data folder"},
        "split_level": {"enum": ["auto", "yes", "no"], "default": "auto",
                        "description": "whether the first folder level is the split (train/val/test); "
                                       "auto: yes when every sub-folder has a split name"},
        "patient_pattern": {"type": ["string", "null"], "default": None,
                            "description": "regular expression with a (?P<patient>...) group matched "
                                           "against the image file name; null: each image is a patient"},
        **MASKS_PARALLEL,
        **COMMON,
    })

    def listing(self) -> Listing:
        p = self.params
        root, mask_root = _roots(p)
        ignored: list[Path] = []
        subdirs = [e.name for e in _subfolders(root, ignored)]
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
            for cdir in _subfolders(folder, ignored if split is not None else None):
                for img in io.list_images(cdir.path, exclude_suffix=p["mask_suffix"], ignored=ignored):
                    mask, err = _mask_of(img, root, mask_root, p)
                    if err:
                        problems.append((str(img), err))
                        continue
                    iid = _image_id(img, root)
                    rec = {"image": img, "mask": mask, "label": cdir.name, "image_id": iid, "source": str(img),
                           "patient": _patient_from_name(pattern, img, iid)}
                    if split is not None:
                        rec["split"] = split
                    records.append(rec)
        return Listing(records, problems, patients_are_images=pattern is None, ignored=ignored)


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
    root_param = "root"
    schema = _schema({
        "root": {"type": "string", "default": "data", "description": "folder with one sub-folder per patient"},
        "labels": {"type": ["string", "null"], "default": None,
                   "description": "CSV (or Parquet) with patient -> diagnosis; null: <root>/labels.csv"},
        "patient_column": {"type": "string", "default": "patient", "description": "patient id column"},
        "label_column": {"type": "string", "default": "diagnosis", "description": "diagnosis column"},
        **MASKS_PARALLEL,
        **COMMON,
    })

    def listing(self) -> Listing:
        p = self.params
        root, mask_root = _roots(p)
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
        ignored: list[Path] = []
        folders = _subfolders(root, ignored, expected=(lab_path.resolve(),))
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
            found = list(io.list_images(pdir.path, exclude_suffix=p["mask_suffix"], ignored=ignored))
            if not found:
                problems.append((pdir.path, f"patient {pid!r} has no images"))
                continue
            for img in found:
                mask, err = _mask_of(img, root, mask_root, p)
                if err:
                    problems.append((str(img), err))
                    continue
                rec = {"image": img, "mask": mask, "patient": pid, "label": row[p["label_column"]].strip(),
                       "image_id": _image_id(img, root), "source": str(img)}
                rec.update({c: row[c] for c in extra})
                records.append(rec)
        for pid in info:
            if pid not in seen:
                problems.append((str(lab_path), f"patient {pid!r} has no images (no folder {root / pid})"))
        return Listing(records, problems, extra_files=[lab_path], ignored=ignored)


@hookimpl
def register_datasets(register: Any) -> None:
    register(Manifest)
    register(ClassFolders)
    register(PatientFolders)
