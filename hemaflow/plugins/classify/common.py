"""What every classifier shares: parameter schemas, labels, folds, predictions, the fold loop.

Helpers only, no components: each classifier module (:mod:`.images`, :mod:`.tabular`,
:mod:`.multimodal`, :mod:`.apply`) builds on these. ``_train_folds`` is the per-fold loop of the
neural classifiers (train on the training patients, select on the validation patients, predict
the test patients, save one checkpoint per fold); the training itself is
:func:`hemaflow.lib.training.fit`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Model, Predictions
from hemaflow.core.bases import Classifier
from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import DataError, HemaflowError

# -- shared parameter schemas ----------------------------------------------------------------------
_BACKBONE_PARAMS: dict[str, Any] = {
    "pretrained": {"type": ["string", "null", "boolean"], "default": None, "format": "path",
                   "description": "local weights file (.safetensors/.pth/.bin) for the backbone; null = random "
                                  "init; nothing is ever downloaded (true is an error that says how to get a file)"},
    "input": {"enum": ["field", "masked_field", "cell", "masked_cell"], "default": "field",
              "description": "what the network sees: the normalized field, the field with its background painted "
                             "(masked_field), cell crops from a CellSet (cell), or crops with everything outside "
                             "the cell painted (masked_cell)"},
    "background": {"enum": ["white", "black"], "default": "white",
                   "description": "masked_field/masked_cell: colour painted outside the mask (the original overlays "
                                  "used both)"},
    "image_size": {"type": "integer", "minimum": 16, "maximum": 1024, "default": 224,
                   "description": "side of the square network input; fields are resized (stretched), crops resized"},
    "mask_attention": {"enum": ["none", "valve", "channel", "spatial"], "default": "none",
                       "description": "mask steering of the first feature map: valve (zero-init conv of the resized "
                                      "mask added, the original design), channel (mask as extra input channels), "
                                      "spatial (multiplicative attention); all start as exact no-ops"},
    "on_error": {"enum": ["skip", "stop"], "default": "stop",
                 "description": "an unreadable image or mask stops the step or is left out and recorded"},
}

_TABULAR_PARAMS: dict[str, Any] = {
    "token_dim": {"type": "integer", "minimum": 4, "maximum": 512, "default": 32,
                  "description": "attention encoder: size of each feature token"},
    "depth": {"type": "integer", "minimum": 1, "maximum": 12, "default": 2,
              "description": "attention encoder: transformer blocks"},
    "heads": {"type": "integer", "minimum": 1, "maximum": 16, "default": 4,
              "description": "attention encoder: attention heads (must divide token_dim)"},
    "hidden": {"type": "integer", "minimum": 4, "maximum": 4096, "default": 128,
               "description": "MLP encoder width and fusion width"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.1, "description": "dropout"},
    "impute": {"enum": ["median", "mean", "zero", "none"], "default": "median",
               "description": "missing feature values: filled with the training partition's median/mean or 0; "
                              "none makes a missing value an error"},
}


def _schema(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False}


def _backbone_param(default: str, description: str) -> dict[str, Any]:
    """The ``backbone`` parameter (a timm model name) with this default."""
    return {"type": "string", "minLength": 1, "default": default, "description": description}


# -- labels, rows and folds ----------------------------------------------------------------------------
def class_list(artifact: Any) -> list[str]:
    """The artifact's ``meta["classes"]``; a clear error when it has none."""
    classes = [str(c) for c in artifact.meta.get("classes", [])]
    if len(classes) < 2:
        raise DataError(artifact.path, f"meta['classes'] must list at least two classes to train a classifier; "
                                       f"got {classes}")
    return classes


def check_same_classes(a: Any, b: Any, what_a: str, what_b: str) -> list[str]:
    """Return the common class list; error if the two artifacts disagree."""
    ca, cb = class_list(a), class_list(b)
    if ca != cb:
        raise DataError(b.path, f"class list of {what_b} {cb} differs from {what_a} {ca}; "
                                "both inputs must come from the same data set")
    return ca


def check_labels(table: pd.DataFrame, classes: list[str], path: Any) -> None:
    """Error when a non-empty label is not in ``classes`` (cheap; run before loading images)."""
    labels = table["label"].astype("string").fillna("")
    unknown = sorted(set(labels[labels.str.len() > 0]) - set(classes))
    if unknown:
        raise DataError(path, f"labels {unknown} are not in meta['classes'] {classes}")


