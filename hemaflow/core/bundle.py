"""Bundles: a finished run's fitted inference path as one portable folder (or zip).

``hemaflow export RUN_DIR --out model.hfb [--fold K]`` collects, from the run's cache entries
(``provenance.json`` names each step's cache key), every part the inference path of fold ``K``
fitted (default: the refit fold when the recipe's split has ``refit: true``, a model of every
training patient for the folds' validation-chosen epochs; else the first fold); ``hemaflow predict BUNDLE DATA --out DIR`` runs that path on new patients through the
normal :class:`~hemaflow.core.runner.Runner`, on a recipe generated from the bundle in which
each fitted step reads its stored state instead of fitting (docs/bundles.md)::

    model.hfb/
      bundle.json       format, hemaflow and component versions, fold, classes, decision rule,
                        training data fingerprint, expected images, every part with its SHA-256
      recipe.json       the inference path (data -> normalize -> segment -> cells -> features ->
                        apply_bundle); ``@bundle`` stands for the bundle's folder
      model_card.md     data, metrics with CIs, intended use, per-cohort results
      parts/<step>/     stain reference image + state.json, encoder.safetensors,
                        net.safetensors + state.safetensors (scaler, PCA, OOD statistics)

Tensors are safetensors, everything else JSON (or the reference PNG): no pickles. This module
applies a bundle (:func:`predict`) and holds the two commands; the format and its checks are
:mod:`hemaflow.core.bundle_format`, the export :mod:`hemaflow.core.bundle_export` (both
re-exported here).

Example::

    from hemaflow.core.bundle import export_bundle, predict
    export_bundle(Path("runs/mil"), Path("model.hfb"), fold=0)
    predict(Path("model.hfb"), "new_patients/", Path("runs/new"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hemaflow.core.bundle_export import _image_shape, export_bundle, model_card  # noqa: F401  (public here too)
from hemaflow.core.bundle_format import (BUNDLE_REF, FORMAT, FORMAT_VERSION, STAIN, STATELESS_KINDS,  # noqa: F401
                                         Bundle, BundleVersionWarning, load_bundle, open_bundle, seal)
from hemaflow.core.errors import DataError, UsageError


# -- apply ----------------------------------------------------------------------------------------
def _substitute(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value.startswith(BUNDLE_REF):
        return str(root) + value[len(BUNDLE_REF):]
    if isinstance(value, dict):
        return {k: _substitute(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, root) for v in value]
    return value


def data_step(data: str | Path) -> dict[str, Any]:
    """The data step for ``hemaflow predict DATA``: a YAML file with a step (``uses:``/``with:``),
    or a folder of patients (``<DATA>/<patient>/<images>``, labels.csv optional)."""
    p = Path(data).expanduser()
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        step = yaml.safe_load(p.read_text())
        if not isinstance(step, dict) or "uses" not in step:
            raise UsageError(f"{p}: a data step needs `uses:` (e.g. uses: patient_folders, with: {{root: ...}})")
        return {"uses": step["uses"], "with": dict(step.get("with") or {})}
    if p.is_dir():
        return {"uses": "patient_folders", "with": {"root": str(p.resolve())}}
    raise UsageError(f"{p}: not a folder of patients nor a data step YAML file")


def apply_recipe(bundle: Bundle, data: dict[str, Any], *, version_policy: str = "error") -> dict[str, Any]:
    """The recipe that runs the bundle's inference path on ``data`` (a data step)."""
    r = bundle.recipe
    steps = {r["data_step"]: {"uses": data["uses"], "with": data.get("with", {})}}
    for sid, spec in r["steps"].items():
        steps[sid] = _substitute(spec, bundle.root.resolve())
        if spec.get("uses") == "apply_bundle" and version_policy != "error":
            steps[sid]["with"]["version_policy"] = version_policy
    return {"name": r["name"], "description": f"apply the bundle {bundle.root.name} (fold {bundle.info['fold']})",
            "seed": r["seed"], "device": r["device"], "executor": {"uses": "serial"}, "steps": steps,
            "report": r["report"]}


