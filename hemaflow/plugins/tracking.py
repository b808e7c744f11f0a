"""Run trackers: the ``mlflow`` tracker logs a finished run to MLflow.

Off by default; a recipe turns it on with::

    trackers:
      mlflow: {uses: mlflow, with: {experiment: ablations}}

It logs the flattened resolved recipe as params (``steps.mil.with.epochs``...), every numeric
metric as a metric (``patient.balanced_accuracy``, ``patient.balanced_accuracy_ci_lo``,
``folds.0.patient.accuracy``...), and ``report.html``, ``metrics.json``, the resolved recipe
and the provenance as artifacts. With no ``tracking_uri`` it writes a local file store next to
the run directory (``runs/mlruns`` for the default ``runs/<name>-<time>/``); no server needed.

MLflow is an optional dependency: ``pip install 'hemaflow[mlflow]'`` (mlflow-skinny).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from hemaflow.core.bases import Tracker
from hemaflow.core.diff import flatten
from hemaflow.core.errors import PluginError
from hemaflow.core.markers import hookimpl

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


def mlflow_key(key: str) -> str:
    """A key MLflow accepts (letters, digits, ``_ - . /`` and spaces), at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", key)[:250]


def recipe_params(recipe: dict[str, Any]) -> dict[str, str]:
    """Flattened resolved recipe as MLflow params (values as text, lists as JSON)."""
    out = {}
    for k, v in flatten(recipe).items():
        text = json.dumps(v, default=str) if isinstance(v, (list, dict)) or v is None else str(v)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        out[mlflow_key(k)] = text
    return out


def numeric_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a ``metrics.json`` dict under a dotted key.

    CIs ``[lo, hi]`` become ``<key>_lo`` / ``<key>_hi``; the ``folds`` list becomes
    ``folds.<fold>.<level>.<metric>``; other lists (confusion matrices) are left out.
    """
    out: dict[str, float] = {}
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            out.update(numeric_metrics(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(metrics, list):
        if len(metrics) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in metrics) \
                and prefix.endswith("_ci"):
            out[f"{prefix}_lo"], out[f"{prefix}_hi"] = float(metrics[0]), float(metrics[1])
        elif metrics and all(isinstance(x, dict) and "fold" in x for x in metrics):
            for x in metrics:
                rest = {k: v for k, v in x.items() if k != "fold"}
                out.update(numeric_metrics(rest, f"{prefix}.{x['fold']}"))
    elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool) and math.isfinite(metrics):
        out[prefix] = float(metrics)
    return {mlflow_key(k): v for k, v in out.items()}


@contextlib.contextmanager
def _allow_file_store(uri: str) -> Iterator[None]:
    """MLflow 3 keeps its file store in maintenance mode behind an opt-in; opt in for file: URIs only."""
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


class MlflowTracker(Tracker):
    """Log a finished run (recipe params, metrics, report) to MLflow."""

    kind = "tracker"
    name = "mlflow"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "tracking_uri": {"type": ["string", "null"], "default": None,
                             "description": "MLflow tracking URI: a server (http://host:5000), a file: URI or a "
                                            "directory path; null: $MLFLOW_TRACKING_URI if set, else a file store "
                                            "'mlruns' beside the run directory (runs/mlruns)"},
            "experiment": {"type": "string", "minLength": 1, "default": "hemaflow",
                           "description": "MLflow experiment name (created if missing)"},
            "run_name": {"type": "string", "default": "",
                         "description": "MLflow run name; empty: the run directory's name"},
            "artifacts": {"type": "array", "items": {"type": "string"},
                          "default": ["report.html", "metrics.json", "recipe.resolved.yaml", "provenance.json"],
                          "description": "files of the run directory to upload (missing ones are skipped)"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}, "default": {},
                     "description": "extra MLflow tags"},
        },
        "additionalProperties": False,
    }

    def check_params(self) -> list[tuple[str, str]]:
        """MLflow not installed: said by ``validate``, before the pipeline runs."""
        from hemaflow.core.validate import module_available

        if module_available("mlflow"):
            return []
        return [("", "the mlflow tracker needs MLflow, which is not installed: pip install 'hemaflow[mlflow]' "
                     "(or pip install mlflow-skinny)")]

    def tracking_uri(self, run_dir: Path) -> str:
        uri = self.params.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or ""
        if not uri:
            return (Path(run_dir).resolve().parent / "mlruns").as_uri()
        if "://" not in uri and not uri.startswith(("file:", "databricks")):
            return Path(uri).resolve().as_uri()  # a plain directory path
        return uri

    def track(self, run_dir: Path, run: dict[str, Any]) -> str:
        """Log ``run`` (the dict the runner hands reporters) to MLflow; return the MLflow run id.

        Also writes ``run_dir/mlflow.json`` with the tracking URI, experiment and run id.
        """
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise PluginError("the mlflow tracker needs MLflow, which is not installed: "
                              "pip install 'hemaflow[mlflow]' (or pip install mlflow-skinny)") from None
        run_dir = Path(run_dir)
        uri = self.tracking_uri(run_dir)
        with _allow_file_store(uri):
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(self.params["experiment"])
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.params["experiment"])
            recipe = run.get("recipe") or {}
            tags = {"hemaflow.recipe": str(run.get("name") or recipe.get("name", "")),
                    "hemaflow.run_dir": str(run_dir.resolve()),
                    "hemaflow.status": str((run.get("provenance") or {}).get("status", "ok")),
                    **self.params.get("tags", {})}
            if recipe.get("description"):
                tags["mlflow.note.content"] = str(recipe["description"])
            mrun = client.create_run(exp_id, run_name=self.params.get("run_name") or run_dir.name, tags=tags)
            rid = mrun.info.run_id
            try:
                now = int(time.time() * 1000)
                params = [Param(k, v) for k, v in recipe_params(recipe).items()]
                metrics = [Metric(k, v, now, 0) for k, v in numeric_metrics(run.get("metrics") or {}).items()]
                if run.get("duration_s") is not None:
                    metrics.append(Metric("run.duration_s", float(run["duration_s"]), now, 0))
                # servers take at most 100 params / 1000 metrics per batch
                for i in range(0, len(params), 100):
                    client.log_batch(rid, params=params[i:i + 100])
                for i in range(0, len(metrics), 1000):
                    client.log_batch(rid, metrics=metrics[i:i + 1000])
                for name in self.params.get("artifacts", []):
                    if (run_dir / name).is_file():
                        client.log_artifact(rid, str(run_dir / name))
                client.set_terminated(rid, "FINISHED")
            except BaseException:
                client.set_terminated(rid, "FAILED")
                raise
        (run_dir / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "experiment": self.params["experiment"],
                                                         "experiment_id": exp_id, "run_id": rid}, indent=1))
        return rid


@hookimpl
def register_trackers(register: Any) -> None:
    register(MlflowTracker)
