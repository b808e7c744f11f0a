"""Cell instances from segmented fields: the ``cell_crops`` extractor.

Inputs ``images: ImageSet`` and ``masks: MaskSet`` (instances from ``instances_path`` when a
post-processor labelled them, else connected components of mask > 0). Output ``cells:
CellSet``: one row per cell with ``cell_id`` ``"<image_id>:<k>"`` (k = 1..N in label order),
``bbox_y0, bbox_x0, bbox_y1, bbox_x1`` (half-open, pixels), ``centroid_y, centroid_x``, ``area``
and ``nucleus_area`` (pixels), ``label``/``patient_id`` from the ImageSet, ``truth`` and
``cell_type`` matched from :meth:`ImageSet.cell_truth` where the data set knows them (the ground
truth cell whose centroid lies inside the instance, nearest to the instance's centroid); plus
square crops ``crops.npy`` (N, S, S, 3) and ``crop_masks.npy`` (N, S, S) with 0/1/2 of that cell
only (neighbours are 0), written image by image into ``np.lib.format.open_memmap`` files
(each image's crops are held in memory from its task until they are written).

Per image (:class:`hemaflow.core.chain.PerItem`): the items are the masks, so a fused chain
``segment -> postprocess -> cells`` passes each image's mask and instances in memory; the
images (e.g. stain-normalized fields) come from a step finished before the chain, by path.

Scaling: ``window`` cuts a fixed S x S window around the centroid (keeps the physical scale:
the right choice when magnification is constant), ``resize`` cuts the bounding box grown by
``margin`` and resizes it to S x S (every cell fills the crop). Outside the image, ``padding``
``reflect`` mirrors the field, ``constant`` fills with ``pad_value``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import CellExtractor
from hemaflow.core.chain import PerItem, Skipped
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.imageio import resize as _resize
from hemaflow.lib.on_error import skip_or_stop

COLUMNS = ["cell_id", "image_id", "patient_id", "label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
           "centroid_y", "centroid_x", "area", "nucleus_area", "crop_index"]


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map indices outside [0, n) back inside by mirroring at the edges (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _take(arr: np.ndarray, y0: int, x0: int, y1: int, x1: int, padding: str, value: int) -> np.ndarray:
    """Return arr[y0:y1, x0:x1] where the window may leave the array (padded).

    ``reflect`` mirrors the whole field at its border (any pad size); ``constant`` fills ``value``.
    """
    H, W = arr.shape[:2]
    if y0 >= 0 and x0 >= 0 and y1 <= H and x1 <= W:
        return arr[y0:y1, x0:x1]
    if padding == "reflect":
        ys = _reflect_index(np.arange(y0, y1), H)
        xs = _reflect_index(np.arange(x0, x1), W)
        return arr[np.ix_(ys, xs)]
    out = np.full((y1 - y0, x1 - x0) + arr.shape[2:], value, dtype=arr.dtype)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def extract_cells(img: np.ndarray, mask: np.ndarray, instances: np.ndarray, *, crop_size: int = 96,
                  scale: str = "window", margin: float = 0.15, padding: str = "reflect", pad_value: int = 0,
                  min_area: int = 0, mask_neighbours: bool = True):
    """Cut one crop per instance.

    Args:
        img: RGB uint8 HxWx3.
        mask: uint8 0/1/2 HxW.
        instances: int32 HxW labels (0 background).

    Returns:
        (rows, crops uint8 (n,S,S,3), crop masks uint8 (n,S,S)); rows hold ``k``, bbox,
        centroid, area, nucleus_area.
    """
    from scipy import ndimage as ndi

    n = int(instances.max())
    S = crop_size
    rows, crops, cmasks = [], [], []
    if n == 0:
        return rows, np.zeros((0, S, S, 3), np.uint8), np.zeros((0, S, S), np.uint8)
    objs = ndi.find_objects(instances)
    for k, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        own = instances[sl] == k
        area = int(own.sum())
        if area < max(min_area, 1):
            continue
        yy, xx = np.nonzero(own)
        cy, cx = float(yy.mean() + sl[0].start), float(xx.mean() + sl[1].start)
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if scale == "window":
            wy0, wx0 = int(round(cy)) - S // 2, int(round(cx)) - S // 2
            side = S
        else:
            side = max(int(np.ceil(max(y1 - y0, x1 - x0) * (1 + 2 * margin))), 2)
            wy0 = int(round((y0 + y1) / 2.0 - side / 2))
            wx0 = int(round((x0 + x1) / 2.0 - side / 2))
        crop = _take(img, wy0, wx0, wy0 + side, wx0 + side, padding, pad_value)
        m_win = _take(mask, wy0, wx0, wy0 + side, wx0 + side, "constant", 0)
        i_win = _take(instances, wy0, wx0, wy0 + side, wx0 + side, "constant", 0) == k
        cmask = np.where(i_win, np.maximum(m_win, 1), 0 if mask_neighbours else m_win).astype(np.uint8)
        if side != S:
            crop = _resize(crop, S, nearest=False)
            cmask = _resize(cmask, S, nearest=True)
        rows.append({"k": k, "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1, "bbox_x1": x1,
                     "centroid_y": cy, "centroid_x": cx, "area": area,
                     "nucleus_area": int(((mask[sl] == 2) & own).sum())})
        crops.append(crop)
        cmasks.append(cmask)
    if not rows:
        return rows, np.zeros((0, S, S, 3), np.uint8), np.zeros((0, S, S), np.uint8)
    return rows, np.stack(crops).astype(np.uint8), np.stack(cmasks).astype(np.uint8)


def match_truth(instances: np.ndarray, rows: list[dict[str, Any]], truth: pd.DataFrame) -> list[dict[str, Any]]:
    """For each cell row, the ground-truth cell whose centroid is inside it, nearest its centroid.

    Returns one dict per row with the truth columns (``truth``, ``cell_type``...), or ``{}``.
    """
    out: list[dict[str, Any]] = [{} for _ in rows]
    if truth is None or truth.empty:
        return out
    H, W = instances.shape
    ty = np.clip(np.round(truth["centroid_y"].to_numpy(float)).astype(int), 0, H - 1)
    tx = np.clip(np.round(truth["centroid_x"].to_numpy(float)).astype(int), 0, W - 1)
    inside = instances[ty, tx]
    cols = [c for c in truth.columns if c not in ("image_id", "centroid_y", "centroid_x")]
    for i, r in enumerate(rows):
        cand = np.nonzero(inside == r["k"])[0]
        if len(cand) == 0:
            continue
        d = (truth["centroid_y"].to_numpy(float)[cand] - r["centroid_y"]) ** 2 + \
            (truth["centroid_x"].to_numpy(float)[cand] - r["centroid_x"]) ** 2
        best = truth.iloc[cand[int(np.argmin(d))]]
        out[i] = {c: best[c] for c in cols}
    return out


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def cells_item(item: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Cut the cells of one image: ``item`` holds ``image`` (a path), ``mask`` (a 0/1/2 array or
    the path of its canonical PNG), ``instances`` (int32 labels, their ``.npy`` path, or None:
    connected components of mask > 0), ``truth`` (the image's ground-truth cells or None) and
    ``row`` (the image's row in the ImageSet). Returns ``{"image_id", "row", "rows", "crops",
    "masks"}``, or a :class:`Skipped` record (``file``: None means the mask's file)."""
    from scipy import ndimage as ndi

    from hemaflow.lib import imageio as io

    image_id, mask_src = item["image_id"], item["mask"]
    try:
        img = io.read_image(item["image"])
        mask = mask_src if isinstance(mask_src, np.ndarray) else io.read_mask(mask_src, {"mode": "canonical"})
    except DataError as exc:
        return Skipped(image_id=image_id, row=item["row"], error=exc.problem, file=exc.path)
    if mask.shape != img.shape[:2]:
        return Skipped(image_id=image_id, row=item["row"], file=None if isinstance(mask_src, np.ndarray) else mask_src,
                       error=f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}")
    inst = item.get("instances")
    if inst is None:
        inst = ndi.label(mask > 0)[0].astype(np.int32)
    elif not isinstance(inst, np.ndarray):
        inst = np.load(inst).astype(np.int32)
    else:
        inst = inst.astype(np.int32)
    truth = item.get("truth")
    rows, crops, cmasks = extract_cells(img, mask, inst, **params)
    matched = match_truth(inst, rows, truth) if truth is not None else [{} for _ in rows]
    for r, m in zip(rows, matched):
        r.update(m)
    return {"image_id": image_id, "row": item["row"], "rows": rows, "crops": crops, "masks": cmasks}


