"""Evaluators: segmentation overlap (Dice/IoU) and classification metrics with bootstrap CIs.

Both write a :class:`~hemaflow.core.artifacts.Metrics` artifact whose sections the runner merges
into ``metrics.json`` (``segmentation``; ``patient``, ``image``, ``cell``, ``folds``), plus
report items (tables, overlays, confusion matrices, ROC curves).
"""

from __future__ import annotations

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
    if not patients:
        have = sorted(set(split.table["partition"]))
        raise DataError(split.path, f"the split has no {partition!r} partition (it has {', '.join(have)}); "
                                    f"set partition to one of them or to 'all'")
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



# -- classification --------------------------------------------------------------------------
def _prob_classes(preds: Predictions) -> list[str]:
    classes = preds.classes
    if classes:
        return classes
    return [c[5:] for c in preds.table.columns if c.startswith("prob_")]


def _unit_ids(table: pd.DataFrame, level: str, to: str, patients_are_images: bool) -> pd.Series | None:
    """Ids of the ``to``-level unit each ``level`` row belongs to, or None if unknown."""
    if to == level:
        return table["id"].astype(str)
    if to == "image":
        if "image_id" in table.columns:
            return table["image_id"].astype(str)
        ids = table["id"].astype(str)
        return ids.str.rsplit(":", n=1).str[0] if ids.str.contains(":").all() else None
    if "patient_id" in table.columns:
        return table["patient_id"].astype(str)
    if patients_are_images:
        return _unit_ids(table, level, "image", patients_are_images)
    return None


def _most_frequent(counts: pd.Series, classes: list[str]) -> str:
    """The most frequent value; ties go to the class listed first (deterministic)."""
    best = counts.max()
    tied = set(counts.index[counts == best])
    return next((c for c in classes if c in tied), sorted(tied)[0])


def _aggregate(table: pd.DataFrame, unit: pd.Series, classes: list[str], how: str) -> tuple[pd.DataFrame, int]:
    """Aggregate rows to units within each fold; return (table, number of units with mixed labels)."""
    t = table.assign(_unit=unit.values)
    prob_cols = [f"prob_{c}" for c in classes]
    rows = []
    mixed = 0
    for (fold, u), g in t.groupby(["fold", "_unit"], sort=True):
        truths = g["y_true"].astype(str).value_counts()
        mixed += len(truths) > 1
        row = {"id": u, "fold": fold, "y_true": _most_frequent(truths, classes), "n_rows": len(g)}
        if how == "mean" and prob_cols:
            probs = g[prob_cols].to_numpy(float).mean(0)
            row.update(dict(zip(prob_cols, probs)))
            row["y_pred"] = classes[int(np.argmax(probs))]
        else:
            row["y_pred"] = _most_frequent(g["y_pred"].astype(str).value_counts(), classes)
            for c in classes:
                row[f"prob_{c}"] = float((g["y_pred"].astype(str) == c).mean())
        rows.append(row)
    return pd.DataFrame(rows), mixed


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "n")}


