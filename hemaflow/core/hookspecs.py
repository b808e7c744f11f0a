"""Every hook hemaflow calls, grouped by stage.

All ``register_*`` hooks are called once, when the plugin manager is first built, with a
single argument ``register``: a callable that takes a component *class* (a subclass of
:class:`hemaflow.core.component.Component` whose ``kind`` matches the hook) and adds it to the
registry under its ``name``. A name registered twice is an error that names both plugins.
Hooks return nothing; they must not mutate anything but the registry through ``register``.

A recipe step ``uses:`` a registered name; the runner instantiates the class with the step's
validated ``with:`` parameters and calls ``run(ctx, **inputs)``. What each kind consumes and
produces (the artifact types) is stated per hook below; a component states the exact types in
its ``inputs`` and ``outputs`` class attributes and the runner checks them before running.

Each kind has a public base class that sets ``kind`` and the usual ``inputs``/``outputs`` and
states them in its docstring: :mod:`hemaflow.core.bases`, importable from :mod:`hemaflow`
(``from hemaflow import Segmenter``). :mod:`hemaflow.core.kinds` is the one table of kind, hook
and base; docs/reference.md lists them all.
"""

from __future__ import annotations

from typing import Callable

from hemaflow.core.markers import hookspec

Register = Callable[[type], None]


# -- artifacts -------------------------------------------------------------------------------
@hookspec
def register_artifact_types(register: Register) -> None:
    """Register :class:`hemaflow.core.artifacts.Artifact` subclasses.

    Args:
        register: call with an Artifact subclass; it is known by its ``type_name``
            (e.g. ``"ImageSet"``). Components name these types in ``inputs``/``outputs``.
    """


# -- data ------------------------------------------------------------------------------------
@hookspec
def register_datasets(register: Register) -> None:
    """Register data-set components (kind ``dataset``).

    A data set takes no inputs and returns an ``ImageSet``: one row per image with
    ``image_id``, ``patient_id``, ``label`` and the image path (RGB uint8 HxWx3 on read), plus an
    optional ground-truth mask (uint8 HxW: 0 background, 1 cytoplasm, 2 nucleus on read).
    Its ``fingerprint()`` returns a hash of the files it reads, so the cache notices new data.
    """


@hookspec
def register_splitters(register: Register) -> None:
    """Register patient-level splitters (kind ``splitter``).

    Input ``images: ImageSet``; output ``Split``: one row per (fold, patient) with a partition
    in ``train``/``val``/``test``. A patient in two partitions of one fold is an error.
    """


# -- images ----------------------------------------------------------------------------------
@hookspec
def register_normalizers(register: Register) -> None:
    """Register stain normalizers (kind ``normalizer``).

    Input ``images: ImageSet`` (and optionally ``split: Split`` to pick a reference from the
    training partition); output ``ImageSet`` with normalized RGB uint8 images, same rows.
    """


@hookspec
def register_segmenters(register: Register) -> None:
    """Register white-cell segmenters (kind ``segmenter``).

    Input ``images: ImageSet`` (plus ``split: Split`` for segmenters that train); output
    ``MaskSet``: one mask per image, uint8 HxW, 0 background, 1 cytoplasm, 2 nucleus.
    """


@hookspec
def register_postprocessors(register: Register) -> None:
    """Register mask post-processors (kind ``postprocessor``).

    Input ``masks: MaskSet``; output ``MaskSet`` (e.g. holes filled, small objects removed,
    touching cells split, instances labelled).
    """


@hookspec
def register_cell_extractors(register: Register) -> None:
    """Register cell-instance extractors (kind ``cells``).

    Inputs ``images: ImageSet`` and ``masks: MaskSet``; output ``CellSet``: a cell table (image,
    cell id, bbox, centroid, area in pixels, ...) and square crops (RGB uint8 SxSx3 + mask SxS).
    """


# -- features and models ---------------------------------------------------------------------
@hookspec
def register_feature_extractors(register: Register) -> None:
    """Register per-cell feature extractors (kind ``features``).

    Input ``cells: CellSet``; output ``FeatureTable``: one row per cell (image id, patient id,
    cell id, label, feature columns), stored as Parquet.
    """


@hookspec
def register_classifiers(register: Register) -> None:
    """Register classifiers (kind ``classifier``): image, cell, tabular or multi-modal.

    Inputs vary (``images``, ``cells``, ``features`` and always ``split: Split``); outputs
    ``predictions: Predictions`` on each fold's test partition and ``model: Model``. Model
    selection uses the validation partition only.
    """


@hookspec
def register_mil_models(register: Register) -> None:
    """Register multiple-instance learning components (kind ``mil``).

    Inputs: instances (``cells: CellSet`` and/or ``features: FeatureTable``) and
    ``split: Split``; outputs patient-level ``predictions: Predictions`` (with per-instance
    attention in the artifact) and ``model: Model``.
    """


# -- evaluation, reporting, execution --------------------------------------------------------
@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators (kind ``evaluator``).

    Inputs ``predictions: Predictions`` (or ``masks`` and ``images`` for segmentation); output
    ``metrics: Metrics``: a dict merged into the run's ``metrics.json`` by level
    (``patient``, ``image``, ``cell``, ``segmentation``, ``folds``).
    """


@hookspec
def register_reporters(register: Register) -> None:
    """Register reporters (kind ``reporter``).

    Called by the runner after all steps with the run directory and every step's report items;
    writes ``report.html`` (self-contained) into the run directory.
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register executors (kind ``executor``): how ``ctx.map`` runs a function over items.

    An executor's ``map(fn, items)`` returns results in item order; ``fn`` is a picklable
    top-level function.
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register run trackers (kind ``tracker``), e.g. MLflow.

    Called after the run with the run directory, flattened resolved recipe and metrics.
    """