def _check_images(bundle: Bundle, images: Any) -> None:
    exp = bundle.info.get("expects") or {}
    got = _image_shape(images)
    if exp.get("target_um_per_px"):
        # the path resamples every crop to one physical scale: sizes may differ, the pixel size must be known
        if not got.get("um_per_px"):
            raise DataError(images.path, f"the bundle resamples cells to {exp['target_um_per_px']} um/px and needs "
                                         f"the images' pixel size: give the data an um_per_px column")
        return
    if not exp.get("width_px") or not got.get("width_px"):
        return
    for dim in ("width_px", "height_px"):
        if abs(got[dim] - exp[dim]) > 0.25 * exp[dim]:
            raise DataError(images.path, f"the new images are {got['width_px']}x{got['height_px']} px (median), the "
                                         f"bundle expects fields of {exp['width_px']}x{exp['height_px']} px"
                                         + (f" at {exp['um_per_px']} um/px" if exp.get("um_per_px") else "")
                                         + ": bring the images to the training scale (same magnification and size)")
    um, um_new = exp.get("um_per_px"), got.get("um_per_px")
    if um and um_new and abs(um_new - um) > 0.1 * um:
        raise DataError(images.path, f"the new images have {got['um_per_px']} um/px, the bundle expects "
                                     f"{exp['um_per_px']} um/px")


def predict(bundle_path: Path, data: str | Path | dict[str, Any], out: Path, *, use_cache: bool = True,
            console: Any = None, version_policy: str = "error") -> Any:
    """Run a bundle's inference path on new data; return the :class:`RunOutcome`.

    ``data``: a folder of patients, a data step YAML file, or a data step dict.
    """
    from hemaflow.core.plugins import get_registry
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.runner import Runner
    from hemaflow.core.validate import resolve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".bundle"
    work.mkdir(exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleVersionWarning)  # recorded by the apply step instead
        bundle = open_bundle(Path(bundle_path), work, version_policy=version_policy)
    step = data if isinstance(data, dict) else data_step(data)
    if step["uses"] == "patient_folders" and not step["with"].get("labels"):
        root = Path(step["with"]["root"])
        if not (root / "labels.csv").exists():  # new patients without a diagnosis
            import pandas as pd

            pats = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
            pd.DataFrame({"patient": pats, "diagnosis": "unknown"}).to_csv(work / "labels.csv", index=False)
            step["with"]["labels"] = str(work / "labels.csv")
    recipe = apply_recipe(bundle, step, version_policy=version_policy)
    rpath = work / "apply.recipe.yaml"
    rpath.write_text(yaml.safe_dump(recipe, sort_keys=False))
    resolved = resolve(load_recipe(rpath), get_registry())
    runner = Runner(resolved, get_registry(), console=console, use_cache=use_cache)
    # the data step first: a bundle applied to images of another size or scale says what it expects
    spec = next(s for s in resolved.steps if s.id == bundle.recipe["data_step"])
    res = runner._run_step(spec, {})
    _check_images(bundle, res.outputs["images"])
    return runner.run(out)


# -- command line ---------------------------------------------------------------------------------
def cmd_export(args: Any) -> int:
    out = export_bundle(Path(args.run_dir), Path(args.out), fold=args.fold)
    print(f"wrote {out}")
    return 0


def cmd_predict(args: Any) -> int:
    from hemaflow.core.cli import _console

    outcome = predict(Path(args.bundle), args.data, Path(args.out), use_cache=not args.no_cache, console=_console(),
                      version_policy=args.version_policy)
    flagged = []
    for res in outcome.steps:
        for art in res.outputs.values():
            if getattr(art, "values", None) and "bundle" in art.values:
                flagged = art.values["bundle"]["ood_flagged"]
    print(f"wrote {outcome.run_dir}/predictions.csv" + (f"; {len(flagged)} patient(s) out of distribution: "
                                                         f"{', '.join(flagged)}" if flagged else ""))
    return 0


def add_parsers(sub: Any) -> None:
    """``hemaflow export`` and ``hemaflow predict``."""
    e = sub.add_parser("export", help="write a finished run's fitted inference path as a bundle (folder or .zip)")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder (e.g. model.hfb) or a .zip")
    e.add_argument("--fold", type=int, default=None,
                   help="fold whose fitted parts to export (default: the refit fold when the split has refit: true, "
                        "else the first)")
    e.set_defaults(func=cmd_export)
    p = sub.add_parser("predict", help="apply a bundle to new patients (a folder of patients or a data step YAML)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("data", metavar="DATA", help="<DATA>/<patient>/<images> (labels.csv optional), or a YAML data step")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory for predictions.csv and report.html")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the shared step cache")
    p.add_argument("--version-policy", choices=("error", "warn"), default="error",
                   help="a bundle of another hemaflow major.minor: refuse it (default) or apply it with a "
                        "recorded warning")
    p.set_defaults(func=cmd_predict)
