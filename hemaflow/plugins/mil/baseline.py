"""The classical patient-level baseline (kind ``mil``): pooled cell features + a scikit-learn model.

``pooled_baseline`` takes the same inputs as every MIL aggregator (``split``, ``features``,
``embeddings``, ``cells``) and writes the same outputs, so a MIL comparison swaps it in with
``uses:`` alone. Per fold of the Split:

1. every patient's instances (all cells of all its images) are pooled into one row: per feature
   column the ``stats`` (default mean, sd and the 10/50/90% quantiles, NaN ignored);
   CNN embeddings are first reduced to ``embedding_pca`` components fitted on the fold's
   training instances (as in MIL);
2. the pooled rows are standardized with mean/std of the fold's **training patients only**
   (missing values take the training mean; saved as ``fold<k>_scaler.npz``);
3. a scikit-learn model (logistic regression by default, L2 with ``C`` chosen per fold by an
   inner CV on the training patients (``C: auto``, :class:`AutoC`) or fixed, balanced class
   weights) is fitted on the training patients (``fit_on: train_val`` adds the validation patients: nothing
   is selected on them here) and predicts the fold's test patients.

A learned aggregator that does not beat this on the same cells has not learned anything a
haematologist's classical features and an average would not give.

Example::

    mil:
      uses: pooled_baseline
      inputs: {features: cellfeats, split: split}
      with: {model: logistic_regression, C: auto}
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Model, Predictions, TableArtifact
from hemaflow.core.bases import MILModel
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.mil_bags import (apply_scaler, build_instances, fit_pca, fit_scaler, make_bags, patient_labels,
                                   select_modalities)

STATS = ("mean", "sd", "q10", "q25", "q50", "q75", "q90", "min", "max")
DEFAULT_STATS = ["mean", "sd", "q10", "q50", "q90"]


def pool_bags(x: np.ndarray, bags: dict[str, np.ndarray], patients: list[str],
              stats: list[str] | tuple[str, ...] = tuple(DEFAULT_STATS)) -> np.ndarray:
    """Pool instance rows ``x`` (N, D) into one row per patient: (len(patients), D * len(stats)).

    Columns are stat-major (all features' means, then all sds, ...). NaN instances are ignored;
    a feature with no finite value in a bag gives NaN (impute downstream).
    """
    out = np.full((len(patients), x.shape[1] * len(stats)), np.nan, np.float64)
    qs = {s: float(s[1:]) / 100 for s in stats if s.startswith("q")}
    reducers = {"mean": np.nanmean, "sd": np.nanstd, "min": np.nanmin, "max": np.nanmax}
    for i, pid in enumerate(patients):
        v = np.asarray(x[bags[pid]], np.float64)
        if v.size == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN: imputed downstream
            out[i] = np.concatenate([reducers[s](v, axis=0) if s in reducers else np.nanquantile(v, qs[s], axis=0)
                                     for s in stats])
    return out


def pooled_names(columns: list[str], stats: list[str] | tuple[str, ...]) -> list[str]:
    """Names of :func:`pool_bags`' columns: ``<stat>:<feature>``."""
    return [f"{s}:{c}" for s in stats for c in columns]


def make_estimator(params: dict[str, Any], seed: int) -> Any:
    """The scikit-learn model of ``params`` (``model``, ``C``, ``class_weight``, ``n_estimators``)."""
    cw = None if params["class_weight"] == "none" else "balanced"
    if params["model"] == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=int(params["n_estimators"]), class_weight=cw, random_state=seed,
                                      n_jobs=1)
    from sklearn.linear_model import LogisticRegression

    if params["C"] != "auto":
        return LogisticRegression(C=float(params["C"]), class_weight=cw, max_iter=5000, random_state=seed)
    return AutoC(class_weight=cw, seed=seed)


#: ``C: auto`` grid: inverse L2 strengths from very strong (1e-3) to weak (10).
AUTO_CS = tuple(float(c) for c in np.logspace(-3, 1, 9))


