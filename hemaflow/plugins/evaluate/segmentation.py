"""The segmentation evaluator: Dice/IoU per target, centre cell, instance matching, by label;
a :class:`~hemaflow.core.artifacts.Metrics` artifact (section ``segmentation``) and report
tables and overlays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics
from hemaflow.core.bases import Evaluator
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
from hemaflow.lib.instance_matching import centre_instance, label_cells, match_instances
from hemaflow.lib.metrics import clean, dice, iou
from hemaflow.plugins.artifacts import ImageSet, MaskSet, Split


def _mask_has_nucleus(spec: dict[str, Any] | None) -> bool:
    """Whether ground-truth masks read with ``spec`` can contain the nucleus label (2)."""
    spec = spec or {"mode": "binary"}
    mode = spec.get("mode", "binary")
    if mode == "canonical":
        return True
    if mode == "threshold":
        return spec.get("nucleus") is not None
    if mode in ("values", "colors"):
        return bool(spec.get("nucleus"))
    return False


def _score_image(args: tuple[str, str, str, dict[str, Any] | None, tuple[str, ...], str | None, float]
                 ) -> dict[str, Any]:
    """Score one image (top level so process executors can pickle it).

    Foreground Dice/IoU per target, the centre cell's Dice (whole cell and nucleus) and the
    instance matching at ``threshold``. Predicted instances come from ``inst_path`` (the
    post-processor's labels) when given, else from connected components; true instances are
    always connected components of the ground truth.
    """
    image_id, pred_path, truth_path, spec, targets, inst_path, threshold = args
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
    true_lab = label_cells(truth > 0)
    pred_lab = None
    if inst_path:
        pred_lab = np.load(inst_path).astype(np.int32)
        if pred_lab.shape != pred.shape:
            raise DataError(inst_path, f"instance labels are {pred_lab.shape[1]}x{pred_lab.shape[0]} px but their "
                                       f"mask {pred_path} is {pred.shape[1]}x{pred.shape[0]} px")
    if pred_lab is None:
        pred_lab = label_cells(pred > 0)
    h, w = truth.shape
    kt, kp = centre_instance(true_lab), centre_instance(pred_lab)
    tc = true_lab == kt if kt else np.zeros(truth.shape, bool)
    pc = pred_lab == kp if kp else np.zeros(pred.shape, bool)
    row["height"], row["width"] = h, w
    row["centre_in_truth"] = bool(truth[h // 2, w // 2] > 0)
    row["centre_found"] = bool(kp)
    for t in targets:
        p, g = (pc, tc) if t == "cell" else (pc & (pred == 2), tc & (truth == 2))
        row[f"centre_dice_{t}"] = dice(p, g)
        row[f"centre_iou_{t}"] = iou(p, g)
    m = match_instances(true_lab, pred_lab, threshold)
    row.update({"n_true": m["n_true"], "n_pred": m["n_pred"], "tp": m["tp"], "ap": m["ap"],
                "matched_dice_sum": float(sum(m["matched_dice"]))})
    return row


def _overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, centre: bool = False) -> np.ndarray:
    """Image with true contours in green (nucleus dark green), predicted in magenta (nucleus
    purple) and, for centre-cell scoring, a yellow cross at the image centre."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(truth > 0, mode="inner")] = (0, 200, 0)
    out[find_boundaries(truth == 2, mode="inner")] = (0, 110, 0)
    out[find_boundaries(pred > 0, mode="inner")] = (230, 0, 230)
    out[find_boundaries(pred == 2, mode="inner")] = (120, 0, 170)
    if centre:
        h, w = out.shape[:2]
        r = max(2, min(h, w) // 30)
        out[h // 2, max(0, w // 2 - r): w // 2 + r + 1] = (255, 220, 0)
        out[max(0, h // 2 - r): h // 2 + r + 1, w // 2] = (255, 220, 0)
    return out


def _restrict(images: ImageSet, split: Split | None, partition: str) -> pd.DataFrame:
    table = images.table
    if split is None or partition == "all":
        return table
    patients = set(split.table.loc[split.table["partition"] == partition, "patient_id"].astype(str))
    if not patients:
        have = sorted(set(split.table["partition"]))
        raise DataError(split.path, f"the split has no {partition!r} partition (it has {', '.join(have)}); "
                                    f"set partition to one of them or to 'all'")
    return table[table["patient_id"].astype(str).isin(patients)]


#: ``centre_cell: auto`` turns centre-cell scoring on for images at most this large (px, long side)
#: and this elongated (long / short side) whose true foreground covers the centre in this share.
CROP_MAX_SIDE, CROP_MAX_ASPECT, CROP_CENTRE_SHARE = 512, 1.25, 0.9


def _is_crop_set(per_image: pd.DataFrame, meta: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``centre_cell: auto`` scores the centre cell, and why (for the report)."""
    if isinstance(meta.get("single_cell"), bool):
        return meta["single_cell"], f"the data set says single_cell: {str(meta['single_cell']).lower()}"
    long = per_image[["height", "width"]].max(axis=1)
    short = per_image[["height", "width"]].min(axis=1).clip(lower=1)
    small_square = bool((long <= CROP_MAX_SIDE).all() and (long / short <= CROP_MAX_ASPECT).all())
    share = float(per_image["centre_in_truth"].mean())
    on = small_square and share >= CROP_CENTRE_SHARE
    return on, (f"images {'are' if small_square else 'are not all'} small and square (<= {CROP_MAX_SIDE} px, "
                f"aspect <= {CROP_MAX_ASPECT}); the true cell covers the centre in {share:.0%} of them")


def _detection(g: pd.DataFrame) -> dict[str, Any]:
    """Pooled detection scores of a group of per-image rows."""
    tp, nt, npred = int(g["tp"].sum()), int(g["n_true"].sum()), int(g["n_pred"].sum())
    return {"detection_precision": tp / npred if npred else None, "detection_recall": tp / nt if nt else None,
            "detection_f1": 2 * tp / (nt + npred) if nt + npred else None,
            "ap50": float(g["ap"].dropna().mean()) if g["ap"].notna().any() else None,
            "matched_dice": float(g["matched_dice_sum"].sum() / tp) if tp else None,
            "n_true_cells": nt, "n_pred_cells": npred, "n_matched": tp}


def _scores(g: pd.DataFrame, targets: tuple[str, ...], centre: bool, instances: bool) -> dict[str, Any]:
    """Means of a group of per-image rows (the group's entry under ``by_<column>``)."""
    out: dict[str, Any] = {"n": len(g), "dice": float(g[f"dice_{targets[0]}"].mean())}
    for t in targets:
        out[f"dice_{t}"] = float(g[f"dice_{t}"].mean())
        if centre:
            out[f"centre_dice_{t}"] = float(g[f"centre_dice_{t}"].mean())
    if instances:
        d = _detection(g)
        out.update({k: d[k] for k in ("detection_f1", "matched_dice")})
    return out


class SegmentationEvaluator(Evaluator):
    """Dice and IoU of predicted masks against the data set's ground-truth masks; the centre
    cell of single-cell crops; instance matching of fields; scores by label and source.

    Scores are computed per image and averaged over images (mean of per-image Dice). ``target:
    cell`` compares foreground (cytoplasm + nucleus), ``nucleus`` the nucleus label only;
    ``both`` reports both and uses the cell values as the headline ``dice``/``iou``.

    * Centre cell (``centre_dice_<target>``): the predicted instance under, or nearest to, the
      image centre against the true instance under or nearest to it, so a neighbour cut by the
      crop's border neither helps nor hurts; the nucleus Dice is that of the two cells' nuclei.
    * Instances (``detection_*``, ``ap50``, ``matched_dice``): true cells are connected
      components of the ground truth, predicted cells the post-processor's instances when the
      MaskSet has them, else connected components; matched one to one at IoU >= ``iou_threshold``
      (as the Data Science Bowl 2018 and cellpose's AP at 0.5).
    * ``by_label`` / ``by_source`` / ``by_site`` (the ``group_by`` columns): the scores per group.
    """

    kind = "evaluator"
    name = "segmentation"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "partition": {"enum": ["test", "val", "train", "all"], "default": "test",
                          "description": "with a split input: score only images of patients in this partition "
                                         "(in any fold); without a split every image is scored"},
            "target": {"enum": ["cell", "nucleus", "both"], "default": "both",
                       "description": "what to compare: whole cell (foreground), nucleus, or both"},
            "centre_cell": {"enum": [True, False, "auto"], "default": "auto",
                            "description": "score the cell under (or nearest to) the image centre (single-cell "
                                           "crops); auto: the data set's meta single_cell if it says, else on when "
                                           "every image is at most 512 px and near-square (aspect <= 1.25) and the "
                                           "true cell covers the centre of >= 90% of them"},
            "instances": {"enum": [True, False, "auto"], "default": "auto",
                          "description": "match cells one to one by IoU (detection precision/recall/F1, AP and "
                                         "Dice of matched cells); auto: on when the centre cell is not scored "
                                         "(crops' ground truth usually masks only the centre cell)"},
            "iou_threshold": {"type": "number", "minimum": 0.5, "maximum": 1, "default": 0.5,
                              "description": "IoU at which a predicted and a true cell match"},
            "group_by": {"type": "array", "items": {"type": "string"}, "uniqueItems": True,
                         "default": ["label", "source", "site"],
                         "description": "ImageSet columns to break the scores down by (by_<column> in "
                                        "metrics.json; site: e.g. wbc_crops' tecom / cellavision); a column "
                                        "the images lack is left out"},
            "n_overlays": {"type": "integer", "minimum": 0, "maximum": 32, "default": 6,
                           "description": "worst images (by the headline score: centre-cell Dice when the centre "
                                          "cell is scored, else Dice) shown with predicted vs true contours"},
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
        has_inst = "instances_path" in masks.table.columns
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
            mrow = masks.row(iid)
            inst = mrow.get("instances_path") if has_inst else None
            inst = str(masks.resolve(inst)) if isinstance(inst, str) and inst else None
            jobs.append((iid, str(masks.resolve(mrow["path"])), str(images.resolve(mp)), spec, targets, inst,
                         float(p["iou_threshold"])))
        if no_truth:
            ctx.warn(f"{len(no_truth)} image(s) without a ground-truth mask skipped (e.g. {no_truth[0]})")
        if no_pred:
            ctx.warn(f"{len(no_pred)} image(s) without a predicted mask skipped (e.g. {no_pred[0]})")
        if not jobs:
            raise DataError(images.path, f"no image has both a predicted and a ground-truth mask "
                                         f"(partition {p['partition']!r})")
        per_image = pd.DataFrame(ctx.map(_score_image, jobs, description="segmentation metrics"))
        centre, why = (p["centre_cell"], "set in the recipe") if p["centre_cell"] != "auto" else \
            _is_crop_set(per_image, images.meta)
        instances = (not centre) if p["instances"] == "auto" else bool(p["instances"])
        groups = [c for c in p["group_by"] if c in table.columns]
        extra = table.set_index(table["image_id"].astype(str))[groups] if groups else None
        if extra is not None:
            per_image = per_image.join(extra.fillna("").astype(str).replace("", "(none)"), on="image_id")

        section: dict[str, Any] = {}
        for t in targets:
            section[f"dice_{t}"] = float(per_image[f"dice_{t}"].mean())
            section[f"iou_{t}"] = float(per_image[f"iou_{t}"].mean())
        head = targets[0]
        section = {"dice": section[f"dice_{head}"], "iou": section[f"iou_{head}"], "n": len(per_image),
                   **section, "target": head, "centre_cell": bool(centre), "instances": bool(instances)}
        if centre:
            section["centre_dice"] = float(per_image[f"centre_dice_{head}"].mean())
            section["centre_dice_median"] = float(per_image[f"centre_dice_{head}"].median())
            for t in targets:
                section[f"centre_dice_{t}"] = float(per_image[f"centre_dice_{t}"].mean())
                section[f"centre_iou_{t}"] = float(per_image[f"centre_iou_{t}"].mean())
            section["centre_missing"] = int((~per_image["centre_found"]).sum())
        if instances:
            section.update(_detection(per_image), iou_threshold=float(p["iou_threshold"]))
        for col in groups:
            section[f"by_{col}"] = {str(k): _scores(g, targets, centre, instances)
                                    for k, g in per_image.groupby(col, sort=True)}
        front = ["image_id", *groups]
        per_image = per_image[front + [c for c in per_image.columns if c not in front]]
        out = ctx.out_dir("metrics")
        per_image.to_csv(out / "per_image.csv", index=False)
        metrics = Metrics(out, clean({"segmentation": section}),
                          {"per_image": "per_image.csv", "exported_files": ["per_image.csv"]}).save()
        self._report(ctx, images, masks, per_image, section, targets, groups, why)
        return {"metrics": metrics}

    def _report(self, ctx: RunContext, images: ImageSet, masks: MaskSet, per_image: pd.DataFrame,
                section: dict[str, Any], targets: tuple[str, ...], groups: list[str], why: str) -> None:
        sec = "Segmentation"
        centre = section["centre_cell"]
        rows = []
        for t in targets:
            row = {"target": t, "dice": round(section[f"dice_{t}"], 4), "iou": round(section[f"iou_{t}"], 4)}
            if centre:
                row["centre-cell dice"] = round(section[f"centre_dice_{t}"], 4)
            row["n"] = section["n"]
            rows.append(row)
        ctx.report.table("Segmentation (mean over images)", rows, section=sec)
        ctx.report.text("Centre-cell scoring", ("on: " if centre else "off: ") + why + (
            f"; {section['centre_missing']} image(s) with no predicted cell" if centre else ""), section=sec)
        if section["instances"]:
            ctx.report.table(f"Cells matched at IoU >= {section['iou_threshold']:g}", [clean(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in _detection(per_image).items()})],
                section=sec)
        for col in groups:
            by = section[f"by_{col}"]
            ctx.report.table(f"By {col}", [clean({col: k, **{m: (round(v, 4) if isinstance(v, float) else v)
                                                             for m, v in s.items()}}) for k, s in by.items()],
                             section=sec)
        score = f"centre_dice_{targets[0]}" if centre else f"dice_{targets[0]}"
        shown = per_image.sort_values(score, kind="stable")
        ctx.report.table("Per-image segmentation scores (worst first)", clean(shown.round(4).to_dict("records")),
                         section=sec)
        n = min(self.params["n_overlays"], len(shown))
        if n == 0:
            return
        pics = []
        for _, r in shown.head(n).iterrows():
            iid = str(r["image_id"])
            image, truth, pred = images.read_image(iid), images.read_mask(iid), masks.read_mask(iid)
            label = f" ({r['label']})" if "label" in r.index and r["label"] != "(none)" else ""
            pics.append((f"{iid}: Dice {float(r[score]):.3f}{label}",
                         io.png_bytes(_overlay(image, pred, truth, centre), max_side=384)))
        what = "centre-cell Dice" if centre else "Dice"
        ctx.report.gallery(f"Worst {n} by {what} {targets[0]}: true (green) vs predicted (magenta) contours",
                           pics, section=sec)
