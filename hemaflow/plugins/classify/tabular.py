"""Classifiers on a FeatureTable: ``tabular_attention`` (FT-Transformer or MLP) and ``sklearn_classifier``.

Also the feature side every feature-based classifier shares (``multimodal``,
``apply_classifier``): :func:`feature_matrix` (numeric values in a fixed column order),
:class:`Scaler` (imputation + standardisation fitted on training rows only), the id rows of a
table and the feature bar chart of the report.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Model
from hemaflow.core.bases import Classifier
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.classify.common import (
    _TABULAR_PARAMS,
    NeuralClassifier,
    _check_split,
    _fold_rows,
    _label_index,
    _model_meta,
    _prediction_rows,
    _raise_problems,
    _save_predictions,
    _schema,
    _train_folds,
    class_list,
)
from hemaflow.lib.training import TRAIN_SCHEMA


# -- feature tables -----------------------------------------------------------------------------------
class Scaler:
    """Imputation + standardisation fitted on training rows only (values clipped to +-10 sd)."""

    def __init__(self, impute: str = "median") -> None:
        self.impute = impute

    def fit(self, x: np.ndarray, columns: list[str], path: Any) -> "Scaler":
        x = np.asarray(x, dtype=np.float64)
        if self.impute == "none" and np.isnan(x).any():
            bad = [columns[j] for j in np.flatnonzero(np.isnan(x).any(0))[:5]]
            raise DataError(path, f"missing values in feature columns {bad} (set impute: median to fill them)")
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fill = {"median": np.nanmedian, "mean": np.nanmean}.get(self.impute, lambda a, axis: np.zeros(a.shape[1]))(x, axis=0)
        self.fill_ = np.nan_to_num(np.asarray(fill, dtype=np.float64), nan=0.0)
        xf = np.where(np.isnan(x), self.fill_, x)
        self.mean_ = xf.mean(0) if len(xf) else np.zeros(x.shape[1])
        sd = xf.std(0) if len(xf) else np.ones(x.shape[1])
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        return self

    def transform(self, x: np.ndarray, columns: list[str], path: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.impute == "none" and np.isnan(x).any():
            bad = [columns[j] for j in np.flatnonzero(np.isnan(x).any(0))[:5]]
            raise DataError(path, f"missing values in feature columns {bad} (set impute: median to fill them)")
        xf = np.where(np.isnan(x), self.fill_, x)
        return np.clip((xf - self.mean_) / self.scale_, -10, 10).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"impute": self.impute, "fill": self.fill_.tolist(), "mean": self.mean_.tolist(),
                "scale": self.scale_.tolist()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "Scaler":
        self = cls(s["impute"])
        self.fill_, self.mean_, self.scale_ = (np.asarray(s[k], dtype=np.float64) for k in ("fill", "mean", "scale"))
        return self


def feature_matrix(features: Any, columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Feature values (float64, NaN for missing) in ``columns`` order (default: the table's own).

    Raises:
        DataError: no feature columns, columns the model needs are missing, or non-numeric values.
    """
    own = features.feature_columns
    if columns is None:
        columns = own
        if not columns:
            raise DataError(features.path, "meta['feature_columns'] is empty: no features to train on")
    missing = [c for c in columns if c not in features.table.columns]
    if missing:
        raise DataError(features.path, f"feature table is missing {len(missing)} column(s) the model was trained on: "
                                       f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    try:
        x = features.table[columns].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64, copy=True)
    except (ValueError, TypeError) as exc:
        raise DataError(features.path, f"feature columns must be numeric ({exc})") from None
    x[~np.isfinite(x)] = np.nan
    return x, list(columns)


def _feature_rows(features: Any) -> tuple[pd.DataFrame, str]:
    """Id rows of a FeatureTable: ``id`` is the cell id (level cell) or the image id (level image)."""
    t = features.table
    if "cell_id" in t.columns and t["cell_id"].notna().all():
        rows, level = t[["cell_id", "image_id", "patient_id", "label"]].rename(columns={"cell_id": "id"}), "cell"
    else:
        rows, level = t[["image_id", "patient_id", "label"]].assign(id=t["image_id"]), "image"
    rows = rows.copy()
    for c in ("id", "image_id", "patient_id"):
        rows[c] = rows[c].astype(str)
    rows["_row"] = np.arange(len(rows))
    return rows, level


