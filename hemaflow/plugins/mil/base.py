"""The base of every learned MIL aggregator: :class:`MILAggregator` and its shared parameters.

A new aggregator is a :class:`MILAggregator` subclass whose :meth:`~MILAggregator.make_net`
returns a :class:`hemaflow.lib.mil_nets.MILNet` implementing ``pool(h, mask) -> (z, scores)``;
it is registered through ``register_mil_models`` and trained by the same loop as the built-ins
(:mod:`.components`; docs/tutorial.md builds one).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Metrics, Model, Predictions, TableArtifact
from hemaflow.core.bases import MILModel
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.lib.mil_bags import (NORMAL_TRUTH, apply_scaler, build_instances, fit_pca, fit_scaler, make_bags,
                                   patient_labels, precision_at_k, r_precision, select_modalities)
from hemaflow.lib.mil_training import predict_bag, train_fold
from hemaflow.plugins.splits import refit_epochs

# -- parameters ------------------------------------------------------------------------------
def _train_properties() -> dict[str, Any]:
    """The shared training loop's options (hemaflow.lib.training.TRAIN_SCHEMA) that apply
    to bags, with MIL defaults (``batch_size`` counts bags)."""
    import copy

    from hemaflow.lib.training import TRAIN_SCHEMA

    keep = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "schedule", "label_smoothing",
            "class_weighting", "patience", "select_metric", "grad_clip")
    props = {k: copy.deepcopy(TRAIN_SCHEMA[k]) for k in keep}
    for k, v in {"epochs": 40, "batch_size": 8, "lr": 0.001, "weight_decay": 0.0001, "patience": 8,
                 "select_metric": "loss"}.items():
        props[k]["default"] = v
    props["batch_size"]["description"] = "bags per optimizer step (padded to the largest bag of the batch and masked)"
    props["epochs"]["maximum"] = 1000
    return props


COMMON_PROPERTIES: dict[str, Any] = {
    **_train_properties(),
    "hidden": {"type": "integer", "minimum": 4, "maximum": 4096, "default": 128,
               "description": "width of the instance projection (and of the pooled bag vector)"},
    "dropout": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.25,
                "description": "dropout after the instance projection"},
    "modalities": {"type": ["array", "null"], "items": {"enum": ["embeddings", "features"]}, "minItems": 1,
                   "uniqueItems": True, "default": None,
                   "description": "instance inputs to use: embeddings (CNN), features (radiomics); null: every "
                                  "connected one. Ablations set [embeddings] (image only) or [features] (radiomics only)"},
    "embedding_pca": {"type": "integer", "minimum": 0, "default": 32,
                      "description": "reduce the CNN embeddings to this many principal components fitted on the "
                                     "fold's training instances (0: keep all); keeps a 500-1000-d embedding from "
                                     "drowning ~50 radiomics features on a few dozen training bags"},
    "encoder": {"type": ["object", "null"], "default": None, "additionalProperties": False,
                "description": "end-to-end MIL: a timm backbone embeds every instance's crop inside the MIL network "
                               "and is trained by the bag loss (needs the `cells` input, excludes an `embeddings` "
                               "input; `features` are concatenated). null: instances come from the inputs as they are "
                               "(a frozen, cached `embeddings` input is far cheaper: use it for aggregator ablations)",
                "properties": {
                    "backbone": {"type": "string", "minLength": 1, "default": "mobilenetv3_small_050",
                                 "description": "timm model name (built with num_classes=0)"},
                    "pretrained": {"type": ["string", "null"], "default": None,
                                   "description": "local weights file (.safetensors/.pth); nothing is downloaded"},
                    "image_size": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64,
                                   "description": "crops are resized to this many px"},
                }},
    "max_instances": {"type": "integer", "minimum": 0, "default": 512,
                      "description": "training only: a larger bag contributes a fresh random subset of this "
                                     "many instances each epoch (0: no cap); inference always uses all instances"},
    "standardize": {"type": "boolean", "default": True,
                    "description": "standardize instance features with mean/std of the fold's training "
                                   "instances (missing values take the training mean)"},
    "top_k": {"type": "integer", "minimum": 1, "default": 5,
              "description": "cells per patient shown in the gallery (top-k and bottom-k by score) and the k "
                             "of precision@k against generator ground truth"},
    "gallery_patients": {"type": "integer", "minimum": 0, "default": 6,
                         "description": "patients shown in the attention gallery of the report"},
}


def _schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**COMMON_PROPERTIES, **(extra or {})}, "additionalProperties": False}


class MILAggregator(MILModel):
    """Base of every learned MIL aggregator: bags, per-fold training, predictions, attention,
    report; a subclass only says which network pools the bag.

    A subclass sets ``name`` and ``version`` (its own: part of its cache key), implements
    :meth:`make_net` and, for extra ``with:`` keys, ``schema = MILAggregator.extend_schema({...})``.
    Everything else is shared: the instance join on ``cell_id``, one bag per patient, per-fold
    PCA and scaling fitted on training instances, the one training loop
    (:func:`hemaflow.lib.mil_training.train_fold`), predictions of each fold's test bags with
    all their instances, the attention table, metrics, the report gallery and the end-to-end
    ``encoder`` option (the backbone's embedding is put in front of the instance features, so
    ``make_net`` just sees a wider ``in_dim``).

    Inputs and outputs are those of :class:`hemaflow.core.bases.MILModel`.

    Example (a recipe step)::

        steps:
          mil:
            uses: gated_attention_mil
            inputs: {embeddings: encode, features: radiomics, cells: cells, split: split}
            with: {epochs: 40}
    """

    aggregator: ClassVar[str] = ""  # recorded in the Model's meta; empty: the component's name
    bundle_part: ClassVar[str] = "aggregator"  # how `hemaflow export` writes it (hemaflow.lib.mil_bundle)
    schema = _schema()
    inputs = {"split": "Split", "embeddings": "FeatureTable?", "features": "FeatureTable?", "cells": "CellSet?"}
    outputs = {"predictions": "Predictions", "model": "Model", "attention": "Table", "metrics": "Metrics"}

    @staticmethod
    def extend_schema(extra: dict[str, Any]) -> dict[str, Any]:
        """The shared parameter schema (training, ``hidden``, ``dropout``, ``modalities``,
        ``encoder``, ...) plus ``extra`` properties (each with a ``default``)."""
        return _schema(extra)

    # -- the extension points ----------------------------------------------------------------
    def make_net(self, in_dim: int, n_classes: int):
        """Return a fresh :class:`~hemaflow.lib.mil_nets.MILNet` for ``in_dim`` instance
        features and ``n_classes`` classes (called once per fold, after the fold's torch seed is
        set). The shared parameters are in ``self.params`` (``hidden``, ``dropout``, ...).
        Import torch-using modules inside this method, so ``hemaflow plugins`` stays fast."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_net(in_dim, n_classes)")

    def sub_bag_size(self) -> int:
        """Train on random sub-bags of this many instances instead of whole bags (0: whole
        bags, capped at ``max_instances``)."""
        return 0

    def check_bags(self, ctx: RunContext, bags: dict[str, Any]) -> None:
        """Warn (``ctx.warn``) about bags this aggregator cannot use as intended; default: nothing."""

    def predict(self, net, x: np.ndarray, rng: np.random.Generator, crops=None) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities (C,), instance scores (n,) summing to one) for one test bag
        ``x`` (n, d); default: the network on the whole bag (:func:`~hemaflow.lib.mil_training.predict_bag`)."""
        return predict_bag(net, x, crops=crops)

    def build_network(self, in_dim: int, n_classes: int, seed: int = 0):
        """:meth:`make_net`, wrapped in the end-to-end encoder when ``encoder`` is set (its
        crop augmentation seeded by ``seed``)."""
        enc = self.params.get("encoder")
        if enc:
            from hemaflow.lib.mil_nets import end_to_end

            return end_to_end(lambda width: self.make_net(width, n_classes), enc, in_dim, seed=seed)
        return self.make_net(in_dim, n_classes)

    def fingerprint(self) -> str | None:
        """The content hash of the end-to-end encoder's ``pretrained`` weights file, if any (part of
        the cache key)."""
        from pathlib import Path

        from hemaflow.lib.backbones import checkpoint_file, weights_sha256

        w = (self.params.get("encoder") or {}).get("pretrained")
        return weights_sha256(checkpoint_file(w)) if w and Path(w).expanduser().exists() else None

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see: an unknown timm backbone or a missing weights file
        for the end-to-end ``encoder``."""
        enc = self.params.get("encoder") or {}
        out = []
        if enc:
            from pathlib import Path

            from hemaflow.lib.backbones import timm_model_problem

            problem = timm_model_problem(str(enc.get("backbone", "mobilenetv3_small_050")))
            if problem:
                out.append(("/encoder/backbone", problem))
            if enc.get("pretrained") and not Path(enc["pretrained"]).expanduser().exists():
                out.append(("/encoder/pretrained", f"{enc['pretrained']}: file not found"))
        return out

    def run(self, ctx: RunContext, split, embeddings=None, features=None, cells=None) -> dict[str, Any]:
        import torch

        # bags are small matrices: one thread is faster than several fighting over 2 busy cores
        from threadpoolctl import threadpool_limits

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):  # numpy's BLAS too (the PCA): measured 1 s vs 5 ms per fold
                return self._run(ctx, split, embeddings, features, cells)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: RunContext, split, embeddings, features, cells) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        p = self.params
        embeddings, features = select_modalities(p.get("modalities"), embeddings, features)
        enc = p.get("encoder")
        if enc:
            if cells is None:
                raise DataError("<recipe>", "an end-to-end `encoder` needs the `cells` input (the crops it trains on)")
            if embeddings is not None:
                raise DataError("<recipe>", "give either an `embeddings` input (a frozen encoder) or an end-to-end "
                                            "`encoder`, not both")
        inst = build_instances(embeddings=embeddings, features=features, cells=cells, all_cells=bool(enc))
        table, classes = inst.table, inst.classes
        source = (cells if enc else (embeddings or features)).path
        if not classes:
            raise DataError(source, "instances carry no class labels")
        labels_str = patient_labels(table, source)
        unknown = sorted({v for v in labels_str.values() if v not in classes})
        if unknown:
            raise DataError(source, f"labels {unknown} are not among the classes {classes}")
        labels = {pid: classes.index(v) for pid, v in labels_str.items()}
        bags = make_bags(table)
        self.check_bags(ctx, bags)
        has_truth = "truth" in table.columns and table["truth"].notna().any()
        abnormal = (~table["truth"].astype(str).str.lower().isin(NORMAL_TRUTH)).to_numpy() if has_truth else None

        crops = None
        if enc:
            ci = pd.to_numeric(table["crop_index"], errors="coerce")
            if ci.isna().any():
                raise DataError(cells.path, f"{int(ci.isna().sum())} instance(s) have no crop_index")
            crops = torch.from_numpy(np.ascontiguousarray(np.asarray(cells.crops)[ci.astype(int).to_numpy()]))
        model_dir = ctx.out_dir("model")
        pred_rows, att_rows, fold_info, empty = [], [], [], []
        refit, refit_info, chosen = split.refit_fold(), None, []
        for fold in ctx.progress(split.fit_folds(), description=f"{self.name} folds"):
            parts = {part: sorted(split.patients(fold, part)) for part in ("train", "val", "test")}
            missing = {part: [q for q in pats if q not in bags] for part, pats in parts.items()}
            for part, pats in missing.items() if fold != refit else ():  # the folds warned already
                for q in pats:
                    empty.append({"fold": fold, "patient_id": q, "partition": part})
                    ctx.warn(f"fold {fold}: patient {q!r} ({part}) has no instances (empty bag); "
                             f"{'excluded from predictions' if part == 'test' else 'not used for training'}")
            train = [q for q in parts["train"] if q in bags]
            val = [q for q in parts["val"] if q in bags]
            test = [q for q in parts["test"] if q in bags]
            if not train:
                raise DataError(split.path, f"fold {fold} has no training patient with instances")
            tr_rows = np.concatenate([bags[q] for q in train])
            parts, pca = [], {}
            for bname, block in inst.fold_blocks(fold):
                k = int(p["embedding_pca"])
                if bname == "embeddings" and k and block.shape[1] > k:
                    # PCA fitted on the fold's training instances only
                    block, pca = fit_pca(block, tr_rows, k)
                parts.append(block)
            x = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(table), 0), np.float32)
            mean = np.zeros(x.shape[1], np.float32)
            std = np.ones(x.shape[1], np.float32)
            if p["standardize"]:
                mean, std = fit_scaler(x[tr_rows])
            x = apply_scaler(x, mean, std)
            torch.manual_seed(ctx.torch_seed("fold", fold))
            net = self.build_network(x.shape[1], len(classes), seed=ctx.torch_seed("augment", fold))
            rng = ctx.rng("train", fold)
            fold_p = p if fold != refit else dict(p, epochs=refit_epochs(chosen))  # no val: the folds' epochs
            info = train_fold(net, x, bags, labels, train, val, fold_p, rng, sub_bag_size=self.sub_bag_size(),
                              ctx=ctx, classes=classes, name="refit" if fold == refit else f"fold{fold}",
                              seed=ctx.torch_seed("fit", fold), crops=crops)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(model_dir / f"fold{fold}.safetensors"))
            np.savez(model_dir / f"fold{fold}_scaler.npz", mean=mean, std=std, **pca)
            (model_dir / f"fold{fold}_history.json").write_text(json.dumps(info["history"]))
            if fold == refit:
                refit_info = {"fold": int(fold), "train": len(train), "epochs": int(fold_p["epochs"]),
                              "chosen_epochs": chosen, "final_train_loss": float(info["history"][-1]["train_loss"])}
                ctx.log(f"refit (fold {fold}): {len(train)} patients, {fold_p['epochs']} epochs (median of the "
                        f"folds' validation-chosen epochs {chosen})")
                continue
            chosen.append(int(info["best_epoch"]))
            fold_prec = []
            prng = ctx.rng("predict", fold)
            for q in test:
                probs, scores = self.predict(net, x[bags[q]], prng, crops=None if crops is None else crops[bags[q]])
                row = {"id": q, "level": "patient", "fold": int(fold), "y_true": classes[labels[q]],
                       "y_pred": classes[int(np.argmax(probs))], "n_instances": len(bags[q])}
                row.update({f"prob_{c}": float(v) for c, v in zip(classes, probs)})
                pred_rows.append(row)
                sub = table.iloc[bags[q]]
                order = np.argsort(-scores, kind="stable")
                rank = np.empty(len(order), np.int64)
                rank[order] = np.arange(1, len(order) + 1)
                att = pd.DataFrame({"patient_id": q, "cell_id": sub["cell_id"].to_numpy(),
                                    "image_id": sub["image_id"].to_numpy(), "fold": int(fold),
                                    "score": scores, "rank": rank})
                for c in ("centroid_y", "centroid_x", "crop_index", "truth"):
                    if c in sub.columns:
                        att[c] = sub[c].to_numpy()
                att_rows.append(att)
                if abnormal is not None and abnormal[bags[q]].any():
                    fold_prec.append(r_precision(scores, abnormal[bags[q]], int(p["top_k"])))
            fold_info.append({"fold": int(fold), "train": len(train), "val": len(val), "test": len(test),
                              "epochs_run": info["epochs_run"], "best_loss": info["best_loss"],
                              **({"r_precision_at_k": float(np.mean(fold_prec))} if fold_prec else {})})
            ctx.log(f"fold {fold}: {info['epochs_run']} epochs, best loss {info['best_loss']:.3f}")

        pred_df = pd.DataFrame(pred_rows)
        if pred_df.empty:
            pred_df = pd.DataFrame(columns=["id", "level", "fold", "y_true", "y_pred", *[f"prob_{c}" for c in classes]])
        preds = Predictions(ctx.out_dir("predictions"), pred_df,
                            {"classes": classes, "source": self.name, "level": "patient"}).save()
        att_df = pd.concat(att_rows, ignore_index=True) if att_rows else pd.DataFrame(
            columns=["patient_id", "cell_id", "image_id", "fold", "score", "rank"])
        attention = TableArtifact(ctx.out_dir("attention"), att_df, {"source": self.name}).save()
        mil_metrics = self._metrics(table, bags, att_df, abnormal, empty, fold_info, classes)
        if refit_info:
            mil_metrics["refit"] = refit_info
        metrics = Metrics(ctx.out_dir("metrics"), {"mil": mil_metrics}).save()
        model = Model(model_dir, {"aggregator": self.aggregator or self.name, "component": self.name, "classes": classes,
                                  "in_dim": inst.dim, "blocks": [b for b, _ in inst.blocks],
                                  "params": dict(p), "folds": [f["fold"] for f in fold_info]
                                  + ([refit_info["fold"]] if refit_info else []),
                                  **({"refit_fold": refit_info["fold"], "refit": refit_info} if refit_info else {}),
                                  "empty_bags": empty}).save()
        self._report(ctx, cells, att_df, pred_df, mil_metrics)
        return {"predictions": preds, "model": model, "attention": attention, "metrics": metrics}

    def _metrics(self, table, bags, att_df, abnormal, empty, fold_info, classes) -> dict[str, Any]:
        sizes = np.array([len(v) for v in bags.values()]) if bags else np.zeros(0)
        out: dict[str, Any] = {
            "aggregator": self.name, "n_bags": int(len(bags)), "n_instances": int(len(table)),
            "bag_size_min": int(sizes.min()) if len(sizes) else 0,
            "bag_size_median": float(np.median(sizes)) if len(sizes) else 0.0,
            "bag_size_max": int(sizes.max()) if len(sizes) else 0,
            "empty_bags": sorted({e["patient_id"] for e in empty}),
            "folds": fold_info,
        }
        if abnormal is not None and len(att_df):
            k = int(self.params["top_k"])
            ab = dict(zip(table["cell_id"], abnormal))
            precs, rprecs, base = [], [], []
            for _, g in att_df.groupby("patient_id"):
                a = g["cell_id"].map(ab).to_numpy(bool)
                if a.any():
                    precs.append(precision_at_k(g["score"].to_numpy(), a, k))
                    rprecs.append(r_precision(g["score"].to_numpy(), a, k))
                    base.append(float(a.mean()))
            if precs:
                out.update({"k": k, "precision_at_k": float(np.mean(precs)), "r_precision_at_k": float(np.mean(rprecs)),
                            "abnormal_fraction": float(np.mean(base)), "n_patients_with_abnormal": len(precs)})
        return out

    def _report(self, ctx, cells, att_df, pred_df, m) -> None:
        section = "MIL"
        rows = [{"fold": f["fold"], "train": f["train"], "val": f["val"], "test": f["test"],
                 "epochs": f["epochs_run"], "best loss": round(f["best_loss"], 4),
                 **({"r-precision@k": round(f["r_precision_at_k"], 3)} if "r_precision_at_k" in f else {})}
                for f in m["folds"]]
        ctx.report.table(f"{self.name}: folds", rows, section=section)
        if "refit" in m:
            r = m["refit"]
            ctx.report.text("Refit", f"fold {r['fold']}: one more model on {r['train']} training patients for "
                                     f"{r['epochs']} epochs (the median of the folds' validation-chosen epochs "
                                     f"{r['chosen_epochs']}); it predicts nobody: the metrics above are the folds'. "
                                     f"`hemaflow export` ships it.", section=section)
        if "precision_at_k" in m:
            ctx.report.text("Top-attention cells vs generator ground truth",
                            f"precision@{m['k']} of the highest-scored cells against the generator's abnormal "
                            f"cells: {m['precision_at_k']:.3f}; r-precision (k capped at the bag's number of "
                            f"abnormal cells, so a perfect ranking scores 1): {m['r_precision_at_k']:.3f}; over "
                            f"{m['n_patients_with_abnormal']} test patients (chance level for both, the abnormal "
                            f"fraction of those bags: {m['abnormal_fraction']:.3f}).",
                            section=section)
        if m["empty_bags"]:
            ctx.report.text("Empty bags", "patients without any instance (no prediction): "
                            + ", ".join(m["empty_bags"]), section=section)
        n_show = int(self.params["gallery_patients"])
        if cells is None or n_show == 0 or att_df.empty or "crop_index" not in att_df.columns:
            return
        from hemaflow.lib.imageio import png_bytes

        crops = cells.crops
        k = int(self.params["top_k"])
        shown = pred_df.sort_values(["y_true", "id"]).groupby("y_true", sort=True).head(max(1, n_show // max(1, pred_df["y_true"].nunique())))
        for _, pr in shown.head(n_show).iterrows():
            g = att_df[att_df["patient_id"] == pr["id"]].sort_values("rank")
            picks = [("top", r) for _, r in g.head(k).iterrows()]
            if len(g) > k:
                picks += [("bottom", r) for _, r in g.tail(min(k, len(g) - k)).iterrows()]
            images = []
            for tag, r in picks:
                if pd.isna(r.get("crop_index")):
                    continue
                cap = f"{tag} #{int(r['rank'])} {r['score']:.3f} {r['image_id']}"
                if "centroid_y" in r and pd.notna(r["centroid_y"]):
                    cap += f" (y={int(r['centroid_y'])}, x={int(r['centroid_x'])})"
                if "truth" in r and pd.notna(r["truth"]):
                    cap += f" [{r['truth']}]"
                images.append((cap, png_bytes(np.asarray(crops[int(r["crop_index"])]))))
            if images:
                ctx.report.gallery(f"patient {pr['id']}: true {pr['y_true']}, predicted {pr['y_pred']} "
                                   f"(top-{k} and bottom-{k} cells by score)", images, section=section)
