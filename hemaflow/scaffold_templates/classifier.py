"""A hemaflow classifier: nearest class centroid on standardized features, per fold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hemaflow import Classifier, hookimpl
from hemaflow.core.artifacts import Model, Predictions
from hemaflow.core.errors import DataError
from hemaflow.plugins.artifacts import FeatureTable, Split


def centroid_probs(x: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities: softmax of minus the distance to each centroid (NaN centroid: prob 0)."""
    d = np.sqrt(((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    logits = np.where(np.isnan(d), -np.inf, -d / temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


class TemplateComponent(Classifier):
    """Per fold: standardize on the training rows, one centroid per class, predict the test rows.

    Inputs ``features: FeatureTable`` and ``split: Split``; outputs ``predictions: Predictions``
    (every test row at its own level, ``cell`` for per-cell features, and the mean per patient at
    level ``patient``) and ``model: Model`` (the centroids as JSON).
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"temperature": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                                       "description": "softmax temperature of the distances"}},
        "additionalProperties": False,
    }

    def run(self, ctx, features: FeatureTable, split: Split):
        t, cols = features.table, features.feature_columns
        classes = features.meta.get("classes") or sorted(t["label"].astype(str).unique())
        level = "cell" if "cell_id" in t.columns else "image"
        unit = "cell_id" if level == "cell" else "image_id"
        rows, folds = [], []
        for fold in split.folds():
            train = t[t["patient_id"].astype(str).isin(split.patients(fold, "train"))]
            test = t[t["patient_id"].astype(str).isin(split.patients(fold, "test"))]
            if train.empty:
                raise DataError(split.path, f"fold {fold} has no training rows among the features")
            x = train[cols].to_numpy(float)
            mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
            std = np.where(std > 0, std, 1.0)
            z = (x - mean) / std
            cents = np.array([z[(train["label"] == c).to_numpy()].mean(axis=0) if (train["label"] == c).any()
                              else np.full(len(cols), np.nan) for c in classes])
            probs = centroid_probs(np.nan_to_num((test[cols].to_numpy(float) - mean) / std), cents,
                                   float(self.params["temperature"]))
            pred = test[[unit, "patient_id", "label"]].reset_index(drop=True)
            pred = pd.concat([pred, pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])], axis=1)
            for pid, g in pred.groupby("patient_id", sort=True):
                rows.append(self._row(pid, "patient", fold, pid, g["label"].iloc[0], g, classes))
            for _, r in pred.iterrows():
                rows.append(self._row(r[unit], level, fold, r["patient_id"], r["label"], r.to_frame().T, classes))
            folds.append({"fold": fold, "mean": mean.tolist(), "std": std.tolist(),
                          "centroids": np.nan_to_num(cents, nan=0.0).tolist()})
        table = pd.DataFrame(rows, columns=["id", "level", "fold", "patient_id", "y_true", "y_pred",
                                            *[f"prob_{c}" for c in classes]])
        predictions = Predictions(ctx.out_dir("predictions"), table, {"classes": list(classes)}).save()
        model_dir = ctx.out_dir("model")
        (model_dir / "centroids.json").write_text(json.dumps({"columns": cols, "classes": list(classes),
                                                              "folds": folds}))
        model = Model(model_dir, {"component": self.name, "classes": list(classes)}).save()
        return {"predictions": predictions, "model": model}

    @staticmethod
    def _row(uid, level, fold, pid, truth, g, classes):
        p = g[[f"prob_{c}" for c in classes]].to_numpy(float).mean(axis=0)
        p = p / p.sum()
        return {"id": str(uid), "level": level, "fold": int(fold), "patient_id": str(pid), "y_true": str(truth),
                "y_pred": classes[int(np.argmax(p))], **{f"prob_{c}": float(v) for c, v in zip(classes, p)}}


@hookimpl
def register_classifiers(register):
    register(TemplateComponent)
