"""``apply_bundle``: a trained MIL pipeline's stored fold (or refit) applied to new patients.
What the export writes of a MIL step, and the model input both compute, is
:mod:`hemaflow.lib.mil_bundle` (re-exported here).

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Predictions, TableArtifact
from hemaflow.core.bases import MILModel
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.mil_bags import apply_scaler, build_instances, make_bags
from hemaflow.lib.mil_bundle import (COHORT_FACTOR, COHORT_MIN, ENCODER_TRAIN_ONLY, OOD_FACTOR,  # noqa: F401
                                     _sources, aligned_blocks, bag_means, export_encoder, export_mil, model_input,
                                     ood_scores)

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
