"""Training data for the training loop: a dataset of named tensors, its labels and class weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


# -- data --------------------------------------------------------------------------------------
class TensorDictDataset:
    """A map-style data set over equally long tensors/arrays; item ``i`` is ``{k: v[i]}``.

    ``labels`` (the ``y`` values as an int array) is exposed so :func:`fit` can weight classes
    without iterating the data.
    """

    def __init__(self, **columns: Any) -> None:
        import torch

        n = {len(v) for v in columns.values()}
        if len(n) != 1:
            raise ValueError(f"columns have different lengths {sorted(n)}")
        self.columns = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in columns.items()}
        self.n = n.pop()

    @property
    def labels(self) -> np.ndarray:
        return self.columns["y"].numpy().astype(int)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}


def dataset_labels(ds: Any) -> np.ndarray:
    """Class indices of a data set: its ``labels`` attribute if any, else ``ds[i]["y"]``."""
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=int)
    return np.asarray([int(ds[i]["y"]) for i in range(len(ds))], dtype=int)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced weights ``n / (k * n_c)``; classes absent from ``labels`` get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w
