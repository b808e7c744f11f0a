"""Classifiers: timm image models, scikit-learn baselines, tabular attention, multi-modal.

Components (kind ``classifier``); every one takes ``split: Split`` and, per fold, trains on the
training patients, selects (early stopping, checkpoint) on the validation patients only, and
predicts the test patients. Outputs ``predictions: Predictions`` (test rows of every fold:
``id, level, fold, y_true, y_pred, prob_<class>..., image_id, patient_id``) and ``model: Model``
(one safetensors/joblib file per fold, ``history.csv`` learning curves, meta with classes,
feature columns and scaler).

* ``image_classifier``: any timm model on fields (``field``), masked fields (``masked_field``:
  background painted white or black with the mask) or cell crops (``cell``), optionally
  mask-guided (``mask_attention``: valve | channel | spatial).
* ``sklearn_classifier``: logistic regression, random forest or gradient boosting on a
  FeatureTable, imputation and scaling fitted on the training partition only.
* ``tabular_attention``: FT-Transformer (feature tokens + transformer) or an MLP on a
  FeatureTable; feature attention saved (``feature_attention.csv``) and charted.
* ``multimodal``: timm backbone + tabular branch (MLP or FT-Transformer) on the features of the
  same cell/image, fused by ``concat``, ``gated`` or ``attention``, trained end to end.

The class list is always the input artifact's ``meta["classes"]``. Patient aggregation of
image/cell predictions is the ``classification`` evaluator's job.

Example::

    from hemaflow.testing import make, make_context
    out = make(ImageClassifier, backbone="test_resnet", image_size=32, epochs=1).run(
        make_context("/tmp/x"), images=images, split=split)
    out["predictions"].table.head()
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Model, Predictions
from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import DataError, HemaflowError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.training import TRAIN_SCHEMA

# -- shared parameter schemas ----------------------------------------------------------------------
_BACKBONE_PARAMS: dict[str, Any] = {
    "pretrained": {"type": ["string", "null", "boolean"], "default": None,
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
    from hemaflow.plugins.training import recipe_hash

    return {"component": comp.name, "version": comp.version, "params": comp.get_params(),
            "recipe_hash": recipe_hash(ctx.recipe), "step_id": ctx.step_id, **extra}


# -- features -----------------------------------------------------------------------------------------
class Scaler:
    """Imputation + standardisation fitted on training rows only (values clipped to +-10 sd)."""

    def __init__(self, impute: str = "median") -> None:
        self.impute = impute

    def fit(self, x: np.ndarray, columns: list[str], path: Any) -> "Scaler":
        x = np.asarray(x, dtype=np.float64)
        if self.impute == "none" and np.isnan(x).any():
            bad = [columns[j] for j in np.flatnonzero(np.isnan(x).any(0))[:5]]
            raise DataError(path, f"missing values in feature columns {bad} (set impute: median to fill them)")
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fill = {"median": np.nanmedian, "mean": np.nanmean}.get(self.impute, lambda a, axis: np.zeros(a.shape[1]))(x, axis=0)
        self.fill_ = np.nan_to_num(np.asarray(fill, dtype=np.float64), nan=0.0)
        xf = np.where(np.isnan(x), self.fill_, x)
        self.mean_ = xf.mean(0) if len(xf) else np.zeros(x.shape[1])
        sd = xf.std(0) if len(xf) else np.ones(x.shape[1])
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        return self

    def transform(self, x: np.ndarray, columns: list[str], path: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.impute == "none" and np.isnan(x).any():
            bad = [columns[j] for j in np.flatnonzero(np.isnan(x).any(0))[:5]]
            raise DataError(path, f"missing values in feature columns {bad} (set impute: median to fill them)")
        xf = np.where(np.isnan(x), self.fill_, x)
        return np.clip((xf - self.mean_) / self.scale_, -10, 10).astype(np.float32)

    def state(self) -> dict[str, Any]:
        return {"impute": self.impute, "fill": self.fill_.tolist(), "mean": self.mean_.tolist(),
                "scale": self.scale_.tolist()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "Scaler":
        self = cls(s["impute"])
        self.fill_, self.mean_, self.scale_ = (np.asarray(s[k], dtype=np.float64) for k in ("fill", "mean", "scale"))
        return self


def feature_matrix(features: Any, columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Feature values (float64, NaN for missing) in ``columns`` order (default: the table's own).

    Raises:
        DataError: no feature columns, columns the model needs are missing, or non-numeric values.
    """
    own = features.feature_columns
    if columns is None:
        columns = own
        if not columns:
            raise DataError(features.path, "meta['feature_columns'] is empty: no features to train on")
    missing = [c for c in columns if c not in features.table.columns]
    if missing:
        raise DataError(features.path, f"feature table is missing {len(missing)} column(s) the model was trained on: "
                                       f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    try:
        x = features.table[columns].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64, copy=True)
    except (ValueError, TypeError) as exc:
        raise DataError(features.path, f"feature columns must be numeric ({exc})") from None
    x[~np.isfinite(x)] = np.nan
    return x, list(columns)


