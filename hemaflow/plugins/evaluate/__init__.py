"""Evaluators: segmentation (Dice/IoU, centre cell, instance matching, by label) and
classification metrics with bootstrap CIs.

Both write a :class:`~hemaflow.core.artifacts.Metrics` artifact whose sections the runner merges
into ``metrics.json`` (``segmentation``; ``patient``, ``image``, ``cell``, ``folds``), plus
report items (tables, overlays, confusion matrices, ROC curves). One module per evaluator:
:mod:`.segmentation`, :mod:`.classification`.
"""

from __future__ import annotations

from typing import Any

from hemaflow.core.markers import hookimpl
from hemaflow.plugins.evaluate.classification import LEVELS, ClassificationEvaluator
from hemaflow.plugins.evaluate.segmentation import SegmentationEvaluator, _is_crop_set  # noqa: F401

__all__ = ["LEVELS", "ClassificationEvaluator", "SegmentationEvaluator"]


@hookimpl
def register_evaluators(register: Any) -> None:
    register(SegmentationEvaluator)
    register(ClassificationEvaluator)
