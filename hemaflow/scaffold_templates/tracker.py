"""A hemaflow tracker: one JSON line per finished run, appended to a file."""

from __future__ import annotations

import json
from pathlib import Path

from hemaflow import Tracker, hookimpl


class TemplateComponent(Tracker):
    """Append ``{name, started, duration_s, run_dir, metrics}`` of every run to a JSON-lines file.

    ``path`` null: ``runs.jsonl`` beside the run directory. Returns the line number as the run id.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"path": {"type": ["string", "null"], "default": None}},
        "additionalProperties": False,
    }

    def track(self, run_dir, run):
        path = Path(self.params["path"]) if self.params["path"] else Path(run_dir).resolve().parent / "runs.jsonl"
        line = {"name": run.get("name"), "started": run.get("started"), "duration_s": run.get("duration_s"),
                "run_dir": str(run_dir), "metrics": run.get("metrics") or {}}
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")
        return str(sum(1 for _ in path.open(encoding="utf-8")))


@hookimpl
def register_trackers(register):
    register(TemplateComponent)
