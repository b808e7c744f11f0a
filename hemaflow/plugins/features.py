"""Per-cell features: pyradiomics radiomics and timm embeddings, as a FeatureTable.

Components (kind ``features``):

* ``radiomics``: pyradiomics features per cell crop (default) or per image over the union of its
  cells. Columns ``radiomics_<imagetype>_<class>_<Feature>``, e.g.
  ``radiomics_original_glcm_Contrast`` (pyradiomics' own key behind a ``radiomics_`` prefix).
  Texture is truly 2-D (see :mod:`hemaflow.lib.radiomics` for the ``force2D`` trap).
* ``embeddings``: cell crops through a timm backbone (``num_classes=0``: pooled features).
  Columns ``emb_0 .. emb_{d-1}``.

Both write one row per cell with ``cell_id, image_id, patient_id, label`` (plus ``truth`` when the
CellSet has it) followed by ``meta["feature_columns"]``; provenance (component, versions,
effective settings) is in ``meta["provenance"]``, which ``FeatureTable.save`` also writes into the
Parquet key-value metadata (key ``hemaflow``). Cells that cannot be extracted are left out of the
table and listed in ``meta["skipped"]`` (``cell_id``, ``image_id``, ``reason``) with one
``ctx.warn`` summary.

Example::

    from hemaflow.testing import make, make_context
    ctx = make_context("/tmp/x")
    table = make(RadiomicsFeatures, classes=["firstorder", "glcm"]).run(ctx, cells=cells)["features"]
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from hemaflow.core.bases import FeatureExtractor
from hemaflow.core.component import RunContext, cpu_count
from hemaflow.core.errors import DataError, RecipeError
from hemaflow.core.markers import hookimpl
from hemaflow.lib import radiomics as ru
from hemaflow.lib.backbones import (  # noqa: F401  (their earlier home: re-exported)
    HEAD_PREFIXES, HUB_PREFIXES, build_backbone, checkpoint_file, load_backbone_weights, read_state_dict, timm_model_problem,
    weights_sha256)
from hemaflow.plugins.artifacts import CellSet, FeatureTable, ImageSet, MaskSet

ID_COLUMNS = ("cell_id", "image_id", "patient_id", "label")
EXTRA_ID_COLUMNS = ("truth",)


def _id_frame(table: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    return table[[c for c in columns if c in table.columns]].reset_index(drop=True).copy()


def _skip_summary(skipped: list[dict[str, str]], unit: str) -> str:
    reasons = Counter(s["reason"].split(":")[0].split(" (")[0] for s in skipped)
    parts = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    return f"skipped {len(skipped)} {unit}(s) with no features ({parts}); listed in meta['skipped']"


# -- radiomics ------------------------------------------------------------------------------------
class RadiomicsFeatures(FeatureExtractor):
    """pyradiomics features per cell (or per image) from RGB crops and 0/1/2 masks.

    Parameters (``with:``): ``per`` (cell|image), ``classes`` (feature classes), ``region``
    (cell|nucleus|cytoplasm), ``grey`` (luminance|hematoxylin|magnitude), ``settings``
    (pyradiomics settings by their pyradiomics names), ``params_file`` (an optional pyradiomics
    parameter file, strictly validated; its ``setting`` entries override ``settings``, its
    ``featureClass`` replaces ``classes``, its ``imageType`` replaces ``Original``),
    ``min_pixels``, ``chunk_size``, ``on_error``.

    Inputs: ``cells: CellSet`` for ``per: cell``; ``images: ImageSet`` (with ground-truth masks,
    or ``masks: MaskSet``) for ``per: image``.
    """

    kind = "features"
    name = "radiomics"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "per": {"enum": ["cell", "image"], "default": "cell",
                    "description": "one row per cell crop (needs `cells`), or per image over the union of "
                                   "its cells (needs `images`, and `masks` unless the images have masks)"},
            "classes": {"type": "array", "items": {"enum": list(ru.FEATURE_CLASSES)}, "minItems": 1,
                        "uniqueItems": True, "default": list(ru.FEATURE_CLASSES),
                        "description": "pyradiomics feature classes to compute"},
            "region": {"enum": list(ru.REGIONS), "default": "cell",
                       "description": "mask region: cell (cytoplasm + nucleus), nucleus, or cytoplasm"},
            "grey": {"enum": list(ru.GREY_MODES), "default": "luminance",
                     "description": "RGB to grey: luminance (BT.709), hematoxylin (rgb2hed H channel, fixed "
                                    "scale to 0-255), magnitude (RGB vector magnitude, the original code's)"},
            "settings": dict(ru.SETTINGS_SCHEMA, default={}),
            "params_file": {"type": ["string", "null"], "default": None,
                            "description": "optional pyradiomics parameter file (YAML/JSON) with keys setting, "
                                           "featureClass, imageType; unknown names are an error"},
            "min_pixels": {"type": "integer", "minimum": 1, "default": 16,
                           "description": "cells whose region has fewer pixels are skipped (recorded)"},
            "chunk_size": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "cells per ctx.map task; 0 chooses about 4 tasks per CPU, at most 32"},
            "on_error": {"enum": ["skip", "stop"], "default": "skip",
                         "description": "a cell that cannot be extracted is skipped (recorded) or stops the run"},
            "itk_threads": {"type": "integer", "minimum": 0, "default": 1,
                            "description": "SimpleITK threads per worker during extraction (0: SimpleITK's default); "
                                           "1 is fastest on small crops and never oversubscribes a process pool"},
        },
        "additionalProperties": False,
    }
    inputs = {"cells": "CellSet?", "images": "ImageSet?", "masks": "MaskSet?"}
    outputs = {"features": "FeatureTable"}

    def fingerprint(self) -> str | None:
        pf = self.params.get("params_file")
        if pf and Path(pf).is_file():
            return ru.file_sha256(pf)
        return None

    def check_params(self) -> list[tuple[str, str]]:
        """Problems with parameters that JSON Schema cannot see (the parameter file's contents),
        as ``(json pointer below with/, message)``; empty when all is well."""
        pf = self.params.get("params_file")
        if not pf:
            return []
        try:
            ru.validate_params_file(pf)
        except FileNotFoundError:
            return [("/params_file", f"{pf}: file not found")]
        except ru.ParamsFileError as exc:
            return [("/params_file", f"{pf}: {ptr or '/'}: {msg}") for ptr, msg in exc.problems]
        return []

    def config(self) -> dict[str, Any]:
        """The resolved extraction config (settings as handed to pyradiomics)."""
        p = self.params
        try:
            return ru.build_config(classes=p["classes"], settings=p["settings"], grey=p["grey"],
                                   region=p["region"], min_pixels=p["min_pixels"], params_file=p["params_file"],
                                   itk_threads=p["itk_threads"])
        except FileNotFoundError:
            raise DataError(p["params_file"], "pyradiomics parameter file not found") from None
        except ru.ParamsFileError as exc:
            raise DataError(exc.path, "invalid pyradiomics parameter file: " + "; ".join(
                f"{ptr or '/'}: {msg}" for ptr, msg in exc.problems)) from None

    def run(self, ctx: RunContext, cells: CellSet | None = None, images: ImageSet | None = None,
            masks: MaskSet | None = None) -> dict[str, Any]:
        config = self.config()  # validates the parameter file before any work
        if self.params["per"] == "cell":
            if cells is None:
                raise RecipeError(f"/steps/{ctx.step_id}/inputs: radiomics with per: cell needs a `cells` input "
                                  "(a CellSet, e.g. from cell_crops)")
            ids, results, source_meta = self._run_cells(ctx, cells, config)
            unit = "cell"
        else:
            if images is None:
                raise RecipeError(f"/steps/{ctx.step_id}/inputs: radiomics with per: image needs an `images` input")
            ids, results, source_meta = self._run_images(ctx, images, masks, config)
            unit = "image"
        return {"features": self._table(ctx, ids, results, source_meta, config, unit)}

    # per cell: chunks of crop indices, crops memory-mapped in the workers
    def _run_cells(self, ctx: RunContext, cells: CellSet, config: dict[str, Any]):
        table = cells.table.reset_index(drop=True)
        n = len(table)
        size = self.params["chunk_size"] or max(1, min(32, math.ceil(n / (4 * cpu_count()))))
        crop_idx = table["crop_index"].astype(int).tolist()
        tasks = [(str(cells.path), crop_idx[i:i + size], config) for i in range(0, n, size)]
        by_crop: dict[int, tuple[dict | None, str]] = {}
        for chunk in ctx.map(ru.extract_cells_chunk, tasks, description="radiomics"):
            for i, feats, reason in chunk:
                by_crop[i] = (feats, reason)
        results = [by_crop[i] for i in crop_idx]
        ids = _id_frame(table, ID_COLUMNS + EXTRA_ID_COLUMNS)
        return ids, results, cells.meta

    def _run_images(self, ctx: RunContext, images: ImageSet, masks: MaskSet | None, config: dict[str, Any]):
        table = images.table.reset_index(drop=True)
        items = []
        for k, row in table.iterrows():
            iid = str(row["image_id"])
            if masks is not None:
                try:
                    mrow = masks.row(iid)
                except KeyError:
                    items.append((k, str(images.image_path(row)), None, None))
                    continue
                items.append((k, str(images.image_path(row)), str(masks.resolve(mrow["path"])), {"mode": "canonical"}))
            else:
                mp = row.get("mask_path") if "mask_path" in row.index else None
                if mp is None or (isinstance(mp, float) and np.isnan(mp)) or mp == "":
                    items.append((k, str(images.image_path(row)), None, None))
                    continue
                items.append((k, str(images.image_path(row)), str(images.resolve(mp)), images.meta.get("mask_spec")))
        results: list[tuple[dict | None, str]] = [(None, "no mask for this image")] * len(table)
        todo = [it for it in items if it[2] is not None]
        size = self.params["chunk_size"] or max(1, min(8, math.ceil(len(todo) / (4 * cpu_count()))))
        tasks = [(todo[i:i + size], config) for i in range(0, len(todo), size)]
        for chunk in ctx.map(ru.extract_images_chunk, tasks, description="radiomics"):
            for k, feats, reason in chunk:
                results[k] = (feats, reason)
        ids = _id_frame(table, ("image_id", "patient_id", "label", "split"))
        return ids, results, images.meta

    def _table(self, ctx: RunContext, ids: pd.DataFrame, results: list[tuple[dict | None, str]],
               source_meta: dict[str, Any], config: dict[str, Any], unit: str) -> FeatureTable:
        names: dict[str, None] = {}
        for feats, _ in results:
            if feats is not None:
                names.update(dict.fromkeys(feats))
        names_list = list(names)
        ok = [i for i, (f, _) in enumerate(results) if f is not None]
        values = np.array([[results[i][0].get(k, np.nan) for k in names_list] for i in ok],  # type: ignore[union-attr]
                          dtype=np.float64).reshape(len(ok), len(names_list))
        skipped = [{"cell_id": str(ids.at[i, "cell_id"]) if "cell_id" in ids else "",
                    "image_id": str(ids.at[i, "image_id"]), "reason": results[i][1]}
                   for i in range(len(results)) if results[i][0] is None]
        if skipped and self.params["on_error"] == "stop":
            first = skipped[0]
            raise DataError(first["cell_id"] or first["image_id"],
                            f"radiomics extraction failed: {first['reason']} (on_error: stop)")
        if skipped:
            ctx.warn(_skip_summary(skipped, unit))
        columns = [ru.COLUMN_PREFIX + k for k in names_list]
        table = pd.concat([ids.iloc[ok].reset_index(drop=True),
                           pd.DataFrame(values, columns=columns)], axis=1)
        meta = {
            "feature_columns": columns,
            "level": unit,
            "source": self.name,
            "classes": list(source_meta.get("classes", [])),
            "patients_are_images": bool(source_meta.get("patients_are_images", False)),
            "skipped": skipped,
            "n_input": len(results),
            "provenance": {
                "component": self.name, "component_version": self.version, **ru.versions(),
                "params": self.get_params(),
                "pyradiomics_settings": config["settings"], "feature_classes": config["features"],
                "image_types": config["image_types"], "grey": config["grey"], "region": config["region"],
                "params_file": config["params_file"],
                "geometry": "(1, H, W) SimpleITK image, force2D=True, force2Ddimension=0, spacing 1",
            },
        }
        return FeatureTable(ctx.out_dir("features"), table, meta).save()


# -- embeddings -----------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
class EmbeddingFeatures(FeatureExtractor):
    """Deep embeddings of cell crops from a timm backbone (pooled features, ``num_classes=0``).

    Random init (seeded from the recipe seed) unless ``checkpoint`` names a local file; hub
    weights are never downloaded. Crops are resized to ``input_size`` (bilinear, antialiased),
    optionally have their background blanked with the crop mask, and are normalized with
    ``mean``/``std`` (ImageNet by default, or the model's own with ``normalization: model``).
    """

    kind = "features"
    name = "embeddings"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "model": {"type": "string", "minLength": 1, "default": "resnet18",
                      "description": "timm architecture name (timm.list_models())"},
            "checkpoint": {"type": ["string", "null"], "default": None,
                           "description": "local weights: a hemaflow .safetensors checkpoint (or Model directory), "
                                          "a .pth/.pt/.bin state dict, plain DINOv2 or a DinoBloom checkpoint "
                                          "({teacher: backbone.*}); null: random init with a fixed seed"},
            "input_size": {"type": ["integer", "null"], "minimum": 8, "default": None,
                           "description": "side (px) crops are resized to; null keeps the crop size"},
            "normalization": {"enum": ["imagenet", "model", "none"], "default": "imagenet",
                              "description": "mean/std: ImageNet's, the timm model's pretrained_cfg, or none"},
            "mean": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 3, "maxItems": 3,
                     "default": None, "description": "explicit RGB mean (0-1 scale); overrides normalization"},
            "std": {"type": ["array", "null"], "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3,
                    "maxItems": 3, "default": None, "description": "explicit RGB std; overrides normalization"},
            "background": {"enum": ["keep", "black", "white"], "default": "keep",
                           "description": "pixels outside the crop mask: kept, or set to black/white"},
            "batch_size": {"type": "integer", "minimum": 1, "default": 64, "description": "crops per forward pass"},
            "precision": {"enum": ["fp32", "bf16"], "default": "fp32",
                          "description": "bf16: bfloat16 autocast of the forward pass (CUDA, or a CPU with "
                                         "AVX512-BF16/AMX: 1.4-1.6x on resnet50/ViT-S here, embeddings within "
                                         "cosine 0.9999 of fp32's; benchmarks/gpu_check.py)"},
        },
        "additionalProperties": False,
    }
    inputs = {"cells": "CellSet"}
    outputs = {"features": "FeatureTable"}

    def fingerprint(self) -> str | None:
        """The checkpoint file's content hash (part of the cache key): embeddings are computed once
        per weights content and crop settings (the cells input), whatever the file is called."""
        ck = self.params.get("checkpoint")
        if ck and Path(ck).expanduser().exists():
            return weights_sha256(checkpoint_file(ck))
        return None

    def cache_params(self) -> dict[str, Any]:
        """The parameters in the cache key, without the checkpoint's path (its content hash is the
        fingerprint): the same weights under another file name reuse the cached embeddings."""
        params = dict(self.params)
        if params.get("checkpoint"):
            params["checkpoint"] = "<content: see fingerprint>"
        if params.get("precision", "fp32") == "fp32":  # the default: keys of existing recipes unchanged
            params.pop("precision", None)
        return params

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see: unknown timm model, missing checkpoint file."""
        out = []
        problem = timm_model_problem(self.params["model"])
        if problem:
            out.append(("/model", problem))
        ck = self.params.get("checkpoint")
        if ck and not Path(ck).exists():
            out.append(("/checkpoint", f"{ck}: file not found" + (
                " (hub weights cannot be downloaded here; give a local file)" if ck.startswith(HUB_PREFIXES) else "")))
        if (self.params.get("mean") is None) != (self.params.get("std") is None):
            out.append(("/mean", "give both mean and std, or neither"))
        return out

    def build_model(self, seed: int, size: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Create the backbone (random init under ``seed``, then the checkpoint if any).

        ``size`` (the input side) is passed as ``img_size`` to architectures that take it (ViTs,
        whose position embeddings depend on it); convnets do not need it.
        """
        model, info = build_backbone(self.params["model"], size=size, checkpoint=self.params.get("checkpoint"),
                                     seed=seed)
        return model.eval(), info

    def _norm(self, model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
        p = self.params
        if p.get("mean") is not None and p.get("std") is not None:
            return tuple(p["mean"]), tuple(p["std"])
        if p["normalization"] == "model":
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        if p["normalization"] == "none":
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return IMAGENET_MEAN, IMAGENET_STD

    def run(self, ctx: RunContext, cells: CellSet) -> dict[str, Any]:
        import timm
        import torch
        import torch.nn.functional as F

        problems = self.check_params()
        if problems:
            raise RecipeError([f"/steps/{ctx.step_id}/with{ptr}: {msg}" for ptr, msg in problems])
        crops, cmasks = cells.crops, cells.crop_masks
        size = int(self.params["input_size"] or crops.shape[1])
        model, init = self.build_model(ctx.torch_seed("init"), size)
        device = torch.device(ctx.device)
        model.to(device)
        mean, std = self._norm(model)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        table = cells.table.reset_index(drop=True)
        idx = table["crop_index"].astype(int).to_numpy()
        bs = int(self.params["batch_size"])
        bg = self.params["background"]
        chunks = []
        batches = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        bf16 = self.params.get("precision") == "bf16"
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            for b in ctx.progress(batches, description="embeddings"):
                x = np.asarray(crops[b])
                if bg != "keep":
                    x = x.copy()
                    x[np.asarray(cmasks[b]) == 0] = 0 if bg == "black" else 255
                t = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div_(255.0)
                if t.shape[-1] != size or t.shape[-2] != size:
                    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                t = (t - mean_t) / std_t
                out = model(t)
                if out.ndim != 2:
                    raise DataError(self.params["model"], f"backbone returned shape {tuple(out.shape)}, expected "
                                    "(batch, features) with num_classes=0")
                chunks.append(out.float().cpu().numpy())
        dim = int(getattr(model, "num_features", chunks[0].shape[1] if chunks else 0))
        emb = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, dim), np.float32)
        columns = [f"emb_{i}" for i in range(emb.shape[1])]
        out_table = pd.concat([_id_frame(table, ID_COLUMNS + EXTRA_ID_COLUMNS),
                               pd.DataFrame(emb.astype(np.float32), columns=columns)], axis=1)
        meta = {
            "feature_columns": columns,
            "level": "cell",
            "source": self.name,
            "classes": list(cells.meta.get("classes", [])),
            "patients_are_images": bool(cells.meta.get("patients_are_images", False)),
            "skipped": [],
            "n_input": len(table),
            "provenance": {
                "component": self.name, "component_version": self.version, "timm": timm.__version__,
                "torch": torch.__version__, "params": self.get_params(), "model": self.params["model"],
                "weights": init, "input_size": size, "mean": list(mean), "std": list(std),
                "device": str(device), "embedding_dim": int(emb.shape[1]),
            },
        }
        return {"features": FeatureTable(ctx.out_dir("features"), out_table, meta).save()}


# -- helpers for consumers ------------------------------------------------------------------------
def merge_feature_tables(tables: Iterable[FeatureTable | pd.DataFrame], on: str = "cell_id",
                         how: str = "inner") -> pd.DataFrame:
    """Join feature tables (e.g. radiomics + embeddings) on ``on`` into one DataFrame.

    Id columns (``cell_id, image_id, patient_id, label``, ``truth``) come from the first table;
    each table contributes its ``feature_columns`` (DataFrames: every non-id column). Rows are in
    the first table's order; ``how="inner"`` keeps cells present in every table (skipped cells
    drop out). The merged feature columns are in ``result.attrs["feature_columns"]``.

    Raises:
        ValueError: a table lacks ``on`` or has duplicate keys, or two tables share a feature name.

    Example::

        df = merge_feature_tables([radiomics_table, embeddings_table])
        X = df[df.attrs["feature_columns"]].to_numpy()
    """
    merged: pd.DataFrame | None = None
    feats: list[str] = []
    for k, t in enumerate(tables):
        df = t.table if isinstance(t, FeatureTable) else t
        if isinstance(t, FeatureTable):
            cols = t.feature_columns
        else:
            cols = list(df.attrs.get("feature_columns") or
                        [c for c in df.columns if c not in ID_COLUMNS + EXTRA_ID_COLUMNS + ("split",)])
        if on not in df.columns:
            raise ValueError(f"feature table {k} has no {on!r} column")
        if df[on].duplicated().any():
            raise ValueError(f"feature table {k} has duplicate {on!r} values, e.g. {df[on][df[on].duplicated()].iloc[0]!r}")
        clash = sorted(set(cols) & set(feats))
        if clash:
            raise ValueError(f"feature table {k} repeats feature columns {clash[:3]}")
        if merged is None:
            ids = [c for c in (on, *ID_COLUMNS, *EXTRA_ID_COLUMNS) if c in df.columns]
            merged = df[list(dict.fromkeys(ids)) + cols].copy()
        else:
            merged = merged.merge(df[[on] + cols], on=on, how=how, sort=False)
        feats += cols
    if merged is None:
        raise ValueError("merge_feature_tables needs at least one table")
    merged = merged.reset_index(drop=True)
    merged.attrs["feature_columns"] = feats
    return merged


@hookimpl
def register_feature_extractors(register: Any) -> None:
    register(RadiomicsFeatures)
    register(EmbeddingFeatures)
