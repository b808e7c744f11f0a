"""Stain normalization science: torchstain Macenko/Reinhard wrappers (fit a state, apply it),
the check that an image holds stain at all, and the background-shift flag."""

from __future__ import annotations

from typing import Any

import numpy as np


# -- checks and torchstain wrappers -------------------------------------------------------------
def stain_problem(img: np.ndarray, *, Io: float = 240, beta: float = 0.15, min_stained_fraction: float = 0.01,
                  min_stained_pixels: int = 100, two_stains: bool = True) -> str | None:
    """Return why stain vectors cannot be estimated on ``img`` (RGB uint8), or None if they can.

    Checks, cheapest first: black image, uniform image, too few stained pixels (pixels whose
    optical density is >= ``beta`` in every channel, the pixels Macenko uses), and a single stain
    only (the stained pixels' optical densities span no plane; Macenko only, ``two_stains``).
    """
    f = img.reshape(-1, 3).astype(np.float32)
    if f.mean() < 10:
        return "black or almost black image"
    if float(f.std(axis=0).max()) < 2.0:
        return "uniform image (no structure to estimate stains from)"
    od = -np.log((f + 1.0) / Io)
    stained = od[(od >= beta).all(axis=1)]
    frac = len(stained) / max(len(od), 1)
    if len(stained) < min_stained_pixels or frac < min_stained_fraction:
        return (f"too few stained pixels ({100 * frac:.2f}% of the image; blank, over-exposed "
                f"or background-only)")
    if not two_stains:
        return None
    ev = np.linalg.eigvalsh(np.cov(stained.T))
    if ev[-2] < 1e-6 * max(ev[-1], 1e-12):
        return "only one stain present (stained pixels do not span two stain directions)"
    return None


BACKGROUND_FRACTION = 0.10  # the brightest tenth of the pixels: background in a smear field


_WHITE_LAB = np.array([100.0, 0.0, 0.0])


def background_shift(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """How far normalization moved the background of an image (both RGB uint8 HxWx3, same size).

    The background is the brightest :data:`BACKGROUND_FRACTION` of ``before``'s pixels (by
    luminance); the same pixels are read in ``after``. Returns the median Lab colour of those
    pixels before and after, ``shift`` (CIE76 delta E between the two), and each one's delta E
    from white (``white_before``, ``white_after``).
    """
    from skimage.color import rgb2lab

    f0 = before.reshape(-1, 3)
    f1 = after.reshape(-1, 3)
    lum = f0 @ np.array([0.2126, 0.7152, 0.0722])
    k = max(1, int(round(len(lum) * BACKGROUND_FRACTION)))
    idx = np.argpartition(-lum, k - 1)[:k]
    lab0 = np.median(rgb2lab(f0[idx][:, None, :])[:, 0, :], axis=0)
    lab1 = np.median(rgb2lab(f1[idx][:, None, :])[:, 0, :], axis=0)
    return {"shift": float(np.linalg.norm(lab1 - lab0)),
            "white_before": float(np.linalg.norm(lab0 - _WHITE_LAB)),
            "white_after": float(np.linalg.norm(lab1 - _WHITE_LAB)),
            "lab_before": [round(float(v), 1) for v in lab0], "lab_after": [round(float(v), 1) for v in lab1]}


def background_flag(before: np.ndarray, after: np.ndarray, max_shift: float) -> str | None:
    """Why ``after``'s background moved far from white (see :func:`background_shift`), or None."""
    b = background_shift(before, after)
    if b["shift"] <= max_shift or b["white_after"] <= b["white_before"]:
        return None
    return (f"background moved away from white by delta E {b['shift']:.1f} (Lab {b['lab_before']} -> "
            f"{b['lab_after']})")


def _chw(img: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _macenko(state: dict[str, Any] | None = None):
    import torch
    import torchstain

    norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    if state is not None:
        norm.HERef = torch.tensor(np.asarray(state["HERef"], np.float32))
        norm.maxCRef = torch.tensor(np.asarray(state["maxCRef"], np.float32))
    return norm


def _reinhard(state: dict[str, Any] | None = None, method: str | None = None):
    import torch
    import torchstain

    norm = torchstain.normalizers.ReinhardNormalizer(backend="torch", method=method)
    if state is not None:
        norm.target_means = torch.tensor(np.asarray(state["means"], np.float32))
        norm.target_stds = torch.tensor(np.asarray(state["stds"], np.float32))
    return norm


def fit_state(kind: str, img: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    """Fit a normalizer on one reference image; return its state as plain lists (picklable)."""
    if kind == "macenko":
        norm = _macenko()
        norm.fit(_chw(img), Io=params["Io"], alpha=params["alpha"], beta=params["beta"])
        state = {"HERef": norm.HERef.numpy().tolist(), "maxCRef": norm.maxCRef.numpy().tolist()}
    else:
        norm = _reinhard(method=params.get("method"))
        norm.fit(_chw(img))
        state = {"means": norm.target_means.numpy().tolist(), "stds": norm.target_stds.numpy().tolist()}
    if not np.isfinite(flat_state(state)).all():
        raise ValueError("non-finite stain statistics")
    return state


def apply_state(kind: str, state: dict[str, Any], img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Normalize one RGB uint8 image with a fitted state; return RGB uint8 HxWx3."""
    if kind == "macenko":
        norm = _macenko(state)
        out, _, _ = norm.normalize(I=_chw(img), Io=params["Io"], alpha=params["alpha"], beta=params["beta"],
                                   stains=False)
    else:
        out = _reinhard(state, params.get("method")).normalize(I=_chw(img))
    arr = out.numpy()
    if not np.isfinite(arr).all():
        raise ValueError("non-finite output")
    return np.clip(arr, 0, 255).astype(np.uint8)


def flat_state(state: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in state.values()])
