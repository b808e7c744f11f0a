"""A MIL step's bundle parts: what :mod:`hemaflow.core.bundle_export` writes of a trained MIL
step (fold ``k`` or the refit: network weights or the baseline's coefficients, PCA and scaler,
class order, feature columns, out-of-distribution statistics) and the model input that both the
export and ``apply_bundle`` (:mod:`hemaflow.plugins.mil.apply`) compute from the instance tables,
so the two cannot drift apart."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.errors import DataError
from hemaflow.lib.mil_bags import _by_cell, _feature_columns, apply_scaler, build_instances, make_bags

#: training-time parameters of ``instance_encoder`` that mean nothing with ``pretrain: none``
ENCODER_TRAIN_ONLY = ("epochs", "lr", "max_cells", "temperature", "projection_dim")
#: the OOD threshold is this factor times the largest score of a training-cohort patient
OOD_FACTOR = 1.25
#: a group of at least COHORT_MIN new patients whose median score is above COHORT_FACTOR times the
#: training cohort's median is warned as a whole (a shift too small to flag single patients)
COHORT_FACTOR, COHORT_MIN = 1.5, 5


# -- the model input, shared by export and apply ------------------------------------------------
def aligned_blocks(inst_table: pd.DataFrame, sources: dict[str, Any], columns: dict[str, list[str]],
                   fold: int | None) -> list[tuple[str, np.ndarray]]:
    """(block name, matrix aligned with ``inst_table``) in the stored column order; a per-fold
    table contributes the rows of ``fold`` (the bundle's), a fold-independent one all rows."""
    ids = pd.Index(inst_table["cell_id"].astype(str))
    out = []
    for name in columns:
        art = sources.get(name)
        if art is None:
            raise DataError("<recipe>", f"the bundle's model reads `{name}` instances, but the step has no "
                                        f"{name!r} input")
        t = art.table
        if fold is not None and "fold" in t.columns and (t["fold"] >= 0).any():
            t = t[t["fold"] == fold]
        missing = [c for c in columns[name] if c not in t.columns]
        if missing:
            raise DataError(art.path, f"{len(missing)} feature column(s) the bundle's model was trained on are "
                                      f"missing, e.g. {missing[:3]}; the inference path must compute the same "
                                      f"features")
        out.append((name, _by_cell(t).reindex(ids)[columns[name]].to_numpy(np.float32)))
    return out


def model_input(blocks: list[tuple[str, np.ndarray]], pca: dict[str, np.ndarray]) -> np.ndarray:
    """The MIL step's instance matrix before its scaler: embeddings projected on the stored PCA
    (exactly as :func:`hemaflow.lib.mil_bags.fit_pca` projected the training instances)."""
    parts = []
    for name, block in blocks:
        if name == "embeddings" and "pca_components" in pca:
            z = apply_scaler(block, pca["pca_mean"], pca["pca_std"]).astype(np.float64)
            block = (z @ pca["pca_components"].T).astype(np.float32)
        parts.append(block)
    n = len(blocks[0][1]) if blocks else 0
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)