class CellCrops(PerItem, CellExtractor):
    """Cell table and square crops of every segmented white cell."""

    kind = "cells"
    name = "cell_crops"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "crop_size": {"type": "integer", "minimum": 8, "maximum": 1024, "default": 96,
                          "description": "side S of the square crops (pixels)"},
            "scale": {"enum": ["window", "resize"], "default": "window",
                      "description": "window: fixed S x S window around the centroid (keeps scale); "
                                     "resize: bounding box plus margin resized to S x S"},
            "margin": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.15,
                       "description": "resize only: fraction of the bbox side added on each side"},
            "padding": {"enum": ["reflect", "constant"], "default": "reflect",
                        "description": "how crops that leave the image are filled"},
            "pad_value": {"type": "integer", "minimum": 0, "maximum": 255, "default": 0,
                          "description": "fill value for padding: constant"},
            "min_area": {"type": "integer", "minimum": 0, "default": 0,
                         "description": "cells smaller than this many pixels are left out"},
            "mask_neighbours": {"type": "boolean", "default": True,
                                "description": "crop masks show only their own cell (neighbours set to 0)"},
            "on_error": {"enum": ["skip", "stop"], "default": "stop",
                         "description": "an unreadable image or mask stops the step or is left out and recorded"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "masks": "MaskSet"}
    outputs = {"cells": "CellSet"}

    # PerItem (hemaflow.core.chain): one image's mask per task, after the post-processor in a
    # fused chain; the images come from a step finished before the chain (side)
    item_input = "masks"
    item_description = "cell crops"

    def cell_params(self) -> dict[str, Any]:
        return {k: self.params[k] for k in ("crop_size", "scale", "margin", "padding", "pad_value", "min_area",
                                            "mask_neighbours")}

    def side(self, ctx: RunContext, images: Any) -> dict[str, dict[str, Any]]:
        """Per image id of the ImageSet: its row, image path and ground-truth cells (or None)."""
        truth = images.cell_truth()
        by_img = {}
        if truth is not None:
            truth = truth.assign(image_id=truth["image_id"].astype(str))
            by_img = {k: v.reset_index(drop=True) for k, v in truth.groupby("image_id")}
        return {str(row["image_id"]): {"row": i, "image": str(images.image_path(row)), "truth": by_img.get(str(row["image_id"]))}
                for i, row in images.table.reset_index(drop=True).iterrows()}

    def follow(self, result: dict[str, Any], side: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The cells item of a segmenter's or post-processor's result; None for an image the
        ImageSet lacks (e.g. one the normalizer skipped)."""
        at = side.get(str(result["image_id"]))
        if at is None:
            return None
        return {"image_id": str(result["image_id"]), "mask": result["mask"], "instances": result.get("instances"),
                **at}

    def items(self, ctx: RunContext, images: Any, masks: Any) -> list[dict[str, Any]]:
        side = self.side(ctx, images)
        records = []
        for _, mrow in masks.table.iterrows():
            ip = mrow.get("instances_path") if "instances_path" in mrow.index else None
            records.append({"image_id": str(mrow["image_id"]), "mask": str(masks.resolve(mrow["path"])),
                            "instances": None if _empty(ip) else str(masks.resolve(ip))})
        items = [it for it in (self.follow(r, side) for r in records) if it is not None]
        return sorted(items, key=lambda it: it["row"])  # the images' order

    def run_item(self, item: dict[str, Any]) -> dict[str, Any]:
        return cells_item(item, self.cell_params())

    def assemble(self, ctx: RunContext, results: list[Any], images: Any, masks: Any) -> dict[str, Any]:
        from hemaflow.plugins.artifacts import CellSet

        p = self.params
        mask_ids = set(masks.table["image_id"].astype(str))
        missing = sum(str(i) not in mask_ids for i in images.table["image_id"])
        if missing:
            ctx.warn(f"{missing} image(s) have no mask (left out by the segmenter or post-processor)")
        info = {str(r["image_id"]): r for _, r in images.table.iterrows()}
        ok = []
        for res in sorted(results, key=lambda r: r["row"]):  # the images' order, fused or not
            if isinstance(res, Skipped):
                file = res["file"] if res["file"] is not None else str(masks.resolve(masks.row(res["image_id"])["path"]))
                skip_or_stop(ctx, p["on_error"], file, res["error"])
                continue
            ok.append(res)
        n = sum(len(r["rows"]) for r in ok)
        S = p["crop_size"]
        out = ctx.out_dir("cells")
        crops = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
        cmasks = np.lib.format.open_memmap(out / "crop_masks.npy", mode="w+", dtype=np.uint8, shape=(n, S, S))
        rows, at, empty = [], 0, 0
        for res in ok:
            r_img = info[res["image_id"]]
            c, m = res["crops"], res["masks"]
            crops[at:at + len(c)] = c
            cmasks[at:at + len(m)] = m
            if not res["rows"]:
                empty += 1
            for j, r in enumerate(res["rows"]):
                k = r.pop("k")
                rows.append({"cell_id": f"{res['image_id']}:{k}", "image_id": res["image_id"],
                             "patient_id": str(r_img["patient_id"]), "label": r_img["label"],
                             **r, "crop_index": at + j})
            at += len(c)
        crops.flush()
        cmasks.flush()
        del crops, cmasks
        if empty:
            ctx.warn(f"{empty} image(s) have no cell")
        extra = sorted({k for r in rows for k in r} - set(COLUMNS))
        table = pd.DataFrame(rows, columns=COLUMNS + extra)
        if "truth" in table.columns:
            table["truth"] = table["truth"].astype(object).where(table["truth"].notna(), None)
        meta = {"crop_size": S, "classes": images.classes, "source": self.name, "scale": p["scale"],
                "padding": p["padding"], "patients_are_images": bool(images.meta.get("patients_are_images", False)),
                "images_without_cells": empty}
        cells = CellSet(out, table, meta).save()
        self._report(ctx, cells)
        return {"cells": cells}

    def _report(self, ctx: RunContext, cells: Any) -> None:
        from hemaflow.lib.imageio import png_bytes

        if len(cells.table) == 0:
            return
        crops = cells.crops
        idx = np.linspace(0, len(cells.table) - 1, min(12, len(cells.table))).astype(int)
        items = [(str(cells.table.iloc[i]["cell_id"]), png_bytes(np.asarray(crops[i]))) for i in idx]
        ctx.report.gallery(f"Cell crops ({len(cells.table)} cells)", items, section="cells")


@hookimpl
def register_cell_extractors(register: Any) -> None:
    register(CellCrops)
