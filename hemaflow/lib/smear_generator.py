"""Procedural Giemsa-like blood-smear fields with ground-truth white-cell masks (pure numpy).

This module holds the drawing code behind the ``synthetic_smears`` data set
(:mod:`hemaflow.plugins.datasets`). It knows nothing about hemaflow's engine, so it can be used
on its own::

    from hemaflow.lib.smear_generator import render_field, patient_plan
    plan = patient_plan("AML", seed=(0, 1, 2), n_images=1, wbc_per_image=(2, 3),
                        abnormal_rate=(0.3, 0.7), stain_variation=1.0, difficulty=0.5)
    image, mask, cells = render_field(plan, 0, size=256)

Colour model: every pixel holds concentrations of three Romanowsky stain components (eosin:
pink-orange, azure/methylene-violet: nuclear purple, methylene blue: basophilic cytoplasm) and
is turned into RGB by Beer-Lambert (``rgb = 255 * exp(-sum_s c_s * v_s)``), so a per-patient
(per-"lab") perturbation of the stain vectors ``v_s`` and concentration scales gives a realistic
colour shift that stain normalization (Macenko, Reinhard) can undo.

White-cell morphology follows the textbook descriptions (sizes in micrometres, drawn at
``pixels_per_um``):

* normal: segmented neutrophils (3-5 lobes, pink-lilac granular cytoplasm), bands, small
  lymphocytes (round dense nucleus, scant pale-blue cytoplasm), monocytes (large, folded
  kidney nucleus, lacy chromatin, grey-blue vacuolated cytoplasm), eosinophils (bilobed,
  coarse orange granules), basophils (dark purple granules over the nucleus);
* ALL: small-to-medium lymphoblasts, very high N/C ratio, fine chromatin, inconspicuous
  nucleoli, scant blue cytoplasm;
* AML: larger myeloblasts, fine chromatin, 2-4 prominent nucleoli, more blue cytoplasm with
  fine azurophilic granules, Auer rods in some cells;
* APL: hypergranular promyelocytes with bundles of Auer rods (faggot cells);
* CLL: small mature-looking lymphocytes with coarse "soccer-ball" chromatin, and smudge cells;
* CML: the whole maturation spectrum (myelocytes, metamyelocytes, bands) plus basophils and
  eosinophils and an occasional blast.

Each patient has an abnormal-cell rate drawn from ``abnormal_rate``; the other white cells are
a normal differential, so a single random cell does not give the diagnosis away.

Speed: drawing works on each cell's bounding box only (coordinate grids, no per-pixel Python
loops). On one core, a 256 px field takes about 5-10 ms; the small test configuration
(5 classes x 2 patients x 1 image of 96 px) renders in well under a second, and the default
(5 x 8 x 3 images of 256 px) in one to two seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hemaflow.lib.smear_cells import CELL_TYPES, blur3, draw_platelets, draw_rbcs, draw_wbc, place_cells, spread

CLASSES = ("ALL", "AML", "CLL", "CML", "NORMAL")
ALL_CLASSES = ("ALL", "AML", "APL", "CLL", "CML", "NORMAL")

# Stain vectors in optical density (RGB order), unit length.
_EOSIN = np.array([0.15, 0.70, 0.70])
_AZURE = np.array([0.55, 0.78, 0.22])
_BLUE = np.array([0.79, 0.56, 0.26])
STAINS = np.stack([v / np.linalg.norm(v) for v in (_EOSIN, _AZURE, _BLUE)])  # (3 stains, 3 rgb)
_BACKGROUND_OD = np.array([0.055, 0.085, 0.075])


NORMAL_MIX = {"neutrophil": 0.56, "band": 0.04, "lymphocyte": 0.30, "monocyte": 0.06,
              "eosinophil": 0.03, "basophil": 0.01}
ABNORMAL_MIX = {
    "ALL": {"lymphoblast": 1.0},
    "AML": {"myeloblast": 1.0},
    "APL": {"promyelocyte": 0.85, "myeloblast": 0.15},
    "CLL": {"cll_lymphocyte": 0.7, "smudge": 0.3},
    "CML": {"myelocyte": 0.35, "metamyelocyte": 0.25, "band": 0.15, "basophil": 0.12,
            "eosinophil": 0.08, "myeloblast": 0.05},
    "NORMAL": {},
}


@dataclass
class PatientPlan:
    """Everything random about one patient, decided up front (so images can render in parallel)."""

    label: str
    seed: tuple[int, ...]
    abnormal_rate: float
    stains: np.ndarray            # (3, 3) perturbed stain vectors
    stain_scale: np.ndarray       # (3,) concentration scale per stain
    background_od: np.ndarray     # (3,)
    cells: list[list[tuple[str, bool]]] = field(default_factory=list)  # per image: (type, abnormal)
    difficulty: float = 0.5
    pixels_per_um: float = 2.2


def _mix_choice(rng: np.random.Generator, mix: dict[str, float], n: int) -> list[str]:
    names = list(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def stain_shift(rng: np.random.Generator, variation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return perturbed (stain vectors, concentration scales, background OD) for one lab/patient.

    Hue shifts stay within what Romanowsky stains do between labs: nuclei stay purple-blue
    (the azure component keeps absorbing more red than blue) and red cells stay pink-orange;
    most of the variation is in stain strength and balance (eosin vs azure vs blue).
    """
    vecs = STAINS + rng.normal(0.0, 0.045 * variation, size=STAINS.shape)
    vecs = np.clip(vecs, 0.02, None)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    az = vecs[1]
    if az[0] - az[2] < 0.12:  # keep nuclei purple-blue, never brown-grey
        az[0] = az[2] + 0.12
        vecs[1] = az / np.linalg.norm(az)
    scale = np.exp(rng.normal(0.0, 0.18 * variation, size=3))
    bg = np.clip(_BACKGROUND_OD * np.exp(rng.normal(0.0, 0.35 * variation, size=3)), 0.0, 0.3)
    return vecs, scale, bg


