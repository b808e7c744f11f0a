"""Evaluators: segmentation overlap (Dice/IoU) and classification metrics with bootstrap CIs.

Both write a :class:`~hemaflow.core.artifacts.Metrics` artifact whose sections the runner merges
into ``metrics.json`` (``segmentation``; ``patient``, ``image``, ``cell``, ``folds``), plus
report items (tables, overlays, confusion matrices, ROC curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Predictions
from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins import io
from hemaflow.plugins.artifacts import ImageSet, MaskSet, Split
from hemaflow.plugins.metrics import bootstrap_ci, classification_metrics, clean, dice, iou

LEVELS = ("cell", "image", "patient")  # finest first


def _mask_has_nucleus(spec: dict[str, Any] | None) -> bool:
    """Whether ground-truth masks read with ``spec`` can contain the nucleus label (2)."""
    spec = spec or {"mode": "binary"}
    mode = spec.get("mode", "binary")
    if mode == "canonical":
        return True
    if mode == "threshold":
        return spec.get("nucleus") is not None
    if mode == "values":
        return bool(spec.get("nucleus"))
    return False


def _score_image(args: tuple[str, str, str, dict[str, Any] | None, tuple[str, ...]]) -> dict[str, Any]:
    """Score one image (top level so process executors can pickle it)."""
    image_id, pred_path, truth_path, spec, targets = args
    pred = io.read_mask(pred_path, {"mode": "canonical"})
    truth = io.read_mask(truth_path, spec)
    if pred.shape != truth.shape:
        raise DataError(pred_path, f"predicted mask is {pred.shape[1]}x{pred.shape[0]} px but the ground truth "
                                   f"{truth_path} is {truth.shape[1]}x{truth.shape[0]} px")
    row: dict[str, Any] = {"image_id": image_id}
    for t in targets:
        p, g = (pred > 0, truth > 0) if t == "cell" else (pred == 2, truth == 2)
        row[f"dice_{t}"] = dice(p, g)
        row[f"iou_{t}"] = iou(p, g)
    return row


def _overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Image with true contours in green and predicted contours in magenta."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    tb = find_boundaries(truth > 0, mode="inner")
    pb = find_boundaries(pred > 0, mode="inner")
    out[tb] = (0, 200, 0)
    out[pb] = (230, 0, 230)
    return out


def _restrict(images: ImageSet, split: Split | None, partition: str) -> pd.DataFrame:
    table = images.table
    if split is None or partition == "all":
        return table
    patients = set(split.table.loc[split.table["partition"] == partition, "patient_id"].astype(str))
    return table[table["patient_id"].astype(str).isin(patients)]


class SegmentationEvaluator(Component):
    """Dice and IoU of predicted masks against the data set's ground-truth masks.

    Scores are computed per image and averaged over images (mean of per-image Dice). ``target:
    cell`` compares foreground (cytoplasm + nucleus), ``nucleus`` the nucleus label only;
    ``both`` reports both and uses the cell values as the headline ``dice``/``iou``.
    """

    kind = "evaluator"
    name = "segmentation"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "partition": {"enum": ["test", "val", "train", "all"], "default": "test",
                          "description": "with a split input: score only images of patients in this partition "
                                         "(in any fold); without a split every image is scored"},
            "target": {"enum": ["cell", "nucleus", "both"], "default": "both",
                       "description": "what to compare: whole cell (foreground), nucleus, or both"},
            "n_overlays": {"type": "integer", "minimum": 0, "maximum": 32, "default": 4,
                           "description": "images shown in the report with predicted vs true contours "
                                          "(half the worst, half the best by Dice)"},
        },
        "additionalProperties": False,
    }
    inputs = {"masks": "MaskSet", "images": "ImageSet", "split": "Split?"}
    outputs = {"metrics": "Metrics"}

    def run(self, ctx: RunContext, masks: MaskSet, images: ImageSet, split: Split | None = None) -> dict[str, Any]:
        p = self.params
        spec = images.meta.get("mask_spec")
        targets: tuple[str, ...] = {"cell": ("cell",), "nucleus": ("nucleus",), "both": ("cell", "nucleus")}[p["target"]]
        if "nucleus" in targets and not _mask_has_nucleus(spec):
            if p["target"] == "nucleus":
                raise DataError(images.path, f"the ground-truth masks carry no nucleus label (mask_spec {spec!r}); "
                                             "use target: cell")
            ctx.warn("ground-truth masks carry no nucleus label; scoring whole cells only")
            targets = ("cell",)
        table = _restrict(images, split, p["partition"])
        if not images.has_masks():
            raise DataError(images.path, "the image set has no ground-truth masks (no mask_path column); "
                                         "segmentation cannot be evaluated")
        have = set(masks.table["image_id"].astype(str))
        jobs = []
        no_truth, no_pred = [], []
        for _, row in table.iterrows():
            iid = str(row["image_id"])
            mp = row.get("mask_path")
            if mp is None or (isinstance(mp, float) and np.isnan(mp)) or mp == "":
                no_truth.append(iid)
                continue
            if iid not in have:
                no_pred.append(iid)
                continue
            jobs.append((iid, str(masks.resolve(masks.row(iid)["path"])), str(images.resolve(mp)), spec, targets))
        if no_truth:
            ctx.warn(f"{len(no_truth)} image(s) without a ground-truth mask skipped (e.g. {no_truth[0]})")
        if no_pred:
            ctx.warn(f"{len(no_pred)} image(s) without a predicted mask skipped (e.g. {no_pred[0]})")
        if not jobs:
            raise DataError(images.path, f"no image has both a predicted and a ground-truth mask "
                                         f"(partition {p['partition']!r})")
        rows = ctx.map(_score_image, jobs, description="segmentation metrics")
        per_image = pd.DataFrame(rows)
        section: dict[str, Any] = {}
        for t in targets:
            section[f"dice_{t}"] = float(per_image[f"dice_{t}"].mean())
            section[f"iou_{t}"] = float(per_image[f"iou_{t}"].mean())
        head = targets[0]
        section = {"dice": section[f"dice_{head}"], "iou": section[f"iou_{head}"], "n": len(per_image),
                   **section, "target": head}
        out = ctx.out_dir("metrics")
        per_image.to_csv(out / "per_image.csv", index=False)
        metrics = Metrics(out, clean({"segmentation": section}), {"per_image": "per_image.csv"}).save()

        self._report(ctx, images, masks, per_image, section, targets, spec)
        return {"metrics": metrics}

    def _report(self, ctx: RunContext, images: ImageSet, masks: MaskSet, per_image: pd.DataFrame,
                section: dict[str, Any], targets: tuple[str, ...], spec: Any) -> None:
        rows = [{"target": t, "dice": round(section[f"dice_{t}"], 4), "iou": round(section[f"iou_{t}"], 4),
                 "n": section["n"]} for t in targets]
        ctx.report.table("Segmentation (mean over images)", rows, section="Segmentation")
        shown = per_image.sort_values(f"dice_{targets[0]}")
        ctx.report.table("Per-image segmentation scores",
                         clean(shown.round(4).to_dict("records")), section="Segmentation")
        n = min(self.params["n_overlays"], len(shown))
        if n == 0:
            return
        worst = list(shown["image_id"][: (n + 1) // 2])
        best = [i for i in list(shown["image_id"][::-1][: n // 2]) if i not in worst]
        pics = []
        for iid in worst + best:
            image = images.read_image(iid)
            truth = images.read_mask(iid)
            pred = masks.read_mask(iid)
            d = float(per_image.loc[per_image["image_id"] == iid, f"dice_{targets[0]}"].iloc[0])
            pics.append((f"{iid}: Dice {d:.3f}", io.png_bytes(_overlay(image, pred, truth), max_side=384)))
        ctx.report.gallery("Predicted (magenta) vs true (green) contours, worst and best", pics,
                           section="Segmentation")


@hookimpl
def register_evaluators(register: Any) -> None:
    register(SegmentationEvaluator)