def _feature_rows(features: Any) -> tuple[pd.DataFrame, str]:
    """Id rows of a FeatureTable: ``id`` is the cell id (level cell) or the image id (level image)."""
    t = features.table
    if "cell_id" in t.columns and t["cell_id"].notna().all():
        rows, level = t[["cell_id", "image_id", "patient_id", "label"]].rename(columns={"cell_id": "id"}), "cell"
    else:
        rows, level = t[["image_id", "patient_id", "label"]].assign(id=t["image_id"]), "image"
    rows = rows.copy()
    for c in ("id", "image_id", "patient_id"):
        rows[c] = rows[c].astype(str)
    rows["_row"] = np.arange(len(rows))
    return rows, level


def _report_feature_bars(ctx: RunContext, df: pd.DataFrame, title: str, value: str, caption: str, top: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = df.sort_values(value, ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(d) + 1))
    ax.barh([str(f).removeprefix("radiomics_") for f in d["feature"]], d[value])
    ax.set_xlabel(value.replace("_", " "))
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    ctx.report.figure(title, fig, caption=caption)


# -- images ------------------------------------------------------------------------------------------
def _load_field(item: tuple) -> dict[str, Any]:
    """Read, mask and resize one field (top level: runs in ctx.map workers)."""
    from PIL import Image

    from hemaflow.plugins import io

    image_path, mask_path, mask_spec, size, paint, need_mask = item
    try:
        img = io.read_image(image_path)
        mask = None
        if mask_path is not None:
            mask = io.read_mask(mask_path, mask_spec)
            if mask.shape != img.shape[:2]:
                raise DataError(mask_path, f"mask size {mask.shape} differs from image size {img.shape[:2]}")
        elif need_mask:
            raise DataError(image_path, "no mask for this image (masked_field and mask_attention need one)")
        if paint is not None:
            img = img.copy()
            img[mask == 0] = paint
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
        return {"image": img, "mask": mask}
    except DataError as exc:
        return {"error": exc.problem, "file": exc.path}


def _image_rows(ctx: RunContext, p: dict[str, Any], images: Any, cells: Any, masks: Any
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, str, Any]:
    """Rows (id, image_id, patient_id, label), uint8 images (N,S,S,3), masks (N,S,S) or None, level, source."""
    size = int(p["image_size"])
    src = cells if p["input"] in ("cell", "masked_cell") else images
    if src is not None:
        check_labels(src.table, class_list(src), src.path)
    need_mask = p["mask_attention"] != "none" or p["input"] in ("masked_field", "masked_cell")
    paint = None
    if p["input"] in ("masked_field", "masked_cell"):
        paint = 255 if p["background"] == "white" else 0
    if p["input"] in ("cell", "masked_cell"):
        if cells is None:
            raise DataError(ctx.workdir, f"input: {p['input']} needs a `cells: CellSet` input (e.g. from cell_crops)")
        import torch
        import torch.nn.functional as F

        t = cells.table.reset_index(drop=True)
        rows = pd.DataFrame({"id": t["cell_id"].astype(str), "image_id": t["image_id"].astype(str),
                             "patient_id": t["patient_id"].astype(str), "label": t["label"]})
        ci = t["crop_index"].to_numpy(dtype=int)
        crops = np.asarray(cells.crops[ci])
        cmasks = np.asarray(cells.crop_masks[ci]) if need_mask else None
        if paint is not None:
            crops = crops.copy()
            crops[cmasks == 0] = paint
        if crops.shape[1] != size:
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            crops = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            if cmasks is not None:
                m = F.interpolate(torch.from_numpy(cmasks)[:, None].float(), size=(size, size), mode="nearest")
                cmasks = m[:, 0].byte().numpy()
        return rows, np.ascontiguousarray(crops), None if cmasks is None else np.ascontiguousarray(cmasks), "cell", cells
    if images is None:
        raise DataError(ctx.workdir, f"input: {p['input']} needs an `images: ImageSet` input")
    t = images.table.reset_index(drop=True)
    items = []
    for _, r in t.iterrows():
        mp, spec = None, None
        if masks is not None:
            try:
                mp, spec = str(masks.resolve(masks.row(str(r["image_id"]))["path"])), {"mode": "canonical"}
            except KeyError:
                mp = None
        else:
            v = r.get("mask_path") if "mask_path" in r.index else None
            if isinstance(v, str) and v:
                mp, spec = str(images.resolve(v)), images.meta.get("mask_spec")
        items.append((str(images.image_path(r)), mp, spec, size, paint, need_mask))
    loaded = ctx.map(_load_field, items, description="load images")
    keep, imgs, msks = [], [], []
    for i, res in enumerate(loaded):
        if "error" in res:
            if p["on_error"] == "stop":
                raise DataError(res["file"], res["error"])
            ctx.warn(f"skipped {res['file']}: {res['error']}")
            continue
        keep.append(i)
        imgs.append(res["image"])
        msks.append(res["mask"])
    if not keep:
        raise DataError(images.path, "no image could be read")
    t = t.iloc[keep].reset_index(drop=True)
    rows = pd.DataFrame({"id": t["image_id"].astype(str), "image_id": t["image_id"].astype(str),
                         "patient_id": t["patient_id"].astype(str), "label": t["label"]})
    mask_arr = np.stack(msks) if need_mask and all(m is not None for m in msks) else None
    return rows, np.stack(imgs), mask_arr, "image", images


