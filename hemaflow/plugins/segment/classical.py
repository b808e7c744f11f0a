"""Segmenters without training: ``classical`` (default ``algorithm: adaptive``, thresholds and
colour models fitted to each image, see :mod:`.adaptive`; ``algorithm: threshold`` is the older
nucleus-channel Otsu with a floor and a grown convex hull) and ``ground_truth`` (the data set's
own masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.core.bases import Segmenter
from hemaflow.core.chain import PerItem, Skipped
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.segment.adaptive import ADAPTIVE_DEFAULTS, adaptive_mask
from hemaflow.plugins.segment.common import _skip_or_raise, mask_file_name, report_overlays, write_mask_set

#: Default lower bound of the threshold per channel (channel values as computed by
#: :func:`nucleus_channel`): keeps fields without a white cell empty when Otsu would split noise.
MIN_THRESHOLD = {"blue_red": 0.08, "hematoxylin": 0.035, "saturation": 0.2}
#: ``min_nucleus_area: null`` means this fraction of the image area.
AUTO_MIN_NUCLEUS_FRACTION = 0.001



# -- classical --------------------------------------------------------------------------------
def nucleus_channel(img: np.ndarray, channel: str) -> np.ndarray:
    """Return a float channel in about [0, 1] that is high on stained nuclei.

    Args:
        img: RGB uint8 HxWx3.
        channel: ``blue_red`` ((B - R) / 255, clipped at 0: nuclei are purple-blue, red cells
            pink), ``hematoxylin`` (H of skimage's ``rgb2hed``), ``saturation`` (HSV S).
    """
    if channel == "blue_red":
        return np.clip((img[..., 2].astype(np.float32) - img[..., 0].astype(np.float32)) / 255.0, 0, 1)
    if channel == "hematoxylin":
        from skimage.color import rgb2hed

        return np.clip(rgb2hed(img)[..., 0], 0, None).astype(np.float32)
    if channel == "saturation":
        f = img.astype(np.float32)
        mx, mn = f.max(axis=2), f.min(axis=2)
        return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0).astype(np.float32)
    raise ValueError(f"unknown channel {channel!r}")


def _threshold(ch: np.ndarray, method: str) -> float:
    from skimage import filters

    if float(ch.max()) - float(ch.min()) < 1e-6:
        return float("inf")
    fn = {"otsu": filters.threshold_otsu, "li": filters.threshold_li, "triangle": filters.threshold_triangle}[method]
    return float(fn(ch))


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def classical_mask(img: np.ndarray, *, channel: str = "blue_red", method: str = "otsu",
                   min_threshold: float | None = None, opening_radius: int = 2, closing_radius: int = 5,
                   min_nucleus_area: int | None = None, cytoplasm_ratio: float = 0.05) -> np.ndarray:
    """Segment white cells in one RGB image; return uint8 0 background / 1 cytoplasm / 2 nucleus.

    Example:
        >>> img = np.full((64, 64, 3), 230, np.uint8); img[20:40, 20:40] = (90, 60, 170)
        >>> m = classical_mask(img, min_nucleus_area=50)
        >>> int((m == 2).sum()) > 300 and int(m[0, 0])
        0
    """
    from scipy import ndimage as ndi
    from skimage import measure

    ch = nucleus_channel(img, channel)
    floor = MIN_THRESHOLD[channel] if min_threshold is None else float(min_threshold)
    t = max(_threshold(ch, method), floor)
    nuc = ch > t
    if opening_radius > 0:
        nuc = ndi.binary_opening(nuc, _disk(opening_radius))
    if closing_radius > 0:
        # pad so that closing does not glue nuclei to the image border
        r = closing_radius
        nuc = ndi.binary_closing(np.pad(nuc, r), _disk(r))[r:-r, r:-r]
    nuc = ndi.binary_fill_holes(nuc)
    lab, n = ndi.label(nuc)
    out = np.zeros(img.shape[:2], np.uint8)
    if n == 0:
        return out
    if min_nucleus_area is None:
        min_nucleus_area = int(round(AUTO_MIN_NUCLEUS_FRACTION * img.shape[0] * img.shape[1]))
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    keep = areas >= min_nucleus_area
    keep[0] = False
    nuc = keep[lab]
    cell = np.zeros_like(nuc)
    for r in measure.regionprops(measure.label(nuc)):
        y0, x0, y1, x1 = r.bbox
        rad = int(round(cytoplasm_ratio * np.sqrt(r.area)))
        pad = rad + 1
        hull = np.zeros((y1 - y0 + 2 * pad, x1 - x0 + 2 * pad), bool)
        hull[pad:-pad, pad:-pad] = r.image_convex
        if rad > 0:
            hull = ndi.binary_dilation(hull, _disk(rad))
        Y0, X0 = y0 - pad, x0 - pad
        sy0, sx0 = max(Y0, 0), max(X0, 0)
        sy1, sx1 = min(y1 + pad, cell.shape[0]), min(x1 + pad, cell.shape[1])
        cell[sy0:sy1, sx0:sx1] |= hull[sy0 - Y0:sy1 - Y0, sx0 - X0:sx1 - X0]
    out[cell] = 1
    out[nuc] = 2
    return out


def segment_item(item: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Segment one image (``item["image"]``: an RGB array, or the path of one); the mask in memory.

    Returns ``{"image_id", "mask", "height", "width", "cell_fraction"}``, or a :class:`Skipped`
    record (``file``, ``error``) for an image that cannot be read."""
    from hemaflow.lib import imageio as io

    img = item["image"]
    if not isinstance(img, np.ndarray):
        try:
            img = io.read_image(img)
        except DataError as exc:
            return Skipped(image_id=item["image_id"], error=exc.problem, file=exc.path)
    params = dict(params)
    mask = adaptive_mask(img, **params) if params.pop("algorithm") == "adaptive" else classical_mask(img, **params)
    return {"image_id": item["image_id"], "mask": mask, "height": img.shape[0], "width": img.shape[1],
            "cell_fraction": float((mask > 0).mean())}


def _classical_one(item: tuple[str, str, str, dict[str, Any]]) -> dict[str, Any]:
    """Segment one image file and write its mask PNG (benchmarks/run_all.py times executors on it)."""
    from hemaflow.lib import imageio as io

    image_id, src, dst, params = item
    res = segment_item({"image_id": image_id, "image": src}, params)
    if isinstance(res, Skipped):
        return dict(res)
    io.write_png(dst, res.pop("mask"))
    return res


def image_items(images: Any) -> list[dict[str, Any]]:
    """The per-image items of an ImageSet: ``{"image_id", "image": path}`` in row order (a fused
    chain passes the previous step's result instead, with the array as ``image``)."""
    return [{"image_id": str(row["image_id"]), "image": str(images.image_path(row))}
            for _, row in images.table.reset_index(drop=True).iterrows()]


ON_ERROR = {"enum": ["skip", "stop"], "default": "stop",
            "description": "an unreadable image stops the step (stop) or is left out and recorded (skip)"}


THRESHOLD_ONLY = ("channel", "method", "min_threshold", "opening_radius", "closing_radius", "cytoplasm_ratio")


def _num(lo: float, hi: float, default: float, description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi, "default": default, "description": description}


class ClassicalSegmenter(PerItem, Segmenter):
    """White cells without training: nucleus and cytoplasm from each image's own colours.

    ``algorithm: adaptive`` (default, :mod:`.adaptive`): multi-Otsu nucleus on Lab a*-b*, lobes
    grouped into one cell, cytoplasm from a colour model of the ring around the nucleus against
    the surroundings; ``single_cell: true`` keeps the cell nearest the centre (crops of one cell).
    ``algorithm: threshold``: the older nucleus channel + Otsu with a floor, convex hull grown by
    ``cytoplasm_ratio`` (its parameters are ignored by ``adaptive``).
    The zero-setup default and the baseline for learned segmenters.
    """

    kind = "segmenter"
    name = "classical"
    version = "4"
    schema = {
        "type": "object",
        "properties": {
            "algorithm": {"enum": ["adaptive", "threshold"], "default": "adaptive",
                          "description": "adaptive: thresholds and colour models fitted per image (no colour "
                                         "floor); threshold: nucleus channel + Otsu with a floor, hull grown "
                                         "by cytoplasm_ratio (before version 3)"},
            "single_cell": {"type": "boolean", "default": False,
                            "description": "adaptive: return only the cell under or nearest the image centre "
                                           "(single-cell crops, e.g. CellaVision exports)"},
            "min_nucleus_area": {"type": ["integer", "null"], "minimum": 0, "default": None,
                                 "description": "nuclei smaller than this (px) are dropped (platelets, debris); "
                                                "null: 0.1% of the image area (307 px at 640x480, 66 px at 256x256)"},
            "min_contrast": _num(0, 200, ADAPTIVE_DEFAULTS["min_contrast"],
                                 "adaptive: a nucleus's median Lab b* must lie this far below the image's median "
                                 "b* (bluer than the image's own background; not an absolute colour)"),
            "lobe_gap": _num(0, 3, ADAPTIVE_DEFAULTS["lobe_gap"],
                             "adaptive: nucleus pieces closer than this x the nucleus radius are one cell"),
            "ring": _num(0, 2, ADAPTIVE_DEFAULTS["ring"],
                         "adaptive: width (x nucleus radius) of the ring that samples the cytoplasm colour"),
            "background_distance": _num(1, 20, ADAPTIVE_DEFAULTS["background_distance"],
                                        "adaptive: pixels further than this x nucleus radius sample the "
                                        "surroundings (background, red cells)"),
            "window": _num(1, 20, ADAPTIVE_DEFAULTS["window"],
                           "adaptive: the cell lies within this x nucleus radius of its nucleus"),
            "opening": _num(0, 2, ADAPTIVE_DEFAULTS["opening"],
                            "adaptive: opening radius (x nucleus radius) that cuts thin bridges to red cells"),
            "convex": {"type": "boolean", "default": ADAPTIVE_DEFAULTS["convex"],
                       "description": "adaptive: each cell is the convex hull of its colour region (version 4; "
                                      "false: the frayed region itself, as version 3)"},
            "nucleus_split": {"type": "boolean", "default": ADAPTIVE_DEFAULTS["nucleus_split"],
                              "description": "adaptive: drop purple cytoplasm from each nucleus (keep the "
                                             "darkest or bluest third of the cell's colours when the rest "
                                             "differs by Delta E >= 30); raises nucleus Dice on crops, "
                                             "BCCD unchanged (docs/segmentation.md)"},
            "channel": {"enum": ["blue_red", "hematoxylin", "saturation"], "default": "blue_red",
                        "description": "threshold: nucleus channel: (B-R)/255 (robust to red cells), "
                                       "hematoxylin from colour deconvolution, or HSV saturation"},
            "method": {"enum": ["otsu", "li", "triangle"], "default": "otsu",
                       "description": "threshold: automatic threshold on the nucleus channel"},
            "min_threshold": {"type": ["number", "null"], "minimum": 0, "default": None,
                              "description": "threshold: lower bound of the threshold (null: per-channel "
                                             "default blue_red 0.08, hematoxylin 0.035, saturation 0.2)"},
            "opening_radius": {"type": "integer", "minimum": 0, "maximum": 50, "default": 2,
                               "description": "threshold: disk radius (px) of the opening that removes specks"},
            "closing_radius": {"type": "integer", "minimum": 0, "maximum": 50, "default": 5,
                               "description": "threshold: disk radius (px) of the closing that joins lobes"},
            "cytoplasm_ratio": {"type": "number", "minimum": 0, "maximum": 3, "default": 0.05,
                                "description": "threshold: cell = convex hull of the nucleus grown by this "
                                               "x sqrt(nucleus area) px"},
            "on_error": ON_ERROR,
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet"}
    outputs = {"masks": "MaskSet"}

    def cache_params(self) -> dict[str, Any]:
        """All parameters, except ``nucleus_split`` when off: with it off the output is that of
        version 4 before the option existed, so those runs keep their cache keys."""
        params = dict(self.params)
        if not params.get("nucleus_split"):
            params.pop("nucleus_split", None)
        return params

    def seg_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`adaptive_mask` or :func:`classical_mask`, plus ``algorithm``."""
        p = self.params
        if p["algorithm"] == "adaptive":
            keys = ("single_cell", "min_nucleus_area", *ADAPTIVE_DEFAULTS)
        else:
            keys = ("min_nucleus_area", *THRESHOLD_ONLY)
        return {"algorithm": p["algorithm"], **{k: p[k] for k in keys}}

    # PerItem (hemaflow.core.chain): one image per task; fuses with the steps around it
    item_description = "classical segmentation"

    def items(self, ctx: RunContext, images: Any) -> list[dict[str, Any]]:
        return image_items(images)

    def run_item(self, item: dict[str, Any]) -> dict[str, Any]:
        return segment_item(item, self.seg_params())

    def assemble(self, ctx: RunContext, results: list[Any], images: Any) -> dict[str, Any]:
        from hemaflow.lib import imageio as io

        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows = []
        for i, res in enumerate(results):  # result i is row i of the images (a skipped one leaves a gap)
            if isinstance(res, Skipped):
                _skip_or_raise(ctx, self.params["on_error"], DataError(res["file"], res["error"]))
                continue
            io.write_png(out / mask_file_name(i), res["mask"])
            rows.append({"image_id": res["image_id"], "path": mask_file_name(i)})
        empty = sum(1 for r in results if not isinstance(r, Skipped) and r["cell_fraction"] == 0.0)
        masks = write_mask_set(ctx, "masks", rows, {"source": self.name, "empty_images": empty})
        report_overlays(ctx, images, masks, "Classical segmentation (green cell, blue nucleus, yellow truth)")
        return {"masks": masks}



# -- ground truth -----------------------------------------------------------------------------
def _ground_truth_one(item: tuple[str, str, dict | None, str]) -> dict[str, Any]:
    from hemaflow.lib import imageio as io

    image_id, src, spec, dst = item
    try:
        mask = io.read_mask(src, spec)
    except DataError as exc:
        return {"image_id": image_id, "error": exc.problem, "file": exc.path}
    io.write_png(dst, mask)
    return {"image_id": image_id}


class GroundTruthSegmenter(Segmenter):
    """Pass the data set's own masks through as a MaskSet (canonical 0/1/2 PNGs)."""

    kind = "segmenter"
    name = "ground_truth"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "missing": {"enum": ["error", "skip"], "default": "error",
                        "description": "an image without a mask stops the step (error) or is left out (skip)"},
            "on_error": ON_ERROR,
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet"}
    outputs = {"masks": "MaskSet"}

    def run(self, ctx: RunContext, images: Any) -> dict[str, Any]:
        if not images.has_masks():
            raise DataError(images.path, "the data set has no ground-truth masks (no mask_path column); "
                            "use a segmenter such as 'classical' or 'deeplabv3' instead of 'ground_truth'")
        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        spec = images.meta.get("mask_spec")
        items = []
        for i, row in images.table.reset_index(drop=True).iterrows():
            mp = row.get("mask_path")
            if mp is None or (isinstance(mp, float) and np.isnan(mp)) or mp == "":
                msg = f"image {row['image_id']!r} has no ground-truth mask"
                if self.params["missing"] == "error":
                    raise DataError(images.image_path(row), msg + " (set missing: skip to leave it out)")
                ctx.warn(msg)
                continue
            items.append((str(row["image_id"]), str(images.resolve(mp)), spec, str(out / mask_file_name(i))))
        results = ctx.map(_ground_truth_one, items, description="ground-truth masks")
        rows = []
        for (image_id, _, _, dst), res in zip(items, results):
            if "error" in res:
                _skip_or_raise(ctx, self.params["on_error"], DataError(res["file"], res["error"]))
                continue
            rows.append({"image_id": image_id, "path": str(Path(dst).relative_to(out))})
        return {"masks": write_mask_set(ctx, "masks", rows, {"source": self.name})}



@hookimpl
def register_segmenters(register: Any) -> None:
    register(ClassicalSegmenter)
    register(GroundTruthSegmenter)