def _labelled_features(ctx: RunContext, features: Any) -> tuple[list[str], np.ndarray, list[str], pd.DataFrame, str]:
    """Classes, feature matrix (labelled rows only), columns, id rows (with ``y``) and level of a FeatureTable."""
    classes = class_list(features)
    x_all, columns = feature_matrix(features)
    rows, level = _feature_rows(features)
    rows = _label_index(ctx, rows, classes, features.path, level)
    return classes, x_all[rows["_row"].to_numpy()], columns, rows, level


def _report_feature_bars(ctx: RunContext, df: pd.DataFrame, title: str, value: str, caption: str, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df.sort_values(value, ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(d) + 1))
    ax.barh([str(f).removeprefix("radiomics_") for f in d["feature"]], d[value])
    ax.set_xlabel(value.replace("_", " "))
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    ctx.report.figure(title, fig, caption=caption)


def _forward_tabular(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["x"])


# -- tabular_attention --------------------------------------------------------------------------------
class TabularAttention(NeuralClassifier):
    """FT-Transformer (feature tokens + transformer) or MLP classifier on a FeatureTable.

    Rows are cells (``cell_id`` present) or images. Imputation/scaling fitted on the training
    partition only. With ``encoder: attention`` the [CLS]->feature attention of the last block,
    averaged over each fold's test rows, is saved to ``feature_attention.csv`` in the Model and
    charted in the report (top features).
    """

    name = "tabular_attention"
    version = "1"
    schema = _schema({
        "encoder": {"enum": ["attention", "mlp"], "default": "attention",
                    "description": "attention: FT-Transformer feature tokens; mlp: the plain baseline"},
        **_TABULAR_PARAMS,
        **{k: v for k, v in TRAIN_SCHEMA.items() if k != "augment"},
        "lr": dict(TRAIN_SCHEMA["lr"], default=1e-3),
        "epochs": dict(TRAIN_SCHEMA["epochs"], default=30),
        "batch_size": dict(TRAIN_SCHEMA["batch_size"], default=64),
        "patience": dict(TRAIN_SCHEMA["patience"], default=8),
        "weight_decay": dict(TRAIN_SCHEMA["weight_decay"], default=1e-4),
    })
    inputs = {"features": "FeatureTable", "split": "Split"}

    def run(self, ctx: RunContext, features: Any, split: Any) -> dict[str, Any]:
        import torch

        from hemaflow.lib.nets import TabularNet
        from hemaflow.lib.training import TensorDictDataset

        p = self.params
        _raise_problems(self.check_params())
        classes, x_all, columns, rows, level = _labelled_features(ctx, features)
        y = rows["y"].to_numpy()
        attn: list[pd.DataFrame] = []

        def prepare(train_idx: np.ndarray, fold: int) -> Scaler:
            return Scaler(p["impute"]).fit(x_all[train_idx], columns, features.path)

        def make_data(idx: np.ndarray, train: bool, scaler: Scaler) -> Any:
            return TensorDictDataset(x=torch.from_numpy(scaler.transform(x_all[idx], columns, features.path)),
                                     y=torch.as_tensor(y[idx]))

        def build() -> Any:
            return TabularNet(len(columns), len(classes), encoder=p["encoder"], hidden=p["hidden"], dim=p["token_dim"],
                              depth=p["depth"], heads=p["heads"], dropout=p["dropout"])

        def after(net: Any, scaler: Scaler, test_idx: np.ndarray, fold: int) -> None:
            if p["encoder"] != "attention":
                return
            w = _feature_attention(net, scaler.transform(x_all[test_idx], columns, features.path),
                                   lambda m, x: m(x), ctx.device, int(p["batch_size"]))
            attn.append(pd.DataFrame({"fold": fold, "feature": columns, "attention": w}))

        out = _train_folds(ctx, self, split=split, rows=rows, classes=classes, level=level, build=build,
                           make_data=make_data, forward=_forward_tabular, prepare_fold=prepare, after_fold=after,
                           extra_meta={"feature_columns": columns}, source=features)
        _save_attention(ctx, out["model"], attn)
        return out


