"""Stain normalizers: ``macenko`` and ``reinhard`` (torchstain, torch backend).

Input ``images: ImageSet`` (and optionally ``split: Split``); output ``images: ImageSet`` with
the same rows, normalized RGB uint8 PNGs, and a ``stain_outcome`` column per image:
``normalized``, ``passthrough`` (kept unnormalized) or, for a skipped image, no row at all
(the skip is recorded in ``meta["skipped"]`` and as a warning).

The reference image is ``reference`` (a path), else chosen automatically among the training
images (fold ``fold``'s ``train`` partition of the ``split`` input, else the ImageSet's
``split`` column, else all images): the label-free medoid of the candidates' stain statistics
(Macenko: stain vectors and 99th-percentile concentrations; Reinhard: LAB mean and std), i.e.
the most typical staining. Labels and test images never choose it.

torchstain raises deep inside (``IndexError`` from ``kthvalue``, ``LinAlgError``) on images
where too few pixels are stained (white background, over-exposed, red-cell-only tiles), and
returns garbage without an error on uniform or black input. :func:`stain_problem` detects these
before torchstain is called; remaining exceptions and non-finite outputs are caught too. What
happens then is ``on_failure``: ``skip`` (leave the image out), ``passthrough`` (keep it
unnormalized) or ``stop`` (a DataError naming the file).

Background check (``background_check``): Macenko can turn a field's white background lavender
(e.g. RGB 233,234,247 -> 190,181,226) without any error. The brightest 10% of each input image's
pixels (by luminance) are its background; the median Lab colour of those pixels is compared
before and after normalization (:func:`background_shift`). An output whose background moved by
more than ``background_max_shift`` (CIE76 delta E) *and* away from white is flagged: ``warn``
(default) records a warning listing the images and shows them in the report, ``fallback`` keeps
the original image for them (``stain_outcome`` ``passthrough``), ``off`` skips the check. Images
that are not flagged are written exactly as without the check.

Colour order: torchstain's torch backend takes RGB uint8 CHW and returns HWC (int32 for
Macenko); images stay RGB end to end and are written as RGB PNGs (the original code swapped red
and blue when saving with OpenCV).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Normalizer
from hemaflow.core.chain import PerItem, Skipped
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.imageio import resize as _resize
from hemaflow.lib.stain import (  # noqa: F401  (the stain science; imported from here too)
    BACKGROUND_FRACTION, flat_state, apply_state, background_flag, background_shift, fit_state, stain_problem)


def _normalize_one(item: tuple) -> dict[str, Any]:
    """Read, check and normalize one image; the result holds the arrays to write (``image``,
    and ``mask``: the resized mask when the image has one to resize alongside)."""
    from hemaflow.lib import imageio as io

    image_id, src, kind, state, params, mask = item
    resized_mask = None
    try:
        raw = io.read_image(src)
        img = _resize(raw, params["resize"])
        if mask is not None:  # resized images get their masks resized alongside (nearest)
            m = io.read_mask(mask[0], mask[1])
            if m.shape != raw.shape[:2]:
                raise DataError(mask[0], f"mask is {m.shape[1]}x{m.shape[0]} but the image is "
                                f"{raw.shape[1]}x{raw.shape[0]}")
            resized_mask = _resize(m, params["resize"], nearest=True)
    except DataError as exc:
        return {"image_id": image_id, "outcome": "error", "reason": exc.problem, "file": exc.path}
    problem = stain_problem(img, Io=params.get("Io", 240), beta=params.get("beta", 0.15),
                            min_stained_fraction=params["min_stained_fraction"], two_stains=kind == "macenko")
    if problem is None:
        try:
            out = apply_state(kind, state, img, params)
        except (IndexError, RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            problem = f"{kind} failed ({type(exc).__name__}: {exc})"
    base = {"image_id": image_id, "mask": resized_mask}
    if problem is not None:
        if params["on_failure"] == "passthrough":
            return {**base, "image": img, "outcome": "passthrough", "reason": problem}
        return {**base, "outcome": "failed", "reason": problem}
    check = params.get("background_check", "off")
    flag = background_flag(img, out, params["background_max_shift"]) if check != "off" else None
    if flag is not None and check == "fallback":
        return {**base, "image": img, "outcome": "passthrough", "reason": flag, "background": flag}
    return {**base, "image": np.asarray(out), "outcome": "normalized", "reason": "", "background": flag}


def _scale_truth(truth: pd.DataFrame, table: pd.DataFrame, images: Any, size: list[int]) -> pd.DataFrame:
    """Rescale generator cell centroids to resized images (reads each image's size from its header)."""
    from PIL import Image

    truth = truth.copy()
    truth["image_id"] = truth["image_id"].astype(str)
    for _, r in table.iterrows():
        sel = truth["image_id"] == str(r["image_id"])
        if not sel.any():
            continue
        with Image.open(images.image_path(r)) as im:
            w, h = im.size
        truth.loc[sel, "centroid_y"] = truth.loc[sel, "centroid_y"] * size[0] / h
        truth.loc[sel, "centroid_x"] = truth.loc[sel, "centroid_x"] * size[1] / w
    return truth


def _descriptor(item: tuple) -> list[float] | None:
    """Label-free stain statistics of one candidate reference (None if it cannot be fitted)."""
    from hemaflow.lib import imageio as io

    src, kind, params = item
    try:
        img = _resize(io.read_image(src), params["resize"])
    except DataError:
        return None
    if stain_problem(img, Io=params.get("Io", 240), beta=params.get("beta", 0.15),
                     min_stained_fraction=params["min_stained_fraction"], two_stains=kind == "macenko") is not None:
        return None
    try:
        state = fit_state(kind, img, params)
    except (IndexError, RuntimeError, ValueError, np.linalg.LinAlgError):
        return None
    return [float(v) for v in flat_state(state)]


def training_image_ids(images: Any, split: Any, fold: int) -> tuple[list[str], str]:
    """Image ids allowed to choose a reference (training partition only) and where they came from."""
    t = images.table
    if split is not None:
        pats = split.patients(fold, "train")
        ids = list(t.loc[t["patient_id"].astype(str).isin(pats), "image_id"].astype(str))
        return ids, f"training partition of fold {fold}"
    if "split" in t.columns:
        ids = list(t.loc[t["split"].astype(str).str.lower() == "train", "image_id"].astype(str))
        if ids:
            return ids, "images with split == train"
    return list(t["image_id"].astype(str)), "all images (no split given)"


# -- components ---------------------------------------------------------------------------------
COMMON = {
    "reference": {"type": ["string", "null"], "default": None, "format": "path",
                  "description": "reference image path; null: chosen automatically among the training images"},
    "reference_candidates": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 24,
                             "description": "how many training images (seeded sample) are considered for the "
                                            "automatic reference"},
    "fold": {"type": "integer", "minimum": 0, "default": 0,
             "description": "fold of the split whose training partition may provide the reference"},
    "resize": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "minItems": 2,
               "maxItems": 2, "default": None,
               "description": "resize every image to [height, width] before normalizing (null: keep size)"},
    "on_failure": {"enum": ["skip", "passthrough", "stop"], "default": "passthrough",
                   "description": "when stains cannot be estimated on an image (blank, over-exposed, few "
                                  "stained pixels, uniform or black): leave it out, keep it unnormalized, "
                                  "or stop with an error"},
    "min_stained_fraction": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                             "description": "images with fewer stained pixels (optical density >= beta) than "
                                            "this fraction are not normalized"},
    "background_check": {"enum": ["warn", "fallback", "off"], "default": "warn",
                         "description": "an output whose background (brightest 10% of pixels) moved far from "
                                        "white: warn (listed in a warning and the report), fallback (keep the "
                                        "original image), or off (no check)"},
    "background_max_shift": {"type": "number", "minimum": 0, "default": 15,
                             "description": "background shift (CIE76 delta E of its median Lab colour) above "
                                            "which an output moving away from white is flagged"},
}


