"""Typed artifacts passed between steps, and the generic types the core itself needs.

An artifact lives in a directory (inside a cache entry) and is described by ``meta.json``
there. Paths stored inside an artifact are relative to that directory unless absolute (data
read in place), so cache entries can move atomically.

Science types (ImageSet, MaskSet, CellSet, FeatureTable, Split) are registered by the built-in
plugin :mod:`hemaflow.plugins.artifacts` through the ``register_artifact_types`` hook, exactly
like a third party would register its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pandas as pd

from hemaflow.core import atomic

A = TypeVar("A", bound="Artifact")


class Artifact:
    """Base artifact: a directory with ``meta.json``.

    Subclasses set ``type_name`` and extend :meth:`save` / :meth:`load` for their payload.
    """

    type_name: ClassVar[str] = "Artifact"

    def __init__(self, path: Path | str, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = dict(meta or {})

    def save(self) -> "Artifact":
        """Write the artifact to ``self.path``; return self."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, type=self.type_name)
        # no fsync: an artifact lives in a work directory that the cache commits as a whole
        atomic.write_text(self.path / "meta.json", json.dumps(meta, indent=1, default=str), fsync=False)
        return self

    @classmethod
    def load(cls: type[A], path: Path | str) -> A:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        meta.pop("type", None)
        return cls(path, meta)

    def resolve(self, rel: str | Path) -> Path:
        """Resolve a path stored in the artifact (relative to the artifact directory)."""
        p = Path(rel)
        return p if p.is_absolute() else self.path / p

    def export(self, run_dir: Path, step_id: str) -> None:
        """Copy what users should see into the run directory (default: nothing)."""

    def summary(self) -> str:
        """One short line describing the artifact (printed after a step)."""
        return self.type_name


class TableArtifact(Artifact):
    """An artifact whose payload is one table, stored as ``table.parquet``."""

    type_name = "Table"
    required_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path | str, table: pd.DataFrame | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(path, meta)
        self.table = table if table is not None else pd.DataFrame()

    def check(self) -> None:
        missing = [c for c in self.required_columns if c not in self.table.columns]
        if missing:
            raise ValueError(f"{self.type_name} is missing columns {missing}")

    def save(self) -> "TableArtifact":
        self.check()
        super().save()
        self.table.reset_index(drop=True).to_parquet(self.path / "table.parquet", index=False)
        return self

    @classmethod
    def load(cls, path: Path | str):  # type: ignore[override]
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        meta.pop("type", None)
        table = pd.read_parquet(path / "table.parquet")
        return cls(path, table, meta)

    def __len__(self) -> int:
        return len(self.table)

    def summary(self) -> str:
        return f"{self.type_name} ({len(self.table)} rows)"


class Metrics(Artifact):
    """A metrics dict, merged into the run's ``metrics.json`` (sections by level).

    Tables written beside it and named in ``meta["exported_files"]`` (e.g. an evaluator's
    ``per_image.csv``) are copied into the run directory as ``<step id>-<name>``.
    """

    type_name = "Metrics"

    def __init__(self, path: Path | str, values: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(path, meta)
        self.values = values or {}

    def save(self) -> "Metrics":
        super().save()
        atomic.write_text(self.path / "metrics.json", json.dumps(self.values, indent=1, default=float), fsync=False)
        return self

    @classmethod
    def load(cls, path: Path | str) -> "Metrics":
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        meta.pop("type", None)
        return cls(path, json.loads((path / "metrics.json").read_text()), meta)

    def export(self, run_dir: Path, step_id: str) -> None:
        import shutil

        for name in self.meta.get("exported_files") or []:
            if (self.path / name).is_file():
                shutil.copyfile(self.path / name, Path(run_dir) / f"{step_id}-{Path(name).name}")

    def summary(self) -> str:
        return "Metrics (" + ", ".join(self.values) + ")"


class Predictions(TableArtifact):
    """Predictions: one row per unit with ``id, level, fold, y_true, y_pred, prob_<class>...``.

    ``meta["classes"]`` lists the classes in probability-column order. ``level`` is
    ``patient``, ``image`` or ``cell``. The runner concatenates every Predictions artifact of a
    run into ``predictions.csv``.
    """

    type_name = "Predictions"
    required_columns = ("id", "level", "fold", "y_true", "y_pred")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    def check(self) -> None:
        super().check()
        missing = [f"prob_{c}" for c in self.classes if f"prob_{c}" not in self.table.columns]
        if missing:
            raise ValueError(f"Predictions is missing probability columns {missing}")


class Model(Artifact):
    """A trained model: a directory of files (e.g. ``fold0.safetensors``) described by meta.

    Small tables a model writes beside its checkpoints (per-epoch ``history.csv``, feature
    attention or importance, modality weights) are copied into the run directory as
    ``<step id>-<name>``.
    """

    type_name = "Model"
    exported_files: ClassVar[tuple[str, ...]] = (
        "history.csv", "feature_attention.csv", "feature_importance.csv", "modality_weights.csv")

    def export(self, run_dir: Path, step_id: str) -> None:
        import shutil

        for name in self.exported_files:
            if (self.path / name).exists():
                shutil.copyfile(self.path / name, Path(run_dir) / f"{step_id}-{name}")


CORE_TYPES: tuple[type[Artifact], ...] = (Artifact, TableArtifact, Metrics, Predictions, Model)
