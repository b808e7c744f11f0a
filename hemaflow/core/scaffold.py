"""``hemaflow new-plugin NAME --kind KIND``: write a plugin package that installs and passes its tests.

The package (``hemaflow-NAME/``) holds a ``pyproject.toml`` with the ``hemaflow`` entry point, a
working component of the kind (copied from :mod:`hemaflow.scaffold_templates`), a test that runs
the conformance kit on it, a recipe that uses it and a README. Nothing is overwritten: a
non-empty target folder is a usage error.

Example::

    >>> import tempfile
    >>> from hemaflow.core.scaffold import new_plugin
    >>> pkg = new_plugin("lab-otsu", "segmenter", tempfile.mkdtemp())
    >>> pkg.name, sorted(p.name for p in pkg.iterdir())
    ('hemaflow-lab-otsu', ['README.md', 'hemaflow_lab_otsu', 'pyproject.toml', 'recipe.yaml', 'tests'])
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path

from hemaflow.core.errors import UsageError
from hemaflow.core.kinds import KIND_SPECS, KINDS

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
TEMPLATE_CLASS = "TemplateComponent"
TEMPLATE_NAME = "template_component"


class Names:
    """The names derived from ``NAME``: distribution, package, component, class, entry point."""

    def __init__(self, name: str, kind: str) -> None:
        raw = name.strip()
        if not NAME_RE.fullmatch(raw):
            raise UsageError(f"plugin name {name!r} must be lower case letters and digits, words joined by - or _ "
                             f"(e.g. lab-otsu)")
        base = raw[len("hemaflow-"):] if raw.startswith(("hemaflow-", "hemaflow_")) else raw
        if not base:
            raise UsageError(f"plugin name {name!r} needs a word after 'hemaflow-'")
        self.kind = kind
        self.component = base.replace("-", "_")
        self.distribution = f"hemaflow-{base.replace('_', '-')}"
        self.package = f"hemaflow_{self.component}"
        self.cls = "".join(w.capitalize() for w in self.component.split("_"))
        self.entry_point = self.component


def kind_hook(kind: str) -> str:
    return next(s.hook for s in KIND_SPECS if s.name == kind)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown kind {kind!r}{hint} (kinds: {', '.join(KINDS)})")


def component_source(names: Names) -> str:
    """The template module of the kind with the class and component renamed."""
    text = resources.files("hemaflow.scaffold_templates").joinpath(f"{names.kind}.py").read_text(encoding="utf-8")
    return text.replace(TEMPLATE_CLASS, names.cls).replace(TEMPLATE_NAME, names.component)


def pyproject(names: Names) -> str:
    from hemaflow import __version__

    return f'''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{names.distribution}"
version = "0.1.0"
description = "A hemaflow {names.kind} plugin: {names.component}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["hemaflow>={__version__}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# hemaflow finds the plugin through this entry point: its module's register_* hooks register the component
[project.entry-points.hemaflow]
{names.entry_point} = "{names.package}.plugin"

[tool.setuptools]
packages = ["{names.package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''


def test_source(names: Names) -> str:
    return f'''"""{names.cls} against hemaflow's conformance kit: one test per check (hemaflow.testing)."""

from __future__ import annotations

from hemaflow.testing import parametrize_with_checks

from {names.package}.plugin import {names.cls}


@parametrize_with_checks([{names.cls}])
def test_conformance(check):
    check()


def test_registered_through_the_entry_point():
    """Installed (pip install -e .), hemaflow finds the component through the `hemaflow` entry point."""
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    components = build_registry(make_plugin_manager()).components["{names.kind}"]
    assert "{names.component}" in components, "hemaflow does not see the plugin: install it first (pip install -e .)"
    assert components["{names.component}"].cls is {names.cls}
    assert components["{names.component}"].distribution == "{names.distribution}"
