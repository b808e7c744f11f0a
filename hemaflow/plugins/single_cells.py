"""Single-cell crop mode for per-cell exports: the ``single_cells`` component.

A digital morphology analyser (CellaVision and the like) exports one JPEG per white cell, the
cell near the centre, neighbours and red cells around it. ``single_cells`` keeps that centre cell
only, at a fixed physical scale, and rejects images that are not single-cell crops, each with a
reason. Output: a :class:`~hemaflow.plugins.artifacts.CellSet` like ``whole_images`` and
``cell_crops`` (one row per kept image, ``cell_id`` ``"<image_id>:0"``), so radiomics,
``cell_features``, ``instance_encoder`` and MIL take it unchanged.

Per image (one worker call: read, segment, crop):

1. **Mask**: the ``masks`` input when a segmenter step ran (``classical`` with ``single_cell:
   true``, ``deeplabv3`` ...), else the data set's own masks with ``dataset_masks: true`` (ground
   truth, where an image has a ``mask_path``), else :func:`~hemaflow.plugins.segment.adaptive.adaptive_mask` of all
   cells, computed on a copy downscaled to at most ``segment_size`` px a side (the segmenter's
   morphology costs grow with the image; the mask is scaled back with nearest neighbour).
2. **Centre cell**: the connected cell component (mask > 0) nearest the image centre (distance
   of its nearest pixel; 0 when it covers the centre).
3. **Equal claim**: the *central region* is a disc at the image centre with radius
   ``central_radius`` x the image's shorter side. A component *claims* the centre when one of its
   pixels lies in that region. The image is rejected (``several cells of equal claim``) when two
   or more components claim it and the second largest of them has at least ``tie_ratio`` x the
   area of the largest: two cells about equally central and about equally big, where choosing
   one would be a guess. A small fragment (a platelet, a neighbour's edge) touching the region is
   no rival. Touching cells that the mask merges into one component are one component here.
4. **Scale**: ``f = um_per_px / target_um_per_px`` output pixels per source pixel (1 when either
   is null). ``um_per_px`` per image comes from an ImageSet column ``um_per_px`` where it has a
   value, else the parameter. The crop is a ``crop_size`` x ``crop_size`` window at the target
   scale centred on the cell's centroid; a source window of ``crop_size / f`` px is cut (padded
   outside the image) and resampled with PIL (bilinear, antialiased when shrinking; the mask
   nearest). Never squashed: the aspect ratio is always kept.
5. **Background**: ``neutral`` sets every pixel outside the cell (neighbours, red cells, the
   padding) to ``neutral_value`` grey (default 128, the same for every image: the image's own
   background colour differs between labs and scanners and would carry the cohort into the
   features); ``keep`` keeps the image's pixels (padding is still grey). The crop mask always
   shows that cell only (0/1/2).

Rejections (no row in the cell table; ``rejected.parquet`` beside the CellSet with ``image_id``,
``patient_id``, ``path``, ``reason``, ``detail``; ``meta["rejected"]`` counts by reason; one
warning per reason; a report table):

* ``size far from the set's median``: a side > ``max_size_ratio`` x the median side of the set, or
  < 1 / ``max_size_ratio`` x (an overview frame of ~2900 px among 360 px crops); read from the
  file headers before any pixel is decoded. A set that mixes sources of different crop sizes
  (120 px and 300 px crops) needs ``size_group_column`` (e.g. ``cohort``): the median is then
  taken per group, else the minority source may be rejected whole.
* ``aspect far from the set's median``: (long side / short side) / the median aspect >
  ``max_aspect``.
* ``no cell found``: the mask is empty (or the ``masks`` input has no mask for the image).
* ``several cells of equal claim``: see 3.
* ``cell larger than the crop``: the cell's bounding box at the target scale does not fit the
  window centred on its centroid. Rejected rather than shrunk: shrinking would change the scale
  of just those cells, which is the signal a classifier would pick up.
* ``unreadable image``: the file cannot be decoded (truncated JPEG ...); ``on_error: skip``
  (default) records it, ``stop`` raises.

Default ``crop_size`` 256 at native pixels: measured on the real crops of
``../shared/data/wbc-crops`` (ground-truth masks), the cell's bounding box side is median 176 px,
95th percentile 265 px, in the 300 px CellaVision crops, and median 77 px, max 96 px, in the 120 px
Tecom crops; 128 px would reject most CellaVision cells as larger than the crop. With
``target_um_per_px`` set, choose ``crop_size`` so that ~25 um fits (a large monocyte plus margin),
e.g. 128 at 0.2 um/px.

Default ``segment_size`` 128: the adaptive segmenter's cost grows with the image (its morphology
uses discs scaled to the nucleus); on the 300 px CellaVision crops whole-cell Dice of the centre
cell is 0.923 at full size and 0.928 at 128 px (every 4th image), at 5x less time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import CellExtractor
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.instances import CELL_COLUMNS

COLUMNS = CELL_COLUMNS[:-1] + ["nucleus_area", "crop_index"]
REJECTED_COLUMNS = ["image_id", "patient_id", "path", "reason", "detail"]

R_SIZE = "size far from the set's median"
R_ASPECT = "aspect far from the set's median"
R_NO_CELL = "no cell found"
R_TIE = "several cells of equal claim"
R_LARGE = "cell larger than the crop"
R_UNREADABLE = "unreadable image"
REASONS = (R_SIZE, R_ASPECT, R_NO_CELL, R_TIE, R_LARGE, R_UNREADABLE)

#: Chunk of images per ``ctx.map`` call: crops are written to scratch files between chunks, so
#: memory stays flat for any number of images.
CHUNK = 2048


def segment_all_cells(img: np.ndarray, segment_size: int | None) -> np.ndarray:
    """uint8 0/1/2 mask of every white cell (adaptive segmenter), on a copy of at most
    ``segment_size`` px a side (None: full resolution), returned at the image's size."""
    from PIL import Image

    from hemaflow.plugins.segment.adaptive import adaptive_mask

    h, w = img.shape[:2]
    s = max(h, w)
    if segment_size is None or s <= segment_size:
        return adaptive_mask(img, single_cell=False)
    k = segment_size / s
    small = np.asarray(Image.fromarray(img).resize((max(round(w * k), 1), max(round(h * k), 1)), Image.BILINEAR))
    m = adaptive_mask(small, single_cell=False)
    return np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))


