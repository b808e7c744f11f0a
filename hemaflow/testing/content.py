"""What each artifact type promises, checked on a component's outputs, and content comparison
(for the determinism and cache round-trip checks)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Artifact, Metrics, Model, Predictions, TableArtifact
from hemaflow.core.errors import HemaflowError
from hemaflow.testing.subject import Run, Subject, fail


# -- content of artifacts ---------------------------------------------------------------------
def _input_patients(run: Run) -> set[str] | None:
    ids = set()
    for art in run.inputs.values():
        if isinstance(art, TableArtifact) and "patient_id" in art.table.columns:
            ids |= set(art.table["patient_id"].astype(str))
    return ids or None


def _input_images(run: Run):
    from hemaflow.plugins.artifacts import ImageSet

    return next((a for a in run.inputs.values() if isinstance(a, ImageSet)), None)


def check_artifact_content(s: Subject, name: str, art: Artifact, run: Run) -> None:
    """Type-specific checks of one output artifact (the promises of each built-in type)."""
    from hemaflow.plugins import artifacts as A

    label = f"output {name!r} ({type(art).__name__})"
    if isinstance(art, TableArtifact):
        missing = [c for c in art.required_columns if c not in art.table.columns]
        if missing:
            fail(s, f"{label} lacks column(s) {missing}; keep the id columns of the input rows "
                    f"(e.g. table['patient_id'] = input.table['patient_id'])")
        if "patient_id" in art.required_columns:
            if art.table["patient_id"].isna().any():
                fail(s, f"{label} has empty patient_id values; every row needs its patient")
            known = _input_patients(run)
            if known is not None and not set(art.table["patient_id"].astype(str)) <= known:
                extra = sorted(set(art.table["patient_id"].astype(str)) - known)[:3]
                fail(s, f"{label} has patient ids {extra} that are in none of its inputs; keep patient_id as given")
    images = _input_images(run)
    if isinstance(art, A.ImageSet):
        _check_images(s, label, art, images if s.cls.kind == "normalizer" else None)
    elif isinstance(art, A.MaskSet):
        _check_masks(s, label, art, images)
    elif isinstance(art, A.CellSet):
        _check_cells(s, label, art)
    elif isinstance(art, A.FeatureTable):
        _check_features(s, label, art)
    elif isinstance(art, A.Split):
        _check_split(s, label, art, run)
    elif isinstance(art, Predictions):
        _check_predictions(s, label, art)
    elif isinstance(art, Metrics):
        _check_metrics(s, label, art.values)
    elif isinstance(art, Model) and not art.path.is_dir():
        fail(s, f"{label} has no folder at {art.path}; write the model files below ctx.out_dir({name!r})")


def _check_images(s: Subject, label: str, art: Any, source: Any) -> None:
    from hemaflow.lib import imageio as io

    fix = ("write RGB uint8 HxWx3 image files with hemaflow.lib.imageio.write_png(path, "
           "np.clip(img, 0, 255).astype(np.uint8))")
    for _, row in art.table.iterrows():
        path = art.resolve(row["path"])
        if not path.is_file():
            fail(s, f"{label}: image {row['image_id']!r} points at {path}, which does not exist; store paths relative "
                    f"to the artifact folder or absolute")
        if path.suffix.lower() == ".npy":
            arr = np.load(path)
            fail(s, f"{label}: image {row['image_id']!r} is stored as {path.name} ({arr.dtype} {arr.shape}), which no "
                    f"image reader opens; {fix}")
        try:
            raw = io.read_array(path)
        except HemaflowError as exc:
            fail(s, f"{label}: image {row['image_id']!r} cannot be read: {exc}; {fix}")
        if raw.dtype != np.uint8:
            fail(s, f"{label}: image {row['image_id']!r} is stored as {raw.dtype}; {fix}")
        img = art.read_image(row)
        if img.ndim != 3 or img.shape[2] != 3:
            fail(s, f"{label}: image {row['image_id']!r} reads as shape {img.shape}; {fix}")
    if source is not None:
        want, got = list(source.table["image_id"]), list(art.table["image_id"])
        if sorted(map(str, want)) != sorted(map(str, got)):
            fail(s, f"{label} has images {got[:4]}... but its input has {want[:4]}...; a normalizer keeps every "
                    f"row (same image_id, patient_id, label)")
        for _, row in source.table.iterrows():
            a, b = source.read_image(row), art.read_image(str(row["image_id"]))
            if a.shape != b.shape:
                fail(s, f"{label}: image {row['image_id']!r} is {b.shape[:2]}, its input {a.shape[:2]}; keep the size")


def _check_masks(s: Subject, label: str, art: Any, images: Any) -> None:
    from hemaflow.lib import imageio as io

    if images is not None:
        want, got = set(images.table["image_id"].astype(str)), set(art.table["image_id"].astype(str))
        if want != got:
            fail(s, f"{label} covers images {sorted(got)[:4]} but its input has {sorted(want)[:4]}; one mask per "
                    f"image (an image without cells gets an all-zero mask)")
    for _, row in art.table.iterrows():
        path = art.resolve(row["path"])
        raw = np.load(path) if path.suffix == ".npy" else io.read_array(path)
        if not np.issubdtype(raw.dtype, np.integer) or raw.ndim != 2:
            fail(s, f"{label}: mask {row['image_id']!r} is stored as {raw.dtype} {raw.shape}; masks are integer HxW "
                    f"(uint8 0 background, 1 cytoplasm, 2 nucleus): write them with write_png(path, mask.astype(np.uint8))")
        bad = sorted(set(np.unique(raw).tolist()) - {0, 1, 2})
        if bad:
            fail(s, f"{label}: mask {row['image_id']!r} holds values {bad[:5]}; only 0 (background), 1 (cytoplasm) and "
                    f"2 (nucleus) are allowed (instance labels go to instances_path as int32 .npy)")
        if images is not None and str(row["image_id"]) in set(images.table["image_id"].astype(str)):
            shape = images.read_image(str(row["image_id"])).shape[:2]
            if raw.shape != shape:
                fail(s, f"{label}: mask {row['image_id']!r} is {raw.shape}, its image {shape}; masks match their image")
        inst = art.read_instances(str(row["image_id"]))
        if inst is not None and (not np.issubdtype(inst.dtype, np.integer) or inst.shape != raw.shape):
            fail(s, f"{label}: instances of {row['image_id']!r} are {inst.dtype} {inst.shape}; store int32 labels "
                    f"of the mask's shape")


def _check_cells(s: Subject, label: str, art: Any) -> None:
    try:
        crops, masks = art.crops, art.crop_masks
    except (OSError, ValueError) as exc:
        fail(s, f"{label}: crops.npy / crop_masks.npy missing or unreadable ({exc}); save them in the artifact folder")
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        fail(s, f"{label}: crops.npy is {crops.dtype} {crops.shape}; it must be uint8 (N, S, S, 3)")
    if masks.dtype != np.uint8 or masks.shape != crops.shape[:3]:
        fail(s, f"{label}: crop_masks.npy is {masks.dtype} {masks.shape}; it must be uint8 {crops.shape[:3]}")
    if len(masks) and not set(np.unique(masks).tolist()) <= {0, 1, 2}:
        fail(s, f"{label}: crop_masks.npy holds values other than 0, 1, 2")
    idx = art.table["crop_index"]
    if len(idx) and (idx.min() < 0 or idx.max() >= len(crops)):
        fail(s, f"{label}: crop_index runs {idx.min()}..{idx.max()} but there are {len(crops)} crops")
    if art.table["cell_id"].duplicated().any():
        fail(s, f"{label}: cell_id values repeat; each cell needs its own id (e.g. '<image_id>:<k>')")


def _check_features(s: Subject, label: str, art: Any) -> None:
    cols = art.feature_columns
    if not cols:
        fail(s, f"{label} has no meta['feature_columns']; list the feature columns in order")
    missing = [c for c in cols if c not in art.table.columns]
    if missing:
        fail(s, f"{label}: feature columns {missing[:5]} are listed in meta but not in the table")
    for c in cols:
        if not pd.api.types.is_numeric_dtype(art.table[c]):
            fail(s, f"{label}: feature column {c!r} is {art.table[c].dtype}; features are numbers")
    if len(cols) and np.isinf(art.table[cols].to_numpy(dtype=float)).any():
        fail(s, f"{label} holds infinite feature values; guard divisions (e.g. np.divide(..., where=den > 0))")


def _check_split(s: Subject, label: str, art: Any, run: Run) -> None:
    known = _input_patients(run) or set()
    for fold, g in art.table.groupby("fold"):
        if g["patient_id"].duplicated().any():
            fail(s, f"{label}: a patient appears twice in fold {fold}")
        if known and set(g["patient_id"].astype(str)) != known:
            fail(s, f"{label}: fold {fold} leaves out patients {sorted(known - set(g['patient_id'].astype(str)))[:3]}; "
                    f"every patient gets a partition in every fold")


def _check_predictions(s: Subject, label: str, art: Predictions) -> None:
    t, classes = art.table, art.classes
    if not classes:
        fail(s, f"{label} has no meta['classes']; list the classes in probability-column order")
    bad = sorted(set(t["level"].astype(str)) - {"patient", "image", "cell"})
    if bad:
        fail(s, f"{label}: level {bad} is not one of patient, image, cell")
    probs = [f"prob_{c}" for c in classes]
    missing = [p for p in probs if p not in t.columns]
    if missing:
        fail(s, f"{label} lacks probability columns {missing}")
    if len(t):
        p = t[probs].to_numpy(dtype=float)
        if not np.isfinite(p).all() or (p < -1e-6).any() or (p > 1 + 1e-6).any():
            fail(s, f"{label}: probabilities must be finite numbers in [0, 1]; found {p[~np.isfinite(p)][:3]} "
                    f"or values outside")
        if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
            fail(s, f"{label}: probabilities of a row must sum to 1 (softmax them); first sums "
                    f"{np.round(p.sum(axis=1)[:3], 3).tolist()}")
        unknown = sorted(set(t["y_pred"].astype(str)) - set(map(str, classes)))
        if unknown:
            fail(s, f"{label}: y_pred holds {unknown}, which are not in meta['classes'] {classes}")


def _check_metrics(s: Subject, label: str, values: Any, path: str = "") -> None:
    if path == "" and not isinstance(values, dict):
        fail(s, f"{label}: values must be a dict of sections (patient, image, cell, segmentation, folds)")
    if isinstance(values, dict):
        for k, v in values.items():
            _check_metrics(s, label, v, f"{path}/{k}")
    elif isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            _check_metrics(s, label, v, f"{path}/{i}")
    elif isinstance(values, float) and math.isinf(values):
        fail(s, f"{label}: {path} is infinite")
    elif not isinstance(values, (str, int, float, bool, type(None), np.integer, np.floating)):
        fail(s, f"{label}: {path} is a {type(values).__name__}; metrics hold numbers, strings, lists and dicts")


# -- comparing artifacts ----------------------------------------------------------------------
def _digest(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()[:12]


def _normal_table(art: Artifact, workdir: Path) -> pd.DataFrame:
    from hemaflow.plugins import artifacts as A
    from hemaflow.lib import imageio as io

    t = art.table.reset_index(drop=True).copy()
    for col in t.columns:
        if not (col == "path" or col.endswith("_path")):
            continue
        vals = []
        for v in t[col]:
            if not isinstance(v, str) or not v:
                vals.append(v)
                continue
            p = art.resolve(v)
            if not p.is_file():
                vals.append(v.replace(str(workdir), "<workdir>"))
                continue
            try:  # compare pixels, not encodings (a PNG's bytes may carry a timestamp)
                if p.suffix == ".npy":
                    arr = np.load(p)
                elif isinstance(art, (A.ImageSet, A.MaskSet)):
                    arr = io.read_array(p)
                else:
                    arr = np.frombuffer(p.read_bytes(), np.uint8)
            except Exception:
                arr = np.frombuffer(p.read_bytes(), np.uint8)
            vals.append(_digest(arr))
        t[col] = vals
    return t


def _json_default(obj: Any) -> Any:
    """How meta.json stores a value, except that anything it would store as its repr stays marked."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return f"<unsaveable {type(obj).__name__}>"


