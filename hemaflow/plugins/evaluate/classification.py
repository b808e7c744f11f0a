"""The classification evaluator: metrics per level (cell, image, patient) with bootstrap CIs,
aggregation of finer predictions, confusion matrices and ROC curves in the report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Predictions
from hemaflow.core.bases import Evaluator
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.lib.eval_figures import confusion_figure, roc_figure
from hemaflow.lib.metrics import bootstrap_ci, classification_metrics, clean
from hemaflow.plugins.artifacts import Split

LEVELS = ("cell", "image", "patient")  # finest first


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


class ClassificationEvaluator(Evaluator):
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

        from hemaflow.lib.metrics import format_metric

        def fmt(m: dict[str, Any], k: str) -> str:
            return format_metric(m, k, missing="–")

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
        ctx.report.figure("Confusion matrices", confusion_figure(values, levels), section=sec)
        if has_probs:
            ctx.report.figure("ROC curves (one vs rest)", roc_figure(per_level, levels, classes), section=sec)
