"""Hand-made per-cell features of the segmented cell: shape, colour and texture (fast, no pyradiomics).

Component (kind ``features``): ``cell_features``. For every crop of a :class:`CellSet` (RGB uint8
crop + 0/1/2 crop mask: 1 cytoplasm, 2 nucleus) it computes about 90 classical morphology
features that haematologists read off a white cell, with one fixed formula per feature so values
compare across cells and images:

* shape (``shape_cell_*``, ``shape_nucleus_*``; pixels of the crop): area, perimeter, equivalent
  diameter, major/minor axis, eccentricity, solidity, extent, circularity (4 pi A / P^2),
  convexity (convex-hull perimeter / perimeter); nucleus only: lobes (connected parts) and
  lobularity (1 - solidity); and ``shape_nc_ratio`` (nucleus / cytoplasm area),
  ``shape_nucleus_fraction`` (nucleus / cell area), ``shape_nucleus_offset`` (distance of the
  nucleus centroid from the cell centroid over the cell's equivalent radius);
* colour (``colour_<region>_<channel>_{mean,sd}`` for region nucleus and cytoplasm): R, G, B
  (0-255), CIE Lab (L 0-100) and HED (skimage ``rgb2hed``: haematoxylin, eosin, DAB optical
  densities), nucleus minus cytoplasm differences of L, H and E, and grey (BT.709 luminance)
  percentiles 10/50/90 of both regions;
* texture on the grey nucleus and cytoplasm: GLCM contrast, dissimilarity,
  homogeneity, energy and correlation (32 grey levels over the region's own 1-99% range,
  distance 1, four directions, symmetric, averaged; pixels outside the region never enter the
  matrix), and a uniform LBP histogram (P=8, R=1: 10 bins) of the
  nucleus.

A region that is absent (a crop mask without nucleus, e.g. ``whole_images`` without masks) gives
NaN for that region's features; consumers impute (the pooled baseline and MIL use the training
mean). A cell without any foreground pixel is skipped and listed in ``meta["skipped"]``.

Example::

    from hemaflow.testing import make, make_context
    table = make(CellFeatures).run(make_context("/tmp/x"), cells=cells)["features"]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import FeatureExtractor
from hemaflow.core.component import Component, RunContext, cpu_count
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.artifacts import CellSet, FeatureTable

ID_COLUMNS = ("cell_id", "image_id", "patient_id", "label", "truth")
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 32
LBP_BINS = 10  # uniform LBP with P=8: values 0..9
SHAPE_KEYS = ("area", "perimeter", "equivalent_diameter", "major_axis", "minor_axis", "eccentricity", "solidity",
              "extent", "circularity", "convexity")
CHANNELS = ("R", "G", "B", "L", "a", "b", "H", "E", "D")
GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def feature_names(groups: tuple[str, ...] = ("shape", "colour", "texture")) -> list[str]:
    """The feature columns in order, for the given groups."""
    out: list[str] = []
    if "shape" in groups:
        out += [f"shape_cell_{k}" for k in SHAPE_KEYS]
        out += [f"shape_nucleus_{k}" for k in SHAPE_KEYS] + ["shape_nucleus_lobes", "shape_nucleus_lobularity"]
        out += ["shape_nc_ratio", "shape_nucleus_fraction", "shape_nucleus_offset"]
    if "colour" in groups:
        for region in ("nucleus", "cytoplasm"):
            out += [f"colour_{region}_{c}_{s}" for c in CHANNELS for s in ("mean", "sd")]
        out += ["colour_diff_L", "colour_diff_H", "colour_diff_E"]
        out += [f"colour_{region}_grey_p{q}" for region in ("nucleus", "cytoplasm") for q in (10, 50, 90)]
    if "texture" in groups:
        for region in ("nucleus", "cytoplasm"):
            out += [f"texture_{region}_glcm_{k}" for k in GLCM_PROPS]
        out += [f"texture_nucleus_lbp_{i}" for i in range(LBP_BINS)]
    return out


def _hull(region: np.ndarray) -> tuple[float, float]:
    """Area and perimeter of the convex hull of the region's pixel squares (from each row's
    leftmost and rightmost pixel: the hull of a set is the hull of its row extremes)."""
    from scipy.spatial import ConvexHull, QhullError

    rows = np.flatnonzero(region.any(axis=1))
    left = region[rows].argmax(axis=1)
    right = region.shape[1] - 1 - region[rows, ::-1].argmax(axis=1)
    pts = np.concatenate([np.stack([rows + dy, cols + dx], 1) for cols, dx in ((left, 0), (right, 1)) for dy in (0, 1)])
    try:
        h = ConvexHull(pts.astype(np.float64))
    except QhullError:  # degenerate (one row or column of pixels)
        return float(region.sum()), float(2 * (np.ptp(pts[:, 0]) + np.ptp(pts[:, 1])))
    return float(h.volume), float(h.area)  # in 2-D: volume is the area, area the perimeter


def _shape(region: np.ndarray, prefix: str, nucleus: bool) -> dict[str, float]:
    from skimage.measure import label, perimeter_crofton

    out = {f"{prefix}_{k}": math.nan for k in SHAPE_KEYS}
    if nucleus:
        out.update({f"{prefix}_lobes": 0.0, f"{prefix}_lobularity": math.nan})
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return out
    area = float(ys.size)
    # second central moments (pixel centres, plus 1/12 for each pixel's own extent): the ellipse
    # with the same moments gives the axes and eccentricity (skimage regionprops' definition)
    cov = np.cov(np.stack([ys, xs]), bias=True) if ys.size > 1 else np.zeros((2, 2))
    ev = np.sort(np.linalg.eigvalsh(cov + np.eye(2) / 12))[::-1]
    major, minor = 4 * math.sqrt(max(ev[0], 0.0)), 4 * math.sqrt(max(ev[1], 0.0))
    per = float(perimeter_crofton(region, directions=4))
    hull_area, hull_per = _hull(region)
    h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
    out.update({
        f"{prefix}_area": area,
        f"{prefix}_perimeter": per,
        f"{prefix}_equivalent_diameter": math.sqrt(4 * area / math.pi),
        f"{prefix}_major_axis": major,
        f"{prefix}_minor_axis": minor,
        f"{prefix}_eccentricity": math.sqrt(max(0.0, 1 - ev[1] / ev[0])) if ev[0] > 0 else 0.0,
        f"{prefix}_solidity": min(1.0, area / hull_area) if hull_area > 0 else 1.0,
        f"{prefix}_extent": area / float(h * w),
        f"{prefix}_circularity": min(1.0, 4 * math.pi * area / per ** 2) if per > 0 else math.nan,
        f"{prefix}_convexity": min(1.0, hull_per / per) if per > 0 else math.nan,
    })
    if nucleus:
        out[f"{prefix}_lobes"] = float(label(region, connectivity=2).max())
        out[f"{prefix}_lobularity"] = 1.0 - out[f"{prefix}_solidity"]
    return out


_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))  # GLCM angles 0, 45, 90, 135 degrees at distance 1
_LEV = np.arange(GLCM_LEVELS, dtype=np.float64)
_I, _J = np.meshgrid(_LEV, _LEV, indexing="ij")
_D2 = ((_I - _J) ** 2).ravel()
_DABS = np.abs(_I - _J).ravel()
_HOM = (1 / (1 + (_I - _J) ** 2)).ravel()
_IJ = (_I * _J).ravel()


def _glcm(q: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """GLCM properties of grey levels ``q`` (0..GLCM_LEVELS-1) over pixel pairs inside ``region``
    only: distance 1, four directions, symmetric, normalized per direction, properties averaged
    (the same values as skimage ``graycomatrix``/``graycoprops`` on the region alone)."""
    n = GLCM_LEVELS
    props: dict[str, list[float]] = {k: [] for k in GLCM_PROPS}
    h, w = q.shape
    for dy, dx in _OFFSETS:
        y1 = h - dy
        x0, x1 = max(0, -dx), min(w, w - dx)
        both = region[:y1, x0:x1] & region[dy:y1 + dy, x0 + dx:x1 + dx]
        if not both.any():
            continue
        m = np.bincount(q[:y1, x0:x1][both] * n + q[dy:y1 + dy, x0 + dx:x1 + dx][both], minlength=n * n)
        m = m.reshape(n, n).astype(np.float64)
        m = m + m.T
        m /= m.sum()
        flat = m.ravel()
        props["contrast"].append(float(flat @ _D2))
        props["dissimilarity"].append(float(flat @ _DABS))
        props["homogeneity"].append(float(flat @ _HOM))
        props["energy"].append(math.sqrt(float(flat @ flat)))
        pi = m.sum(1)  # symmetric: row and column marginals are equal
        mu = float(pi @ _LEV)
        var = float(pi @ (_LEV - mu) ** 2)
        props["correlation"].append(float(flat @ _IJ) - mu * mu if var > 1e-12 else 1.0)
        if var > 1e-12:
            props["correlation"][-1] /= var
    return {k: float(np.mean(v)) if v else math.nan for k, v in props.items()}


def cell_features(crop: np.ndarray, mask: np.ndarray) -> dict[str, float] | None:
    """Hand-made features of one cell (RGB uint8 HxWx3 crop, uint8 HxW mask 0/1/2); None if the
    mask has no foreground."""
    from skimage.color import rgb2hed, rgb2lab
    from skimage.feature import local_binary_pattern

    cell = mask > 0
    if not cell.any():
        return None
    # work on the cell's bounding box (+1 px): every feature is translation invariant
    ys, xs = np.nonzero(cell.any(axis=1))[0], np.nonzero(cell.any(axis=0))[0]
    y0, y1 = max(0, ys[0] - 1), min(mask.shape[0], ys[-1] + 2)
    x0, x1 = max(0, xs[0] - 1), min(mask.shape[1], xs[-1] + 2)
    crop, mask, cell = crop[y0:y1, x0:x1], mask[y0:y1, x0:x1], cell[y0:y1, x0:x1]
    nuc = mask == 2
    cyt = mask == 1
    out: dict[str, float] = {}
    out.update(_shape(cell, "shape_cell", False))
    out.update(_shape(nuc, "shape_nucleus", True))
    a_n, a_c, a_all = float(nuc.sum()), float(cyt.sum()), float(cell.sum())
    out["shape_nc_ratio"] = a_n / a_c if a_c > 0 else math.nan
    out["shape_nucleus_fraction"] = a_n / a_all
    if a_n > 0:
        cy, cx = np.argwhere(cell).mean(0)
        ny, nx = np.argwhere(nuc).mean(0)
        out["shape_nucleus_offset"] = float(math.hypot(ny - cy, nx - cx) / math.sqrt(a_all / math.pi))
    else:
        out["shape_nucleus_offset"] = math.nan
    # colour: conversions on the cell's pixels only (N x 1 x 3), not the whole crop
    px = crop[cell].astype(np.float64)
    rgb01 = (px / 255.0)[:, None, :]
    chans = np.concatenate([px, rgb2lab(rgb01)[:, 0, :], rgb2hed(rgb01)[:, 0, :]], axis=1)  # (N, 9)
    sel = {"nucleus": nuc[cell], "cytoplasm": cyt[cell]}
    means = {}
    for region, sm in sel.items():
        v = chans[sm]
        mu, sd = (v.mean(0), v.std(0)) if len(v) else (np.full(9, math.nan), np.full(9, math.nan))
        for j, c in enumerate(CHANNELS):
            means[(region, c)] = float(mu[j])
            out[f"colour_{region}_{c}_mean"] = float(mu[j])
            out[f"colour_{region}_{c}_sd"] = float(sd[j])
    for c in ("L", "H", "E"):
        out[f"colour_diff_{c}"] = means[("nucleus", c)] - means[("cytoplasm", c)]
    grey = crop.astype(np.float64) @ GREY_WEIGHTS
    for region, r in (("nucleus", nuc), ("cytoplasm", cyt)):
        vals = grey[r]
        pct = np.percentile(vals, (1, 10, 50, 90, 99)) if vals.size else np.full(5, math.nan)
        for q, v in zip((10, 50, 90), pct[1:4]):
            out[f"colour_{region}_grey_p{q}"] = float(v)
        if vals.size >= 4 and pct[4] - pct[0] > 1e-6:  # grey levels over the region's own 1-99% range
            qg = np.clip(np.floor((grey - pct[0]) / (pct[4] - pct[0]) * GLCM_LEVELS), 0, GLCM_LEVELS - 1)
            tex = _glcm(qg.astype(np.int64), r)
        else:
            tex = {k: math.nan for k in GLCM_PROPS}
        for k, v in tex.items():
            out[f"texture_{region}_glcm_{k}"] = v
    if nuc.any():
        lbp = local_binary_pattern(grey.astype(np.uint8), 8, 1, method="uniform")[nuc].astype(np.int64)
        hist = np.bincount(lbp, minlength=LBP_BINS)[:LBP_BINS] / max(1, lbp.size)
    else:
        hist = np.full(LBP_BINS, math.nan)
    out.update({f"texture_nucleus_lbp_{i}": float(v) for i, v in enumerate(hist)})
    return out


def extract_chunk(args: tuple[str, list[int], list[str]]) -> list[tuple[int, list[float] | None]]:
    """Features of crops ``indices`` of the CellSet at ``path`` (top level: picklable for workers)."""
    from pathlib import Path

    path, indices, names = args
    crops = np.load(Path(path) / "crops.npy", mmap_mode="r")
    masks = np.load(Path(path) / "crop_masks.npy", mmap_mode="r")
    out = []
    for i in indices:
        f = cell_features(np.asarray(crops[i]), np.asarray(masks[i]))
        out.append((i, None if f is None else [f.get(n, math.nan) for n in names]))
    return out


class CellFeatures(FeatureExtractor):
    """Hand-made shape, colour and texture features of each segmented cell (about 90 columns).

    The classical baseline's features: fast (skimage, no pyradiomics), one fixed formula per
    feature. Parameters: ``groups`` (any of shape, colour, texture; drop ``colour`` for a
    colour-free set), ``chunk_size`` (cells per ``ctx.map`` task, 0: auto).

    Example::

        cellfeats:
          uses: cell_features
          inputs: {cells: cells}
    """

    kind = "features"
    name = "cell_features"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "groups": {"type": "array", "items": {"enum": ["shape", "colour", "texture"]}, "minItems": 1,
                       "uniqueItems": True, "default": ["shape", "colour", "texture"],
                       "description": "feature groups; without colour no stain colour or intensity statistic is "
                                      "used (texture: GLCM of grey levels rescaled per region, LBP)"},
            "chunk_size": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "cells per ctx.map task; 0: about 4 tasks per CPU, at most 256"},
        },
        "additionalProperties": False,
    }
    inputs = {"cells": "CellSet"}
    outputs = {"features": "FeatureTable"}

    def run(self, ctx: RunContext, cells: CellSet) -> dict[str, Any]:
        groups = tuple(g for g in ("shape", "colour", "texture") if g in self.params["groups"])
        names = feature_names(groups)
        table = cells.table.reset_index(drop=True)
        idx = table["crop_index"].astype(int).tolist()
        size = self.params["chunk_size"] or max(1, min(256, math.ceil(len(idx) / (4 * cpu_count()))))
        tasks = [(str(cells.path), idx[i:i + size], names) for i in range(0, len(idx), size)]
        by_crop: dict[int, list[float] | None] = {}
        for chunk in ctx.map(extract_chunk, tasks, description="cell features"):
            by_crop.update(dict(chunk))
        ok = [k for k, i in enumerate(idx) if by_crop[i] is not None]
        ids = table[[c for c in ID_COLUMNS if c in table.columns]].reset_index(drop=True)
        skipped = [{"cell_id": str(ids.at[k, "cell_id"]), "image_id": str(ids.at[k, "image_id"]),
                    "reason": "empty crop mask"} for k, i in enumerate(idx) if by_crop[i] is None]
        if skipped:
            ctx.warn(f"skipped {len(skipped)} cell(s) with an empty crop mask; listed in meta['skipped']")
        values = np.array([by_crop[idx[k]] for k in ok], np.float64).reshape(len(ok), len(names))
        out = pd.concat([ids.iloc[ok].reset_index(drop=True), pd.DataFrame(values, columns=names)], axis=1)
        import skimage

        meta = {"feature_columns": names, "level": "cell", "source": self.name, "classes": cells.classes,
                "patients_are_images": bool(cells.meta.get("patients_are_images", False)), "skipped": skipped,
                "n_input": len(idx), "provenance": {"component": self.name, "component_version": self.version,
                                                    "skimage": skimage.__version__, "params": self.get_params(),
                                                    "groups": list(groups)}}
        return {"features": FeatureTable(ctx.out_dir("features"), out, meta).save()}


@hookimpl
def register_feature_extractors(register: Any) -> None:
    register(CellFeatures)
