"""Tiny artifacts of every built-in type, written on demand, for running components in tests.

:class:`Fixtures` builds a coherent little world in a folder: 12 smear fields (64 x 64 RGB uint8,
two white cells and a red cell each) of 6 patients in two classes (``ALL`` and ``normal``, three
patients each, two images per patient) with ground-truth masks, and everything derived from it:
a :class:`~hemaflow.plugins.artifacts.MaskSet`, a :class:`~hemaflow.plugins.artifacts.CellSet`
(4 cells per patient: each patient's *bag*), a :class:`~hemaflow.plugins.artifacts.FeatureTable`,
a two-fold :class:`~hemaflow.plugins.artifacts.Split` and patient- and image-level
:class:`~hemaflow.core.artifacts.Predictions`. Everything is built lazily, once.

Edge cases are variants of the same world (``Fixtures(root, variant=...)``):

``grey_image``      one uniform grey image (no cells; an all-zero ground-truth mask)
``empty_mask``      the masks of the first patient's images are all background
``bag_of_one``      patient ``p1`` has a single cell
``empty_bag``       patient ``p1`` is in the split but has no cell at all
``one_class_fold``  fold 0 tests only ``ALL`` patients; predictions of that fold hold one class

Example::

    >>> import tempfile
    >>> from hemaflow.testing.fixtures import Fixtures
    >>> fx = Fixtures(tempfile.mkdtemp())
    >>> fx.images.summary()
    'ImageSet (12 images, 6 patients, 2 classes)'
    >>> fx.cells.crops.shape
    (24, 24, 24, 3)
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CLASSES = ("ALL", "normal")
PATIENTS = ("p0", "p1", "p2", "p3", "p4", "p5")  # p0, p2, p4 are ALL; p1, p3, p5 normal
SIZE = 64
CROP = 24
VARIANTS = ("default", "grey_image", "empty_mask", "bag_of_one", "empty_bag", "one_class_fold")

_PARTITION = {"p0": "test", "p1": "test", "p2": "val", "p3": "val", "p4": "train", "p5": "train"}
_BG, _RBC, _CYTO = (228, 226, 214), (214, 140, 150), (196, 178, 214)


def _label(pid: str) -> str:
    return CLASSES[int(pid[1:]) % 2]


def smear_field(seed: int, abnormal: bool) -> tuple[np.ndarray, np.ndarray]:
    """One 64 x 64 field: RGB uint8 image and its uint8 mask (0 background, 1 cytoplasm, 2 nucleus).

    Two white cells (radius 9) and a red cell; abnormal (``ALL``) cells have larger, darker nuclei.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = _BG
    mask = np.zeros((SIZE, SIZE), np.uint8)
    img[(yy - 50) ** 2 + (xx - 50) ** 2 <= 64] = _RBC
    nucleus = (0.75 if abnormal else 0.5) * 9
    nuc_colour = (70, 30, 140) if abnormal else (110, 70, 170)
    for cy, cx in ((18 + rng.integers(-2, 3), 18 + rng.integers(-2, 3)), (40, 44)):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        cell, nuc = d2 <= 81, d2 <= nucleus ** 2
        img[cell] = _CYTO
        img[nuc] = nuc_colour
        mask[cell] = 1
        mask[nuc] = 2
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