class AutoC:
    """Logistic regression whose ``C`` is chosen by a stratified inner cross-validation on the
    patients it is fitted on (patient AUROC, one-vs-rest for several classes), then refitted on
    all of them. Nothing outside the fold's training patients is looked at.

    Why: a pooled row has features x stats columns (90 x 5 = 450 for ``cell_features``) for a few
    dozen training patients, and the L2 strength that generalizes depends on both; a fixed ``C=1``
    fits the training cohort's stain. On the cross-source dev benchmark (docs/mil.md, 12 seeds of
    the pseudo-patient bags, handcrafted features) ``C=1`` gave a mean external AUROC of 0.72 / 0.73
    (Tecom -> CellaVision / CellaVision -> Tecom), the inner choice 0.77 / 0.78.
    With fewer than two patients of a class the inner split is impossible and ``C=1`` is used
    (``chosen_C`` says so).
    """

    def __init__(self, class_weight: str | None, seed: int, cs: tuple[float, ...] = AUTO_CS) -> None:
        self.class_weight, self.seed, self.cs = class_weight, seed, cs
        self.chosen_C = 1.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> "AutoC":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        k = int(min(5, np.bincount(y).min() if len(y) else 0))
        if k >= 2:
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
            scoring = "roc_auc" if len(np.unique(y)) == 2 else "roc_auc_ovr"
            scores = []
            for c in self.cs:
                m = LogisticRegression(C=c, class_weight=self.class_weight, max_iter=5000, random_state=self.seed)
                scores.append(float(np.mean(cross_val_score(m, x, y, cv=cv, scoring=scoring))))
            # the strongest regularization within 0.005 of the best inner score
            best = max(scores)
            self.chosen_C = next(c for c, sc in zip(self.cs, scores) if sc >= best - 0.005)
        self.model_ = LogisticRegression(C=self.chosen_C, class_weight=self.class_weight, max_iter=5000,
                                         random_state=self.seed).fit(x, y)
        self.classes_, self.coef_, self.intercept_ = self.model_.classes_, self.model_.coef_, self.model_.intercept_
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model_.predict(x)


