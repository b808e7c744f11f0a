"""``apply_bundle``: a trained MIL pipeline's stored fold applied to new patients, and the parts
of a run that :mod:`hemaflow.core.bundle` collects into a bundle.

A bundle (docs/bundles.md) holds what the inference path fitted: the stain reference, the
instance encoder's weights, and the MIL step's fold ``k`` (network weights or the baseline's
coefficients, the PCA and scaler of the instance features, class order, feature columns,
summary statistics for the out-of-distribution check). The inference path runs through the
normal Runner on a generated recipe: the normalizer with ``reference:`` the stored image, the
encoder with ``pretrain: none`` and ``pretrained:`` the stored weights, the stateless steps
(segmentation, crops, radiomics) unchanged, and this component in place of the MIL step.
Nothing is refitted.

Example (a recipe step)::

    mil:
      uses: apply_bundle
      inputs: {embeddings: encoder, features: radiomics, cells: cells}
      with: {bundle: model.hfb}
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Predictions, TableArtifact
from hemaflow.core.bases import MILModel
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
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


# -- export (called by hemaflow.core.bundle) ----------------------------------------------------
def export_mil(step_id: str, comp: Any, outputs: dict[str, Any], inputs: dict[str, Any], fold: int,
               dest: Path) -> dict[str, Any]:
    """Write the MIL step's fold ``fold`` into ``dest`` (the bundle's ``parts/<step>``); return
    the part's description for ``bundle.json``.

    Raises:
        DataError: a model the bundle cannot carry without pickles (random forest), or a fold
            the step did not train.
    """
    from safetensors.numpy import save_file

    from hemaflow.plugins.mil.baseline import PooledBaseline
    from hemaflow.plugins.mil.base import MILAggregator
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
    if isinstance(comp, PooledBaseline):
        if params["model"] != "logistic_regression":
            raise DataError(mdir, f"a {params['model']} baseline cannot be exported without pickles; use "
                                  f"model: logistic_regression")
        train = [str(v) for v in scaler["train_patients"]]
        lr = dict(np.load(mdir / f"fold{fold}_model.npz"))
        tensors = {"mean": scaler["mean"], "std": scaler["std"], "coef": lr["coef"], "intercept": lr["intercept"],
                   "classes_index": np.asarray(lr["classes_"], np.int64), **pca}
        part["kind"] = "pooled_baseline"
        part["stats"] = list(params["stats"])
    elif isinstance(comp, MILAggregator):
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


# -- apply ----------------------------------------------------------------------------------------
class ApplyBundle(MILModel):
    """Apply a bundle's MIL model (fold ``k`` of a finished run) to new patients; nothing is refitted.

    Every patient of the instance inputs is predicted with the stored scaler, PCA and network
    (or baseline coefficients); ``predictions`` carry the probabilities, ``ood_score`` and
    ``ood_warning``, ``attention`` the score of every cell. A patient whose pooled features are
    far from the training patients' (score above the bundle's threshold) is a recorded warning;
    so is one whose raw images' stain (``images``, before normalization: :mod:`hemaflow.lib.stain_stats`)
    is far from the training patients' (``stain_score``, ``stain_warning``; ``ood_warning`` is either).
    """

    name = "apply_bundle"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "bundle": {"type": ["string", "null"], "default": None, "format": "path",
                       "description": "the bundle folder (hemaflow export); a .zip is unpacked by hemaflow predict"},
            "step": {"type": "string", "default": "mil", "description": "the bundle's MIL part (its step id)"},
            "ood_threshold": {"type": ["number", "null"], "minimum": 0, "default": None,
                              "description": "warn above this OOD score; null: the bundle's (1.25 x the largest "
                                             "training patient's score)"},
            "version_policy": {"enum": ["error", "warn"], "default": "error",
                               "description": "a bundle of another hemaflow major.minor: refuse it, or apply it with "
                                              "a recorded warning"},
            "top_k": {"type": "integer", "minimum": 1, "default": 5, "description": "cells per patient in the gallery"},
            "gallery_patients": {"type": "integer", "minimum": 0, "default": 6,
                                 "description": "patients shown with their top-attention cells in the report"},
        },
        "additionalProperties": False,
    }
    inputs = {"embeddings": "FeatureTable?", "features": "FeatureTable?", "cells": "CellSet?", "images": "ImageSet?"}
    outputs = {"predictions": "Predictions", "attention": "Table", "metrics": "Metrics"}

    def check_params(self) -> list[tuple[str, str]]:
        b = self.params.get("bundle")
        if not b:
            return [("/bundle", "required: the bundle folder written by `hemaflow export`")]
        if not Path(b).expanduser().is_dir():
            return [("/bundle", f"{b}: bundle folder not found")]
        return []

    def run(self, ctx: RunContext, embeddings=None, features=None, cells=None, images=None) -> dict[str, Any]:
        import torch
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in training: the same kernels, the same numbers
        try:
            with threadpool_limits(limits=1):
                return self._run(ctx, embeddings, features, cells, images)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: RunContext, embeddings, features, cells, images=None) -> dict[str, Any]:
        import warnings

        from hemaflow.core.bundle import BundleVersionWarning, load_bundle

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BundleVersionWarning)
            b = load_bundle(Path(self.params["bundle"]).expanduser(), version_policy=self.params["version_policy"])
        if b.info.get("version_warning"):
            ctx.warn(b.info["version_warning"])
        part = b.part(self.params["step"])
        pdir = b.root / "parts" / self.params["step"]
        from safetensors.numpy import load_file

        st = load_file(str(pdir / "state.safetensors"))
        classes, columns = list(part["classes"]), dict(part["columns"])
        src = _sources(embeddings, features)
        base = src.get("embeddings", src.get("features"))
        if base is None:
            raise DataError("<recipe>", "apply_bundle needs the `embeddings` or `features` input the bundle's "
                                        "model reads")
        inst = build_instances(embeddings=src.get("embeddings"), features=src.get("features"), cells=cells)
        table = inst.table
        bags = make_bags(table)
        if not bags:
            raise DataError(base.path, "no instances (no cell found in any image): nothing to predict")
        pca = {k: st[k] for k in ("pca_mean", "pca_std", "pca_components") if k in st}
        x = model_input(aligned_blocks(table, src, columns, None), pca)
        patients = sorted(bags)
        labels = table.groupby("patient_id")["label"].first().astype(str).to_dict() if "label" in table else {}
        thr = self.params["ood_threshold"]
        thr = float(part["ood"]["threshold"] if thr is None else thr)
        scores_ood = ood_scores(bag_means(x, bags, patients), st["ood_mean"], st["ood_sd"])
        stain_ref = part.get("stain_ood") or {}
        scores_stain = np.full(len(patients), np.nan)
        if images is not None and stain_ref:
            from hemaflow.lib.stain_stats import patient_stain_rows, stain_scores

            scores_stain = stain_scores(patient_stain_rows(images, patients), np.asarray(stain_ref["mean"]),
                                        np.asarray(stain_ref["sd"]))
        fold = int(part["fold"])
        if part["kind"] == "pooled_baseline":
            probs_all, att_scores = self._baseline(st, x, bags, patients, part, classes)
        else:
            probs_all, att_scores = self._aggregator(ctx, st, pdir, x, bags, patients, part, classes)
        pred_rows, att_rows, flagged = [], [], []
        for i, q in enumerate(patients):
            pr = probs_all[i]
            y = labels.get(q, "")
            row = {"id": q, "level": "patient", "fold": fold, "y_true": y if y in classes else "",
                   "y_pred": classes[int(np.argmax(pr))], "n_instances": len(bags[q]),
                   "ood_score": float(scores_ood[i]), "ood_warning": bool(scores_ood[i] > thr)}
            stain_warn = bool(stain_ref and scores_stain[i] > stain_ref["threshold"])
            if stain_ref:
                row.update(stain_score=float(scores_stain[i]), stain_warning=stain_warn)
            if stain_warn:
                ctx.warn(f"patient {q!r}: out of distribution by stain (stain score {scores_stain[i]:.2f} > "
                         f"{stain_ref['threshold']:.2f}: its raw images' colour is far from the bundle's training "
                         f"patients', before normalization); check the stain and scanner before trusting it")
            row["ood_warning"] = row["ood_warning"] or stain_warn
            row.update({f"prob_{c}": float(v) for c, v in zip(classes, pr)})
            pred_rows.append(row)
            if row["ood_warning"]:
                flagged.append(q)
            if scores_ood[i] > thr:
                ctx.warn(f"patient {q!r}: out of distribution (OOD score {scores_ood[i]:.2f} > {thr:.2f}: its "
                         f"pooled cell features are far from the bundle's training patients); do not trust "
                         f"this prediction without checking the stain, scale and image quality")
            sub = table.iloc[bags[q]]
            s = att_scores[q]
            order = np.argsort(-s, kind="stable")
            rank = np.empty(len(order), np.int64)
            rank[order] = np.arange(1, len(order) + 1)
            att = pd.DataFrame({"patient_id": q, "cell_id": sub["cell_id"].to_numpy(),
                                "image_id": sub["image_id"].to_numpy(), "fold": fold, "score": s, "rank": rank})
            for c in ("centroid_y", "centroid_x", "crop_index", "truth"):
                if c in sub.columns:
                    att[c] = sub[c].to_numpy()
            att_rows.append(att)
        ref_median = float(part["ood"]["reference_median"])
        cohort_median = float(np.median(scores_ood))
        cohort_shift = bool(len(patients) >= COHORT_MIN and cohort_median > COHORT_FACTOR * ref_median)
        stain_median = float(np.nanmedian(scores_stain)) if np.isfinite(scores_stain).any() else None
        if stain_median is not None and len(patients) >= COHORT_MIN:
            cohort_shift = cohort_shift or stain_median > COHORT_FACTOR * stain_ref["reference_median"]
        if cohort_shift:
            ctx.warn(f"these {len(patients)} patients as a group are far from the bundle's training cohort: median "
                     f"OOD score {cohort_median:.2f} > {COHORT_FACTOR} x the training cohort's median "
                     f"{ref_median:.2f} (another stain, scanner or scale?); check before trusting the predictions")
        pred_df = pd.DataFrame(pred_rows)
        preds = Predictions(ctx.out_dir("predictions"), pred_df,
                            {"classes": classes, "source": self.name, "level": "patient"}).save()
        att_df = pd.concat(att_rows, ignore_index=True)
        attention = TableArtifact(ctx.out_dir("attention"), att_df, {"source": self.name}).save()
        mdir = ctx.out_dir("metrics")
        att_df.to_csv(mdir / "attention.csv", index=False)
        m = {"bundle": {"fold": fold, "component": part["component"], "n_patients": len(patients),
                        "n_instances": int(len(table)), "ood_threshold": thr, "ood_flagged": flagged,
                        "ood_median": cohort_median, "ood_reference_median": ref_median, "cohort_shift": cohort_shift,
                        "stain_median": stain_median,
                        "source_run": b.info.get("source_run")}}
        metrics = Metrics(mdir, m, {"exported_files": ["attention.csv"]}).save()
        self._report(ctx, b, part, pred_df, att_df, cells, thr, flagged, cohort_shift)
        return {"predictions": preds, "attention": attention, "metrics": metrics}

    def _baseline(self, st, x, bags, patients, part, classes):
        from sklearn.linear_model import LogisticRegression

        from hemaflow.plugins.mil.baseline import pool_bags

        lr = LogisticRegression()
        lr.coef_, lr.intercept_ = st["coef"], st["intercept"]
        lr.classes_ = st["classes_index"]
        z = apply_scaler(pool_bags(x, bags, patients, part["stats"]), st["mean"], st["std"])
        probs = np.zeros((len(patients), len(classes)))
        probs[:, lr.classes_] = lr.predict_proba(z)
        return probs, {q: np.full(len(bags[q]), 1.0 / len(bags[q])) for q in patients}

    def _aggregator(self, ctx, st, pdir, x, bags, patients, part, classes):
        from safetensors.torch import load_file

        from hemaflow.core.plugins import get_registry

        cls = get_registry().get("mil", part["component"])
        agg = cls(**part["params"])
        xs = apply_scaler(x, st["mean"], st["std"])
        if xs.shape[1] != int(part["in_dim"]):
            raise DataError(pdir, f"the model takes {part['in_dim']} instance features, the new data give "
                                  f"{xs.shape[1]}")
        net = agg.build_network(xs.shape[1], len(classes))
        try:
            net.load_state_dict(load_file(str(pdir / "net.safetensors")))
        except RuntimeError as exc:
            raise DataError(pdir / "net.safetensors", f"does not fit {part['component']}'s network: {exc}") from None
        rng = ctx.rng("predict", part["fold"])
        probs, att = [], {}
        for q in patients:
            p, s = agg.predict(net, xs[bags[q]], rng)
            probs.append(p)
            att[q] = s
        return np.stack(probs), att

    def _report(self, ctx, b, part, pred_df, att_df, cells, thr, flagged, cohort_shift) -> None:
        section = "Bundle"
        ctx.report.text("Bundle", f"{b.root.name}: fold {part['fold']} of run {b.info.get('source_run')} "
                        f"({part['component']}, trained with hemaflow {b.info.get('hemaflow')}); "
                        f"{len(pred_df)} patients predicted, nothing refitted.", section=section)
        cols = ["id", "y_pred", *[c for c in pred_df.columns if c.startswith("prob_")], "n_instances", "ood_score",
                *[c for c in ("stain_score", "stain_warning") if c in pred_df.columns], "ood_warning"]
        ctx.report.table("Predictions (OOD: out-of-distribution warning)",
                         pred_df[cols].round(4).to_dict("records"), section=section)
        above = [str(q) for q in pred_df.loc[pred_df["ood_score"] > thr, "id"]]  # the feature score's own (stain: below)
        head = (f"{len(above)} of {len(pred_df)} patients above the threshold {thr:.2f}: " + ", ".join(above)
                if above else f"no patient above the threshold {thr:.2f}")
        ood = part["ood"]
        ctx.report.text("Out-of-distribution check",
                        f"{head} (training cohort: {ood['n_reference_patients']} patients, median "
                        f"{ood['reference_median']:.2f}, max {ood['reference_max']:.2f}; these patients: median "
                        f"{pred_df['ood_score'].median():.2f}"
                        + (f", above {COHORT_FACTOR} x the training median: the group is warned as shifted"
                           if cohort_shift else "") + f"). Score: {ood['score']}.", section=section)
        stain = part.get("stain_ood") or {}
        if "stain_score" in pred_df.columns and stain:
            n_stain = int(pred_df["stain_warning"].sum())
            ctx.report.text("Stain check (raw images, before normalization)",
                            f"{n_stain} of {len(pred_df)} patients above the stain threshold {stain['threshold']:.2f} "
                            f"(training cohort: {stain['n_reference_patients']} patients, median "
                            f"{stain['reference_median']:.2f}, max {stain['reference_max']:.2f}; these patients: "
                            f"median {pred_df['stain_score'].median():.2f}). Score: {stain['score']}.", section=section)
        n_show, k = int(self.params["gallery_patients"]), int(self.params["top_k"])
        if cells is None or n_show == 0 or "crop_index" not in att_df.columns:
            return
        from hemaflow.lib.imageio import png_bytes

        crops = cells.crops
        for q in list(pred_df["id"])[:n_show]:
            g = att_df[att_df["patient_id"] == q].sort_values("rank").head(k)
            images = [(f"#{int(r['rank'])} {r['score']:.3f} {r['image_id']}",
                       png_bytes(np.asarray(crops[int(r["crop_index"])])))
                      for _, r in g.iterrows() if pd.notna(r.get("crop_index"))]
            if images:
                y = pred_df.loc[pred_df["id"] == q, "y_pred"].iloc[0]
                ctx.report.gallery(f"patient {q}: predicted {y} (top-{k} cells by score)", images, section=section)


def kit_params(root: Path) -> dict[str, Any]:
    """Parameters for the conformance kit (``hemaflow.testing``): a bundle holding only a tiny
    ``mean_mil`` trained on the kit's own fixtures (same feature columns as its inputs)."""
    import hemaflow
    from hemaflow.core.bundle import FORMAT, FORMAT_VERSION, seal
    from hemaflow.plugins.mil.components import MeanMIL
    from hemaflow.testing import make, make_context
    from hemaflow.testing.fixtures import Fixtures

    fx = Fixtures(root / "fixtures")
    comp = make(MeanMIL, epochs=1, batch_size=2, patience=0, hidden=8, gallery_patients=0)
    out = comp.run(make_context(root / "train"), split=fx.split, features=fx.features)
    fold = int(out["model"].meta["folds"][0])
    dest = root / "kit.hfb"
    part = export_mil("mil", comp, out, {"split": fx.split, "features": fx.features}, fold, dest / "parts" / "mil")
    (dest / "recipe.json").write_text(json.dumps({"name": "kit", "seed": 0, "device": "cpu", "data_step": "data",
                                                  "steps": {}, "report": {"uses": "html"}}))
    seal(dest, {"format": FORMAT, "format_version": FORMAT_VERSION, "hemaflow": hemaflow.__version__, "fold": fold,
                "classes": part["classes"], "source_run": "conformance kit", "parts": {"mil": part}, "expects": {}})
    return {"bundle": str(dest)}


COMPONENTS = (ApplyBundle,)


@hookimpl
def register_mil_models(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