def _normal_meta(meta: dict[str, Any], workdir: Path) -> Any:
    text = json.dumps(meta, sort_keys=True, default=_json_default).replace(str(Path(workdir).resolve()), "<workdir>")
    return json.loads(text.replace(str(workdir), "<workdir>"))


def _frames_differ(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} vs {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            if not np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-5, atol=1e-7, equal_nan=True):
                i = int(np.argmax(~np.isclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-5, atol=1e-7,
                                              equal_nan=True)))
                return f"column {col!r} row {i}: {x.iloc[i]!r} vs {y.iloc[i]!r}"
        else:
            xs, ys = x.astype(str).tolist(), y.astype(str).tolist()
            if xs != ys:
                i = next(k for k in range(len(xs)) if xs[k] != ys[k])
                return f"column {col!r} row {i}: {xs[i]!r} vs {ys[i]!r}"
    return None


def compare_content(a: Artifact, b: Artifact, wa: Path, wb: Path, *, round_trip: bool = False) -> str | None:
    """A short description of how the content of ``a`` and ``b`` differs, or None when equal."""
    from hemaflow.plugins import artifacts as A

    if type(a) is not type(b) and not round_trip:
        return f"{type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, TableArtifact):
        d = _frames_differ(_normal_table(a, wa), _normal_table(b, wb))
        if d:
            return d
    if isinstance(a, Metrics):
        d = _values_differ(a.values, b.values)
        if d:
            return d
    if isinstance(a, A.CellSet):
        for attr in ("crops", "crop_masks"):
            if not np.array_equal(getattr(a, attr), getattr(b, attr)):
                return f"{attr}.npy differs"
    ma, mb = _normal_meta(a.meta, wa), _normal_meta(b.meta, wb)
    if not isinstance(a, Model) and _values_differ(ma, mb):
        return f"meta {_values_differ(ma, mb)}"
    if isinstance(a, Model):
        fa = sorted(p.relative_to(a.path).as_posix() for p in a.path.rglob("*") if p.is_file())
        fb = sorted(p.relative_to(b.path).as_posix() for p in b.path.rglob("*") if p.is_file())
        if fa != fb:
            return f"model files {fa} vs {fb}"
    return None


def _values_differ(x: Any, y: Any, path: str = "") -> str | None:
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return f"{path or '/'}: keys {sorted(map(str, x))} vs {sorted(map(str, y))}"
        for k in x:
            d = _values_differ(x[k], y[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return f"{path}: {len(x)} vs {len(y)} items"
        for i, (u, v) in enumerate(zip(x, y)):
            d = _values_differ(u, v, f"{path}/{i}")
            if d:
                return d
        return None
    if isinstance(x, (int, float, np.number)) and isinstance(y, (int, float, np.number)) \
            and not isinstance(x, bool) and not isinstance(y, bool):
        if (math.isnan(float(x)) and math.isnan(float(y))) or math.isclose(float(x), float(y), rel_tol=1e-5,
                                                                               abs_tol=1e-7):
            return None
        return f"{path}: {x!r} vs {y!r}"
    return None if x == y else f"{path}: {x!r} vs {y!r}"
