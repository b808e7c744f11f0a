"""A hemaflow evaluator: accuracy and balanced accuracy per level."""

from __future__ import annotations

import numpy as np

from hemaflow import Evaluator, hookimpl
from hemaflow.core.artifacts import Metrics, Predictions


class TemplateComponent(Evaluator):
    """Accuracy, balanced accuracy (mean recall over the classes present) and ``n`` per level.

    Input ``predictions: Predictions``; output ``metrics: Metrics`` with one section per level
    in the predictions (``patient``, ``image``, ``cell``), merged into the run's metrics.json.
    """

    name = "template_component"
    version = "1"
    schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def run(self, ctx, predictions: Predictions, split=None):
        values = {}
        for level, g in predictions.table.groupby("level", sort=True):
            y, p = g["y_true"].astype(str).to_numpy(), g["y_pred"].astype(str).to_numpy()
            recalls = [float((p[y == c] == c).mean()) for c in sorted(set(y))]
            values[str(level)] = {"accuracy": float((y == p).mean()), "balanced_accuracy": float(np.mean(recalls)),
                                  "n": int(len(g))}
        return {"metrics": Metrics(ctx.out_dir("metrics"), values).save()}


@hookimpl
def register_evaluators(register):
    register(TemplateComponent)
