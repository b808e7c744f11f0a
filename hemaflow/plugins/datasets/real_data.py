"""Readers of the real data sets in ``../shared/data``: ``bccd_fields`` and ``wbc_crops``.

* ``bccd_fields``: ``../shared/data/bccd-fields`` (fields, white-cell masks, BCCD splits).
* ``wbc_crops``: ``../shared/data/wbc-crops`` (single-cell crops, 5 white-cell types).

Neither has patient ids: each image is its own patient (``meta["patients_are_images"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib import imageio as io
from hemaflow.plugins.datasets.common import MASK_SPEC, ON_ERROR, VALIDATE, FileDataset, Listing, _schema


# -- the real data sets in ../shared/data ---------------------------------------------------------------
def _shared(path: str, name: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(p, f"the {name} data set was not found here (relative paths are relative to the "
                           f"current folder, {Path.cwd()}); run from the project root, or set "
                           f"path: to the folder (see docs/data.md)")
    return p.resolve()


def _shared_schema(folder: str, props: dict[str, Any], limit_of: str) -> dict[str, Any]:
    """Parameters of a reader of ``../shared/data/<folder>``: ``path``, ``props``, then ``limit``,
    ``mask_spec`` (null: the reader's default), ``validate`` and ``on_error``."""
    return _schema({
        "path": {"type": "string", "default": f"../shared/data/{folder}", "description": f"the {folder} folder"},
        **props,
        "limit": {"type": ["integer", "null"], "minimum": 1, "default": None,
                  "description": f"keep only the first N images of each {limit_of} (quick tries)"},
        "mask_spec": dict(MASK_SPEC, default=None, type=["object", "null"]),
        "validate": VALIDATE,
        "on_error": ON_ERROR,
    })


class SharedDataset(FileDataset):
    """Base of the readers of the real data sets in ``../shared/data``: ``path`` is the folder."""

    folder = ""  # the data set's folder name in ../shared/data
    root_param = "path"

    def data_root(self) -> Path:
        """The data set's folder, resolved; a DataError that says where to get it when it is missing."""
        return _shared(self.params["path"], self.folder)


WBC_TYPES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


class BCCDFields(SharedDataset):
    """BCCD smear fields (640x480 JPEG) with the white cell masked, and the BCCD splits.

    ``split`` comes from ``splits/{train,val,test}.txt``; ``label`` is the white-cell type from
    ``wbc_types.csv`` (lower case; empty where the row is blank or lists two different types).
    Masks are grey with anti-aliased edges: read with a threshold (cell > 64, nucleus > 208).
    There are no patient ids: each image is its own patient.
    """

    name = "bccd_fields"
    version = "1"
    folder = "bccd-fields"
    default_mask_spec = {"mode": "threshold", "cell": 64, "nucleus": 208}
    schema = _shared_schema(folder, {
        "unlisted": {"enum": ["drop", "keep"], "default": "drop",
                     "description": "images in no split list: drop them, or keep them with split ''"},
    }, limit_of="split")

    def listing(self) -> Listing:
        p = self.params
        root = self.data_root()
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


class WBCCrops(SharedDataset):
    """Single white-cell crops (Zheng et al. 2018) with nucleus/cytoplasm masks and 5 cell types.

    Subsets ``tecom`` (rapid stain, ~120 px) and ``cellavision`` (standard stain, 300 px); the
    subset is the ``site`` column, so ``column_split`` with ``column: site`` trains on one and
    tests on the other. Masks: 0 background, 128 cytoplasm, 255 nucleus (a few files carry small
    stray values, hence a threshold). Each image is its own patient.
    """

    name = "wbc_crops"
    version = "1"
    folder = "wbc-crops"
    default_mask_spec = {"mode": "threshold", "cell": 64, "nucleus": 192}
    schema = _shared_schema(folder, {
        "subsets": {"type": "array", "items": {"enum": ["tecom", "cellavision"]}, "minItems": 1,
                    "uniqueItems": True, "default": ["tecom", "cellavision"], "description": "which subsets"},
        "classes": {"type": "array", "items": {"enum": WBC_TYPES}, "minItems": 1, "uniqueItems": True,
                    "default": WBC_TYPES, "description": "cell types to keep (others are left out)"},
    }, limit_of="subset")

    def listing(self) -> Listing:
        p = self.params
        root = self.data_root()
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
    register(BCCDFields)
    register(WBCCrops)