def _feature_attention(net: Any, x: np.ndarray, call: Callable, device: str, batch_size: int) -> np.ndarray:
    """Mean [CLS]->feature attention of ``net`` over rows ``x`` (eval mode)."""
    import torch

    net.eval().to(device)
    total, n = None, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            call(net, torch.from_numpy(x[i:i + batch_size]).to(device))
            a = net.feature_attention.float().cpu().numpy()
            total = a.sum(0) if total is None else total + a.sum(0)
            n += len(a)
    return total / max(n, 1)


def _save_attention(ctx: RunContext, model: Model, attn: list[pd.DataFrame]) -> None:
    if not attn:
        return
    df = pd.concat(attn, ignore_index=True)
    df.to_csv(model.path / "feature_attention.csv", index=False)
    mean = df.groupby("feature", sort=False)["attention"].mean().reset_index()
    _report_feature_bars(ctx, mean, "Feature attention (tabular)", "attention",
                         "mean [CLS]->feature attention of the last transformer block on the test rows, "
                         "averaged over folds; uniform attention would be 1/n_features = "
                         f"{1 / len(mean):.4f}")
    model.meta["feature_attention"] = "feature_attention.csv"
    model.save()


# -- sklearn_classifier -------------------------------------------------------------------------------
class SklearnClassifier(Classifier):
    """Logistic regression, random forest or gradient boosting on a FeatureTable.

    Per fold: imputation and standard scaling fitted on the training partition only; the
    hyper-parameters come from the recipe (nothing is tuned on any partition); the validation
    partition is scored for the record. Feature importances (|coefficients| for logistic
    regression) are saved and charted.
    """

    kind = "classifier"
    name = "sklearn_classifier"
    version = "1"
    schema = _schema({
        "model": {"enum": ["logistic_regression", "random_forest", "gradient_boosting"],
                  "default": "logistic_regression", "description": "scikit-learn estimator"},
        "C": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
              "description": "logistic_regression: inverse L2 regularisation strength"},
        "max_iter": {"type": "integer", "minimum": 10, "default": 2000,
                     "description": "logistic_regression: solver iterations"},
        "n_estimators": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 300,
                         "description": "random_forest / gradient_boosting: number of trees"},
        "max_depth": {"type": ["integer", "null"], "minimum": 1, "default": None,
                      "description": "maximum tree depth (null: unlimited for random_forest, 3 for gradient_boosting)"},
        "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1,
                          "description": "gradient_boosting: shrinkage"},
        "class_weight": {"enum": ["none", "balanced"], "default": "balanced",
                         "description": "balanced: weight classes n/(k*n_c) (sample weights for gradient boosting)"},
        "impute": {"enum": ["median", "mean", "zero", "none"], "default": "median",
                   "description": "missing feature values: training-partition median/mean, 0, or an error"},
        "fit_on": {"enum": ["train", "train_val"], "default": "train",
                   "description": "fit on the training partition, or on training + validation (no tuning uses val)"},
    })
    inputs = {"features": "FeatureTable", "split": "Split"}
    outputs = {"predictions": "Predictions", "model": "Model"}

    def _estimator(self, seed: int) -> Any:
        p = self.params
        cw = "balanced" if p["class_weight"] == "balanced" else None
        if p["model"] == "logistic_regression":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=p["C"], max_iter=p["max_iter"], class_weight=cw)
        if p["model"] == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"], class_weight=cw,
                                          random_state=seed, n_jobs=1)
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"] or 3,
                                          learning_rate=p["learning_rate"], random_state=seed)

    def run(self, ctx: RunContext, features: Any, split: Any) -> dict[str, Any]:
        import joblib
        from sklearn.utils.class_weight import compute_sample_weight

        from hemaflow.lib.training import balanced_accuracy

        p = self.params
        classes, x_all, columns, rows, level = _labelled_features(ctx, features)
        y = rows["y"].to_numpy()
        _check_split(ctx, split, rows)
        model_dir = ctx.out_dir("model")
        frames, fold_info, importances = [], [], []
        for fold in ctx.progress(split.folds(), description="sklearn folds"):
            parts = _fold_rows(split, rows, fold)
            fit_idx = parts["train"] if p["fit_on"] == "train" else np.concatenate([parts["train"], parts["val"]])
            if len(fit_idx) == 0:
                raise DataError(split.path, f"fold {fold} has no labelled training rows")
            if len(parts["test"]) == 0:
                ctx.warn(f"fold {fold} has no test rows; it is skipped")
                continue
            present = np.unique(y[fit_idx])
            if len(present) < 2:
                raise DataError(split.path, f"fold {fold}: the training partition holds one class only "
                                            f"({classes[present[0]]})")
            scaler = Scaler(p["impute"]).fit(x_all[fit_idx], columns, features.path)
            est = self._estimator(ctx.torch_seed("sklearn", fold))
            xt = scaler.transform(x_all[fit_idx], columns, features.path)
            kw = {}
            if p["model"] == "gradient_boosting" and p["class_weight"] == "balanced":
                kw["sample_weight"] = compute_sample_weight("balanced", y[fit_idx])
            est.fit(xt, y[fit_idx], **kw)
            probs = self._proba(est, scaler.transform(x_all[parts["test"]], columns, features.path), len(classes))
            frames.append(_prediction_rows(rows, parts["test"], probs, fold, classes, level))
            info = {"fold": fold, "n_train": int(len(fit_idx)), "n_val": int(len(parts["val"])),
                    "n_test": int(len(parts["test"]))}
            if len(parts["val"]) and p["fit_on"] == "train":
                pv = self._proba(est, scaler.transform(x_all[parts["val"]], columns, features.path), len(classes))
                info["val_balanced_accuracy"] = balanced_accuracy(y[parts["val"]], pv.argmax(1))
            fold_info.append(info)
            joblib.dump({"estimator": est, "scaler": scaler.state(), "classes": classes, "feature_columns": columns},
                        model_dir / f"fold{fold}.joblib")
            imp = getattr(est, "feature_importances_", None)
            if imp is None and hasattr(est, "coef_"):
                imp = np.abs(est.coef_).mean(0)
            if imp is not None:
                importances.append(pd.DataFrame({"fold": fold, "feature": columns, "importance": np.asarray(imp)}))
        predictions = _save_predictions(ctx, frames, classes, level, features)
        meta = _model_meta(ctx, self, classes=classes, level=level, feature_columns=columns, folds=fold_info)
        if importances:
            df = pd.concat(importances, ignore_index=True)
            df.to_csv(model_dir / "feature_importance.csv", index=False)
            meta["feature_importance"] = "feature_importance.csv"
            mean = df.groupby("feature", sort=False)["importance"].mean().reset_index()
            _report_feature_bars(ctx, mean, f"Feature importance ({p['model']})", "importance",
                                 "impurity importance (trees) or mean |coefficient| on standardised features "
                                 "(logistic regression), averaged over folds")
        if fold_info:
            ctx.report.table(f"Folds ({self.name}, {p['model']})", fold_info)
        meta["files"] = sorted(q.name for q in model_dir.iterdir())
        model = Model(model_dir, meta).save()
        return {"predictions": predictions, "model": model}

    @staticmethod
    def _proba(est: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        """Probabilities in class-list order (classes absent from training get 0)."""
        pr = est.predict_proba(x)
        out = np.zeros((len(x), n_classes))
        out[:, est.classes_.astype(int)] = pr
        return out


@hookimpl
def register_classifiers(register: Any) -> None:
    register(SklearnClassifier)
    register(TabularAttention)