def _label_index(ctx: RunContext, rows: pd.DataFrame, classes: list[str], path: Any, unit: str) -> pd.DataFrame:
    """Drop unlabelled rows (warned), error on labels outside ``classes``; add ``y``."""
    labels = rows["label"].astype("string").fillna("")
    empty = labels.str.len() == 0
    if empty.any():
        ctx.warn(f"{int(empty.sum())} {unit}(s) have no label and are left out of training and prediction")
    rows = rows[~empty.to_numpy()].copy()
    labels = labels[~empty]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(path, f"labels {unknown} are not in meta['classes'] {classes}")
    rows["label"] = labels.to_numpy()
    rows["y"] = [classes.index(v) for v in labels]
    return rows.reset_index(drop=True)


def _fold_rows(split: Any, rows: pd.DataFrame, fold: int) -> dict[str, np.ndarray]:
    """Row indices of each partition of ``fold`` (by patient)."""
    pid = rows["patient_id"].astype(str).to_numpy()
    return {part: np.flatnonzero(np.isin(pid, sorted(split.patients(fold, part)))) for part in ("train", "val", "test")}


def _check_split(ctx: RunContext, split: Any, rows: pd.DataFrame) -> None:
    known = set(split.table["patient_id"].astype(str))
    have = set(rows["patient_id"].astype(str))
    if not have & known:
        raise DataError(split.path, f"none of the {len(have)} patients of the input are in the split "
                                    f"(split patients e.g. {sorted(known)[:3]}, input e.g. {sorted(have)[:3]}); "
                                    "was the split made on another data set?")
    missing = have - known
    if missing:
        ctx.warn(f"{len(missing)} patient(s) are in no partition of the split and are left out")


def _prediction_rows(rows: pd.DataFrame, idx: np.ndarray, probs: np.ndarray, fold: int, classes: list[str],
                     level: str) -> pd.DataFrame:
    sub = rows.iloc[idx]
    out = pd.DataFrame({
        "id": sub["id"].astype(str).to_numpy(), "level": level, "fold": int(fold),
        "y_true": sub["label"].astype(str).to_numpy(),
        "y_pred": [classes[i] for i in probs.argmax(1)],
    })
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, i].astype(float)
    out["image_id"] = sub["image_id"].astype(str).to_numpy()
    out["patient_id"] = sub["patient_id"].astype(str).to_numpy()
    return out


def _save_predictions(ctx: RunContext, frames: list[pd.DataFrame], classes: list[str], level: str,
                      source: Any) -> Predictions:
    if not frames:
        raise DataError(getattr(source, "path", ctx.workdir), "no fold had test patients: nothing was predicted")
    table = pd.concat(frames, ignore_index=True)
    meta = {"classes": classes, "level": level,
            "patients_are_images": bool(getattr(source, "meta", {}).get("patients_are_images", False))}
    return Predictions(ctx.out_dir("predictions"), table, meta).save()


def _model_meta(ctx: RunContext, comp: Component, **extra: Any) -> dict[str, Any]:
    from hemaflow.lib.training import recipe_hash

    return {"component": comp.name, "version": comp.version, "params": comp.get_params(),
            "recipe_hash": recipe_hash(ctx.recipe), "step_id": ctx.step_id, **extra}



# -- the neural fold loop -------------------------------------------------------------------------------
def _train_folds(ctx: RunContext, comp: Component, *, split: Any, rows: pd.DataFrame, classes: list[str],
                 level: str, build: Callable[[], Any], make_data: Callable[[np.ndarray, bool, Any], Any],
                 forward: Callable, prepare_fold: Callable[[np.ndarray, int], Any] | None = None,
                 after_fold: Callable[[Any, Any, np.ndarray, int], None] | None = None,
                 extra_meta: dict[str, Any] | None = None, source: Any = None
                 ) -> dict[str, Any]:
    """Train one network per fold; return the step outputs.

    ``prepare_fold(train_idx, fold)`` fits fold state on training rows only (e.g. a scaler) and
    returns it; ``make_data(idx, train, state)`` builds a data set; ``after_fold(net, state,
    test_idx, fold)`` collects extras (attention weights).
    """
    from hemaflow.lib.training import torch_threads, train_config

    cfg = train_config(comp.params)
    with torch_threads(int(cfg["threads"])):
        return _train_folds_inner(ctx, comp, cfg, split=split, rows=rows, classes=classes, level=level, build=build,
                                  make_data=make_data, forward=forward, prepare_fold=prepare_fold,
                                  after_fold=after_fold, extra_meta=extra_meta, source=source)


