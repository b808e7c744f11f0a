"""hemaflow: a plugin-based workflow engine for leukemia classification from blood smears."""

from __future__ import annotations

__version__ = "0.1.0"

from hemaflow.core.markers import hookimpl, hookspec  # noqa: E402

# the base class of every kind (hemaflow.core.bases), importable as `from hemaflow import Segmenter`;
# loaded on first use, so `import hemaflow` stays cheap
_BASES = ("CellExtractor", "Classifier", "Component", "Dataset", "Evaluator", "Executor", "FeatureExtractor",
          "MILModel", "Normalizer", "Postprocessor", "Reporter", "RunContext", "Segmenter", "Splitter", "Tracker")

__all__ = ["__version__", "hookimpl", "hookspec", *_BASES]


def __getattr__(name: str):
    if name in _BASES:
        from hemaflow.core import bases, component

        return getattr(bases, name, None) or getattr(component, name)
    raise AttributeError(f"module 'hemaflow' has no attribute {name!r}")
