"""``embeddings`` with ``precision: bf16``: bfloat16 autocast of the forward pass, close to fp32's
embeddings but not equal to them, and in the cache key only when it is not the default."""

from __future__ import annotations

import numpy as np

from hemaflow.plugins.features import EmbeddingFeatures
from hemaflow.testing import make, make_context

from .test_features import make_cellset, synthetic_crops


def test_bf16_embeddings_are_close_to_fp32_and_keys_of_fp32_recipes_are_unchanged(tmp_path):
    crops, masks = synthetic_crops(6, 32, seed=2)
    cells = make_cellset(tmp_path / "cells", crops, masks)
    fp32 = make(EmbeddingFeatures, model="test_resnet", batch_size=4)
    bf16 = make(EmbeddingFeatures, model="test_resnet", batch_size=4, precision="bf16")
    a = fp32.run(make_context(tmp_path / "a"), cells=cells)["features"]
    b = bf16.run(make_context(tmp_path / "b"), cells=cells)["features"]
    x, y = (t.table[a.feature_columns].to_numpy(float) for t in (a, b))
    assert x.shape == y.shape and np.isfinite(y).all()
    assert not np.array_equal(x, y)  # autocast really ran in bfloat16
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.min() > 0.99
    assert "precision" not in fp32.cache_params()  # the default: the same keys as before the option
    assert bf16.cache_params()["precision"] == "bf16"
