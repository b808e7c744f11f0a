"""``hemaflow export``: collect a finished run's fitted inference path (fold ``K`` or the refit)
from its cache entries into a bundle folder or zip, with its ``recipe.json`` and model card
(the format: :mod:`hemaflow.core.bundle_format`; docs/bundles.md)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hemaflow.core.bundle_format import BUNDLE_REF, FORMAT, FORMAT_VERSION, STAIN, STATELESS_KINDS, seal
from hemaflow.core.errors import DataError, UsageError
from hemaflow.lib.metrics import format_metric


def _run_steps(run_dir: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    from hemaflow.core.plugins import get_registry
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.validate import resolve

    prov_path = run_dir / "provenance.json"
    if not prov_path.is_file():
        raise DataError(run_dir, "not a run directory (no provenance.json)")
    prov = json.loads(prov_path.read_text())
    if prov.get("status") != "ok":
        raise DataError(prov_path, f"the run did not finish (status {prov.get('status')!r}); export a finished run")
    resolved = resolve(load_recipe(run_dir / "recipe.resolved.yaml"), get_registry())
    mpath = run_dir / "metrics.json"
    return prov, resolved, json.loads(mpath.read_text()) if mpath.exists() else {}


def _ancestors(specs: dict[str, Any], target: str) -> list[str]:
    need, todo = set(), [target]
    while todo:
        s = todo.pop()
        if s in need:
            continue
        need.add(s)
        todo += [src for src, _ in specs[s].inputs.values()]
    return [s for s in specs if s in need]


def _image_shape(images: Any) -> dict[str, Any]:
    """Median field size (from file headers, at most 50 images) and pixel size of an ImageSet."""
    import numpy as np
    from PIL import Image

    t = images.table
    sides = []
    for _, r in t.head(50).iterrows():
        try:
            with Image.open(images.image_path(r)) as im:
                sides.append(im.size)
        except OSError:
            continue
    out: dict[str, Any] = {}
    if sides:
        out["width_px"] = int(np.median([s[0] for s in sides]))
        out["height_px"] = int(np.median([s[1] for s in sides]))
    if "um_per_px" in t.columns:
        v = np.asarray(t["um_per_px"], float)
        if np.isfinite(v).any():
            out["um_per_px"] = float(np.nanmedian(v))
    return out


def export_bundle(run_dir: Path, out: Path, fold: int | None = None) -> Path:
    """Write the bundle of fold ``fold`` (default: the MIL step's first fold) of a finished run.

    Raises:
        DataError: not a finished run, a cache entry gone, a step whose fitted state a bundle
            cannot carry (named), a fold the run did not train.
    """
    import hemaflow
    from hemaflow.core.cache import EntryDamaged, StepCache, default_cache_dir
    from hemaflow.lib.mil_bundle import ENCODER_TRAIN_ONLY, export_encoder, export_mil

    run_dir, out = Path(run_dir), Path(out)
    prov, resolved, metrics = _run_steps(run_dir)
    specs = {s.id: s for s in resolved.steps}
    mils = [s.id for s in resolved.steps if s.kind == "mil"]
    if len(mils) != 1:
        raise DataError(run_dir / "recipe.resolved.yaml", f"a bundle needs exactly one MIL step; the run has {mils}")
    mil_id = mils[0]
    keys = {s["id"]: s["cache_key"] for s in prov.get("steps", [])}
    cache = StepCache(Path(prov.get("cache") or default_cache_dir()))
    from hemaflow.core.plugins import get_registry

    reg = get_registry()
    loaded: dict[str, dict[str, Any]] = {}

    def outputs(step: str) -> dict[str, Any]:
        if step not in loaded:
            key = keys.get(step)
            try:
                found = bool(key) and cache.lookup(key) is not None
                if found:
                    loaded[step] = {n: reg.artifact_type(t).load(p) for n, (t, p) in cache.outputs(key).items()}
            except (EntryDamaged, OSError, ValueError) as exc:
                raise DataError(cache.root, f"the cache entry of step {step!r} ({key[:12]}) is damaged ({exc}); "
                                            f"rerun the recipe, then export") from None
            if not found:
                raise DataError(cache.root, f"the cache entry of step {step!r} ({(key or '?')[:12]}) is gone (pruned, "
                                            f"or another cache); rerun the recipe, then export")
        return loaded[step]

    model_meta = outputs(mil_id)["model"].meta
    folds = [int(f) for f in model_meta.get("folds", [])]
    refit_fold = model_meta.get("refit_fold")
    if fold is None and folds:
        fold = int(refit_fold) if refit_fold is not None else folds[0]
    if fold not in folds:
        raise UsageError(f"--fold {fold}: the run's MIL step trained folds {folds}"
                         + (f" ({refit_fold} is the refit)" if refit_fold is not None else ""))
    is_refit = refit_fold is not None and fold == int(refit_fold)

    tmp = Path(tempfile.mkdtemp(prefix=".hfb-", dir=out.parent if out.parent.exists() else None))
    try:
        parts_dir = tmp / "parts"
        steps: dict[str, Any] = {}
        info_parts: dict[str, Any] = {}
        components: dict[str, Any] = {}
        data_id = None
        expects: dict[str, Any] = {}
        for sid in _ancestors(specs, mil_id):
            spec = specs[sid]
            comp = spec.cls(**spec.params)
            components[sid] = {"component": spec.uses, "version": getattr(spec.cls, "version", "?")}
            inputs = {n: f"{src}.{o}" for n, (src, o) in spec.inputs.items()
                      if specs[src].kind != "splitter"}
            new = {"uses": spec.uses, "inputs": inputs, "with": copy.deepcopy(spec.params)}
            if spec.kind == "dataset":
                data_id = sid
                expects = _image_shape(outputs(sid)["images"])
                continue
            if spec.kind == "splitter":
                continue
            dest = parts_dir / sid
            if spec.uses in STAIN:
                images = outputs(sid)["images"]
                ref = Path(images.meta["stain_reference"])
                if not ref.is_file():
                    raise DataError(ref, f"the stain reference of step {sid!r} is gone; the bundle needs it")
                dest.mkdir(parents=True, exist_ok=True)
                name = "reference" + (ref.suffix or ".png")
                shutil.copyfile(ref, dest / name)
                (dest / "state.json").write_text(json.dumps(images.meta.get("stain_state"), indent=1))
                new["with"]["reference"] = f"{BUNDLE_REF}/parts/{sid}/{name}"
                info_parts[sid] = {"component": spec.uses, "files": [name, "state.json"],
                                   "reference_from": images.meta.get("stain_reference_from")}
            elif spec.uses == "instance_encoder":
                name = export_encoder(comp, outputs(sid), fold, dest)
                new["with"]["pretrain"] = "none"
                new["with"]["pretrained"] = f"{BUNDLE_REF}/parts/{sid}/{name}"
                for k in ENCODER_TRAIN_ONLY:
                    new["with"].pop(k, None)
                info_parts[sid] = {"component": spec.uses, "files": [name], "fold": fold,
                                   "pretrain": spec.params.get("pretrain"), "backbone": spec.params.get("backbone"),
                                   "image_size": spec.params.get("image_size")}
            elif sid == mil_id:
                ins = {n: outputs(src)[o] for n, (src, o) in spec.inputs.items()}
                info_parts[sid] = export_mil(sid, comp, outputs(sid), ins, fold, dest)
                new = {"uses": "apply_bundle", "inputs": inputs,
                       "with": {"bundle": BUNDLE_REF, "step": sid}}
            elif (spec.kind in STATELESS_KINDS and "Model" in spec.cls.outputs.values()
                  and not spec.params.get("weights")):
                raise DataError(run_dir / "recipe.resolved.yaml",
                                f"step {sid!r} ({spec.uses}) trains inside the recipe: a bundle cannot carry that yet; "
                                f"train it once, save its weights and give them as `weights:` (inference only)")
            elif spec.kind in STATELESS_KINDS and not any(specs[s].kind == "splitter" for s, _ in spec.inputs.values()):
                for ptr, f in comp.input_files().items():  # a weights or params file the step reads
                    f = Path(f)
                    dest.mkdir(parents=True, exist_ok=True)
                    name = ptr.strip("/").replace("/", "_") + "-" + f.name
                    shutil.copyfile(f, dest / name)
                    node = new["with"]
                    *head, last = ptr.strip("/").split("/")
                    for k in head:
                        node = node[k]
                    node[last] = f"{BUNDLE_REF}/parts/{sid}/{name}"
                    info_parts.setdefault(sid, {"component": spec.uses, "files": []})["files"].append(name)
            else:
                raise DataError(run_dir / "recipe.resolved.yaml",
                                f"step {sid!r} ({spec.uses}, kind {spec.kind}) fits state that a bundle cannot carry "
                                f"yet; the inference path may hold stain normalizers, instance_encoder, stateless "
                                f"segmentation/cells/features steps and one MIL step")
            steps[sid] = new
            if spec.params.get("target_um_per_px") and spec.params.get("um_per_px") is None:
                expects["target_um_per_px"] = spec.params["target_um_per_px"]
        if data_id is None:
            raise DataError(run_dir, "the MIL step does not descend from a data set step")
        # the stain check: raw (un-normalized) colour of the training cohort's images, per patient
        from hemaflow.lib.stain_stats import stain_reference
        from hemaflow.lib.mil_bundle import OOD_FACTOR

        train_images = outputs(data_id)["images"]
        stain_ref = stain_reference(train_images, sorted(train_images.table["patient_id"].astype(str).unique()),
                                    OOD_FACTOR)
        if stain_ref:
            info_parts[mil_id]["stain_ood"] = stain_ref
            steps[mil_id]["inputs"]["images"] = f"{data_id}.images"
        recipe = {"name": f"{resolved.name}-bundle", "seed": resolved.data.get("seed", 0),
                  "device": resolved.data.get("device", "auto"), "data_step": data_id,
                  "training_data": {"uses": specs[data_id].uses, "with": specs[data_id].params},
                  "steps": steps, "report": {"uses": "html"}}
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1, default=str))
        mil_part = info_parts[mil_id]
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "hemaflow": hemaflow.__version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "source_run": str(run_dir.resolve()), "recipe": resolved.name, "fold": fold,
                "refit": is_refit,
                **({"refit_info": model_meta.get("refit")} if is_refit else {}),
                "classes": mil_part["classes"], "decision_rule": mil_part["decision_rule"],
                "mil_step": mil_id, "components": components, "versions": prov.get("versions", {}),
                "training_data": {"step": data_id, "component": specs[data_id].uses,
                                  "params": specs[data_id].params, "input_data_hash": prov.get("input_data_hash"),
                                  "cache_key": keys.get(data_id)},
                "expects": expects, "parts": info_parts}
        (tmp / "model_card.md").write_text(model_card(info, metrics, mil_part))
        seal(tmp, info)
        if out.suffix == ".zip":
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(tmp.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(tmp).as_posix())
        else:
            if out.exists():
                if not (out / "bundle.json").exists():
                    raise UsageError(f"--out {out}: exists and is not a bundle; refusing to overwrite it")
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp), str(out))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(info: dict[str, Any], metrics: dict[str, Any], mil: dict[str, Any]) -> str:
    """The bundle's model card (Markdown): data, metrics with CIs, intended use, cohorts."""
    td = info["training_data"]
    refit = info.get("refit") is True
    what = f"fold {info['fold']} (refit)" if refit else f"fold {info['fold']}"
    if refit:
        r = info.get("refit_info") or {}
        fitted = (f"- Refit (fold {info['fold']}): fitted on {r.get('train', '?')} training patients (every patient "
                  f"some fold of the run trained or validated on; never a patient that was test in every fold), for "
                  f"{r.get('epochs', 'the')} epochs, the median of the folds' validation-chosen epochs "
                  f"{r.get('chosen_epochs', '')}. No patient was held out from it: the metrics below are the folds' "
                  f"estimate of it, not its own.")
    else:
        fitted = (f"- Fitted parts of fold {info['fold']} only (trained on that fold's training patients, early "
                  f"stopping on its validation patients); not a refit on all training patients (set `refit: true` on "
                  f"the recipe's split for one).")
    lines = [f"# Model card: {info['recipe']}, {what}", "",
             f"hemaflow {info['hemaflow']}; exported {info['created']} from `{info['source_run']}`.", "",
             "## Model", "",
             f"- MIL step `{info['mil_step']}`: `{mil['component']}` (version {mil['version']}); classes, in order: "
             f"{', '.join(mil['classes'])}; decision: {mil['decision_rule']}.",
             fitted,
             "- Steps of the training run on the inference path (the splitter is dropped when applied): "
             + " -> ".join(f"{k} ({v['component']} v{v['version']})" for k, v in info["components"].items()), "",
             "## Training data", "",
             f"- `{td['component']}` with {json.dumps(td['params'], default=str)}",
             f"- data fingerprint (input data hash): `{td['input_data_hash']}`; data step cache key "
             f"`{td['cache_key']}`",
             f"- expected images: {json.dumps(info['expects'])}", "",
             "## Metrics (the run's cross-validation, all folds; 95% bootstrap intervals over patients)", ""]
    pat = metrics.get("patient") or {}
    if pat:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {format_metric(pat, k)} |" for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")]
        lines += [f"| n patients | {pat.get('n', 'n/a')} |", ""]
    else:
        lines += ["No patient-level metrics in the run.", ""]
    fold_m = next((f for f in metrics.get("folds", []) if f.get("fold") == info["fold"]), None)
    if fold_m and fold_m.get("patient"):
        lines += [f"Fold {info['fold']} alone: accuracy {format_metric(fold_m['patient'], 'accuracy')}, "
                  f"n {fold_m['patient'].get('n', 'n/a')}.", ""]
    coh = metrics.get("cohort") or {}
    if coh.get("per_cohort"):
        lines += ["## Per cohort", "", "| cohort | accuracy | AUROC | n |", "|---|---|---|---|"]
        per = coh["per_cohort"]
        items = per.items() if isinstance(per, dict) else [(r.get("cohort"), r) for r in per]
        for name, r in items:
            f3 = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "n/a")) for k in ("accuracy", "auroc")]
            lines.append(f"| {name} | {f3[0]} | {f3[1]} | {r.get('n', 'n/a')} |")
        lines.append("")
    ood = mil.get("ood", {})
    lines += ["## Intended use", "",
              "Research use: a second reading of peripheral blood smears of the kind it was trained on (same "
              "stain protocol, scanner and magnification). Not a medical device; not validated for clinical "
              "diagnosis. Every prediction should be reviewed by a haematologist together with the top-attention "
              "cells in the report.", "",
              "## Out-of-distribution check", "",
              f"Score: {ood.get('score')}. Training cohort ({ood.get('n_reference_patients')} patients, fold "
              f"{info['fold']}'s features): median {ood.get('reference_median', 0):.2f}, max "
              f"{ood.get('reference_max', 0):.2f}; a new patient above {ood.get('threshold', 0):.2f} "
              f"({ood.get('factor')} x that max) is a warning in the report. Images of another size or scale than "
              f"the expected ones are refused.", ""]
    return "\n".join(lines)