'''


_BASE_STEPS = {
    "data": "uses: synthetic_smears\n    with: {patients_per_class: 5, images_per_patient: 1, image_size: 128}",
    "split": "uses: holdout\n    inputs: {images: data}",
    "segment": "uses: ground_truth\n    inputs: {images: data}",
    "cells": "uses: cell_crops\n    inputs: {images: data, masks: segment}\n    with: {crop_size: 48}",
    "features": "uses: cell_features\n    inputs: {cells: cells}",
    "classify": "uses: sklearn_classifier\n    inputs: {features: features, split: split}",
    "evaluate": "uses: classification\n    inputs: {predictions: classify}\n    with: {n_bootstrap: 50}",
}


def recipe(names: Names) -> str:
    """A recipe on the built-in synthetic smears with the new component in its place."""
    steps = dict(_BASE_STEPS)
    n, kind = names.component, names.kind
    top = ""
    if kind == "dataset":
        steps["data"] = f"uses: {n}\n    with: {{patients_per_class: 5, images_per_patient: 1, image_size: 96}}"
    elif kind == "splitter":
        steps["split"] = f"uses: {n}\n    inputs: {{images: data}}"
    elif kind == "normalizer":
        steps = {"data": steps["data"], "split": steps["split"], "normalize": f"uses: {n}\n    inputs: {{images: data}}",
                 **{k: v for k, v in steps.items() if k not in ("data", "split")}}
        steps["cells"] = steps["cells"].replace("images: data", "images: normalize")
    elif kind == "segmenter":
        steps["segment"] = f"uses: {n}\n    inputs: {{images: data}}"
        steps["segmentation"] = "uses: segmentation\n    inputs: {masks: segment, images: data}"
    elif kind == "postprocessor":
        items = list(steps.items())
        at = [k for k, _ in items].index("segment") + 1
        steps = dict(items[:at] + [("postprocess", f"uses: {n}\n    inputs: {{masks: segment}}")] + items[at:])
        steps["cells"] = steps["cells"].replace("masks: segment", "masks: postprocess")
    elif kind == "cells":
        steps["cells"] = f"uses: {n}\n    inputs: {{images: data, masks: segment}}"
    elif kind == "features":
        steps["features"] = f"uses: {n}\n    inputs: {{cells: cells}}"
    elif kind == "classifier":
        steps["classify"] = f"uses: {n}\n    inputs: {{features: features, split: split}}"
    elif kind == "mil":
        steps.pop("classify")
        steps = {**{k: v for k, v in steps.items() if k != "evaluate"},
                 "mil": f"uses: {n}\n    inputs: {{features: features, split: split}}",
                 "evaluate": steps["evaluate"].replace("predictions: classify", "predictions: mil")}
    elif kind == "evaluator":
        steps["evaluate"] = f"uses: {n}\n    inputs: {{predictions: classify}}"
    elif kind == "reporter":
        top = f"report: {{uses: {n}}}\n"
    elif kind == "executor":
        top = f"executor: {{uses: {n}}}\n"
    elif kind == "tracker":
        top = f"trackers:\n  log: {{uses: {n}}}\n"
    body = "".join(f"  {sid}:\n    {spec}\n" for sid, spec in steps.items())
    return (f"name: {n}_demo\n"
            f"description: built-in synthetic smears through the {kind} '{n}' of {names.distribution}\n"
            f"seed: 0\ndevice: cpu\n{top}steps:\n{body}")


def readme(names: Names) -> str:
    return f"""# {names.distribution}

A hemaflow plugin with one {names.kind} component, `{names.component}`
(`{names.package}/plugin.py`, class `{names.cls}`), registered through the `hemaflow` entry point in
`pyproject.toml` by its `{kind_hook(names.kind)}` hook. Written by `hemaflow new-plugin`.

```bash
pip install -e .                      # hemaflow now lists it: hemaflow plugins | grep {names.component}
python -m pytest                      # the conformance kit: one test per check (hemaflow.testing)
hemaflow validate recipe.yaml         # the recipe that uses it
hemaflow run recipe.yaml --out runs/demo
```

Change `run()` to do your own work and keep the tests passing. Bump `version` whenever results
change: it is part of the step's cache key. Every parameter in `schema` needs a default (or must
be required). `docs/plugins.md` in hemaflow lists what the conformance kit checks.
"""


def new_plugin(name: str, kind: str, out: Path | str = ".") -> Path:
    """Write the package for plugin ``name`` of ``kind`` below ``out`` and return its folder.

    Raises:
        UsageError: a bad name or kind, a name taken by a built-in component of the kind, or a
            target folder that exists and is not empty.
    """
    check_kind(kind)
    names = Names(name, kind)
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    taken = build_registry(make_plugin_manager(entry_points=False)).components[kind]
    if names.component in taken:
        raise UsageError(f"a built-in {kind} is already called {names.component!r}; choose another NAME")
    root = Path(out).expanduser() / names.distribution
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root} already exists and is not empty; choose another NAME or --out")
    files = {
        "pyproject.toml": pyproject(names),
        "README.md": readme(names),
        "recipe.yaml": recipe(names),
        f"{names.package}/__init__.py": f'"""{names.distribution}: a hemaflow {kind} plugin."""\n',
        f"{names.package}/plugin.py": component_source(names),
        "tests/test_conformance.py": test_source(names),
    }
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {root}: {exc.strerror or exc}") from None
    return root
