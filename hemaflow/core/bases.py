"""One public base class per kind of component, each stating what it consumes and produces.

Subclass the base of your kind, set ``name``, ``version`` and ``schema``, and implement ``run``
(``write`` for a reporter, ``track`` for a tracker, ``map`` for an executor); register the
class in the kind's hook (:mod:`hemaflow.core.kinds` lists which). The bases set ``kind`` and
the usual ``inputs``/``outputs``; override those when your component takes more (an optional
``split: "Split?"``, say) or names its outputs differently. Artifact types are named by their
``type_name``; the science types live in :mod:`hemaflow.plugins.artifacts`.

A plain :class:`~hemaflow.core.component.Component` subclass with the right ``kind`` string
still works (the bases add no behaviour the registry or runner relies on), so older plugins
keep working.

Example::

    from hemaflow import Normalizer, hookimpl

    class Identity(Normalizer):
        name = "identity"
        version = "1"

        def run(self, ctx, images):
            return {"images": images}

    @hookimpl
    def register_normalizers(register):
        register(Identity)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from hemaflow.core.component import Component, Executor
from hemaflow.core.kinds import KIND_SPECS

__all__ = ["CellExtractor", "Classifier", "Dataset", "Evaluator", "Executor", "FeatureExtractor", "MILModel",
           "Normalizer", "Postprocessor", "Reporter", "Segmenter", "Splitter", "Tracker", "base_of"]


class Dataset(Component):
    """Kind ``dataset``: where images come from.

    Inputs: none. Outputs: ``images: ImageSet``, one row per image with ``image_id``,
    ``patient_id``, ``label`` and the image ``path`` (RGB uint8 HxWx3 on read), optionally a
    ground-truth mask per image (uint8 HxW: 0 background, 1 cytoplasm, 2 nucleus).
    ``fingerprint()`` should return a hash of the files read, so the cache sees new data.
    """

    kind = "dataset"
    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {"images": "ImageSet"}


class Splitter(Component):
    """Kind ``splitter``: patient-level cross-validation folds.

    Inputs: ``images: ImageSet``. Outputs: ``split: Split``, one row per (fold, patient) with
    ``partition`` in ``train``/``val``/``test``; a patient is in one partition per fold.
    """

    kind = "splitter"
    inputs: ClassVar[dict[str, str]] = {"images": "ImageSet"}
    outputs: ClassVar[dict[str, str]] = {"split": "Split"}


class Normalizer(Component):
    """Kind ``normalizer``: stain or colour normalization.

    Inputs: ``images: ImageSet`` (built-ins also take ``split: Split?`` to pick a reference
    among training images). Outputs: ``images: ImageSet`` with the same rows, images RGB uint8
    (``ImageSet.derive`` keeps classes, masks and truth while pointing at the new files).
    """

    kind = "normalizer"
    inputs: ClassVar[dict[str, str]] = {"images": "ImageSet"}
    outputs: ClassVar[dict[str, str]] = {"images": "ImageSet"}


class Segmenter(Component):
    """Kind ``segmenter``: white-cell masks.

    Inputs: ``images: ImageSet`` (plus ``split: Split?`` for segmenters that train). Outputs:
    ``masks: MaskSet``, one mask per image: uint8 HxW, 0 background, 1 cytoplasm, 2 nucleus
    (``MaskSet.write`` stores one; ``write_png`` writes any uint8 image).
    """

    kind = "segmenter"
    inputs: ClassVar[dict[str, str]] = {"images": "ImageSet"}
    outputs: ClassVar[dict[str, str]] = {"masks": "MaskSet"}


class Postprocessor(Component):
    """Kind ``postprocessor``: mask clean-up.

    Inputs: ``masks: MaskSet``. Outputs: ``masks: MaskSet`` (holes filled, small objects
    removed, touching cells split, ...), same rows and label values.
    """

    kind = "postprocessor"
    inputs: ClassVar[dict[str, str]] = {"masks": "MaskSet"}
    outputs: ClassVar[dict[str, str]] = {"masks": "MaskSet"}


class CellExtractor(Component):
    """Kind ``cells``: cell instances from images and masks.

    Inputs: ``images: ImageSet`` and ``masks: MaskSet``. Outputs: ``cells: CellSet``, a cell
    table (``cell_id``, ``image_id``, ``patient_id``, ``label``, bbox, centroid, area in
    pixels, ``crop_index``) and square crops (RGB uint8 SxSx3 plus a mask SxS).
    """

    kind = "cells"
    inputs: ClassVar[dict[str, str]] = {"images": "ImageSet", "masks": "MaskSet"}
    outputs: ClassVar[dict[str, str]] = {"cells": "CellSet"}


class FeatureExtractor(Component):
    """Kind ``features``: per-cell features.

    Inputs: ``cells: CellSet`` (per-fold encoders also ``split: Split``). Outputs:
    ``features: FeatureTable``, one row per cell with ``cell_id``, ``image_id``,
    ``patient_id``, ``label`` and the columns listed in ``meta["feature_columns"]`` (float).
    """

    kind = "features"
    inputs: ClassVar[dict[str, str]] = {"cells": "CellSet"}
    outputs: ClassVar[dict[str, str]] = {"features": "FeatureTable"}


class Classifier(Component):
    """Kind ``classifier``: image-, cell- or feature-level classification per fold.

    Inputs: what it classifies (``images: ImageSet``, ``cells: CellSet`` or ``features:
    FeatureTable``) and ``split: Split``. Outputs: ``predictions: Predictions`` for every
    fold's test partition (``id``, ``level``, ``fold``, ``y_true``, ``y_pred``,
    ``prob_<class>``) and ``model: Model``. Model selection uses the validation partition only.
    """

    kind = "classifier"
    inputs: ClassVar[dict[str, str]] = {"features": "FeatureTable", "split": "Split"}
    outputs: ClassVar[dict[str, str]] = {"predictions": "Predictions", "model": "Model"}


class MILModel(Component):
    """Kind ``mil``: one diagnosis per patient from a bag of instances.

    Inputs: ``split: Split`` and instances: ``embeddings: FeatureTable?``, ``features:
    FeatureTable?`` (joined on ``cell_id``) and ``cells: CellSet?`` (crops, centroids, truth).
    Outputs: ``predictions: Predictions`` (level ``patient``), ``model: Model``,
    ``attention: Table`` (one row per test instance: ``patient_id``, ``cell_id``, ``fold``,
    ``score``, ``rank``; a bag's scores sum to one) and ``metrics: Metrics`` (section ``mil``).

    A learned aggregator subclasses :class:`hemaflow.plugins.mil.MILAggregator`, which does all
    of this and asks only for the network (``make_net``, a ``MILNet`` with ``pool(h, mask)``).
    """

    kind = "mil"
    inputs: ClassVar[dict[str, str]] = {"split": "Split", "embeddings": "FeatureTable?", "features": "FeatureTable?",
                                        "cells": "CellSet?"}
    outputs: ClassVar[dict[str, str]] = {"predictions": "Predictions", "model": "Model", "attention": "Table",
                                         "metrics": "Metrics"}


class Evaluator(Component):
    """Kind ``evaluator``: metrics.

    Inputs: ``predictions: Predictions`` (and ``split: Split?``), or ``masks: MaskSet`` and
    ``images: ImageSet`` for segmentation. Outputs: ``metrics: Metrics``, a dict merged into
    the run's ``metrics.json`` by level (``patient``, ``image``, ``cell``, ``segmentation``,
    ``folds``).
    """

    kind = "evaluator"
    inputs: ClassVar[dict[str, str]] = {"predictions": "Predictions", "split": "Split?"}
    outputs: ClassVar[dict[str, str]] = {"metrics": "Metrics"}


class Reporter(Component):
    """Kind ``reporter``: the recipe's ``report: {uses: NAME}``; writes the run's report.

    Called once after every step finished; no inputs, no outputs. Implement :meth:`write`.
    The ``run`` dict it gets:

    - ``name`` (str): the recipe's name; ``recipe`` (dict): the resolved recipe;
      ``recipe_yaml`` (str): ``recipe.resolved.yaml`` as written;
    - ``provenance`` (dict): ``provenance.json``; ``metrics`` (dict): ``metrics.json``;
    - ``predictions``: ``predictions.csv`` as a pandas DataFrame, or None;
    - ``duration_s`` (float), ``started`` (ISO 8601 str), ``run_dir`` (Path);
    - ``steps`` (list of dict): per step ``id``, ``uses``, ``kind``, ``cached`` (bool),
      ``seconds``, ``warnings`` (list of str), ``outputs`` (output name -> one-line summary),
      ``report_dir`` (Path) and ``report_items`` (the step's ``ctx.report`` items: dicts with a
      ``type`` such as ``table``, ``text``, ``figure``, ``gallery``).
    """

    kind = "reporter"

    def write(self, run_dir: Path, run: dict[str, Any]) -> Path:
        """Write the report into ``run_dir`` (``report.html`` for the default) and return its path."""
        raise NotImplementedError(f"{type(self).__name__} must implement write(run_dir, run) -> Path")


class Tracker(Component):
    """Kind ``tracker``: the recipe's ``trackers: {ID: {uses: NAME}}``; logs a finished run
    elsewhere (MLflow, a database).

    Called after the report with the run directory and the same ``run`` dict as
    :class:`Reporter`. Implement :meth:`track`.
    """

    kind = "tracker"

    def track(self, run_dir: Path, run: dict[str, Any]) -> str | None:
        """Log the run; return an id of the logged run where the tracker has one."""
        raise NotImplementedError(f"{type(self).__name__} must implement track(run_dir, run)")


def base_of(kind: str) -> type[Component]:
    """The base class of ``kind`` (``"segmenter"`` -> :class:`Segmenter`)."""
    for spec in KIND_SPECS:
        if spec.name == kind:
            return globals()[spec.base]
    raise KeyError(f"unknown kind {kind!r}")