class _StainNormalizer(PerItem, Normalizer):
    kind = "normalizer"
    inputs = {"images": "ImageSet", "split": "Split?"}
    outputs = {"images": "ImageSet"}
    stain_kind = ""
    # PerItem (hemaflow.core.chain): items() chooses and fits the reference on the whole image set,
    # then one image per task; so it heads a fused chain but never follows another step in one
    can_follow = False

    @property
    def item_description(self) -> str:  # type: ignore[override]
        return f"{self.stain_kind} normalization"

    def method_params(self) -> dict[str, Any]:
        return {}

    def _params(self) -> dict[str, Any]:
        p = self.params
        return dict(self.method_params(), resize=p["resize"], on_failure=p["on_failure"],
                    min_stained_fraction=p["min_stained_fraction"], background_check=p["background_check"],
                    background_max_shift=p["background_max_shift"])

    def _plan(self, images: Any) -> list[tuple[str, str, tuple | None]]:
        """Per row: image id, image file, and (mask file, spec, row index) of a mask resized alongside."""
        table = images.table.reset_index(drop=True)
        resize_masks = bool(self.params["resize"]) and images.has_masks()
        spec = images.meta.get("mask_spec")
        plan = []
        for i, r in table.iterrows():
            mp = r.get("mask_path") if resize_masks else None
            has_mask = not (mp is None or (isinstance(mp, float) and np.isnan(mp)) or mp == "")
            plan.append((str(r["image_id"]), str(images.image_path(r)),
                         (str(images.resolve(mp)), spec) if has_mask else None))
        return plan

    def items(self, ctx: RunContext, images: Any, split: Any = None) -> list[tuple]:
        """Choose and fit the reference (kept as ``reference_`` for ``assemble``); one item per image."""
        from hemaflow.lib import imageio as io

        p = self.params
        params = self._params()
        ref_path, ref_note = self._reference(ctx, images, split, params)
        ref_img = _resize(io.read_image(ref_path), p["resize"])
        problem = stain_problem(ref_img, Io=params.get("Io", 240), beta=params.get("beta", 0.15),
                                min_stained_fraction=params["min_stained_fraction"],
                                two_stains=self.stain_kind == "macenko")
        if problem:
            raise DataError(ref_path, f"cannot be the stain reference: {problem}")
        try:
            state = fit_state(self.stain_kind, ref_img, params)
        except (IndexError, RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            raise DataError(ref_path, f"cannot be the stain reference: {self.stain_kind} fit failed "
                            f"({type(exc).__name__}: {exc})") from None
        ctx.log(f"reference {ref_path} ({ref_note})")
        self.reference_ = {"path": ref_path, "note": ref_note, "state": state}
        return [(iid, src, self.stain_kind, state, params, mask) for iid, src, mask in self._plan(images)]

    def run_item(self, item: tuple) -> dict[str, Any]:
        res = _normalize_one(item)  # looked up at call time (tests replace it)
        return Skipped(res) if res["outcome"] in ("error", "failed") else res

    def assemble(self, ctx: RunContext, results: list[Any], images: Any, split: Any = None) -> dict[str, Any]:
        from hemaflow.lib import imageio as io
        from hemaflow.plugins.artifacts import ImageSet

        p = self.params
        ref_path, ref_note, state = self.reference_["path"], self.reference_["note"], self.reference_["state"]
        ref_img = _resize(io.read_image(ref_path), p["resize"])
        out = ctx.out_dir("images")
        (out / "images").mkdir(exist_ok=True)
        table = images.table.reset_index(drop=True)
        resize_masks = bool(p["resize"]) and images.has_masks()
        plan = self._plan(images)
        keep, outcomes, skipped, moved = [], [], [], []
        for i, res in enumerate(results):  # result i is row i (a normalizer never drops an item)
            if res.get("mask") is not None:
                io.write_png(out / f"images/{i:06d}_mask.png", res["mask"])
            if res.get("image") is not None:
                io.write_png(out / f"images/{i:06d}.png", res["image"])
            src = plan[i][1]
            if res.get("background"):
                moved.append({"image_id": res["image_id"], "file": src, "reason": res["background"]})
            if res["outcome"] == "error":
                src = res.get("file", src)
                if p["on_failure"] == "stop":
                    raise DataError(src, res["reason"])
                skipped.append({"file": src, "reason": res["reason"]})
                ctx.warn(f"skipped {src}: {res['reason']}")
                continue
            if res["outcome"] == "failed":
                if p["on_failure"] == "stop":
                    raise DataError(src, f"stain normalization impossible: {res['reason']} "
                                         "(set on_failure: skip or passthrough to go on)")
                skipped.append({"file": src, "reason": res["reason"]})
                ctx.warn(f"skipped {src}: {res['reason']}")
                continue
            if res["outcome"] == "passthrough" and not res.get("background"):
                ctx.warn(f"not normalized (kept as is) {src}: {res['reason']}")
            keep.append(i)
            outcomes.append(res["outcome"])
        new = table.iloc[keep].copy()
        new["path"] = [f"images/{i:06d}.png" for i in keep]
        new["stain_outcome"] = outcomes
        meta = dict(images.meta)
        if resize_masks:
            new["mask_path"] = [f"images/{i:06d}_mask.png" if plan[i][2] is not None else None for i in keep]
            meta["mask_spec"] = {"mode": "canonical"}
        elif "mask_path" in new.columns:  # masks stay where they are: make their paths absolute
            new["mask_path"] = [None if (m is None or (isinstance(m, float) and np.isnan(m)) or m == "")
                                else str(images.resolve(m)) for m in new["mask_path"]]
        truth = images.cell_truth()
        if truth is not None:
            if p["resize"]:  # cell centroids follow the resized images
                truth = _scale_truth(truth, table, images, p["resize"])
            truth.to_parquet(out / "cell_truth.parquet")
            meta["cell_truth"] = "cell_truth.parquet"
        if moved:
            fallback = p["background_check"] == "fallback"
            kept = " (kept the original images: background_check: fallback)" if fallback else ""
            more = f"; and {len(moved) - 10} more" if len(moved) > 10 else ""
            ctx.warn(f"{len(moved)} normalized image(s) whose background moved far from white{kept}: "
                     + "; ".join(f"{m['file']}: {m['reason']}" for m in moved[:10]) + more)
            meta["background_moved"] = moved
        counts = pd.Series(outcomes).value_counts().to_dict() if outcomes else {}
        meta.update({"normalizer": self.stain_kind, "stain_reference": str(ref_path),
                     "stain_reference_from": ref_note, "stain_state": state,
                     "stain_outcomes": {"normalized": int(counts.get("normalized", 0)),
                                        "passthrough": int(counts.get("passthrough", 0)),
                                        "skipped": len(skipped)},
                     "skipped": list(meta.get("skipped", [])) + skipped})
        result = ImageSet(out, new.reset_index(drop=True), meta).save()
        self._report(ctx, images, result, ref_img)
        return {"images": result}

    def _reference(self, ctx: RunContext, images: Any, split: Any, params: dict[str, Any]) -> tuple[Path, str]:
        p = self.params
        if p["reference"]:
            ref = Path(p["reference"]).expanduser()
            if not ref.exists():
                raise DataError(ref, "stain reference image not found")
            return ref, "given in the recipe"
        ids, note = training_image_ids(images, split, p["fold"])
        if not ids:
            raise DataError(images.path, "no training image to choose a stain reference from; set reference:")
        rng = ctx.rng("reference")
        if len(ids) > p["reference_candidates"]:
            ids = sorted(rng.choice(ids, size=p["reference_candidates"], replace=False).tolist())
        paths = [images.image_path(i) for i in ids]
        descs = ctx.map(_descriptor, [(str(x), self.stain_kind, params) for x in paths],
                        description="choosing stain reference")
        ok = [(pth, d) for pth, d in zip(paths, descs) if d is not None]
        if not ok:
            raise DataError(images.path, f"none of the {len(paths)} candidate reference images has "
                            "estimable stains; set reference: to a well-stained image")
        D = np.array([d for _, d in ok])
        Z = (D - D.mean(0)) / (D.std(0) + 1e-9)
        medoid = int(np.argmin(np.abs(Z[:, None, :] - Z[None, :, :]).sum(axis=(1, 2))))
        return Path(ok[medoid][0]), f"medoid of {len(ok)} candidates from {note}"

    def _report(self, ctx: RunContext, before: Any, after: Any, ref_img: np.ndarray) -> None:
        from hemaflow.lib.imageio import png_bytes

        items = [("reference", png_bytes(ref_img, max_side=240))]
        ids = list(after.table["image_id"].astype(str))
        for iid in [ids[i] for i in np.linspace(0, len(ids) - 1, min(4, len(ids))).astype(int)] if ids else []:
            a, b = before.read_image(iid), after.read_image(iid)
            if a.shape != b.shape:
                a = _resize(a, list(b.shape[:2]))
            strip = np.concatenate([a, np.full((a.shape[0], 4, 3), 255, np.uint8), b], axis=1)
            items.append((f"{iid}: before | after", png_bytes(strip, max_side=480)))
        ctx.report.gallery(f"{self.stain_kind} stain normalization", items, section="normalization")
        moved = after.meta.get("background_moved") or []
        if moved:
            flagged = []
            for m in moved[:6]:
                a, b = before.read_image(m["image_id"]), after.read_image(m["image_id"])
                if a.shape != b.shape:
                    a = _resize(a, list(b.shape[:2]))
                strip = np.concatenate([a, np.full((a.shape[0], 4, 3), 255, np.uint8), b], axis=1)
                flagged.append((f"{m['image_id']}: before | after; {m['reason']}", png_bytes(strip, max_side=480)))
            ctx.report.gallery(f"{self.stain_kind}: {len(moved)} image(s) whose background moved away from white",
                               flagged, section="normalization")
        o = after.meta["stain_outcomes"]
        ctx.report.text("Stain normalization outcome",
                        f"{o['normalized']} normalized, {o['passthrough']} kept unnormalized, {o['skipped']} "
                        f"skipped; reference {after.meta['stain_reference']} "
                        f"({after.meta['stain_reference_from']}).", section="normalization")


class MacenkoNormalizer(_StainNormalizer):
    """Macenko stain normalization (SVD stain vectors) with torchstain's torch backend."""

    name = "macenko"
    version = "1"
    stain_kind = "macenko"
    schema = {
        "type": "object",
        "properties": {
            **COMMON,
            "Io": {"type": "number", "exclusiveMinimum": 0, "maximum": 255, "default": 240,
                   "description": "transmitted light intensity (background brightness)"},
            "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 50, "default": 1,
                      "description": "percentile of the stain-angle distribution used for the stain vectors"},
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 0.15,
                     "description": "optical density below which a pixel counts as background"},
        },
        "additionalProperties": False,
    }

    def method_params(self) -> dict[str, Any]:
        return {"Io": self.params["Io"], "alpha": self.params["alpha"], "beta": self.params["beta"]}


class ReinhardNormalizer(_StainNormalizer):
    """Reinhard colour transfer (LAB mean and std) with torchstain's torch backend."""

    name = "reinhard"
    version = "1"
    stain_kind = "reinhard"
    schema = {
        "type": "object",
        "properties": {
            **COMMON,
            "method": {"enum": [None, "modified"], "default": None,
                       "description": "null: classic Reinhard; modified: torchstain's modified variant"},
        },
        "additionalProperties": False,
    }

    def method_params(self) -> dict[str, Any]:
        return {"method": self.params["method"]}


@hookimpl
def register_normalizers(register: Any) -> None:
    register(MacenkoNormalizer)
    register(ReinhardNormalizer)
