"""Image-science artifact types: ImageSet, MaskSet, CellSet, FeatureTable, Split.

Registered through the ``register_artifact_types`` hook like any plugin's types.

Conventions (everything downstream relies on them):
    * images are read as RGB uint8 arrays HxWx3 (grey is repeated, 16-bit is rescaled);
    * masks are read as uint8 HxW with 0 background, 1 cytoplasm, 2 nucleus (a binary mask
      reads as 0/1: cell without nucleus information);
    * instance masks are int32 HxW, 0 background, 1..N cells;
    * ids are strings; ``patient_id`` is always present (``== image_id`` when a data set has no
      patients, and ``meta["patients_are_images"]`` is then True).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import TableArtifact
from hemaflow.core.markers import hookimpl
from hemaflow.lib import imageio as io


class ImageSet(TableArtifact):
    """Images with patient, label and optional ground-truth mask.

    Columns: ``image_id``, ``patient_id``, ``label`` (class name or empty), ``path`` (relative
    to the artifact or absolute), optional ``mask_path``, optional ``split`` (a user-given
    partition), any extra metadata columns (``site``, ``stain``...).

    Meta: ``classes`` (ordered list), ``mask_spec`` (how to read the masks, see
    :func:`hemaflow.lib.imageio.read_mask`), ``patients_are_images`` (bool), ``skipped``
    (list of {file, reason, step}: what the data step refused, also in ``skipped.parquet``),
    ``ignored_files`` (kind -> count of non-image files the reader left out), ``on_error`` and
    ``validate`` (the data step's choices).
    """

    type_name = "ImageSet"
    required_columns = ("image_id", "patient_id", "label", "path")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def check(self) -> None:
        """Also refuse a set whose paths are relative to the working directory, not to the artifact.

        A stored relative path is resolved against the artifact folder (:meth:`resolve`), so a
        path like ``../shared/data/x.jpg`` meant relative to where ``hemaflow run`` started would be
        "not found" in every later step. Checked on the first relative ``path`` (a stat or two):
        missing under the artifact folder but present from the working directory is an error.
        Data-set components write absolute paths (:class:`~hemaflow.plugins.datasets.FileDataset`).
        """
        super().check()
        for col in ("path", "mask_path"):
            if col not in self.table.columns:
                continue
            rel = next((v for v in self.table[col] if isinstance(v, str) and v and not Path(v).is_absolute()), None)
            if rel is not None and not (self.path / rel).exists() and Path(rel).exists():
                raise ValueError(f"ImageSet {col} {rel!r} is relative to the working directory ({Path.cwd()}), "
                                 f"but paths in an ImageSet are relative to its folder ({self.path}); "
                                 f"store absolute paths (e.g. str(Path(p).resolve()))")

    def row(self, image_id: str) -> pd.Series:
        idx = self._index().get(image_id)
        if idx is None:
            raise KeyError(image_id)
        return self.table.iloc[idx]

    def _index(self) -> dict[str, int]:
        if getattr(self, "_idx", None) is None or len(self._idx) != len(self.table):
            self._idx = {iid: i for i, iid in enumerate(self.table["image_id"].astype(str))}
        return self._idx

    def image_path(self, row: pd.Series | str) -> Path:
        if isinstance(row, str):
            row = self.row(row)
        return self.resolve(row["path"])

    def read_image(self, row: pd.Series | str) -> np.ndarray:
        """Return the image as RGB uint8 HxWx3."""
        return io.read_image(self.image_path(row))

    def has_masks(self) -> bool:
        return "mask_path" in self.table.columns and self.table["mask_path"].notna().any()

    def read_mask(self, row: pd.Series | str) -> np.ndarray | None:
        """Return the ground-truth mask as uint8 HxW (0 bg, 1 cytoplasm, 2 nucleus) or None."""
        if isinstance(row, str):
            row = self.row(row)
        mp = row.get("mask_path") if "mask_path" in row.index else None
        if mp is None or (isinstance(mp, float) and np.isnan(mp)) or mp == "":
            return None
        return io.read_mask(self.resolve(mp), self.meta.get("mask_spec"))

    def derive(self, path: Path | str, table: pd.DataFrame, **meta: Any) -> "ImageSet":
        """A new ImageSet at ``path`` that keeps this one's metadata (classes, mask spec, cell
        truth) and whose rows may still point at this set's files (made absolute here).

        Use it in components that write new images (normalizers): give the new rows with
        ``path`` relative to ``path``; ``mask_path`` values still relative to this set are
        resolved to absolute paths.
        """
        table = table.copy()
        if "mask_path" in table.columns:
            table["mask_path"] = [str(self.resolve(m)) if isinstance(m, str) and m else m
                                  for m in table["mask_path"]]
        new_meta = dict(self.meta)
        for key in ("cell_truth", "patients"):  # side tables stored beside the original set
            if isinstance(new_meta.get(key), str) and new_meta[key]:
                new_meta[key] = str(self.resolve(new_meta[key]))
        new_meta.update(meta)
        return ImageSet(path, table, new_meta)

    def cell_truth(self) -> pd.DataFrame | None:
        """Ground truth per cell where the data set knows it (synthetic data), else None.

        Columns: ``image_id``, ``centroid_y``, ``centroid_x``, ``truth`` (e.g. ``abnormal`` /
        ``normal``), ``cell_type``. Stored as ``meta["cell_truth"]`` (a Parquet file name).
        """
        name = self.meta.get("cell_truth")
        if not name:
            return None
        return pd.read_parquet(self.resolve(name))

    def iter_images(self) -> Iterator[tuple[pd.Series, np.ndarray]]:
        """Yield (row, image) one at a time (never loads the whole set)."""
        for _, row in self.table.iterrows():
            yield row, self.read_image(row)

    def summary(self) -> str:
        n_p = self.table["patient_id"].nunique() if len(self.table) else 0
        extra = ""
        if self.meta.get("skipped"):
            extra += f", {len(self.meta['skipped'])} skipped"
        if self.meta.get("ignored_files"):
            extra += f", {sum(self.meta['ignored_files'].values())} non-image files ignored"
        return f"ImageSet ({len(self.table)} images, {n_p} patients, {len(self.classes)} classes{extra})"


class MaskSet(TableArtifact):
    """Predicted masks, one per image.

    Columns: ``image_id``, ``path`` (uint8 PNG with 0/1/2), optional ``instances_path``
    (int32 labels as ``.npy``). Meta: ``source`` (component name).
    """

    type_name = "MaskSet"
    required_columns = ("image_id", "path")

    def _index(self) -> dict[str, int]:
        if getattr(self, "_idx", None) is None or len(self._idx) != len(self.table):
            self._idx = {iid: i for i, iid in enumerate(self.table["image_id"].astype(str))}
        return self._idx

    def row(self, image_id: str) -> pd.Series:
        return self.table.iloc[self._index()[image_id]]

    def read_mask(self, image_id: str) -> np.ndarray:
        """Return the mask as uint8 HxW (0 background, 1 cytoplasm, 2 nucleus)."""
        return io.read_mask(self.resolve(self.row(image_id)["path"]), {"mode": "canonical"})

    def read_instances(self, image_id: str) -> np.ndarray | None:
        """Return int32 instance labels (0 background) or None if not labelled yet."""
        row = self.row(image_id)
        p = row.get("instances_path") if "instances_path" in row.index else None
        if p is None or (isinstance(p, float) and np.isnan(p)) or p == "":
            return None
        return np.load(self.resolve(p))


class CellSet(TableArtifact):
    """Cell instances: a cell table plus square crops.

    Columns: ``cell_id`` (``"<image_id>:<k>"``), ``image_id``, ``patient_id``, ``label``,
    ``bbox_y0, bbox_x0, bbox_y1, bbox_x1``, ``centroid_y, centroid_x``, ``area`` (pixels),
    ``crop_index`` (row in the crop arrays), optional ``truth`` (generator ground truth, e.g.
    ``abnormal``/``normal`` for synthetic cells).

    Files: ``crops.npy`` uint8 (N, S, S, 3) and ``crop_masks.npy`` uint8 (N, S, S) with
    0/1/2, opened memory-mapped. Meta: ``crop_size``, ``classes``, ``patients_are_images``.
    """

    type_name = "CellSet"
    required_columns = ("cell_id", "image_id", "patient_id", "label", "crop_index")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def crops(self) -> np.ndarray:
        return np.load(self.path / "crops.npy", mmap_mode="r")

    @property
    def crop_masks(self) -> np.ndarray:
        return np.load(self.path / "crop_masks.npy", mmap_mode="r")

    def summary(self) -> str:
        return f"CellSet ({len(self.table)} cells, crop {self.meta.get('crop_size')} px)"


class FeatureTable(TableArtifact):
    """Per-cell (or per-image) features.

    Id columns ``cell_id``, ``image_id``, ``patient_id``, ``label``; ``meta["feature_columns"]``
    lists the feature columns in order. The Parquet file also carries ``meta`` in its
    key-value metadata (key ``hemaflow``), so it stands on its own outside hemaflow.
    """

    type_name = "FeatureTable"
    required_columns = ("image_id", "patient_id", "label")

    @property
    def feature_columns(self) -> list[str]:
        return list(self.meta.get("feature_columns", []))

    def save(self) -> "FeatureTable":
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.check()
        super(TableArtifact, self).save()  # meta.json
        table = pa.Table.from_pandas(self.table.reset_index(drop=True), preserve_index=False)
        md = dict(table.schema.metadata or {})
        md[b"hemaflow"] = json.dumps(dict(self.meta, type=self.type_name), default=str).encode()
        pq.write_table(table.replace_schema_metadata(md), self.path / "table.parquet")
        return self

    def summary(self) -> str:
        return f"FeatureTable ({len(self.table)} rows, {len(self.feature_columns)} features)"


class Split(TableArtifact):
    """Patient-level partitions: one row per (fold, patient) with ``partition`` in
    ``train``/``val``/``test``. Meta: ``kind``, ``n_folds``, ``hash``, ``patients_are_images``,
    and ``refit_fold`` when the splitter has ``refit: true`` (a fold beyond the table: its
    ``train`` patients are every patient some fold trains or validates on; no val, no test).
    """

    type_name = "Split"
    required_columns = ("fold", "patient_id", "partition")

    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.table["fold"].unique())

    def patients(self, fold: int, partition: str) -> set[str]:
        t = self.table
        if fold == self.refit_fold():
            if partition != "train":
                return set()
            return set(t.loc[t["partition"].isin(("train", "val")), "patient_id"].astype(str))
        return set(t.loc[(t["fold"] == fold) & (t["partition"] == partition), "patient_id"].astype(str))

    def refit_fold(self) -> int | None:
        """The refit fold's number (``refit: true``), else None."""
        f = self.meta.get("refit_fold")
        return None if f is None else int(f)

    def fit_folds(self) -> list[int]:
        """The folds a model is fitted on: :meth:`folds`, then the refit fold if there is one."""
        refit = self.refit_fold()
        return self.folds() + ([refit] if refit is not None else [])

    def check(self) -> None:
        super().check()
        bad = set(self.table["partition"]) - {"train", "val", "test"}
        if bad:
            raise ValueError(f"Split has unknown partitions {sorted(bad)}")
        dup = self.table.groupby(["fold", "patient_id"]).size()
        dup = dup[dup > 1]
        if len(dup):
            fold, pid = dup.index[0]
            parts = sorted(self.table.loc[(self.table.fold == fold) & (self.table.patient_id == pid), "partition"])
            raise ValueError(f"patient leak: patient {pid!r} is in {' and '.join(parts)} of fold {fold}"
                             f" ({len(dup)} leaking patient(s) in all)")

    def compute_hash(self) -> str:
        t = self.table.sort_values(["fold", "patient_id"])[["fold", "patient_id", "partition"]]
        return hashlib.sha256(t.to_csv(index=False).encode()).hexdigest()[:16]

    def save(self) -> "Split":
        self.meta["hash"] = self.compute_hash()
        super().save()
        return self

    def export(self, run_dir: Path, step_id: str) -> None:
        name = "split.csv" if step_id == "split" else f"split-{step_id}.csv"
        self.table.sort_values(["fold", "partition", "patient_id"]).to_csv(run_dir / name, index=False)
        (run_dir / (name[:-4] + ".hash")).write_text(self.meta.get("hash", self.compute_hash()) + "\n")

    def summary(self) -> str:
        return f"Split ({len(self.folds())} fold(s), hash {self.meta.get('hash', '?')})"


TYPES = (ImageSet, MaskSet, CellSet, FeatureTable, Split)


@hookimpl
def register_artifact_types(register: Any) -> None:
    for t in TYPES:
        register(t)