def select_centre_cell(mask: np.ndarray, *, central_radius: float = 0.15,
                       tie_ratio: float = 0.5) -> tuple[np.ndarray | None, str | None, str]:
    """Pick the cell nearest the image centre in a 0/1/2 mask (see the module docstring, 2-3).

    Returns:
        ``(cell, None, "")`` with ``cell`` a bool HxW mask, or ``(None, reason, detail)``.
    """
    from scipy import ndimage as ndi

    h, w = mask.shape
    lab, n = ndi.label(mask > 0)
    if n == 0:
        return None, R_NO_CELL, "the mask is empty"
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)
    # per component over its bounding box (ndi.minimum sorts the whole image: 10x slower)
    near = np.array([float(d[sl][lab[sl] == k + 1].min()) for k, sl in enumerate(ndi.find_objects(lab))])
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    claim = near <= central_radius * min(h, w)
    if claim.sum() >= 2:
        a = np.sort(areas[claim])[::-1]
        if a[1] >= tie_ratio * a[0]:
            return None, R_TIE, (f"{int(claim.sum())} cells reach the central region, areas "
                                 + ", ".join(str(int(x)) for x in a[:3]) + " px")
    # nearest first; a tie in distance (several covering the centre cannot happen) goes to the larger
    best = min(range(n), key=lambda i: (near[i], -areas[i]))
    return lab == best + 1, None, ""


