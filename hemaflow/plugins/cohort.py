"""Cohort-shift diagnostics (kind ``evaluator``): metrics per cohort and a batch-effect check.

``cohort_shift`` reads a cohort/site column of the data set (``cohort_column``, e.g. ``cohort``,
``site``, ``scanner``: the images' table keeps such columns from the labels CSV or manifest) and:

1. **metrics per cohort**: the patient-level predictions split by the patient's cohort (accuracy,
   balanced accuracy, macro F1, AUROC, n), with the class counts per cohort beside them (a label
   mix that differs between cohorts is the confounding to look for);
2. **batch-effect check**: how well the patient-pooled instance features (per patient: mean, sd
   and quantiles of every feature, as the classical baseline pools them) predict the cohort:
   the cross-validated AUROC of a standardized logistic regression (scaler and model fitted
   inside each CV training fold), for all features and per feature group (the name's prefix:
   ``colour``, ``shape``, ``texture``, ``radiomics``, ``emb``);
3. **mixing warning**: when that AUROC exceeds ``auroc_threshold`` (0.8) and a fold of the Split
   has patients of the same cohorts in training and test, a recorded warning says that the CV
   numbers mix cohorts the features can tell apart (crop colour, scanner, stain) and may be
   inflated or deflated by the shift; the honest evaluation is external: train on one cohort,
   test on another (``column_split`` on the same column).

Without the column in the data the step records ``{"cohort": {"available": false}}`` and one
report line, so a recipe can keep the step for exports with and without a cohort column.

Example::

    cohort:
      uses: cohort_shift
      inputs: {predictions: mil, images: data, features: cellfeats, split: split}
      with: {cohort_column: cohort}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Predictions
from hemaflow.core.bases import Evaluator
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.artifacts import FeatureTable, ImageSet, Split
from hemaflow.lib.metrics import classification_metrics, clean

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "n")


def patient_cohorts(images: ImageSet, column: str) -> tuple[dict[str, str], list[str]]:
    """patient_id -> cohort (the most frequent value over the patient's images) and the patients
    whose images carry more than one value."""
    t = images.table
    vals = t[column].astype(str).where(t[column].notna(), "")
    grouped = pd.DataFrame({"p": t["patient_id"].astype(str), "c": vals}).groupby("p")["c"]
    mixed = [p for p, n in grouped.nunique().items() if n > 1]
    return {p: s.value_counts().index[0] for p, s in grouped}, mixed


def pooled_patient_features(features: FeatureTable, stats: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """(patients, pooled matrix, column names): every patient's cells pooled as the baseline does."""
    from hemaflow.lib.mil_bags import _feature_columns
    from hemaflow.plugins.mil.baseline import pool_bags, pooled_names

    t = features.table
    if "fold" in t.columns and (t["fold"] >= 0).any():  # per-fold embeddings: one fold's copy is enough
        t = t[t["fold"] == t["fold"].min()]
    cols = _feature_columns(features)
    t = t.drop_duplicates("cell_id") if "cell_id" in t.columns else t
    x = t[cols].to_numpy(np.float64)
    bags = {str(p): np.asarray(i) for p, i in t.groupby(t["patient_id"].astype(str)).indices.items()}
    patients = sorted(bags)
    return patients, pool_bags(x, bags, patients, stats), pooled_names(cols, stats)


def cohort_auroc(x: np.ndarray, cohorts: list[str], *, folds: int = 5, C: float = 1.0, seed: int = 0) -> float | None:
    """Cross-validated AUROC of predicting the cohort from ``x`` (one row per patient): a mean
    imputer, standard scaler and logistic regression fitted inside each training fold (stratified
    by cohort); binary AUROC for two cohorts, macro one-vs-rest for more. None when a cohort has
    fewer than two patients."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(cohorts).astype(str)
    names, counts = np.unique(y, return_counts=True)
    if len(names) < 2 or counts.min() < 2:
        return None
    x = np.where(np.isfinite(x), x, np.nan)
    keep = ~np.all(np.isnan(x), axis=0)
    x = x[:, keep]
    if x.shape[1] == 0:
        return None
    k = int(min(folds, counts.min()))
    model = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                          LogisticRegression(C=C, max_iter=5000, class_weight="balanced"))
    proba = cross_val_predict(model, x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")
    if len(names) == 2:
        return float(roc_auc_score(y == names[1], proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(names)))


def fold_mixing(split: Split, cohort_of: dict[str, str]) -> list[dict[str, Any]]:
    """Per fold: the cohorts of its training and test patients, and whether they share any."""
    out = []
    for fold in split.folds():
        tr = sorted({cohort_of.get(p, "") for p in split.patients(fold, "train") | split.patients(fold, "val")})
        te = sorted({cohort_of.get(p, "") for p in split.patients(fold, "test")})
        out.append({"fold": int(fold), "train_cohorts": tr, "test_cohorts": te, "shared": sorted(set(tr) & set(te))})
    return out


def _groups(names: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for j, n in enumerate(names):
        feat = n.split(":", 1)[-1]
        groups.setdefault(feat.split("_", 1)[0], []).append(j)
    return groups


class CohortShift(Evaluator):
    """Metrics per cohort, a batch-effect check (cohort predictable from the features?), and a
    warning when a CV mixes cohorts that are that predictable."""

    kind = "evaluator"
    name = "cohort_shift"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "cohort_column": {"type": "string", "minLength": 1, "default": "cohort",
                              "description": "the data set's column naming each image's cohort / site / scanner"},
            "auroc_threshold": {"type": "number", "minimum": 0.5, "maximum": 1, "default": 0.8,
                                "description": "batch-effect AUROC above which a CV that mixes cohorts is warned about"},
            "cv_folds": {"type": "integer", "minimum": 2, "default": 5,
                         "description": "folds of the cohort-prediction CV (capped at the smallest cohort's patients)"},
            "C": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                  "description": "inverse L2 strength of the cohort-predicting logistic regression"},
            "stats": {"type": "array", "items": {"enum": ["mean", "sd", "q10", "q25", "q50", "q75", "q90", "min", "max"]},
                      "minItems": 1, "uniqueItems": True, "default": ["mean", "sd", "q10", "q50", "q90"],
                      "description": "per-patient pooling of the instance features (as the classical baseline)"},
            "partition": {"enum": ["test", "val", "train", "all"], "default": "test",
                          "description": "with a split: score only predictions of patients in this partition"},
        },
        "additionalProperties": False,
    }
    inputs = {"predictions": "Predictions", "images": "ImageSet", "features": "FeatureTable?", "split": "Split?"}
    outputs = {"metrics": "Metrics"}

    def run(self, ctx: RunContext, predictions: Predictions, images: ImageSet, features: FeatureTable | None = None,
            split: Split | None = None) -> dict[str, Any]:
        p = self.params
        col = p["cohort_column"]
        sec = "Cohort shift"
        if col not in images.table.columns:
            extra = [c for c in images.table.columns if c not in ("image_id", "patient_id", "label", "path", "mask_path")]
            ctx.report.text("Cohorts", f"the data set has no column {col!r} (its extra columns: "
                            f"{', '.join(extra) or 'none'}); no per-cohort metrics or batch-effect check",
                            section=sec)
            return {"metrics": Metrics(ctx.out_dir("metrics"), {"cohort": {"column": col, "available": False}}).save()}
        cohort_of, mixed = patient_cohorts(images, col)
        if mixed:
            ctx.warn(f"{len(mixed)} patient(s) have images of more than one {col!r} value (e.g. {mixed[0]!r}); "
                     "each counts in its most frequent one")
        out: dict[str, Any] = {"column": col, "available": True}
        out["per_cohort"] = self._per_cohort(ctx, predictions, split, cohort_of)
        labels = images.table.groupby(images.table["patient_id"].astype(str))["label"].first().astype(str)
        counts = pd.crosstab(pd.Series([cohort_of[q] for q in labels.index], name="cohort"),
                             pd.Series(labels.to_numpy(), name="label"))
        out["patients_per_class"] = {str(c): {str(k): int(v) for k, v in row.items()} for c, row in counts.iterrows()}
        if features is not None:
            out["batch_effect"] = self._batch_effect(ctx, features, cohort_of)
        if split is not None:
            mixing = fold_mixing(split, cohort_of)
            out["folds"] = mixing
            n_mixed = sum(bool(m["shared"]) for m in mixing)
            out["folds_mixing_cohorts"] = n_mixed
            auc = (out.get("batch_effect") or {}).get("auroc")
            out["warning"] = bool(auc is not None and auc > p["auroc_threshold"] and n_mixed)
            if out["warning"]:
                ctx.warn(f"cohorts in column {col!r} are predictable from the features (cross-validated AUROC "
                         f"{auc:.3f} > {p['auroc_threshold']}) and {n_mixed} of {len(mixing)} fold(s) have the same "
                         f"cohort(s) in training and test: the CV metrics mix a cohort shift the model can exploit; "
                         f"evaluate externally (column_split on {col!r}: train on one cohort, test on another)")
        values = clean({"cohort": out})
        self._report(ctx, values["cohort"])
        return {"metrics": Metrics(ctx.out_dir("metrics"), values).save()}

    def _per_cohort(self, ctx: RunContext, predictions: Predictions, split: Split | None,
                    cohort_of: dict[str, str]) -> dict[str, Any]:
        t = predictions.table
        t = t[t["level"] == "patient"] if "level" in t.columns else t
        if len(t) == 0:
            raise DataError(predictions.path, "cohort_shift needs patient-level predictions (level: patient)")
        part = self.params["partition"]
        if split is not None and part != "all":
            keep = set(zip(split.table.loc[split.table["partition"] == part, "fold"].astype(str),
                           split.table.loc[split.table["partition"] == part, "patient_id"].astype(str)))
            t = t[[(str(f), str(i)) in keep for f, i in zip(t["fold"], t["id"])]]
        classes = predictions.classes or sorted(set(t["y_true"].astype(str)))
        has_probs = all(f"prob_{c}" in t.columns for c in classes)
        coh = t["id"].astype(str).map(cohort_of)
        unknown = int(coh.isna().sum())
        if unknown:
            ctx.warn(f"{unknown} predicted patient(s) are not in the data set's table; left out of the per-cohort metrics")
        out = {}
        for c in sorted(coh.dropna().unique()):
            g = t[(coh == c).to_numpy()]
            m = classification_metrics(g["y_true"].astype(str), g["y_pred"].astype(str), classes,
                                       g[[f"prob_{k}" for k in classes]].to_numpy(float) if has_probs else None)
            out[str(c)] = {k: m.get(k) for k in HEADLINE}
        return out

    def _batch_effect(self, ctx: RunContext, features: FeatureTable, cohort_of: dict[str, str]) -> dict[str, Any]:
        p = self.params
        patients, x, names = pooled_patient_features(features, list(p["stats"]))
        known = [i for i, q in enumerate(patients) if q in cohort_of]
        x, patients = x[known], [patients[i] for i in known]
        y = [cohort_of[q] for q in patients]
        seed = int(ctx.rng("cohort").integers(0, 2**31 - 1))
        res: dict[str, Any] = {"auroc": cohort_auroc(x, y, folds=p["cv_folds"], C=p["C"], seed=seed),
                               "n_patients": len(patients), "n_features": len(names),
                               "cohorts": {c: y.count(c) for c in sorted(set(y))}}
        groups = _groups(names)
        if len(groups) > 1:
            res["by_group"] = {g: cohort_auroc(x[:, idx], y, folds=p["cv_folds"], C=p["C"], seed=seed)
                               for g, idx in sorted(groups.items())}
        if res["auroc"] is None:
            ctx.warn("batch-effect check skipped: it needs at least two cohorts with two patients each")
        return res

    def _report(self, ctx: RunContext, m: dict[str, Any]) -> None:
        sec = "Cohort shift"
        rows = [{"cohort": c, **{k: (None if v.get(k) is None else round(v[k], 4) if isinstance(v[k], float) else v[k])
                                 for k in HEADLINE},
                 **{f"n {k}": n for k, n in m["patients_per_class"].get(c, {}).items()}}
                for c, v in m["per_cohort"].items()]
        ctx.report.table(f"Patient-level metrics per cohort (column {m['column']!r})", rows, section=sec)
        be = m.get("batch_effect")
        if be:
            auc = be["auroc"]
            text = (f"Cross-validated AUROC of a logistic regression predicting the cohort from the patient-pooled "
                    f"features ({be['n_features']} columns, {be['n_patients']} patients): "
                    f"{'–' if auc is None else f'{auc:.3f}'} (0.5: the cohorts look alike; near 1: the features "
                    f"give the cohort away).")
            if be.get("by_group"):
                text += " By feature group: " + ", ".join(
                    f"{g} {'–' if a is None else f'{a:.3f}'}" for g, a in be["by_group"].items()) + "."
            ctx.report.text("Batch effect", text, section=sec)
        if m.get("warning"):
            ctx.report.text("Warning: the CV mixes predictable cohorts",
                            f"{m['folds_mixing_cohorts']} fold(s) train and test on the same cohorts while the "
                            f"features predict the cohort: CV metrics are not an external-validation estimate. "
                            f"Use column_split on {m['column']!r}.", section=sec)


@hookimpl
def register_evaluators(register: Any) -> None:
    register(CohortShift)