class PooledBaseline(MILModel):
    """Classical patient-level baseline: per-patient statistics of cell features + scikit-learn.

    Same inputs and outputs as the MIL aggregators (``uses:`` swaps it in); the model, scaler and
    PCA are fitted per fold on training patients only.
    """

    bundle_part = "pooled_baseline"  # how `hemaflow export` writes it (hemaflow.lib.mil_bundle)

    name = "pooled_baseline"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "model": {"enum": ["logistic_regression", "random_forest"], "default": "logistic_regression",
                      "description": "scikit-learn model fitted on the pooled, standardized patient rows"},
            "C": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "auto"}], "default": "auto",
                  "description": "logistic regression: inverse L2 regularization strength, or auto: chosen per "
                                 "fold by a stratified inner cross-validation on the training patients (patient "
                                 "AUROC over 1e-3..10; version 2; version 1 used 1.0)"},
            "class_weight": {"enum": ["balanced", "none"], "default": "balanced",
                             "description": "weight classes inversely to their training frequency"},
            "n_estimators": {"type": "integer", "minimum": 1, "default": 300,
                             "description": "random forest: trees"},
            "stats": {"type": "array", "items": {"enum": list(STATS)}, "minItems": 1, "uniqueItems": True,
                      "default": DEFAULT_STATS,
                      "description": "per-patient statistics of every instance feature (NaN ignored)"},
            "modalities": {"type": ["array", "null"], "items": {"enum": ["embeddings", "features"]}, "minItems": 1,
                           "uniqueItems": True, "default": None,
                           "description": "instance inputs to pool (null: every connected one)"},
            "embedding_pca": {"type": "integer", "minimum": 0, "default": 32,
                              "description": "reduce CNN embeddings to this many principal components fitted on the "
                                             "fold's training instances before pooling (0: keep all)"},
            "fit_on": {"enum": ["train", "train_val"], "default": "train",
                       "description": "patients the scaler and model are fitted on: the fold's training patients, or "
                                      "training + validation (nothing is selected on validation patients here)"},
            "top_features": {"type": "integer", "minimum": 0, "default": 15,
                             "description": "pooled features listed in the report (largest mean |coefficient| or "
                                            "importance over folds)"},
        },
        "additionalProperties": False,
    }
    inputs = {"split": "Split", "embeddings": "FeatureTable?", "features": "FeatureTable?", "cells": "CellSet?"}
    outputs = {"predictions": "Predictions", "model": "Model", "attention": "Table", "metrics": "Metrics"}

    def run(self, ctx: RunContext, split, embeddings=None, features=None, cells=None) -> dict[str, Any]:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # tiny matrices: one BLAS thread is faster on a busy machine
            return self._run(ctx, split, embeddings, features, cells)

    def _run(self, ctx: RunContext, split, embeddings, features, cells) -> dict[str, Any]:
        p = self.params
        embeddings, features = select_modalities(p.get("modalities"), embeddings, features)
        inst = build_instances(embeddings=embeddings, features=features, cells=cells)
        table, classes = inst.table, inst.classes
        source = (embeddings if embeddings is not None else features).path
        labels_str = patient_labels(table, source)
        unknown = sorted({v for v in labels_str.values() if v not in classes})
        if unknown:
            raise DataError(source, f"labels {unknown} are not among the classes {classes}")
        bags = make_bags(table)
        stats = list(p["stats"])
        base_cols = _block_columns(embeddings, features)
        model_dir = ctx.out_dir("model")
        pred_rows, att_rows, fold_info, empty, importances = [], [], [], [], []
        names: list[str] = []
        refit, refit_info = split.refit_fold(), None
        for fold in split.fit_folds():
            parts = {part: sorted(split.patients(fold, part)) for part in ("train", "val", "test")}
            for part, pats in parts.items() if fold != refit else ():  # the folds warned already
                for q in pats:
                    if q not in bags:
                        empty.append({"fold": fold, "patient_id": q, "partition": part})
                        ctx.warn(f"fold {fold}: patient {q!r} ({part}) has no instances (empty bag); "
                                 f"{'excluded from predictions' if part == 'test' else 'not used for training'}")
            fit_p = parts["train"] + (parts["val"] if p["fit_on"] == "train_val" else [])
            train = [q for q in fit_p if q in bags]
            test = [q for q in parts["test"] if q in bags]
            if not train:
                raise DataError(split.path, f"fold {fold} has no training patient with instances")
            tr_rows = np.concatenate([bags[q] for q in train])
            blocks, cols, pca = [], [], {}
            for bname, block in inst.fold_blocks(fold):
                k = int(p["embedding_pca"])
                bcols = base_cols[bname]
                if bname == "embeddings" and k and block.shape[1] > k:
                    block, pca = fit_pca(block, tr_rows, k)  # fitted on the fold's training instances only
                    bcols = [f"emb_pc{i:02d}" for i in range(block.shape[1])]
                blocks.append(block)
                cols += bcols
            x = np.concatenate(blocks, axis=1)
            names = pooled_names(cols, stats)
            x_tr = pool_bags(x, bags, train, stats)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a feature missing in every training bag: mean 0
                mean, std = fit_scaler(x_tr)  # the training patients' statistics only
            y_tr = np.array([classes.index(labels_str[q]) for q in train])
            if len(set(y_tr)) < 2:
                raise DataError(split.path, f"fold {fold}: the training patients have one class only "
                                            f"({classes[int(y_tr[0])]!r}); a classifier needs two")
            est = make_estimator(p, ctx.torch_seed("fit", fold)).fit(apply_scaler(x_tr, mean, std), y_tr)
            np.savez(model_dir / f"fold{fold}_scaler.npz", mean=mean, std=std, train_patients=np.array(train),
                     **pca)
            imp = _importance(est, len(classes))
            np.savez(model_dir / f"fold{fold}_model.npz", classes_=est.classes_, importance=imp,
                     **({"coef": est.coef_, "intercept": est.intercept_} if hasattr(est, "coef_") else {}))
            if fold == refit:  # every training patient; C by the same inner CV on them
                refit_info = {"fold": int(fold), "train": len(train),
                              **({"C": est.chosen_C} if isinstance(est, AutoC) else {})}
                ctx.log(f"refit (fold {fold}): {len(train)} training patients")
                continue
            importances.append(imp)
            if test:
                x_te = apply_scaler(pool_bags(x, bags, test, stats), mean, std)
                probs = np.zeros((len(test), len(classes)))
                probs[:, est.classes_] = est.predict_proba(x_te)
                for q, pr in zip(test, probs):
                    row = {"id": q, "level": "patient", "fold": int(fold), "y_true": labels_str[q],
                           "y_pred": classes[int(np.argmax(pr))], "n_instances": len(bags[q])}
                    row.update({f"prob_{c}": float(v) for c, v in zip(classes, pr)})
                    pred_rows.append(row)
                    sub = table.iloc[bags[q]]
                    att = pd.DataFrame({"patient_id": q, "cell_id": sub["cell_id"].to_numpy(),
                                        "image_id": sub["image_id"].to_numpy(), "fold": int(fold),
                                        "score": 1.0 / len(sub), "rank": 1})  # every cell weighs the same
                    att_rows.append(att)
            train_acc = float(np.mean(est.predict(apply_scaler(x_tr, mean, std)) == y_tr))
            fold_info.append({"fold": int(fold), "train": len(train), "val": len(parts["val"]), "test": len(test),
                              "train_accuracy": train_acc,
                              **({"C": est.chosen_C} if isinstance(est, AutoC) else {})})
            ctx.log(f"fold {fold}: {len(train)} training patients, training accuracy {train_acc:.3f}"
                    + (f", C {est.chosen_C:g} (inner CV)" if isinstance(est, AutoC) else ""))

        pred_df = pd.DataFrame(pred_rows) if pred_rows else pd.DataFrame(
            columns=["id", "level", "fold", "y_true", "y_pred", *[f"prob_{c}" for c in classes]])
        preds = Predictions(ctx.out_dir("predictions"), pred_df,
                            {"classes": classes, "source": self.name, "level": "patient"}).save()
        att_df = pd.concat(att_rows, ignore_index=True) if att_rows else pd.DataFrame(
            columns=["patient_id", "cell_id", "image_id", "fold", "score", "rank"])
        attention = TableArtifact(ctx.out_dir("attention"), att_df, {"source": self.name}).save()
        imp = np.mean(importances, axis=0) if importances else np.zeros(0)
        order = np.argsort(-imp, kind="stable")
        top = [{"feature": names[i], "importance": round(float(imp[i]), 4)} for i in order]
        pd.DataFrame(top).to_csv(model_dir / "feature_importance.csv", index=False)
        sizes = np.array([len(v) for v in bags.values()])
        mil_metrics = {"aggregator": self.name, "model": p["model"], "n_bags": len(bags), "n_instances": len(table),
                       "n_pooled_features": len(names), "bag_size_min": int(sizes.min()),
                       "bag_size_median": float(np.median(sizes)), "bag_size_max": int(sizes.max()),
                       "empty_bags": sorted({e["patient_id"] for e in empty}), "folds": fold_info,
                       **({"refit": refit_info} if refit_info else {})}
        metrics = Metrics(ctx.out_dir("metrics"), {"mil": mil_metrics}).save()
        model = Model(model_dir, {"component": self.name, "model": p["model"], "classes": classes, "stats": stats,
                                  "pooled_features": names, "params": dict(p),
                                  "folds": [f["fold"] for f in fold_info] + ([refit] if refit_info else []),
                                  **({"refit_fold": refit, "refit": refit_info} if refit_info else {}),
                                  "empty_bags": empty}).save()
        ctx.report.table(f"{self.name} ({p['model']}): folds", fold_info, section="MIL")
        if refit_info:
            ctx.report.text("Refit", f"fold {refit}: one more model on {refit_info['train']} training patients "
                                     f"(every patient some fold trains or validates on); it predicts nobody: the "
                                     f"metrics are the folds'. `hemaflow export` ships it.", section="MIL")
        if p["top_features"] and top:
            ctx.report.table(f"{self.name}: pooled features with the largest weight (mean over folds)",
                             top[: int(p["top_features"])], section="MIL")
        if empty:
            ctx.report.text("Empty bags", "patients without any instance (no prediction): "
                            + ", ".join(mil_metrics["empty_bags"]), section="MIL")
        (model_dir / "pooled_features.json").write_text(json.dumps(names))
        return {"predictions": preds, "model": model, "attention": attention, "metrics": metrics}


def _block_columns(embeddings, features) -> dict[str, list[str]]:
    from hemaflow.lib.mil_bags import _feature_columns

    out = {}
    for name, art in (("embeddings", embeddings), ("features", features)):
        if art is not None:
            out[name] = _feature_columns(art)
    return out


def _importance(est: Any, n_classes: int) -> np.ndarray:
    """|coefficient| (mean over classes) or the forest's impurity importance, per pooled feature."""
    if hasattr(est, "coef_"):
        return np.abs(est.coef_).mean(axis=0)
    return np.asarray(est.feature_importances_, np.float64)


COMPONENTS = (PooledBaseline,)


@hookimpl
def register_mil_models(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