def _train_folds_inner(ctx: RunContext, comp: Component, cfg: Any, *, split: Any, rows: pd.DataFrame,
                       classes: list[str], level: str, build: Callable[[], Any], make_data: Callable,
                       forward: Callable, prepare_fold: Callable | None, after_fold: Callable | None,
                       extra_meta: dict[str, Any] | None, source: Any) -> dict[str, Any]:
    from hemaflow.lib.training import (
        fit,
        predict_proba,
        report_learning_curves,
        save_checkpoint,
        seed_everything,
        write_history,
    )

    _check_split(ctx, split, rows)
    model_dir = ctx.out_dir("model")
    frames, histories, fold_info = [], {}, []
    meta = _model_meta(ctx, comp, classes=classes, level=level, **(extra_meta or {}))
    for fold in split.folds():
        parts = _fold_rows(split, rows, fold)
        if len(parts["train"]) == 0:
            raise DataError(split.path, f"fold {fold} has no labelled training rows")
        if len(parts["test"]) == 0:
            ctx.warn(f"fold {fold} has no test rows; it is skipped")
            continue
        if len(parts["val"]) == 0:
            ctx.warn(f"fold {fold} has no validation rows: the last epoch is kept, no early stopping")
        state = prepare_fold(parts["train"], fold) if prepare_fold else None
        seed_everything(ctx.torch_seed("init", fold))
        net = build()
        train = make_data(parts["train"], True, state)
        val = make_data(parts["val"], False, state) if len(parts["val"]) else None
        name = f"fold{fold}"
        res = fit(net, train, val, forward=forward, config=cfg, ctx=ctx, classes=classes, name=name)
        net.load_state_dict(res.best_state_dict)
        probs = predict_proba(net, make_data(parts["test"], False, state), forward=forward, config=cfg,
                              device=ctx.device)
        frames.append(_prediction_rows(rows, parts["test"], probs, fold, classes, level))
        histories[name] = res.history
        fmeta = dict(meta, fold=fold, epoch=res.best_epoch)
        if state is not None and hasattr(state, "state"):
            fmeta["scaler"] = state.state()
        save_checkpoint(model_dir / f"{name}.safetensors", res.best_state_dict, fmeta)
        info = {"fold": fold, "best_epoch": res.best_epoch, "epochs_run": len(res.history),
                "n_train": int(len(parts["train"])), "n_val": int(len(parts["val"])), "n_test": int(len(parts["test"]))}
        if val is not None:
            info["val_balanced_accuracy"] = res.history[res.best_epoch - 1]["val_balanced_accuracy"]
        fold_info.append(info)
        if after_fold:
            after_fold(net, state, parts["test"], fold)
        ctx.log(f"{name}: best epoch {res.best_epoch}/{len(res.history)}")
    write_history(model_dir / "history.csv", histories)
    if histories:
        report_learning_curves(ctx, histories, title=f"Learning curves ({comp.name})")
        ctx.report.table(f"Folds ({comp.name})", fold_info)
    predictions = _save_predictions(ctx, frames, classes, level, source)
    model = Model(model_dir, dict(meta, folds=fold_info, files=sorted(p.name for p in model_dir.iterdir()))).save()
    return {"predictions": predictions, "model": model}


def _backbone_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Parameter problems JSON Schema cannot see: unknown timm name, download request, missing file,
    token_dim not divisible by heads. ``(json pointer below with/, message)`` pairs."""
    from pathlib import Path

    from hemaflow.lib.backbones import check_model_name, pretrained_error

    problems = []
    if "backbone" in params:
        try:
            check_model_name(params["backbone"])
        except HemaflowError as exc:
            problems.append(("/backbone", str(exc)))
        pre = params.get("pretrained")
        if pre is True:
            problems.append(("/pretrained", str(pretrained_error(params["backbone"]))))
        elif isinstance(pre, str) and pre and not Path(pre).expanduser().is_file():
            problems.append(("/pretrained", f"pretrained weights file {pre!r} not found; "
                                            f"{pretrained_error(params['backbone'])}"))
    if "token_dim" in params and params["token_dim"] % params["heads"]:
        problems.append(("/token_dim", f"token_dim {params['token_dim']} must be divisible by heads {params['heads']}"))
    return problems


def _raise_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise HemaflowError("; ".join(f"{ptr}: {msg}" if len(problems) > 1 else msg for ptr, msg in problems))


class NeuralClassifier(Classifier):
    """Base of the classifiers that train one network per fold (``image_classifier``,
    ``tabular_attention``, ``multimodal``): their kind, outputs and parameter checks."""

    kind = "classifier"
    outputs = {"predictions": "Predictions", "model": "Model"}

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see, as ``(json pointer below with/, message)``."""
        return _backbone_problems(self.params)
