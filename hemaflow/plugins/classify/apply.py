"""``apply_classifier``: apply a trained classifier's fold models to new data (external validation).

Reads the ``model: Model`` any classifier of this package wrote (safetensors checkpoints or
joblib files, the scaler and the feature columns in their meta), rebuilds the network from the
recorded parameters, and predicts every labelled row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Classifier
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.classify.common import (
    _BACKBONE_PARAMS,
    _label_index,
    _prediction_rows,
    _save_predictions,
    _schema,
    class_list,
)
from hemaflow.plugins.classify.images import _forward_image, _image_rows, _ImageData
from hemaflow.plugins.classify.multimodal import _features_by_id, _forward_multimodal
from hemaflow.plugins.classify.tabular import (
    Scaler,
    SklearnClassifier,
    _feature_rows,
    _forward_tabular,
    feature_matrix,
)


class ApplyClassifier(Classifier):
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
                by_id = _features_by_id(xf, columns, features.table, level)
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

        from hemaflow.lib.nets import ImageNet, MultiModalNet, TabularNet
        from hemaflow.lib.training import TensorDictDataset, load_checkpoint, predict_proba, train_config

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


@hookimpl
def register_classifiers(register: Any) -> None:
    register(ApplyClassifier)