class _ImageData:
    """Map-style data set over preloaded uint8 images (+ masks, + feature vectors)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, y: np.ndarray, mean: Any, std: Any, *,
                 augment: dict[str, Any] | None = None, features: np.ndarray | None = None,
                 use_mask: bool = False) -> None:
        import torch

        from hemaflow.plugins.training import Augment

        self.images, self.masks, self.labels = images, masks, np.asarray(y, dtype=int)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = Augment(augment) if augment is not None else None
        self.features = features
        self.use_mask = use_mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        img = torch.from_numpy(np.asarray(self.images[i])).permute(2, 0, 1).float().div(255)
        mask = torch.from_numpy(np.asarray(self.masks[i])) if self.masks is not None else None
        if self.augment is not None:
            img, mask = self.augment(img, mask)
        item: dict[str, Any] = {"image": (img - self.mean) / self.std, "y": int(self.labels[i])}
        if self.use_mask and mask is not None:
            item["mask"] = mask
        if self.features is not None:
            item["features"] = torch.from_numpy(self.features[i])
        return item


def _forward_image(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["image"], batch.get("mask"))


def _forward_multimodal(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["image"], batch["features"], batch.get("mask"))


def _forward_tabular(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["x"])


def _norm_stats(name: str) -> tuple[list[float], list[float]]:
    """The input normalisation timm's default config gives for model ``name``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return [float(v) for v in mean], [float(v) for v in std]


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
    from hemaflow.plugins.training import torch_threads, train_config

    cfg = train_config(comp.params)
    with torch_threads(int(cfg["threads"])):
        return _train_folds_inner(ctx, comp, cfg, split=split, rows=rows, classes=classes, level=level, build=build,
                                  make_data=make_data, forward=forward, prepare_fold=prepare_fold,
                                  after_fold=after_fold, extra_meta=extra_meta, source=source)