def bag_means(x: np.ndarray, bags: dict[str, np.ndarray], patients: list[str]) -> np.ndarray:
    """One row per patient: the mean of its instances' model features (NaN ignored)."""
    import warnings

    out = np.full((len(patients), x.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature missing in every cell of a bag
        for i, q in enumerate(patients):
            out[i] = np.nanmean(np.asarray(x[bags[q]], np.float64), axis=0)
    return out


def ood_scores(rows: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Per patient row: the mean |z| over the features, z of the patient's mean cell features
    against the training cohort's patients (clipped at 10, missing values 0)."""
    with np.errstate(all="ignore"):
        z = np.abs((rows - mean) / sd)
    z[~np.isfinite(z)] = 0.0
    z = np.minimum(z, 10.0)
    return z.mean(axis=1) if z.shape[1] else np.zeros(len(rows))


def _sources(embeddings, features) -> dict[str, Any]:
    return {k: v for k, v in (("embeddings", embeddings), ("features", features)) if v is not None}


# -- export (called by hemaflow.core.bundle_export) ----------------------------------------------------
def export_mil(step_id: str, comp: Any, outputs: dict[str, Any], inputs: dict[str, Any], fold: int,
               dest: Path) -> dict[str, Any]:
    """Write the MIL step's fold ``fold`` into ``dest`` (the bundle's ``parts/<step>``); return
    the part's description for ``bundle.json``.

    Raises:
        DataError: a model the bundle cannot carry without pickles (random forest), or a fold
            the step did not train.
    """
    from safetensors.numpy import save_file

    from hemaflow.lib.mil_bags import select_modalities

    model = outputs["model"]
    meta, mdir = model.meta, Path(model.path)
    folds = [int(f) for f in meta.get("folds", [])]
    if fold not in folds:
        raise DataError(mdir, f"the MIL step {step_id!r} has no fold {fold}; its folds are {folds}")
    params = dict(comp.params)
    embeddings, features = select_modalities(params.get("modalities"), inputs.get("embeddings"),
                                             inputs.get("features"))
    if params.get("encoder"):
        raise DataError(mdir, "end-to-end MIL (an `encoder` inside the MIL step) cannot be exported yet")
    src = _sources(embeddings, features)
    columns = {name: _feature_columns(art) for name, art in src.items()}
    scaler = dict(np.load(mdir / f"fold{fold}_scaler.npz"))
    pca = {k: np.asarray(v, np.float32) for k, v in scaler.items() if k.startswith("pca_")}
    dest.mkdir(parents=True, exist_ok=True)
    inst = build_instances(embeddings=embeddings, features=features, cells=inputs.get("cells"))
    bags = make_bags(inst.table)
    x = model_input(aligned_blocks(inst.table, src, columns, fold), pca)
    split = inputs["split"]
    part: dict[str, Any] = {"component": comp.name, "version": comp.version, "params": params,
                            "classes": list(meta["classes"]), "fold": fold, "columns": columns,
                            "decision_rule": "argmax of the class probabilities"}
    kind = getattr(comp, "bundle_part", None)  # set by the component classes that can be exported
    if kind == "pooled_baseline":
        if params["model"] != "logistic_regression":
            raise DataError(mdir, f"a {params['model']} baseline cannot be exported without pickles; use "
                                  f"model: logistic_regression")
        train = [str(v) for v in scaler["train_patients"]]
        lr = dict(np.load(mdir / f"fold{fold}_model.npz"))
        tensors = {"mean": scaler["mean"], "std": scaler["std"], "coef": lr["coef"], "intercept": lr["intercept"],
                   "classes_index": np.asarray(lr["classes_"], np.int64), **pca}
        part["kind"] = "pooled_baseline"
        part["stats"] = list(params["stats"])
    elif kind == "aggregator":
        shutil.copyfile(mdir / f"fold{fold}.safetensors", dest / "net.safetensors")
        tensors = {"mean": scaler["mean"], "std": scaler["std"], **pca}
        train = sorted(q for q in split.patients(fold, "train") if q in bags)
        part["kind"] = "aggregator"
        part["in_dim"] = int(x.shape[1])
        part["files"] = ["net.safetensors"]
    else:
        raise DataError(mdir, f"component {comp.name!r} of step {step_id!r} cannot be exported")
    # the OOD reference: every patient of the training cohort (the run's data, fold k's features)
    cohort = sorted(bags)
    rows = bag_means(x, bags, cohort)
    with np.errstate(all="ignore"):
        o_mean, o_sd = np.nanmean(rows, axis=0), np.nanstd(rows, axis=0)
    o_mean = np.where(np.isfinite(o_mean), o_mean, 0.0)
    o_sd = np.where(np.isfinite(o_sd) & (o_sd > 1e-8), o_sd, 1.0)
    ref_scores = ood_scores(rows, o_mean, o_sd)
    tensors.update(ood_mean=o_mean, ood_sd=o_sd)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(dest / "state.safetensors"))
    part["files"] = [*part.get("files", []), "state.safetensors"]
    part["ood"] = {"score": "mean |z| over the model's instance features of the patient's mean cell, z against the "
                            "training cohort's patients (mean and sd per feature)",
                   "n_reference_patients": len(cohort), "n_train_patients": len(train),
                   "reference_max": float(ref_scores.max()), "reference_median": float(np.median(ref_scores)),
                   "factor": OOD_FACTOR, "threshold": float(OOD_FACTOR * ref_scores.max())}
    return part


def export_encoder(comp: Any, outputs: dict[str, Any], fold: int, dest: Path) -> str:
    """Copy the encoder checkpoint that embedded fold ``fold``'s instances; return its file name."""
    mdir = Path(outputs["model"].path)
    name = "encoder.safetensors" if comp.params["pretrain"] == "none" else f"fold{fold}.safetensors"
    if not (mdir / name).exists():
        raise DataError(mdir, f"the encoder has no checkpoint {name} (fold {fold})")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mdir / name, dest / "encoder.safetensors")
    return "encoder.safetensors"
