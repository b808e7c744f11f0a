"""A hemaflow MIL model: mean pooling of each patient's bag, then nearest class centroid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hemaflow import MILModel, hookimpl
from hemaflow.core.artifacts import Metrics, Model, Predictions, TableArtifact
from hemaflow.core.errors import DataError
from hemaflow.plugins.artifacts import CellSet, FeatureTable, Split


class TemplateComponent(MILModel):
    """Each patient's bag (its cells' feature rows) pooled by the mean; per fold, one centroid
    per class of the training bags (standardized); test bags get softmax(-distance).

    Inputs ``split: Split`` and ``features: FeatureTable`` (or ``embeddings``); outputs
    ``predictions`` (level ``patient``), ``model`` (centroids), ``attention`` (every instance of
    a test bag weighs 1/n: mean pooling) and ``metrics`` (section ``mil``). A patient without
    instances gets no prediction (a warning names how many). For a learned aggregator, subclass
    ``hemaflow.plugins.mil.MILAggregator`` instead and supply the network's ``pool(h, mask)``.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"temperature": {"type": "number", "exclusiveMinimum": 0, "default": 1.0}},
        "additionalProperties": False,
    }

    def run(self, ctx, split: Split, embeddings: FeatureTable | None = None, features: FeatureTable | None = None,
            cells: CellSet | None = None):
        inst = embeddings if embeddings is not None else features
        if inst is None:
            raise DataError(split.path, f"{self.name} needs a `features` or `embeddings` input (instance features)")
        t, cols = inst.table, inst.feature_columns
        classes = inst.meta.get("classes") or sorted(t["label"].astype(str).unique())
        bags = t.groupby("patient_id", sort=True)
        pooled = bags[cols].mean()
        labels = bags["label"].first().astype(str)
        preds, attention, folds, empty = [], [], [], 0
        for fold in split.folds():
            train = [p for p in sorted(split.patients(fold, "train")) if p in pooled.index]
            test = sorted(split.patients(fold, "test"))
            empty += sum(p not in pooled.index for p in test)
            test = [p for p in test if p in pooled.index]
            if not train:
                raise DataError(split.path, f"fold {fold} has no training patient with instances")
            x = pooled.loc[train].to_numpy(float)
            mean, std = x.mean(axis=0), x.std(axis=0)
            std = np.where(std > 0, std, 1.0)
            z = (x - mean) / std
            y = labels.loc[train].to_numpy()
            cents = np.array([z[y == c].mean(axis=0) if (y == c).any() else np.full(len(cols), np.nan)
                              for c in classes])
            for pid in test:
                zt = np.nan_to_num((pooled.loc[pid].to_numpy(float) - mean) / std)
                d = np.sqrt(((cents - zt) ** 2).sum(axis=1))
                logit = np.where(np.isnan(d), -np.inf, -d / float(self.params["temperature"]))
                p = np.exp(logit - logit.max())
                p /= p.sum()
                preds.append({"id": pid, "level": "patient", "fold": int(fold), "y_true": labels.loc[pid],
                              "y_pred": classes[int(np.argmax(p))], **{f"prob_{c}": float(v) for c, v in zip(classes, p)}})
                bag = bags.get_group(pid)
                for rank, cid in enumerate(bag["cell_id"] if "cell_id" in bag else bag.index.astype(str)):
                    attention.append({"patient_id": pid, "cell_id": str(cid), "fold": int(fold),
                                      "score": 1.0 / len(bag), "rank": rank})
            folds.append({"fold": fold, "mean": mean.tolist(), "std": std.tolist(),
                          "centroids": np.nan_to_num(cents, nan=0.0).tolist()})
        if empty:
            ctx.warn(f"{empty} test patient(s) have no instances and get no prediction")
        table = pd.DataFrame(preds, columns=["id", "level", "fold", "y_true", "y_pred", *[f"prob_{c}" for c in classes]])
        model_dir = ctx.out_dir("model")
        (model_dir / "centroids.json").write_text(json.dumps({"columns": cols, "classes": list(classes), "folds": folds}))
        att = pd.DataFrame(attention, columns=["patient_id", "cell_id", "fold", "score", "rank"])
        return {
            "predictions": Predictions(ctx.out_dir("predictions"), table, {"classes": list(classes)}).save(),
            "model": Model(model_dir, {"component": self.name, "classes": list(classes)}).save(),
            "attention": TableArtifact(ctx.out_dir("attention"), att).save(),
            "metrics": Metrics(ctx.out_dir("metrics"), {"mil": {"aggregator": self.name, "n_bags": int(len(pooled)),
                                                                "n_instances": int(len(t)),
                                                                "empty_test_bags": int(empty)}}).save(),
        }


@hookimpl
def register_mil_models(register):
    register(TemplateComponent)