def _train_folds_inner(ctx: RunContext, comp: Component, cfg: Any, *, split: Any, rows: pd.DataFrame,
                       classes: list[str], level: str, build: Callable[[], Any], make_data: Callable,
                       forward: Callable, prepare_fold: Callable | None, after_fold: Callable | None,
                       extra_meta: dict[str, Any] | None, source: Any) -> dict[str, Any]:
    from hemaflow.plugins.training import (
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

    from hemaflow.plugins.models import check_model_name, pretrained_error

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


# -- components -------------------------------------------------------------------------------------------
class ImageClassifier(Component):
    """A timm classifier on fields, masked fields or cell crops, one model per fold.

    Inputs: ``split`` and ``images`` (input field/masked_field; masks from ``masks`` or the
    images' ground truth) or ``cells`` (input cell). Image-level (or cell-level) predictions.
    """

    kind = "classifier"
    name = "image_classifier"
    version = "1"
    schema = _schema({
        "backbone": {"type": "string", "minLength": 1, "default": "resnet50",
                     "description": "any timm model name (resnet50, densenet121, vit_small_patch16_224, "
                                    "convnext_tiny...; test_resnet/test_vit for tiny runs)"},
        **_BACKBONE_PARAMS,
        "drop_rate": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.0,
                      "description": "dropout before the classifier head"},
        **TRAIN_SCHEMA,
    })
    inputs = {"split": "Split", "images": "ImageSet?", "cells": "CellSet?", "masks": "MaskSet?"}
    outputs = {"predictions": "Predictions", "model": "Model"}

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see, as ``(json pointer below with/, message)``."""
        return _backbone_problems(self.params)

    def run(self, ctx: RunContext, split: Any, images: Any = None, cells: Any = None, masks: Any = None) -> dict[str, Any]:
        from hemaflow.plugins.models import ImageNet

        p = self.params
        _raise_problems(self.check_params())
        rows, imgs, msks, level, source = _image_rows(ctx, p, images, cells, masks)
        classes = class_list(source)
        rows = rows.assign(_row=np.arange(len(rows)))
        rows = _label_index(ctx, rows, classes, source.path, level)
        imgs = imgs[rows["_row"].to_numpy()]
        msks = msks[rows["_row"].to_numpy()] if msks is not None else None
        use_mask = p["mask_attention"] != "none"
        if use_mask and msks is None:
            raise DataError(source.path, f"mask_attention {p['mask_attention']!r} needs masks: give a `masks` input "
                                         "or images with ground-truth masks")

        def build() -> Any:
            return ImageNet(p["backbone"], len(classes), pretrained=p["pretrained"], img_size=p["image_size"],
                            mask_attention=p["mask_attention"], drop_rate=p["drop_rate"])

        mean, std = _norm_stats(p["backbone"])
        y = rows["y"].to_numpy()

        def make_data(idx: np.ndarray, train: bool, state: Any) -> Any:
            return _ImageData(imgs[idx], None if msks is None else msks[idx], y[idx], mean, std,
                              augment=p["augment"] if train else None, use_mask=use_mask)

        return _train_folds(ctx, self, split=split, rows=rows, classes=classes, level=level, build=build,
                            make_data=make_data, forward=_forward_image, source=source,
                            extra_meta={"backbone": p["backbone"], "input": p["input"], "image_size": p["image_size"],
                                        "mean": mean, "std": std})


class TabularAttention(Component):
    """FT-Transformer (feature tokens + transformer) or MLP classifier on a FeatureTable.

    Rows are cells (``cell_id`` present) or images. Imputation/scaling fitted on the training
    partition only. With ``encoder: attention`` the [CLS]->feature attention of the last block,
    averaged over each fold's test rows, is saved to ``feature_attention.csv`` in the Model and
    charted in the report (top features).
    """

    kind = "classifier"
    name = "tabular_attention"
    version = "1"
    schema = _schema({
        "encoder": {"enum": ["attention", "mlp"], "default": "attention",
                    "description": "attention: FT-Transformer feature tokens; mlp: the plain baseline"},
        **_TABULAR_PARAMS,
        **{k: v for k, v in TRAIN_SCHEMA.items() if k != "augment"},
        "lr": dict(TRAIN_SCHEMA["lr"], default=1e-3),
        "epochs": dict(TRAIN_SCHEMA["epochs"], default=30),
        "batch_size": dict(TRAIN_SCHEMA["batch_size"], default=64),
        "patience": dict(TRAIN_SCHEMA["patience"], default=8),
        "weight_decay": dict(TRAIN_SCHEMA["weight_decay"], default=1e-4),
    })
    inputs = {"features": "FeatureTable", "split": "Split"}
    outputs = {"predictions": "Predictions", "model": "Model"}

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see, as ``(json pointer below with/, message)``."""
        return _backbone_problems(self.params)

    def run(self, ctx: RunContext, features: Any, split: Any) -> dict[str, Any]:
        import torch

        from hemaflow.plugins.models import TabularNet
        from hemaflow.plugins.training import TensorDictDataset

        p = self.params
        _raise_problems(self.check_params())
        classes = class_list(features)
        x_all, columns = feature_matrix(features)
        rows, level = _feature_rows(features)
        rows = _label_index(ctx, rows, classes, features.path, level)
        x_all = x_all[rows["_row"].to_numpy()]
        y = rows["y"].to_numpy()
        attn: list[pd.DataFrame] = []

        def prepare(train_idx: np.ndarray, fold: int) -> Scaler:
            return Scaler(p["impute"]).fit(x_all[train_idx], columns, features.path)

        def make_data(idx: np.ndarray, train: bool, scaler: Scaler) -> Any:
            return TensorDictDataset(x=torch.from_numpy(scaler.transform(x_all[idx], columns, features.path)),
                                     y=torch.as_tensor(y[idx]))

        def build() -> Any:
            return TabularNet(len(columns), len(classes), encoder=p["encoder"], hidden=p["hidden"], dim=p["token_dim"],
                              depth=p["depth"], heads=p["heads"], dropout=p["dropout"])

        def after(net: Any, scaler: Scaler, test_idx: np.ndarray, fold: int) -> None:
            if p["encoder"] != "attention":
                return
            w = _feature_attention(net, scaler.transform(x_all[test_idx], columns, features.path),
                                   lambda m, x: m(x), ctx.device, int(p["batch_size"]))
            attn.append(pd.DataFrame({"fold": fold, "feature": columns, "attention": w}))

        out = _train_folds(ctx, self, split=split, rows=rows, classes=classes, level=level, build=build,
                           make_data=make_data, forward=_forward_tabular, prepare_fold=prepare, after_fold=after,
                           extra_meta={"feature_columns": columns}, source=features)
        _save_attention(ctx, out["model"], attn)
        return out


def _feature_attention(net: Any, x: np.ndarray, call: Callable, device: str, batch_size: int) -> np.ndarray:
    """Mean [CLS]->feature attention of ``net`` over rows ``x`` (eval mode)."""
    import torch

    net.eval().to(device)
    total, n = None, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            call(net, torch.from_numpy(x[i:i + batch_size]).to(device))
            a = net.feature_attention.float().cpu().numpy()
            total = a.sum(0) if total is None else total + a.sum(0)
            n += len(a)
    return total / max(n, 1)


def _save_attention(ctx: RunContext, model: Model, attn: list[pd.DataFrame]) -> None:
    if not attn:
        return
    df = pd.concat(attn, ignore_index=True)
    df.to_csv(model.path / "feature_attention.csv", index=False)
    mean = df.groupby("feature", sort=False)["attention"].mean().reset_index()
    _report_feature_bars(ctx, mean, "Feature attention (tabular)", "attention",
                         "mean [CLS]->feature attention of the last transformer block on the test rows, "
                         "averaged over folds; uniform attention would be 1/n_features = "
                         f"{1 / len(mean):.4f}")
    model.meta["feature_attention"] = "feature_attention.csv"
    model.save()