def patient_plan(label: str, *, seed: tuple[int, ...], n_images: int, wbc_per_image: tuple[int, int],
                 abnormal_rate: tuple[float, float], stain_variation: float, difficulty: float,
                 pixels_per_um: float = 2.2, site_shift: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> PatientPlan:
    """Decide one patient's stain, abnormal rate and white-cell types for each image.

    The number of abnormal cells is ``round(rate * n_cells)`` (at least one for a leukemic
    patient), assigned to random cells, so the patient's rate is what the data shows.
    """
    if label not in ABNORMAL_MIX:
        raise ValueError(f"unknown class {label!r}; known: {', '.join(ALL_CLASSES)}")
    rng = np.random.default_rng(list(seed))
    counts = rng.integers(wbc_per_image[0], wbc_per_image[1] + 1, size=n_images)
    n = int(counts.sum())
    if label == "NORMAL":
        rate = 0.0
        n_abn = 0
    else:
        rate = float(rng.uniform(*abnormal_rate))
        n_abn = int(min(n, max(1, round(rate * n))))
    abnormal = np.zeros(n, dtype=bool)
    abnormal[rng.permutation(n)[:n_abn]] = True
    types_abn = _mix_choice(rng, ABNORMAL_MIX[label], n_abn) if n_abn else []
    types_norm = _mix_choice(rng, NORMAL_MIX, n - n_abn)
    ia, ino = iter(types_abn), iter(types_norm)
    flat = [(next(ia), True) if a else (next(ino), False) for a in abnormal]
    cells, k = [], 0
    for c in counts:
        cells.append(flat[k:k + int(c)])
        k += int(c)
    vecs, scale, bg = stain_shift(rng, stain_variation)
    if site_shift is not None:  # lab effect + a smaller patient effect on top
        svecs, sscale, sbg = site_shift
        vecs = svecs + 0.4 * (vecs - STAINS)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        scale = sscale * scale ** 0.4
        bg = np.clip(sbg + 0.4 * (bg - _BACKGROUND_OD), 0.0, 0.3)
    return PatientPlan(label=label, seed=tuple(seed), abnormal_rate=rate, stains=vecs, stain_scale=scale,
                       background_od=bg, cells=cells, difficulty=difficulty, pixels_per_um=pixels_per_um)


def render_field(plan: PatientPlan, image_index: int, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Render one field of ``plan``'s patient.

    Returns:
        image: RGB uint8 (size, size, 3); mask: uint8 (size, size) 0 bg / 1 cytoplasm / 2 nucleus
        (white cells only); cells: one dict per drawn white cell with ``centroid_y``,
        ``centroid_x``, ``truth`` (``abnormal``/``normal``), ``cell_type``.
    """
    rng = np.random.default_rng([*plan.seed, 1000 + image_index])
    ppu, diff = plan.pixels_per_um, plan.difficulty
    H = W = int(size)
    C = np.zeros((H, W, 3))
    draw_rbcs(rng, C, ppu, coverage=rng.uniform(0.32, 0.48))
    draw_platelets(rng, C, ppu, n=int(rng.integers(2, 6) * H * W / 256 ** 2) + int(rng.integers(0, 2)))
    mask = np.zeros((H, W), dtype=np.uint8)
    wanted = plan.cells[image_index]
    radii = [spread(rng, CELL_TYPES[ct]["radius"], diff) * ppu for ct, _ in wanted]
    order = np.argsort(radii, kind="stable")[::-1]  # largest first packs best
    spots = place_cells(rng, [radii[i] for i in order], H, W)
    cells = []
    for spot, i in zip(spots, order):
        if spot is None:
            continue
        cy, cx, r = spot
        ctype, abnormal = wanted[i]
        y, x = draw_wbc(rng, C, mask, cy, cx, r, ctype, ppu, diff)
        cells.append({"centroid_y": y, "centroid_x": x, "truth": "abnormal" if abnormal else "normal",
                      "cell_type": ctype})
    # Beer-Lambert with the patient's stain, then optics: blur, uneven illumination, sensor noise
    C[..., 2] += 0.03 * C[..., 0]  # red cells take up a trace of blue
    M = (plan.stain_scale[:, None] * plan.stains).astype(np.float32)
    od = (C.astype(np.float32).reshape(-1, 3) @ M).reshape(H, W, 3) + plan.background_od.astype(np.float32)
    od = blur3(od, 0.12 + 0.12 * diff)  # optics: slight defocus
    rgb = np.exp(-od)
    rgb *= np.float32(255.0 * rng.uniform(0.96, 1.04))
    ry = ((np.arange(H, dtype=np.float32) - H / 2) / (H / 2)) ** 2
    rx = ((np.arange(W, dtype=np.float32) - W / 2) / (W / 2)) ** 2
    rgb *= (1.0 - 0.03 * (ry[:, None] + rx[None, :]))[..., None]  # uneven illumination
    noise = rng.standard_normal((H, W), dtype=np.float32) * np.float32(1.5 + 4.0 * diff)
    rgb += noise[..., None]  # sensor noise (mostly luminance)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, mask, cells


def write_samples(out_dir: str, size: int = 192, seed: int = 0, classes: tuple[str, ...] = ALL_CLASSES) -> list[str]:
    """Write one sample field per class (``synthetic_<CLASS>.png``) plus its mask overlay.

    The field shown is the one with the most abnormal cells among a patient's first images
    (leukemic classes), so the class morphology is visible. Returns the written file names.
    """
    from pathlib import Path

    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for ci, label in enumerate(classes):
        plan = patient_plan(label, seed=(seed, ci, 0), n_images=4, wbc_per_image=(2, 3), abnormal_rate=(0.6, 0.7),
                            stain_variation=1.0, difficulty=0.5)
        best = max(range(4), key=lambda i: sum(a for _, a in plan.cells[i]))
        image, mask, _ = render_field(plan, best, size)
        overlay = image.copy()
        overlay[mask == 1] = (0.5 * overlay[mask == 1] + [0, 90, 0]).astype(np.uint8)
        overlay[mask == 2] = (0.5 * overlay[mask == 2] + [0, 0, 110]).astype(np.uint8)
        sheet = np.concatenate([image, np.full((size, 4, 3), 255, np.uint8), overlay], axis=1)
        name = f"synthetic_{label}.png"
        Image.fromarray(sheet).save(out / name, optimize=True)
        names.append(name)
    return names


if __name__ == "__main__":  # python -m hemaflow.lib.smear_generator docs/img
    import sys

    print("\n".join(write_samples(sys.argv[1] if len(sys.argv) > 1 else ".")))