class ClassificationEvaluator(Component):
    """Accuracy, balanced accuracy, macro F1, per-class scores, AUROC and confusion matrices.

    Predictions finer than patient are also aggregated to image and patient (mean probability
    by default) within each fold. Metrics are computed pooled over folds and per fold; at patient
    level a percentile bootstrap over patients gives confidence intervals (``<metric>_ci``).
    """

    kind = "evaluator"
    name = "classification"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "partition": {"enum": ["test", "val", "train", "all"], "default": "test",
                          "description": "with a split input (or a 'partition' column in the predictions): "
                                         "score only rows of patients in this partition of their fold"},
            "aggregate": {"enum": ["mean", "majority", "none"], "default": "mean",
                          "description": "how cell/image predictions become image/patient predictions: "
                                         "mean class probability, majority vote, or not at all"},
            "n_bootstrap": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 1000,
                            "description": "bootstrap resamples of patients for confidence intervals (0: none)"},
            "stratified_bootstrap": {"type": "boolean", "default": True,
                                     "description": "resample patients within each true class (keeps every class "
                                                    "in every resample; recommended for small cohorts)"},
            "ci_level": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.95,
                         "description": "confidence level of the bootstrap intervals"},
        },
        "additionalProperties": False,
    }
    inputs = {"predictions": "Predictions", "split": "Split?"}
    outputs = {"metrics": "Metrics"}

    def run(self, ctx: RunContext, predictions: Predictions, split: Split | None = None) -> dict[str, Any]:
        p = self.params
        table = predictions.table.copy()
        if len(table) == 0:
            raise DataError(predictions.path, "the predictions table is empty")
        classes = _prob_classes(predictions)
        if not classes:
            classes = sorted(set(table["y_true"].astype(str)) | set(table["y_pred"].astype(str)))
        unknown = sorted(set(table["y_true"].astype(str)) - set(classes))
        if unknown:
            raise DataError(predictions.path, f"y_true has classes {unknown} that are not among the predicted "
                                              f"classes {classes}")
        has_probs = all(f"prob_{c}" in table.columns for c in classes)
        pae = bool(predictions.meta.get("patients_are_images"))
        table = self._restrict(ctx, table, split, pae)
        levels_present = [lv for lv in LEVELS if (table["level"] == lv).any()]
        bad = sorted(set(table["level"].astype(str)) - set(LEVELS))
        if bad:
            raise DataError(predictions.path, f"unknown prediction level(s) {bad}; expected cell, image or patient")

        per_level: dict[str, pd.DataFrame] = {}
        for lv in levels_present:
            per_level[lv] = table[table["level"] == lv].reset_index(drop=True)
        if p["aggregate"] != "none" and levels_present:
            finest = levels_present[0]
            src = per_level[finest]
            for coarser in LEVELS[LEVELS.index(finest) + 1:]:
                if coarser in per_level:
                    continue
                unit = _unit_ids(src, finest, coarser, pae)
                if unit is None:
                    ctx.warn(f"cannot aggregate {finest} predictions to {coarser} level: "
                             f"no {coarser}_id column in the predictions")
                    continue
                agg, mixed = _aggregate(src, unit, classes, p["aggregate"] if has_probs else "majority")
                if mixed:
                    ctx.warn(f"{mixed} {coarser}(s) have {finest} rows with different y_true; "
                             "the most frequent label is used")
                per_level[coarser] = agg

        values: dict[str, Any] = {}
        folds: dict[Any, dict[str, Any]] = {}
        for lv in LEVELS:
            if lv not in per_level:
                continue
            t = per_level[lv]
            probs = t[[f"prob_{c}" for c in classes]].to_numpy(float) if has_probs else None
            m = classification_metrics(t["y_true"], t["y_pred"], classes, probs)
            if lv == "patient" and p["n_bootstrap"] > 0:
                m.update(bootstrap_ci(t["y_true"].astype(str), t["y_pred"].astype(str), classes, probs,
                                      rng=ctx.rng("bootstrap"), n_bootstrap=p["n_bootstrap"],
                                      level=p["ci_level"], stratified=p["stratified_bootstrap"]))
            m["aggregated_from"] = None if lv in levels_present else levels_present[0]
            values[lv] = m
            for fold, g in t.groupby("fold", sort=True):
                gp = g[[f"prob_{c}" for c in classes]].to_numpy(float) if has_probs else None
                fm = classification_metrics(g["y_true"], g["y_pred"], classes, gp)
                folds.setdefault(fold, {"fold": fold})[lv] = _headline(fm)
        values["folds"] = [folds[f] for f in sorted(folds)]
        values = clean(values)
        metrics = Metrics(ctx.out_dir("metrics"), values, {"classes": classes}).save()
        self._report(ctx, values, per_level, classes, has_probs)
        return {"metrics": metrics}

    def _restrict(self, ctx: RunContext, table: pd.DataFrame, split: Split | None, pae: bool) -> pd.DataFrame:
        part = self.params["partition"]
        if part == "all":
            return table
        if split is not None:
            keep = split.table.loc[split.table["partition"] == part, ["fold", "patient_id"]]
            if len(keep) == 0:
                have = sorted(set(split.table["partition"]))
                raise DataError(split.path, f"the split has no {part!r} partition (it has {', '.join(have)}); "
                                            f"set partition to one of them or to 'all'")
            keys = set(zip(keep["fold"].astype(str), keep["patient_id"].astype(str)))
            mask = np.zeros(len(table), bool)
            for lv in LEVELS:
                rows = (table["level"] == lv).to_numpy()
                if not rows.any():
                    continue
                pid = _unit_ids(table[rows], lv, "patient", pae)
                if pid is None:
                    raise DataError(split.path, f"cannot restrict {lv} predictions to the {part!r} partition: "
                                                "they carry no patient_id column")
                mask[rows] = [(str(f), p) in keys for f, p in zip(table.loc[rows, "fold"], pid)]
            out = table[mask]
        elif "partition" in table.columns:
            out = table[table["partition"].astype(str) == part]
        else:
            return table
        if len(out) == 0:
            raise DataError(split.path if split is not None else ctx.workdir,
                            f"no predictions fall in the {part!r} partition")
        return out.reset_index(drop=True)

    def _report(self, ctx: RunContext, values: dict[str, Any], per_level: dict[str, pd.DataFrame],
                classes: list[str], has_probs: bool) -> None:
        sec = "Classification"

        def fmt(m: dict[str, Any], k: str) -> str:
            v = m.get(k)
            if v is None:
                return "–"
            ci = m.get(f"{k}_ci")
            return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

        levels = [lv for lv in reversed(LEVELS) if lv in values]
        rows = [{"level": lv + (f" (from {values[lv]['aggregated_from']})" if values[lv].get("aggregated_from") else ""),
                 "n": values[lv]["n"], **{k: fmt(values[lv], k) for k in ("accuracy", "balanced_accuracy",
                                                                           "macro_f1", "auroc")}}
                for lv in levels]
        ctx.report.table("Classification metrics (pooled over folds; 95% bootstrap CI over patients)", rows,
                         section=sec)
        if len(values["folds"]) > 1:
            frows = []
            for f in values["folds"]:
                for lv in levels:
                    if lv in f:
                        frows.append({"fold": f["fold"], "level": lv,
                                      **{k: ("–" if f[lv][k] is None else round(f[lv][k], 4))
                                         for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "n")}})
            ctx.report.table("Per fold", frows, section=sec)
        top = levels[0]
        ctx.report.table(f"Per class ({top} level)",
                         [{"class": c, **{k: ("–" if v is None else (round(v, 4) if isinstance(v, float) else v))
                                          for k, v in m.items()}}
                          for c, m in values[top]["per_class"].items()], section=sec)
        ctx.report.figure("Confusion matrices", _confusion_figure(values, levels), section=sec)
        if has_probs:
            ctx.report.figure("ROC curves (one vs rest)", _roc_figure(per_level, levels, classes), section=sec)


def _confusion_figure(values: dict[str, Any], levels: list[str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(levels), 3.4))
    for i, lv in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), i + 1)
        cm = np.array(values[lv]["confusion_matrix"]["matrix"])
        labels = values[lv]["confusion_matrix"]["labels"]
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{lv} (n={cm.sum()})")
    fig.tight_layout()
    return fig


def _roc_figure(per_level: dict[str, pd.DataFrame], levels: list[str], classes: list[str]) -> Any:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(3.8 * len(levels), 3.6))
    for i, lv in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), i + 1)
        t = per_level[lv]
        y = t["y_true"].astype(str).to_numpy()
        shown = classes[1:] if len(classes) == 2 else classes
        for c in shown:
            pos = y == c
            if pos.all() or not pos.any():
                continue
            score = t[f"prob_{c}"].to_numpy(float)
            fpr, tpr, _ = roc_curve(pos, score)
            ax.plot(fpr, tpr, label=f"{c} (AUC {roc_auc_score(pos, score):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(lv)
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


@hookimpl
def register_evaluators(register: Any) -> None:
    register(SegmentationEvaluator)
    register(ClassificationEvaluator)