def _window(arr: np.ndarray, y0: int, x0: int, size: int, fill: int) -> np.ndarray:
    """``arr[y0:y0+size, x0:x0+size]`` padded with ``fill`` outside the array."""
    h, w = arr.shape[:2]
    out = np.full((size, size) + arr.shape[2:], fill, arr.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + size, h), min(x0 + size, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def crop_cell(img: np.ndarray, mask: np.ndarray, cell: np.ndarray, *, crop_size: int, scale: float,
              background: str = "neutral", neutral_value: int = 128
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | tuple[None, str, str]:
    """Crop one cell at ``scale`` output px per source px; see the module docstring, 4-5.

    Args:
        img: RGB uint8 HxWx3. mask: uint8 HxW 0/1/2. cell: bool HxW, the cell to keep.

    Returns:
        ``(crop uint8 SxSx3, crop mask uint8 SxS 0/1/2 of the cell only, info)`` with the cell's
        bbox, centroid, area and nucleus area in source pixels; or ``(None, reason, detail)``.
    """
    from PIL import Image

    ys, xs = np.nonzero(cell)
    cy, cx = float(ys.mean()), float(xs.mean())
    by0, bx0, by1, bx1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
    win = crop_size if scale == 1 else int(math.ceil(crop_size / scale))
    y0, x0 = int(round(cy + 0.5 - win / 2)), int(round(cx + 0.5 - win / 2))
    if by0 < y0 or bx0 < x0 or by1 > y0 + win or bx1 > x0 + win:
        return None, R_LARGE, (f"cell {by1 - by0}x{bx1 - bx0} px at the source scale, window {win} px "
                               f"({crop_size} px at {scale:.3g} px per source px) around its centroid")
    cmask = np.where(cell, mask, 0).astype(np.uint8)
    cmask[cell & (cmask == 0)] = 1
    src = img if background == "keep" else np.where(cell[..., None], img, np.uint8(neutral_value))
    crop = _window(src, y0, x0, win, neutral_value)
    m = _window(cmask, y0, x0, win, 0)
    if win != crop_size:
        n = max(int(round(win * scale)), crop_size)
        crop = np.asarray(Image.fromarray(crop).resize((n, n), Image.BILINEAR))
        m = np.asarray(Image.fromarray(m).resize((n, n), Image.NEAREST))
        o = (n - crop_size) // 2
        crop, m = crop[o:o + crop_size, o:o + crop_size], m[o:o + crop_size, o:o + crop_size]
    info = {"bbox_y0": by0, "bbox_x0": bx0, "bbox_y1": by1, "bbox_x1": bx1, "centroid_y": cy, "centroid_x": cx,
            "area": int(cell.sum()), "nucleus_area": int((cmask == 2).sum())}
    return np.ascontiguousarray(crop), np.ascontiguousarray(m), info


def single_cell_item(item: tuple) -> dict[str, Any]:
    """Worker for ``ctx.map``: read, segment (unless a mask is given), select and crop one image."""
    from hemaflow.lib import imageio as io

    path, mask_path, mask_spec, scale, p = item
    try:
        img = io.read_image(path)
    except DataError as exc:
        return {"reason": R_UNREADABLE, "detail": exc.problem}
    if mask_path:
        try:
            mask = io.read_mask(mask_path, mask_spec)
        except DataError as exc:
            return {"reason": R_UNREADABLE, "detail": f"mask {mask_path}: {exc.problem}"}
        if mask.shape != img.shape[:2]:
            return {"reason": R_UNREADABLE, "detail": f"mask is {mask.shape[1]}x{mask.shape[0]}, "
                                                      f"the image {img.shape[1]}x{img.shape[0]}"}
    else:
        mask = segment_all_cells(img, p["segment_size"])
    cell, reason, detail = select_centre_cell(mask, central_radius=p["central_radius"], tie_ratio=p["tie_ratio"])
    if cell is None:
        return {"reason": reason, "detail": detail}
    res = crop_cell(img, mask, cell, crop_size=p["crop_size"], scale=scale, background=p["background"],
                    neutral_value=p["neutral_value"])
    if res[0] is None:
        return {"reason": res[1], "detail": res[2]}
    return {"crop": res[0], "mask": res[1], "info": res[2]}


def size_outliers(sizes: list[tuple[int, int] | None], max_size_ratio: float, max_aspect: float
                  ) -> list[tuple[str, str] | None]:
    """Per image ``(reason, detail)`` when its (h, w) is far from the set's median, else None."""
    ok = [s for s in sizes if s is not None]
    if not ok:
        return [None] * len(sizes)
    mh, mw = float(np.median([s[0] for s in ok])), float(np.median([s[1] for s in ok]))
    ma = float(np.median([max(s) / max(min(s), 1) for s in ok]))
    out: list[tuple[str, str] | None] = []
    for s in sizes:
        if s is None:
            out.append(None)
            continue
        h, w = s
        r = max(h / mh, w / mw, mh / max(h, 1), mw / max(w, 1))
        a = max(h, w) / max(min(h, w), 1) / ma
        if r > max_size_ratio:
            out.append((R_SIZE, f"{w}x{h} px, the set's median {mw:g}x{mh:g} (ratio {r:.2g} > {max_size_ratio:g})"))
        elif a > max_aspect:
            out.append((R_ASPECT, f"{w}x{h} px: aspect {a * ma:.2g}, the set's median {ma:.2g} "
                                  f"(ratio {a:.2g} > {max_aspect:g})"))
        else:
            out.append(None)
    return out


class SingleCells(CellExtractor):
    """The centre white cell of each single-cell crop, alone, at a fixed physical scale."""

    kind = "cells"
    name = "single_cells"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "crop_size": {"type": "integer", "minimum": 8, "maximum": 1024, "default": 256,
                          "description": "side of the square crop in pixels at the target scale"},
            "um_per_px": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                          "description": "source pixel size in um (an ImageSet column `um_per_px` wins where set)"},
            "target_um_per_px": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                                 "description": "pixel size the crops are resampled to (null: native pixels)"},
            "background": {"enum": ["neutral", "keep"], "default": "neutral",
                           "description": "pixels outside the centre cell: set to `neutral_value` grey, or kept"},
            "neutral_value": {"type": "integer", "minimum": 0, "maximum": 255, "default": 128,
                              "description": "grey level of the background and padding"},
            "segment_size": {"type": ["integer", "null"], "minimum": 32, "default": 128,
                             "description": "without `masks`: segment a copy of at most this side (px; null: full size)"},
            "central_radius": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.15,
                               "description": "radius of the central region, fraction of the shorter side"},
            "tie_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                          "description": "rival cells in the central region at least this fraction of the "
                                         "largest one's area: rejected as several cells of equal claim"},
            "max_size_ratio": {"type": "number", "minimum": 1, "default": 2.0,
                               "description": "reject images whose side is over this times the set's median or "
                                              "under its inverse"},
            "max_aspect": {"type": "number", "minimum": 1, "default": 1.5,
                           "description": "reject images whose aspect ratio is over this times the set's median"},
            "size_group_column": {"type": ["string", "null"], "default": None,
                                  "description": "compare sizes within the groups of this ImageSet column (e.g. "
                                                 "`cohort`, `site`: sources of different crop sizes) instead of "
                                                 "the whole set"},
            "dataset_masks": {"type": "boolean", "default": False,
                              "description": "without `masks`: use the data set's own masks (`mask_path`, e.g. "
                                             "ground truth) where an image has one, instead of segmenting"},
            "on_error": {"enum": ["skip", "stop"], "default": "skip",
                         "description": "an unreadable image or mask: skip it (recorded) or stop"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "masks": "MaskSet?"}
    outputs = {"cells": "CellSet"}

    def _scales(self, table: pd.DataFrame) -> list[float]:
        p = self.params
        target = p["target_um_per_px"]
        col = table["um_per_px"] if "um_per_px" in table.columns else pd.Series([None] * len(table))
        out = []
        for i, v in enumerate(col):
            src = float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else p["um_per_px"]
            if target is None or src is None:
                if target is not None:
                    raise DataError(str(table.iloc[i]["path"]),
                                    "target_um_per_px is set but the source pixel size is unknown: set `um_per_px` "
                                    "or give the ImageSet a column `um_per_px`")
                out.append(1.0)
            else:
                out.append(float(src) / float(target))
        return out

    def run(self, ctx: RunContext, images: Any, masks: Any = None) -> dict[str, Any]:
        from hemaflow.lib import imageio as io

        p = self.params
        t = images.table.reset_index(drop=True)
        scales = self._scales(t)
        rejected: list[dict[str, Any]] = []

        def reject(r: pd.Series, reason: str, detail: str) -> None:
            if reason == R_UNREADABLE and p["on_error"] == "stop":
                raise DataError(images.image_path(r), detail)
            rejected.append({"image_id": str(r["image_id"]), "patient_id": str(r["patient_id"]),
                             "path": str(images.image_path(r)), "reason": reason, "detail": detail})

        sizes: list[tuple[int, int] | None] = []
        for _, r in t.iterrows():
            try:
                sizes.append(io.image_size(images.image_path(r)))
            except DataError as exc:
                reject(r, R_UNREADABLE, exc.problem)
                sizes.append(None)
        outliers: list[tuple[str, str] | None] = [None] * len(t)
        col = p["size_group_column"]
        if col is not None and col not in t.columns:
            raise DataError(str(images.path), f"size_group_column {col!r} is not a column of the images "
                                              f"(columns: {', '.join(map(str, t.columns))})")
        groups = t.groupby(t[col].astype(str)).indices if col else {"": np.arange(len(t))}
        for idx in groups.values():
            res = size_outliers([sizes[i] for i in idx], float(p["max_size_ratio"]), float(p["max_aspect"]))
            for i, o in zip(idx, res):
                outliers[i] = o
        keys = ("crop_size", "background", "neutral_value", "segment_size", "central_radius", "tie_ratio")
        wp = {k: p[k] for k in keys}
        todo = []
        for i, r in t.iterrows():
            if sizes[i] is None:
                continue
            if outliers[i] is not None:
                reject(r, *outliers[i])
                continue
            mpath, spec = None, None
            if masks is not None:
                iid = str(r["image_id"])
                if iid not in masks._index():
                    reject(r, R_NO_CELL, "the masks input has no mask for this image")
                    continue
                mpath, spec = str(masks.resolve(masks.row(iid)["path"])), {"mode": "canonical"}
            elif p["dataset_masks"] and isinstance(r.get("mask_path"), str) and r["mask_path"]:
                mpath, spec = str(images.resolve(r["mask_path"])), images.meta.get("mask_spec")
            todo.append((i, (str(images.image_path(r)), mpath, spec, scales[i], wp)))
        rows, parts = self._crop_all(ctx, t, todo, reject)
        cells = self._save(ctx, images, rows, parts, rejected, scales)
        self._report(ctx, cells, rejected)
        return {"cells": cells}

    def _crop_all(self, ctx: RunContext, t: pd.DataFrame, todo: list, reject) -> tuple[list[dict], list[str]]:
        scratch = ctx.scratch_dir()
        rows: list[dict[str, Any]] = []
        parts: list[str] = []
        for c0 in range(0, len(todo), CHUNK):
            chunk = todo[c0:c0 + CHUNK]
            results = ctx.map(single_cell_item, [it for _, it in chunk], description="single cells")
            crops, cmasks = [], []
            for (i, _), res in zip(chunk, results):
                r = t.iloc[i]
                if "reason" in res:
                    reject(r, res["reason"], res["detail"])
                    continue
                rows.append({"cell_id": f"{r['image_id']}:0", "image_id": str(r["image_id"]),
                             "patient_id": str(r["patient_id"]), "label": r["label"], **res["info"],
                             "crop_index": len(rows)})
                crops.append(res["crop"])
                cmasks.append(res["mask"])
            if crops:
                base = str(scratch / f"part{c0 // CHUNK:05d}")
                np.save(base + ".crops.npy", np.stack(crops))
                np.save(base + ".masks.npy", np.stack(cmasks))
                parts.append(base)
        return rows, parts

    def _save(self, ctx: RunContext, images: Any, rows: list[dict], parts: list[str], rejected: list[dict],
              scales: list[float]):
        from hemaflow.plugins.artifacts import CellSet

        p = self.params
        S = int(p["crop_size"])
        out = ctx.out_dir("cells")
        crops = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(rows), S, S, 3))
        cmasks = np.lib.format.open_memmap(out / "crop_masks.npy", mode="w+", dtype=np.uint8, shape=(len(rows), S, S))
        at = 0
        for base in parts:
            c, m = np.load(base + ".crops.npy"), np.load(base + ".masks.npy")
            crops[at:at + len(c)], cmasks[at:at + len(m)] = c, m
            at += len(c)
        crops.flush()
        cmasks.flush()
        del crops, cmasks
        rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
        rej.to_parquet(out / "rejected.parquet", index=False)
        counts = {k: int(v) for k, v in rej["reason"].value_counts().items()}
        for reason, n in counts.items():
            ex = rej.loc[rej["reason"] == reason].iloc[0]
            ctx.warn(f"rejected {n} image(s): {reason} (e.g. {ex['image_id']}: {ex['detail']})")
        meta = {"crop_size": S, "classes": images.classes, "source": self.name,
                "patients_are_images": bool(images.meta.get("patients_are_images", False)),
                "um_per_px": p["um_per_px"], "target_um_per_px": p["target_um_per_px"],
                "scales": sorted({round(s, 6) for s in scales}), "background": p["background"],
                "n_input": len(images.table), "rejected": counts, "rejected_file": "rejected.parquet"}
        return CellSet(out, pd.DataFrame(rows, columns=COLUMNS), meta).save()

    def _report(self, ctx: RunContext, cells: Any, rejected: list[dict]) -> None:
        from hemaflow.lib.imageio import png_bytes

        n_in = cells.meta["n_input"]
        rows = [{"reason": "kept", "images": len(cells.table), "example": ""}]
        rows += [{"reason": k, "images": v,
                  "example": next(f"{r['image_id']}: {r['detail']}" for r in rejected if r["reason"] == k)}
                 for k, v in cells.meta["rejected"].items()]
        ctx.report.table(f"Single-cell crops: {len(cells.table)} of {n_in} images kept", rows, section="cells")
        if len(cells.table):
            idx = np.linspace(0, len(cells.table) - 1, min(12, len(cells.table))).astype(int)
            crops = cells.crops
            ctx.report.gallery(f"Single-cell crops ({len(cells.table)} cells)",
                               [(str(cells.table.iloc[i]["cell_id"]), png_bytes(np.asarray(crops[i]))) for i in idx],
                               section="cells")


COMPONENTS = (SingleCells,)


@hookimpl
def register_cell_extractors(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
