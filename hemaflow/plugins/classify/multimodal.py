"""``multimodal``: a timm image backbone and a tabular branch over the same cell's features, fused.

The tabular branch is an MLP or an FT-Transformer; the two embeddings are fused by ``concat``,
``gated`` or ``attention`` and trained end to end with the shared fold loop. Images come from
:mod:`.images`, features and the scaler from :mod:`.tabular`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.classify.common import (
    _BACKBONE_PARAMS,
    _TABULAR_PARAMS,
    NeuralClassifier,
    _backbone_param,
    _label_index,
    _raise_problems,
    _schema,
    _train_folds,
    check_same_classes,
)
from hemaflow.plugins.classify.images import _image_rows, _ImageData, _norm_stats
from hemaflow.plugins.classify.tabular import Scaler, _save_attention, feature_matrix
from hemaflow.lib.training import TRAIN_SCHEMA


def _forward_multimodal(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["image"], batch["features"], batch.get("mask"))


def _features_by_id(x: np.ndarray, columns: list[str], table: pd.DataFrame, level: str) -> pd.DataFrame:
    """Feature rows averaged per ``cell_id`` (level cell) or ``image_id`` (level image), indexed by that id."""
    key = table["cell_id" if level == "cell" else "image_id"].astype(str).to_numpy()
    return pd.DataFrame(x, columns=columns).assign(_k=key).groupby("_k", sort=False).mean()


class MultiModal(NeuralClassifier):
    """timm image backbone + tabular branch over the cell's (or image's) features, fused.

    Features are joined to cells by ``cell_id`` (input cell) or to images by ``image_id`` (mean
    over the image's cells when the table is per cell). Rows without features are left out
    (warned). The scaler is fitted on each fold's training rows only.
    """

    name = "multimodal"
    version = "1"
    schema = _schema({
        "backbone": _backbone_param("vit_small_patch16_224", "timm image backbone (vit_small_patch16_224, "
                                    "convnext_tiny...; test_vit, test_convnext for tiny runs)"),
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

    def run(self, ctx: RunContext, features: Any, split: Any, images: Any = None, cells: Any = None,
            masks: Any = None) -> dict[str, Any]:
        import torch

        from hemaflow.lib.nets import MultiModalNet

        p = self.params
        _raise_problems(self.check_params())
        rows, imgs, msks, level, source = _image_rows(ctx, p, images, cells, masks)
        classes = check_same_classes(source, features, "the images" if level == "image" else "the cells",
                                     "the feature table")
        x_feat, columns = feature_matrix(features)
        ft = features.table
        if level == "cell" and "cell_id" not in ft.columns:
            raise DataError(features.path, "input: cell needs a per-cell feature table (a cell_id column)")
        by_id = _features_by_id(x_feat, columns, ft, level)
        if level == "image" and len(by_id) < len(ft):
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


@hookimpl
def register_classifiers(register: Any) -> None:
    register(MultiModal)
