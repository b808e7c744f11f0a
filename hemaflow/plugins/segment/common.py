"""What the segmenters share with each other and with ``postprocess`` and ``cells``: mask
file names, writing a MaskSet, skipping bad images, overlays for the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError


# -- shared helpers (also used by postprocess and cells) --------------------------------------
def mask_file_name(index: int) -> str:
    """File name of the ``index``-th mask inside a MaskSet (image ids may hold any character)."""
    return f"masks/{index:06d}.png"


def write_mask_set(ctx: RunContext, output: str, rows: list[dict[str, Any]], meta: dict[str, Any]):
    """Save a MaskSet from ``rows`` (dicts with at least image_id and path) under ``output``.

    A segmenter that counts the images where it found nothing passes ``meta["empty_images"]``;
    a non-zero count is recorded as a warning (provenance and report), once, by the segmenter's
    step (a post-processor copying the meta does not repeat it).
    """
    from hemaflow.plugins.artifacts import MaskSet

    if not meta.get("postprocess"):
        warn_empty_images(ctx, int(meta.get("empty_images") or 0), len(rows))
    table = pd.DataFrame(rows, columns=list(rows[0].keys()) if rows else ["image_id", "path"])
    return MaskSet(ctx.out_dir(output), table, meta).save()


def empty_warning(n_empty: int, n_images: int) -> str:
    """The warning text for images without any segmented white cell."""
    return f"{n_empty} of {n_images} images have no white cell (empty mask)"


def warn_empty_images(ctx: RunContext, n_empty: int, n_images: int) -> None:
    """Record "N of M images have no white cell" as a warning (no-op when N is 0)."""
    if n_empty:
        ctx.warn(empty_warning(n_empty, n_images))


def _skip_or_raise(ctx: RunContext, on_error: str, exc: DataError) -> None:
    if on_error == "stop":
        raise exc
    ctx.warn(f"skipped {exc.path}: {exc.problem}")



# -- report helpers ---------------------------------------------------------------------------
def overlay(img: np.ndarray, mask: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """RGB overlay: predicted cell outline green, nucleus outline blue, ground truth outline yellow."""
    from scipy import ndimage as ndi

    out = img.copy()

    def edge(m: np.ndarray) -> np.ndarray:
        return m & ~ndi.binary_erosion(m, iterations=2)

    if truth is not None:
        out[edge(truth > 0)] = (255, 220, 0)
    out[edge(mask > 0)] = (0, 200, 0)
    out[edge(mask == 2)] = (0, 60, 255)
    return out


def report_overlays(ctx: RunContext, images: Any, masks: Any, title: str, n: int = 6) -> None:
    """Add a gallery of a few overlays (prediction and, where known, ground truth)."""
    from hemaflow.lib.imageio import png_bytes

    ids = list(masks.table["image_id"].astype(str))
    if not ids:
        return
    pick = [ids[i] for i in np.linspace(0, len(ids) - 1, min(n, len(ids))).astype(int)]
    items = []
    for iid in pick:
        try:
            img = images.read_image(iid)
            truth = images.read_mask(iid) if images.has_masks() else None
        except DataError:
            continue
        items.append((iid, png_bytes(overlay(img, masks.read_mask(iid), truth), max_side=320)))
    if items:
        ctx.report.gallery(title, items, section="segmentation")

