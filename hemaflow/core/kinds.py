"""The kinds of component: the one list, with the hook that registers each and its base class.

Everything that needs the list of kinds imports it from here (the registry, the recipe
validator, :mod:`hemaflow.core.component`, the reference docs' test). This module imports
nothing from hemaflow, so any module can import it. The base classes themselves live in
:mod:`hemaflow.core.bases` (re-exported from :mod:`hemaflow`).

=============  ===========================  =================  ========================
kind           hook                         base class         used in a recipe as
=============  ===========================  =================  ========================
dataset        register_datasets            Dataset            a step
splitter       register_splitters           Splitter           a step
normalizer     register_normalizers         Normalizer         a step
segmenter      register_segmenters          Segmenter          a step
postprocessor  register_postprocessors      Postprocessor      a step
cells          register_cell_extractors     CellExtractor      a step
features       register_feature_extractors  FeatureExtractor   a step
classifier     register_classifiers         Classifier         a step
mil            register_mil_models          MILModel           a step
evaluator      register_evaluators          Evaluator          a step
reporter       register_reporters           Reporter           ``report:``
executor       register_executors           Executor           ``executor:``
tracker        register_trackers            Tracker            ``trackers:``
=============  ===========================  =================  ========================
"""

from __future__ import annotations

from typing import NamedTuple


class KindSpec(NamedTuple):
    """One kind of component."""

    name: str
    hook: str  # the hookspec in hemaflow.core.hookspecs that registers it
    base: str  # the base class's name in hemaflow.core.bases
    step: bool  # True: used as a recipe step; False: the recipe's executor/report/trackers


KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec("dataset", "register_datasets", "Dataset", True),
    KindSpec("splitter", "register_splitters", "Splitter", True),
    KindSpec("normalizer", "register_normalizers", "Normalizer", True),
    KindSpec("segmenter", "register_segmenters", "Segmenter", True),
    KindSpec("postprocessor", "register_postprocessors", "Postprocessor", True),
    KindSpec("cells", "register_cell_extractors", "CellExtractor", True),
    KindSpec("features", "register_feature_extractors", "FeatureExtractor", True),
    KindSpec("classifier", "register_classifiers", "Classifier", True),
    KindSpec("mil", "register_mil_models", "MILModel", True),
    KindSpec("evaluator", "register_evaluators", "Evaluator", True),
    KindSpec("reporter", "register_reporters", "Reporter", False),
    KindSpec("executor", "register_executors", "Executor", False),
    KindSpec("tracker", "register_trackers", "Tracker", False),
)

KINDS: tuple[str, ...] = tuple(k.name for k in KIND_SPECS)
KIND_HOOKS: dict[str, str] = {k.name: k.hook for k in KIND_SPECS}  # kind -> hook that registers it
STEP_KINDS: tuple[str, ...] = tuple(k.name for k in KIND_SPECS if k.step)  # kinds a recipe step may use