class MultiModal(Component):
    """timm image backbone + tabular branch over the cell's (or image's) features, fused.

    Features are joined to cells by ``cell_id`` (input cell) or to images by ``image_id`` (mean
    over the image's cells when the table is per cell). Rows without features are left out
    (warned). The scaler is fitted on each fold's training rows only.
    """

    kind = "classifier"
    name = "multimodal"
    version = "1"
    schema = _schema({
        "backbone": {"type": "string", "minLength": 1, "default": "vit_small_patch16_224",
                     "description": "timm image backbone (vit_small_patch16_224, convnext_tiny...; test_vit, "
                                    "test_convnext for tiny runs)"},
        **_BACKBONE_PARAMS,
        "input": dict(_BACKBONE_PARAMS["input"], default="cell"),
        "fusion": {"enum": ["concat", "gated", "attention"], "default": "concat",
                   "description": "concat (late fusion of the two embeddings), gated (learned per-dimension "
                                  "mix), attention (learned weights over the two modalities)"},
        "tabular": {"enum": ["mlp", "attention"], "default": "mlp",
                    "description": "tabular branch: MLP, or FT-Transformer tabular attention"},
        **_TABULAR_PARAMS,
        **TRAIN_SCHEMA,
    })
    inputs = {"features": "FeatureTable", "split": "Split", "images": "ImageSet?", "cells": "CellSet?",
              "masks": "MaskSet?"}
    outputs = {"predictions": "Predictions", "model": "Model"}

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see, as ``(json pointer below with/, message)``."""
        return _backbone_problems(self.params)

    def run(self, ctx: RunContext, features: Any, split: Any, images: Any = None, cells: Any = None,
            masks: Any = None) -> dict[str, Any]:
        import torch

        from hemaflow.plugins.models import MultiModalNet

        p = self.params
        _raise_problems(self.check_params())
        rows, imgs, msks, level, source = _image_rows(ctx, p, images, cells, masks)
        classes = check_same_classes(source, features, "the images" if level == "image" else "the cells",
                                     "the feature table")
        x_feat, columns = feature_matrix(features)
        ft = features.table
        if level == "cell":
            if "cell_id" not in ft.columns:
                raise DataError(features.path, "input: cell needs a per-cell feature table (a cell_id column)")
            key = ft["cell_id"].astype(str).to_numpy()
            by_id = pd.DataFrame(x_feat, columns=columns).assign(_k=key).groupby("_k", sort=False).mean()
        else:
            key = ft["image_id"].astype(str).to_numpy()
            by_id = pd.DataFrame(x_feat, columns=columns).assign(_k=key).groupby("_k", sort=False).mean()
            if len(by_id) < len(ft):
                ctx.log(f"features: {len(ft)} rows averaged to {len(by_id)} images")
        have = rows["id"].isin(by_id.index).to_numpy()
        if not have.any():
            raise DataError(features.path, f"no {level} of the images/cells has a row in the feature table "
                                           "(ids do not match: were they computed from the same cells?)")
        if not have.all():
            ctx.warn(f"{int((~have).sum())} {level}(s) have no features (e.g. skipped by the feature extractor) "
                     "and are left out")
        rows = rows[have].assign(_row=np.flatnonzero(have)).reset_index(drop=True)
        rows = _label_index(ctx, rows, classes, source.path, level)
        sel = rows["_row"].to_numpy()
        imgs = imgs[sel]
        msks = msks[sel] if msks is not None else None
        xf = by_id.loc[rows["id"].to_numpy(), columns].to_numpy(dtype=np.float64)
        y = rows["y"].to_numpy()
        use_mask = p["mask_attention"] != "none"
        if use_mask and msks is None:
            raise DataError(source.path, f"mask_attention {p['mask_attention']!r} needs masks")

        def build() -> Any:
            return MultiModalNet(p["backbone"], len(columns), len(classes), fusion=p["fusion"], tabular=p["tabular"],
                                 hidden=p["hidden"], pretrained=p["pretrained"], img_size=p["image_size"],
                                 mask_attention=p["mask_attention"], dropout=p["dropout"], token_dim=p["token_dim"],
                                 depth=p["depth"], heads=p["heads"])

        mean, std = _norm_stats(p["backbone"])

        def prepare(train_idx: np.ndarray, fold: int) -> Scaler:
            return Scaler(p["impute"]).fit(xf[train_idx], columns, features.path)

        def make_data(idx: np.ndarray, train: bool, scaler: Scaler) -> Any:
            return _ImageData(imgs[idx], None if msks is None else msks[idx], y[idx], mean, std,
                              augment=p["augment"] if train else None, use_mask=use_mask,
                              features=scaler.transform(xf[idx], columns, features.path))

        attn: list[pd.DataFrame] = []
        modality: list[dict[str, Any]] = []

        def after(net: Any, scaler: Scaler, test_idx: np.ndarray, fold: int) -> None:
            data = make_data(test_idx, False, scaler)
            net.eval().to(ctx.device)
            fa, mw, n = None, None, 0
            from torch.utils.data import DataLoader

            with torch.no_grad():
                for b in DataLoader(data, batch_size=int(p["batch_size"])):
                    b = {k: v.to(ctx.device) for k, v in b.items()}
                    _forward_multimodal(net, b)
                    k = len(b["y"])
                    if net.feature_attention is not None:
                        a = net.feature_attention.float().sum(0).cpu().numpy()
                        fa = a if fa is None else fa + a
                    if net.modality_weights is not None:
                        m = net.modality_weights.float().sum(0).cpu().numpy()
                        mw = m if mw is None else mw + m
                    n += k
            if fa is not None:
                attn.append(pd.DataFrame({"fold": fold, "feature": columns, "attention": fa / n}))
            if mw is not None:
                modality.append({"fold": fold, "image": float(mw[0] / n), "features": float(mw[1] / n)})

        out = _train_folds(ctx, self, split=split, rows=rows, classes=classes, level=level, build=build,
                           make_data=make_data, forward=_forward_multimodal, prepare_fold=prepare, after_fold=after,
                           extra_meta={"backbone": p["backbone"], "input": p["input"], "image_size": p["image_size"],
                                       "feature_columns": columns, "mean": mean, "std": std}, source=source)
        _save_attention(ctx, out["model"], attn)
        if modality:
            pd.DataFrame(modality).to_csv(out["model"].path / "modality_weights.csv", index=False)
            ctx.report.table(f"Modality weights ({p['fusion']} fusion, test rows)", modality)
            out["model"].meta["modality_weights"] = "modality_weights.csv"
            out["model"].save()
        return out


class SklearnClassifier(Component):
    """Logistic regression, random forest or gradient boosting on a FeatureTable.

    Per fold: imputation and standard scaling fitted on the training partition only; the
    hyper-parameters come from the recipe (nothing is tuned on any partition); the validation
    partition is scored for the record. Feature importances (|coefficients| for logistic
    regression) are saved and charted.
    """

    kind = "classifier"
    name = "sklearn_classifier"
    version = "1"
    schema = _schema({
        "model": {"enum": ["logistic_regression", "random_forest", "gradient_boosting"],
                  "default": "logistic_regression", "description": "scikit-learn estimator"},
        "C": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
              "description": "logistic_regression: inverse L2 regularisation strength"},
        "max_iter": {"type": "integer", "minimum": 10, "default": 2000,
                     "description": "logistic_regression: solver iterations"},
        "n_estimators": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 300,
                         "description": "random_forest / gradient_boosting: number of trees"},
        "max_depth": {"type": ["integer", "null"], "minimum": 1, "default": None,
                      "description": "maximum tree depth (null: unlimited for random_forest, 3 for gradient_boosting)"},
        "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.1,
                          "description": "gradient_boosting: shrinkage"},
        "class_weight": {"enum": ["none", "balanced"], "default": "balanced",
                         "description": "balanced: weight classes n/(k*n_c) (sample weights for gradient boosting)"},
        "impute": {"enum": ["median", "mean", "zero", "none"], "default": "median",
                   "description": "missing feature values: training-partition median/mean, 0, or an error"},
        "fit_on": {"enum": ["train", "train_val"], "default": "train",
                   "description": "fit on the training partition, or on training + validation (no tuning uses val)"},
    })
    inputs = {"features": "FeatureTable", "split": "Split"}
    outputs = {"predictions": "Predictions", "model": "Model"}

    def _estimator(self, seed: int) -> Any:
        p = self.params
        cw = "balanced" if p["class_weight"] == "balanced" else None
        if p["model"] == "logistic_regression":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=p["C"], max_iter=p["max_iter"], class_weight=cw)
        if p["model"] == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"], class_weight=cw,
                                          random_state=seed, n_jobs=1)
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=p["n_estimators"], max_depth=p["max_depth"] or 3,
                                          learning_rate=p["learning_rate"], random_state=seed)

    def run(self, ctx: RunContext, features: Any, split: Any) -> dict[str, Any]:
        import joblib
        from sklearn.utils.class_weight import compute_sample_weight

        from hemaflow.plugins.training import balanced_accuracy

        p = self.params
        classes = class_list(features)
        x_all, columns = feature_matrix(features)
        rows, level = _feature_rows(features)
        rows = _label_index(ctx, rows, classes, features.path, level)
        x_all = x_all[rows["_row"].to_numpy()]
        y = rows["y"].to_numpy()
        _check_split(ctx, split, rows)
        model_dir = ctx.out_dir("model")
        frames, fold_info, importances = [], [], []
        for fold in ctx.progress(split.folds(), description="sklearn folds"):
            parts = _fold_rows(split, rows, fold)
            fit_idx = parts["train"] if p["fit_on"] == "train" else np.concatenate([parts["train"], parts["val"]])
            if len(fit_idx) == 0:
                raise DataError(split.path, f"fold {fold} has no labelled training rows")
            if len(parts["test"]) == 0:
                ctx.warn(f"fold {fold} has no test rows; it is skipped")
                continue
            present = np.unique(y[fit_idx])
            if len(present) < 2:
                raise DataError(split.path, f"fold {fold}: the training partition holds one class only "
                                            f"({classes[present[0]]})")
            scaler = Scaler(p["impute"]).fit(x_all[fit_idx], columns, features.path)
            est = self._estimator(ctx.torch_seed("sklearn", fold))
            xt = scaler.transform(x_all[fit_idx], columns, features.path)
            kw = {}
            if p["model"] == "gradient_boosting" and p["class_weight"] == "balanced":
                kw["sample_weight"] = compute_sample_weight("balanced", y[fit_idx])
            est.fit(xt, y[fit_idx], **kw)
            probs = self._proba(est, scaler.transform(x_all[parts["test"]], columns, features.path), len(classes))
            frames.append(_prediction_rows(rows, parts["test"], probs, fold, classes, level))
            info = {"fold": fold, "n_train": int(len(fit_idx)), "n_val": int(len(parts["val"])),
                    "n_test": int(len(parts["test"]))}
            if len(parts["val"]) and p["fit_on"] == "train":
                pv = self._proba(est, scaler.transform(x_all[parts["val"]], columns, features.path), len(classes))
                info["val_balanced_accuracy"] = balanced_accuracy(y[parts["val"]], pv.argmax(1))
            fold_info.append(info)
            joblib.dump({"estimator": est, "scaler": scaler.state(), "classes": classes, "feature_columns": columns},
                        model_dir / f"fold{fold}.joblib")
            imp = getattr(est, "feature_importances_", None)
            if imp is None and hasattr(est, "coef_"):
                imp = np.abs(est.coef_).mean(0)
            if imp is not None:
                importances.append(pd.DataFrame({"fold": fold, "feature": columns, "importance": np.asarray(imp)}))
        predictions = _save_predictions(ctx, frames, classes, level, features)
        meta = _model_meta(ctx, self, classes=classes, level=level, feature_columns=columns, folds=fold_info)
        if importances:
            df = pd.concat(importances, ignore_index=True)
            df.to_csv(model_dir / "feature_importance.csv", index=False)
            meta["feature_importance"] = "feature_importance.csv"
            mean = df.groupby("feature", sort=False)["importance"].mean().reset_index()
            _report_feature_bars(ctx, mean, f"Feature importance ({p['model']})", "importance",
                                 "impurity importance (trees) or mean |coefficient| on standardised features "
                                 "(logistic regression), averaged over folds")
        if fold_info:
            ctx.report.table(f"Folds ({self.name}, {p['model']})", fold_info)
        meta["files"] = sorted(q.name for q in model_dir.iterdir())
        model = Model(model_dir, meta).save()
        return {"predictions": predictions, "model": model}

    @staticmethod
    def _proba(est: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        """Probabilities in class-list order (classes absent from training get 0)."""
        pr = est.predict_proba(x)
        out = np.zeros((len(x), n_classes))
        out[:, est.classes_.astype(int)] = pr
        return out


class ApplyClassifier(Component):
    """Apply a trained classifier (a ``model: Model`` from any component above) to new data.

    The fold models are averaged (mean probability) or one fold is used. The input must carry
    the same class list as the training data and every feature column the model was trained
    on; a mismatch is a clear error. Predictions cover every labelled row (``fold`` is the
    model fold, or -1 for the ensemble); use it for external validation (e.g. train on one
    site, apply to another).
    """

    kind = "classifier"
    name = "apply_classifier"
    version = "1"
    schema = _schema({
        "fold": {"type": ["integer", "null"], "minimum": 0, "default": None,
                 "description": "use this fold's model; null averages the probabilities of all fold models"},
        "batch_size": {"type": "integer", "minimum": 1, "default": 64, "description": "prediction batch size"},
        "on_error": dict(_BACKBONE_PARAMS["on_error"]),
    })
    inputs = {"model": "Model", "features": "FeatureTable?", "images": "ImageSet?", "cells": "CellSet?",
              "masks": "MaskSet?"}
    outputs = {"predictions": "Predictions"}

    def run(self, ctx: RunContext, model: Any, features: Any = None, images: Any = None, cells: Any = None,
            masks: Any = None) -> dict[str, Any]:
        meta = model.meta
        comp = meta.get("component")
        if comp not in ("image_classifier", "tabular_attention", "multimodal", "sklearn_classifier"):
            raise DataError(model.path, f"not a model written by a hemaflow classifier (component {comp!r})")
        classes = [str(c) for c in meta["classes"]]
        folds = [int(f["fold"]) for f in meta.get("folds", [])]
        if self.params["fold"] is not None:
            if self.params["fold"] not in folds:
                raise DataError(model.path, f"the model has no fold {self.params['fold']} (folds {folds})")
            folds = [int(self.params["fold"])]
        if not folds:
            raise DataError(model.path, "the model holds no trained folds")
        tp = dict(meta["params"], on_error=self.params["on_error"], batch_size=self.params["batch_size"])
        if comp in ("image_classifier", "multimodal"):
            rows, imgs, msks, level, source = _image_rows(ctx, tp, images, cells, masks)
        else:
            if features is None:
                raise DataError(ctx.workdir, f"a {comp} model needs a `features: FeatureTable` input")
            rows, level = _feature_rows(features)
            source = features
        got = class_list(source)
        if got != classes:
            raise DataError(source.path, f"class list {got} differs from the one the model was trained on {classes}")
        columns = meta.get("feature_columns")
        if columns is not None:
            if features is None:
                raise DataError(ctx.workdir, "the model was trained with features: give a `features` input")
            xf, _ = feature_matrix(features, columns)
            if comp == "multimodal":
                key = features.table["cell_id" if level == "cell" else "image_id"].astype(str).to_numpy()
                by_id = pd.DataFrame(xf, columns=columns).assign(_k=key).groupby("_k", sort=False).mean()
                have = rows["id"].isin(by_id.index).to_numpy()
                if not have.all():
                    ctx.warn(f"{int((~have).sum())} {level}(s) have no features and are left out")
                rows = rows[have].assign(_row=np.flatnonzero(have)).reset_index(drop=True)
                xf = by_id.loc[rows["id"].to_numpy(), columns].to_numpy(dtype=np.float64)
                rows["_feat"] = np.arange(len(rows))
        if "_row" not in rows.columns:
            rows = rows.assign(_row=np.arange(len(rows)))
        rows = _label_index(ctx, rows, classes, source.path, level)
        probs = np.zeros((len(rows), len(classes)))
        for fold in folds:
            probs += self._predict_fold(ctx, model, comp, fold, rows, classes, columns,
                                        imgs if comp in ("image_classifier", "multimodal") else None,
                                        msks if comp in ("image_classifier", "multimodal") else None,
                                        xf if columns is not None else None, tp)
        probs /= len(folds)
        frame = _prediction_rows(rows, np.arange(len(rows)), probs, folds[0] if len(folds) == 1 else -1,
                                 classes, level)
        return {"predictions": _save_predictions(ctx, [frame], classes, level, source)}

    def _predict_fold(self, ctx: RunContext, model: Any, comp: str, fold: int, rows: pd.DataFrame,
                      classes: list[str], columns: list[str] | None, imgs: Any, msks: Any, xf: Any,
                      tp: dict[str, Any]) -> np.ndarray:
        if comp == "sklearn_classifier":
            import joblib

            saved = joblib.load(model.path / f"fold{fold}.joblib")
            x = Scaler.from_state(saved["scaler"]).transform(xf[rows["_row"].to_numpy()], columns, model.path)
            return SklearnClassifier._proba(saved["estimator"], x, len(classes))
        import torch

        from hemaflow.plugins.models import ImageNet, MultiModalNet, TabularNet
        from hemaflow.plugins.training import TensorDictDataset, load_checkpoint, predict_proba, train_config

        state, fmeta = load_checkpoint(model.path / f"fold{fold}.safetensors")
        if [str(c) for c in fmeta.get("classes", [])] != classes:
            raise DataError(model.path / f"fold{fold}.safetensors", "checkpoint classes differ from the model's meta")
        cfg = train_config(tp)
        scaler = Scaler.from_state(fmeta["scaler"]) if "scaler" in fmeta else None
        n = len(classes)
        if comp == "tabular_attention":
            net = TabularNet(len(columns), n, encoder=tp["encoder"], hidden=tp["hidden"], dim=tp["token_dim"],
                             depth=tp["depth"], heads=tp["heads"], dropout=tp["dropout"])
            x = scaler.transform(xf[rows["_row"].to_numpy()], columns, model.path)
            data = TensorDictDataset(x=torch.from_numpy(x), y=torch.as_tensor(np.array(rows["y"], dtype=np.int64)))
            forward = _forward_tabular
        else:
            sel = rows["_row"].to_numpy()
            use_mask = tp["mask_attention"] != "none"
            feats = None
            if comp == "image_classifier":
                net = ImageNet(tp["backbone"], n, img_size=tp["image_size"], mask_attention=tp["mask_attention"],
                               drop_rate=tp["drop_rate"])
                forward = _forward_image
            else:
                net = MultiModalNet(tp["backbone"], len(columns), n, fusion=tp["fusion"], tabular=tp["tabular"],
                                    hidden=tp["hidden"], img_size=tp["image_size"], mask_attention=tp["mask_attention"],
                                    dropout=tp["dropout"], token_dim=tp["token_dim"], depth=tp["depth"],
                                    heads=tp["heads"])
                feats = scaler.transform(xf[rows["_feat"].to_numpy()], columns, model.path)
                forward = _forward_multimodal
            if use_mask and msks is None:
                raise DataError(model.path, f"the model uses mask_attention {tp['mask_attention']!r}: give masks")
            data = _ImageData(imgs[sel], None if msks is None else msks[sel], rows["y"].to_numpy(),
                              model.meta["mean"], model.meta["std"], use_mask=use_mask, features=feats)
        net.load_state_dict(state)
        return predict_proba(net, data, forward=forward, config=cfg, device=ctx.device)


COMPONENTS = (ImageClassifier, SklearnClassifier, TabularAttention, MultiModal, ApplyClassifier)


@hookimpl
def register_classifiers(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
