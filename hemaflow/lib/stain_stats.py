"""Raw stain statistics of a patient's images, for a bundle's stain out-of-distribution check.

A bundle's feature OOD score (:mod:`hemaflow.plugins.mil.apply`) looks at cell features *after*
stain normalization, which removes most of a new lab's stain shift, so a shifted cohort can look
in-distribution there while the predictions still suffer. This module summarises the *raw* images
instead: optical density (OD = -log((I + 1) / 256)) of the stained pixels, the ones Macenko et al.
(2009) keep (OD >= ``BACKGROUND_OD`` in every channel), as mean and sd per RGB channel, and the median
OD of the other pixels (the slide's background, which a scanner or lab shifts too). A patient's
row is the mean over its images; the bundle stores the training patients' mean and sd per value,
and a new patient's score is its mean |z| against them (:func:`stain_scores`), the same form as
the feature OOD score.

Example::

    >>> import numpy as np
    >>> img = np.full((8, 8, 3), 255, np.uint8); img[2:6, 2:6] = (120, 60, 150)
    >>> image_stain_stats(img).round(2).tolist()
    [0.75, 1.43, 0.53, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Macenko et al. (2009)'s transparency threshold beta: OD below it in any channel is background
BACKGROUND_OD = 0.15
#: images read per patient (the first ones by image id): bounds the cost on large exports
MAX_IMAGES_PER_PATIENT = 16
STAT_NAMES = ("od_mean_r", "od_mean_g", "od_mean_b", "od_sd_r", "od_sd_g", "od_sd_b",
              "background_od_r", "background_od_g", "background_od_b")
N_STATS = len(STAT_NAMES)


def image_stain_stats(img: np.ndarray) -> np.ndarray:
    """Mean and sd of the optical density of an RGB image's stained pixels, per channel, and the
    median OD of its background pixels (``N_STATS`` values; background 0 when every pixel is stained).

    An image with no stained pixel (blank, all background) gives NaNs, left out of its patient's mean.
    """
    od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)
    stained = np.all(od >= BACKGROUND_OD, axis=1)
    if not stained.any():
        return np.full(N_STATS, np.nan)
    bg = np.median(od[~stained], axis=0) if (~stained).any() else np.zeros(3)
    return np.concatenate([od[stained].mean(axis=0), od[stained].std(axis=0), bg])


def patient_stain_rows(images: Any, patients: list[str]) -> np.ndarray:
    """One row of :func:`image_stain_stats` per patient (mean over up to ``MAX_IMAGES_PER_PATIENT``
    of its images of the ImageSet ``images``); NaN where a patient has no readable stained image."""
    table = images.table.assign(patient_id=images.table["patient_id"].astype(str)).sort_values("image_id")
    rows = np.full((len(patients), N_STATS), np.nan)
    groups = {q: g for q, g in table.groupby("patient_id", sort=False)}
    for i, q in enumerate(patients):
        g = groups.get(q)
        if g is None:
            continue
        stats = [image_stain_stats(images.read_image(r)) for _, r in g.head(MAX_IMAGES_PER_PATIENT).iterrows()]
        stats = np.asarray([s for s in stats if np.isfinite(s).all()])
        if len(stats):
            rows[i] = stats.mean(axis=0)
    return rows


def stain_scores(rows: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Mean |z| of each row against ``mean``/``sd``; NaN for a row without stained pixels."""
    with np.errstate(all="ignore"):
        return np.abs((rows - mean) / sd).mean(axis=1)


def stain_reference(images: Any, patients: list[str], factor: float) -> dict[str, Any]:
    """The training cohort's reference: mean and sd per value, the patients' own scores and the
    threshold ``factor`` x their largest score (JSON-ready)."""
    rows = patient_stain_rows(images, patients)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if len(rows) < 2:
        return {}
    mean, sd = rows.mean(axis=0), rows.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1e-6)
    ref = stain_scores(rows, mean, sd)
    return {"score": "mean |z| of the patient's raw-image stain statistics (optical density of the stained "
                     "pixels, mean and sd per RGB channel, before any stain normalization) against the "
                     "training cohort's patients",
            "stats": list(STAT_NAMES), "mean": mean.tolist(), "sd": sd.tolist(),
            "n_reference_patients": int(len(rows)), "reference_max": float(ref.max()),
            "reference_median": float(np.median(ref)), "factor": factor, "threshold": float(factor * ref.max())}