class Fixtures:
    """Lazily built tiny artifacts in ``root`` (one sub-folder per artifact).

    Attributes are built on first access and kept: ``images``, ``masks``, ``cells``,
    ``features``, ``split``, ``predictions``, ``metrics``, ``table``. :meth:`for_type` returns
    the fixture for an artifact type name (None when the kit has none, e.g. ``Model``).
    """

    def __init__(self, root: Path | str, *, variant: str = "default") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown fixture variant {variant!r}; one of {', '.join(VARIANTS)}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.variant = variant

    # -- images ------------------------------------------------------------------------------
    @cached_property
    def images(self):
        """ImageSet: 12 PNG fields of 6 patients with canonical ground-truth masks (absolute paths)
        and a user-given ``split`` column (fold 0 of :attr:`split`)."""
        from hemaflow.plugins.artifacts import ImageSet
        from hemaflow.lib.imageio import write_png

        folder = self.root / "images"
        (folder / "files").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(12):
            pid = PATIENTS[i // 2]
            iid = f"{pid}_im{i % 2}"
            img, mask = smear_field(i, _label(pid) == "ALL")
            if self.variant == "grey_image" and i == 0:
                img, mask = np.full_like(img, 128), np.zeros_like(mask)
            write_png(folder / "files" / f"{iid}.png", img)
            write_png(folder / "files" / f"{iid}_mask.png", mask)
            rows.append({"image_id": iid, "patient_id": pid, "label": _label(pid), "split": _PARTITION[pid],
                         "path": str((folder / "files" / f"{iid}.png").resolve()),
                         "mask_path": str((folder / "files" / f"{iid}_mask.png").resolve())})
        meta = {"classes": list(CLASSES), "mask_spec": {"mode": "canonical"}, "patients_are_images": False}
        return ImageSet(folder, pd.DataFrame(rows), meta).save()

    @cached_property
    def masks(self):
        """MaskSet: the ground-truth masks as predicted masks (``empty_mask``: p0's are empty)."""
        from hemaflow.plugins.artifacts import MaskSet
        from hemaflow.lib.imageio import write_png

        folder = self.root / "masks"
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for _, r in self.images.table.iterrows():
            mask = self.images.read_mask(r)
            if self.variant == "empty_mask" and r["patient_id"] == "p0":
                mask = np.zeros_like(mask)
            write_png(folder / f"{r['image_id']}.png", mask)
            rows.append({"image_id": r["image_id"], "path": f"{r['image_id']}.png"})
        return MaskSet(folder, pd.DataFrame(rows), {"source": "hemaflow.testing"}).save()

    # -- cells and bags ----------------------------------------------------------------------
    @cached_property
    def cells(self):
        """CellSet: one 24 x 24 crop per white cell of :attr:`masks` (4 per patient: the bags)."""
        from scipy import ndimage as ndi

        from hemaflow.plugins.artifacts import CellSet

        folder = self.root / "cells"
        folder.mkdir(parents=True, exist_ok=True)
        rows, crops, crop_masks = [], [], []
        h = CROP // 2
        for _, r in self.images.table.iterrows():
            pid = r["patient_id"]
            img, mask = self.images.read_image(r), self.masks.read_mask(r["image_id"])
            labels, n = ndi.label(mask > 0)
            for k, (sy, sx) in enumerate(ndi.find_objects(labels), start=1):
                if self.variant == "empty_bag" and pid == "p1":
                    continue
                if self.variant == "bag_of_one" and pid == "p1" and (r["image_id"].endswith("im1") or k > 1):
                    continue
                cy, cx = (sy.start + sy.stop) // 2, (sx.start + sx.stop) // 2
                y0, x0 = min(max(cy - h, 0), SIZE - CROP), min(max(cx - h, 0), SIZE - CROP)
                own = np.where(labels == k, mask, 0)
                rows.append({"cell_id": f"{r['image_id']}:{k}", "image_id": r["image_id"], "patient_id": pid,
                             "label": r["label"], "bbox_y0": sy.start, "bbox_x0": sx.start, "bbox_y1": sy.stop,
                             "bbox_x1": sx.stop, "centroid_y": float(cy), "centroid_x": float(cx),
                             "area": int((labels == k).sum()), "nucleus_area": int((own == 2).sum()),
                             "crop_index": len(crops)})
                crops.append(img[y0:y0 + CROP, x0:x0 + CROP])
                crop_masks.append(own[y0:y0 + CROP, x0:x0 + CROP].astype(np.uint8))
        np.save(folder / "crops.npy", np.array(crops, np.uint8).reshape(-1, CROP, CROP, 3))
        np.save(folder / "crop_masks.npy", np.array(crop_masks, np.uint8).reshape(-1, CROP, CROP))
        columns = ["cell_id", "image_id", "patient_id", "label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
                   "centroid_y", "centroid_x", "area", "nucleus_area", "crop_index"]
        meta = {"crop_size": CROP, "classes": list(CLASSES), "patients_are_images": False}
        return CellSet(folder, pd.DataFrame(rows, columns=columns), meta).save()

    @cached_property
    def features(self):
        """FeatureTable: 6 colour and shape features per cell of :attr:`cells`."""
        from hemaflow.plugins.artifacts import FeatureTable

        cells = self.cells
        feats = []
        for k in cells.table["crop_index"]:
            crop, m = cells.crops[int(k)].astype(np.float64), cells.crop_masks[int(k)]
            px = crop[m > 0] if (m > 0).any() else crop.reshape(-1, 3)
            feats.append([*px.mean(axis=0), float((m > 0).sum()), float((m == 2).sum()) / max(int((m > 0).sum()), 1),
                          float(px.mean(axis=1).std())])
        cols = ["mean_r", "mean_g", "mean_b", "area", "nucleus_fraction", "grey_std"]
        ids = cells.table[["cell_id", "image_id", "patient_id", "label"]].reset_index(drop=True)
        table = pd.concat([ids, pd.DataFrame(np.array(feats).reshape(-1, len(cols)), columns=cols)], axis=1)
        meta = {"feature_columns": cols, "classes": list(CLASSES), "source": "hemaflow.testing"}
        return FeatureTable(self.root / "features", table, meta).save()

    # -- split and predictions ---------------------------------------------------------------
    @cached_property
    def split(self):
        """Split: two folds over the 6 patients, each with train, val and test of both classes
        (``one_class_fold``: fold 0 tests p0 and p2, both ALL)."""
        from hemaflow.plugins.artifacts import Split

        folds = [{"test": ("p0", "p1"), "val": ("p2", "p3"), "train": ("p4", "p5")},
                 {"test": ("p2", "p3"), "val": ("p4", "p5"), "train": ("p0", "p1")}]
        if self.variant == "one_class_fold":
            folds[0] = {"test": ("p0", "p2"), "val": ("p1", "p3"), "train": ("p4", "p5")}
        rows = [{"fold": f, "patient_id": p, "partition": part}
                for f, parts in enumerate(folds) for part, ps in parts.items() for p in ps]
        return Split(self.root / "split", pd.DataFrame(rows), {"kind": "holdout", "n_folds": 2,
                                                               "patients_are_images": False}).save()

    @cached_property
    def predictions(self):
        """Predictions of every fold's test patients (patient level) and their images (image level)."""
        from hemaflow.core.artifacts import Predictions

        rng = np.random.default_rng(0)
        test = self.split.table[self.split.table["partition"] == "test"]
        rows = []
        for _, t in test.iterrows():
            pid, truth = t["patient_id"], _label(t["patient_id"])
            units = [(pid, "patient")] + [(f"{pid}_im{i}", "image") for i in range(2)]
            for uid, level in units:
                p_all = float(np.clip((0.7 if truth == "ALL" else 0.3) + rng.normal(0, 0.15), 0.01, 0.99))
                rows.append({"id": uid, "level": level, "fold": int(t["fold"]), "patient_id": pid, "y_true": truth,
                             "y_pred": "ALL" if p_all >= 0.5 else "normal", "prob_ALL": p_all,
                             "prob_normal": 1.0 - p_all})
        return Predictions(self.root / "predictions", pd.DataFrame(rows), {"classes": list(CLASSES)}).save()

    @cached_property
    def metrics(self):
        """Metrics: a patient section."""
        from hemaflow.core.artifacts import Metrics

        return Metrics(self.root / "metrics", {"patient": {"accuracy": 0.5, "n": 4}}).save()

    @cached_property
    def table(self):
        """A generic Table: one row per patient."""
        from hemaflow.core.artifacts import TableArtifact

        return TableArtifact(self.root / "table", pd.DataFrame({"patient_id": list(PATIENTS)})).save()

    def for_type(self, type_name: str) -> Any:
        """The fixture for artifact type ``type_name`` or None (no built-in fixture for it)."""
        attr = {"ImageSet": "images", "MaskSet": "masks", "CellSet": "cells", "FeatureTable": "features",
                "Split": "split", "Predictions": "predictions", "Metrics": "metrics", "Table": "table"}.get(type_name)
        return getattr(self, attr) if attr else None

    # -- a run, as reporters and trackers receive it ------------------------------------------
    def run_dict(self, run_dir: Path | str) -> dict[str, Any]:
        """The ``run`` dict the runner hands reporters and trackers, for a small finished run."""
        import datetime as dt

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        preds = self.predictions.table.drop(columns=["patient_id"])
        preds.to_csv(run_dir / "predictions.csv", index=False)
        recipe = {"name": "conformance", "seed": 0, "steps": {"classify": {"uses": "fixture", "with": {"c": 1.0}}}}
        metrics = {"patient": {"accuracy": 0.75, "balanced_accuracy": 0.75, "macro_f1": 0.73, "auroc": 0.8, "n": 4},
                   "folds": [{"fold": 0, "patient": {"accuracy": 0.5, "n": 2}},
                             {"fold": 1, "patient": {"accuracy": 1.0, "n": 2}}]}
        return {
            "name": "conformance", "recipe": recipe,
            "recipe_yaml": "name: conformance\nseed: 0\nsteps:\n  classify:\n    uses: fixture\n",
            "provenance": {"hemaflow": "test", "seed": 0, "status": "ok",
                           "steps": {"classify": {"component": "fixture", "params": {"c": 1.0}, "cache_key": "0" * 16,
                                                  "cache_hit": False, "seconds": 0.1}}},
            "metrics": metrics, "predictions": preds, "duration_s": 1.0,
            "started": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).isoformat(), "run_dir": run_dir,
            "steps": [{"id": "classify", "component": "fixture", "kind": "classifier", "key": "0" * 16,
                       "cached": False, "seconds": 0.1, "params": {"c": 1.0}, "outputs": {}, "warnings": []}],
        }
