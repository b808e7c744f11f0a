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

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CLASSES = ("ALL", "AML", "CLL", "CML", "NORMAL")
ALL_CLASSES = ("ALL", "AML", "APL", "CLL", "CML", "NORMAL")

# Stain vectors in optical density (RGB order), unit length.
_EOSIN = np.array([0.15, 0.70, 0.70])
_AZURE = np.array([0.55, 0.78, 0.22])
_BLUE = np.array([0.79, 0.56, 0.26])
STAINS = np.stack([v / np.linalg.norm(v) for v in (_EOSIN, _AZURE, _BLUE)])  # (3 stains, 3 rgb)
_BACKGROUND_OD = np.array([0.055, 0.085, 0.075])

# -- the cell-type catalogue -------------------------------------------------------------------
# radius: cell radius in um; nc: nucleus radius / cell radius; nuc: nucleus stain conc. (azure);
# chrom: (contrast, scale in um, clumped); cyto: (eosin, azure, blue) concentrations;
# gran: (density per um^2, size um, (eosin, azure, blue)) or None; nucleoli: (min, max, size um);
# auer: probability of Auer rods, (min, max) count.
CELL_TYPES: dict[str, dict[str, Any]] = {
    # normal white cells
    "neutrophil": dict(radius=(5.8, 6.8), shape="segmented", lobes=(3, 5), nc=(0.27, 0.32),
                       nuc=(1.55, 1.8), chrom=(0.30, 0.9, True), cyto=(0.20, 0.07, 0.03),
                       gran=(0.35, 0.35, (0.25, 0.22, 0.0)), nucleoli=(0, 0, 0.0)),
    "band": dict(radius=(5.8, 6.8), shape="band", nc=(0.22, 0.26), nuc=(1.5, 1.75),
                 chrom=(0.28, 0.9, True), cyto=(0.20, 0.07, 0.03),
                 gran=(0.35, 0.35, (0.25, 0.22, 0.0)), nucleoli=(0, 0, 0.0)),
    "lymphocyte": dict(radius=(3.7, 4.5), shape="round", nc=(0.76, 0.86), offset=0.12,
                       nuc=(1.75, 2.05), chrom=(0.32, 0.8, True), cyto=(0.04, 0.05, 0.50),
                       gran=None, nucleoli=(0, 0, 0.0)),
    "monocyte": dict(radius=(7.0, 8.6), shape="kidney", nc=(0.58, 0.68), nuc=(1.1, 1.3),
                     chrom=(0.22, 0.6, False), cyto=(0.10, 0.10, 0.24),
                     gran=(0.08, 0.3, (0.1, 0.3, 0.0)), nucleoli=(0, 0, 0.0), vacuoles=(0, 5)),
    "eosinophil": dict(radius=(6.0, 7.0), shape="segmented", lobes=(2, 2), nc=(0.30, 0.34),
                       nuc=(1.5, 1.75), chrom=(0.28, 0.9, True), cyto=(0.25, 0.03, 0.05),
                       gran=(0.9, 0.55, (1.0, 0.05, 0.0)), nucleoli=(0, 0, 0.0)),
    "basophil": dict(radius=(5.2, 6.2), shape="segmented", lobes=(2, 2), nc=(0.30, 0.36),
                     nuc=(1.3, 1.5), chrom=(0.2, 0.9, True), cyto=(0.12, 0.12, 0.10),
                     gran=(0.7, 0.55, (0.1, 1.7, 0.2)), nucleoli=(0, 0, 0.0), gran_on_nucleus=True),
    # leukemic / abnormal white cells
    "lymphoblast": dict(radius=(4.6, 6.0), shape="round", nc=(0.86, 0.93), offset=0.06,
                        wobble=0.07, nuc=(1.05, 1.25), chrom=(0.10, 0.45, False),
                        cyto=(0.03, 0.05, 0.62), gran=None, nucleoli=(0, 2, 0.7)),
    "myeloblast": dict(radius=(7.2, 9.4), shape="round", nc=(0.68, 0.78), offset=0.1,
                       nuc=(1.0, 1.2), chrom=(0.10, 0.45, False), cyto=(0.06, 0.08, 0.45),
                       gran=(0.10, 0.3, (0.45, 0.65, 0.0)), nucleoli=(2, 4, 1.0),
                       auer=(0.35, (1, 1))),
    "promyelocyte": dict(radius=(8.0, 10.5), shape="kidney", nc=(0.55, 0.64), nuc=(1.05, 1.25),
                         chrom=(0.12, 0.5, False), cyto=(0.15, 0.10, 0.25),
                         gran=(1.0, 0.45, (0.55, 0.85, 0.0)), nucleoli=(0, 2, 0.8),
                         auer=(0.7, (2, 5)), gran_on_nucleus=True),
    "cll_lymphocyte": dict(radius=(3.8, 4.6), shape="round", nc=(0.84, 0.91), offset=0.08,
                           nuc=(1.9, 2.2), chrom=(0.65, 1.1, True), cyto=(0.03, 0.04, 0.38),
                           gran=None, nucleoli=(0, 0, 0.0)),
    "smudge": dict(radius=(5.0, 7.5), shape="smudge", nc=(1.0, 1.0), nuc=(0.55, 0.8),
                   chrom=(0.45, 0.6, False), cyto=(0.0, 0.0, 0.0), gran=None, nucleoli=(0, 0, 0.0)),
    "myelocyte": dict(radius=(6.6, 8.0), shape="round", nc=(0.52, 0.62), offset=0.25,
                      nuc=(1.3, 1.5), chrom=(0.25, 0.8, True), cyto=(0.24, 0.08, 0.08),
                      gran=(0.45, 0.35, (0.35, 0.25, 0.0)), nucleoli=(0, 0, 0.0)),
    "metamyelocyte": dict(radius=(6.2, 7.4), shape="kidney", nc=(0.50, 0.58), nuc=(1.35, 1.6),
                          chrom=(0.28, 0.9, True), cyto=(0.22, 0.07, 0.05),
                          gran=(0.4, 0.35, (0.3, 0.22, 0.0)), nucleoli=(0, 0, 0.0)),
}

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


# -- drawing helpers ------------------------------------------------------------------------------
def _smooth(a: np.ndarray, sigma: float | tuple[float, float]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(a, sigma, mode="nearest")


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Unit-variance smooth noise (``sigma`` in px, one value or per axis)."""
    sig = tuple(max(s, 0.4) for s in sigma) if isinstance(sigma, tuple) else max(sigma, 0.4)
    t = _smooth(rng.standard_normal(shape), sig)
    s = t.std()
    return t / s if s > 0 else t


def _soft(dist_inside: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (pixels, positive inside)."""
    return np.clip(dist_inside + 0.5, 0.0, 1.0)


def _wobbly_ellipse(yy, xx, a, b, theta, harmonics, scale_px):
    """Return signed distance (px, positive inside) to an ellipse with a wobbly outline."""
    c, s = np.cos(theta), np.sin(theta)
    u = (xx * c + yy * s) / a
    v = (-xx * s + yy * c) / b
    d = np.sqrt(u * u + v * v)
    phi = np.arctan2(yy, xx)
    wob = np.ones_like(d)
    for k, amp, ph in harmonics:
        wob += amp * np.cos(k * phi + ph)
    return (1.0 - d / wob) * scale_px


def _segment_dist(yy, xx, p0, p1):
    """Distance of every grid point to the segment p0-p1 (points as (y, x))."""
    py, px = p1[0] - p0[0], p1[1] - p0[1]
    L2 = py * py + px * px + 1e-9
    t = np.clip(((yy - p0[0]) * py + (xx - p0[1]) * px) / L2, 0.0, 1.0)
    dy, dx = yy - (p0[0] + t * py), xx - (p0[1] + t * px)
    return np.sqrt(dy * dy + dx * dx)


def _harmonics(rng, amp, ks=(2, 3, 4, 5)):
    return [(k, float(rng.normal(0, amp / k ** 0.5)), float(rng.uniform(0, 2 * np.pi))) for k in ks]


def _nucleus_sd(rng, t: dict, yy, xx, R: float, nc: float) -> np.ndarray:
    """Signed distance (px) of the nucleus shape of a cell of radius R px centred at 0."""
    shape = t["shape"]
    theta = rng.uniform(0, 2 * np.pi)
    if shape in ("round", "kidney", "smudge"):
        rn = nc * R
        off = t.get("offset", 0.05) * R * rng.uniform(0.3, 1.0)
        oy, ox = off * np.sin(theta), off * np.cos(theta)
        ecc = rng.uniform(1.0, 1.15)
        wob = t.get("wobble", 0.04)
        if shape == "smudge":
            ecc, wob = rng.uniform(1.1, 1.5), 0.22
        sd = _wobbly_ellipse(yy - oy, xx - ox, rn * ecc, rn / ecc, rng.uniform(0, np.pi),
                             _harmonics(rng, wob), rn)
        if shape == "kidney":  # indentation: subtract a disc sitting on the rim
            ang = rng.uniform(0, 2 * np.pi)
            cy, cx = oy + 1.05 * rn * np.sin(ang), ox + 1.05 * rn * np.cos(ang)
            rd = rng.uniform(0.45, 0.6) * rn
            sd_disc = rd - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            sd = np.minimum(sd, -sd_disc)
        return sd
    if shape == "band":
        ring = rng.uniform(0.48, 0.58) * R
        thick = t["nc"][0] * R * rng.uniform(0.9, 1.1) + 0.8
        half = np.deg2rad(rng.uniform(100, 140))
        mid = rng.uniform(0, 2 * np.pi)
        dist = np.sqrt(yy * yy + xx * xx)
        delta = np.angle(np.exp(1j * (np.arctan2(yy, xx) - mid)))
        d_ring = np.abs(dist - ring)
        ends = [(ring * np.sin(mid + s * half), ring * np.cos(mid + s * half)) for s in (-1, 1)]
        d_end = np.minimum(*[np.sqrt((yy - ey) ** 2 + (xx - ex) ** 2) for ey, ex in ends])
        d = np.where(np.abs(delta) <= half, d_ring, d_end)
        return thick / 2 - d
    if shape == "segmented":
        n = int(rng.integers(t["lobes"][0], t["lobes"][1] + 1))
        rl = rng.uniform(*t["nc"]) * R
        arc_r = rng.uniform(0.42, 0.52) * R
        span = rng.uniform(0.9, 1.5) * (np.pi if n > 2 else 0.75 * np.pi)
        mid = rng.uniform(0, 2 * np.pi)
        angs = mid + np.linspace(-span / 2, span / 2, n)
        centres = [(arc_r * np.sin(a) + rng.normal(0, 0.05 * R), arc_r * np.cos(a) + rng.normal(0, 0.05 * R))
                   for a in angs]
        sd = np.full(yy.shape, -1e3)
        for cy, cx in centres:
            r_this = rl * rng.uniform(0.85, 1.15)
            sd = np.maximum(sd, r_this - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2))
        for p0, p1 in zip(centres[:-1], centres[1:]):  # thin chromatin filaments between lobes
            sd = np.maximum(sd, 0.7 - _segment_dist(yy, xx, p0, p1))
        return sd
    raise ValueError(f"unknown nucleus shape {shape!r}")


def _spread(rng, lo_hi: tuple[float, float], difficulty: float) -> float:
    lo, hi = lo_hi
    c, h = (lo + hi) / 2, (hi - lo) / 2 * (0.75 + 0.75 * difficulty)
    return float(rng.uniform(c - h, c + h))


def _draw_wbc(rng, C: np.ndarray, mask: np.ndarray, cy: float, cx: float, R: float, ctype: str,
              ppu: float, difficulty: float) -> tuple[float, float]:
    """Draw one white cell into concentration map C (H, W, 3) and mask (H, W); return centroid."""
    t = CELL_TYPES[ctype]
    H, W = mask.shape
    pad = int(np.ceil(R * 1.25)) + 3
    y0, y1 = max(0, int(cy) - pad), min(H, int(cy) + pad + 1)
    x0, x1 = max(0, int(cx) - pad), min(W, int(cx) + pad + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    yy -= cy
    xx -= cx
    shape = (y1 - y0, x1 - x0)

    smudge = t["shape"] == "smudge"
    ecc = rng.uniform(1.0, 1.12)
    sd_cell = _wobbly_ellipse(yy, xx, R * ecc, R / ecc, rng.uniform(0, np.pi), _harmonics(rng, 0.035), R)
    sd_nuc = _nucleus_sd(rng, t, yy, xx, R, _spread(rng, t["nc"], difficulty))
    if smudge:
        sd_cell = sd_nuc
    else:
        sd_nuc = np.minimum(sd_nuc, sd_cell - 0.8)
    a_cell, a_nuc = _soft(sd_cell), _soft(sd_nuc)
    hard_cell, hard_nuc = sd_cell > 0, sd_nuc > 0

    box = C[y0:y1, x0:x1]
    # cytoplasm: flat stain with a faint texture
    cyto = np.array(t["cyto"], dtype=np.float64) * rng.uniform(0.85, 1.15)
    ctex = 1.0 + 0.12 * _texture(rng, shape, 1.2 * ppu)
    cyto_map = cyto[None, None, :] * ctex[..., None]
    if t.get("vacuoles"):
        for _ in range(int(rng.integers(t["vacuoles"][0], t["vacuoles"][1] + 1))):
            vr = rng.uniform(0.4, 0.9) * ppu
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.85) * R
            d = np.sqrt((yy - rad * np.sin(ang)) ** 2 + (xx - rad * np.cos(ang)) ** 2)
            cyto_map *= (1.0 - 0.8 * _soft(vr - d))[..., None]
    # nucleus: azure with chromatin texture (fine and smooth for blasts, coarse and clumped
    # for mature cells), pale nucleoli for blasts
    contrast, chrom_um, clumped = t["chrom"]
    nconc = _spread(rng, t["nuc"], difficulty)
    tex = _texture(rng, shape, chrom_um * ppu * 0.6)
    tex = np.tanh(1.6 * tex) if clumped else tex
    if smudge:
        tex = _texture(rng, shape, (0.4 * ppu, 2.5 * ppu))  # streaky, smeared chromatin
    nuc_map = np.zeros(shape + (3,))
    nuc_map[..., 1] = nconc * np.clip(1.0 + contrast * tex, 0.3, None)
    nuc_map[..., 2] = 0.10 * nconc
    lo, hi, size_um = t["nucleoli"]
    n_nucleoli = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    if n_nucleoli:
        inside = np.flatnonzero(sd_nuc.ravel() > size_um * ppu + 1.0)
        for idx in rng.choice(inside, size=min(n_nucleoli, len(inside)), replace=False) if len(inside) else []:
            ny, nx = yy.flat[idx], xx.flat[idx]
            rr = size_um * ppu * rng.uniform(0.6, 1.0)
            cov = _soft(rr - np.sqrt((yy - ny) ** 2 + (xx - nx) ** 2))
            nuc_map[..., 1] *= 1.0 - 0.55 * cov
            nuc_map[..., 2] += 0.25 * cov
    # compose: cell over background, nucleus over cytoplasm
    box *= (1.0 - a_cell)[..., None]
    box += a_cell[..., None] * ((1.0 - a_nuc)[..., None] * cyto_map + a_nuc[..., None] * nuc_map)
    # granules: random points inside the cell, blurred to the granule size
    if t["gran"] is not None:
        dens, gsize, gconc = t["gran"]
        region = hard_cell if t.get("gran_on_nucleus") else (hard_cell & ~hard_nuc)
        idx = np.flatnonzero(region.ravel())
        n_g = int(dens * len(idx) / ppu ** 2 * rng.uniform(0.8, 1.2))
        if n_g and len(idx):
            g = np.zeros(shape)
            np.add.at(g.ravel(), rng.choice(idx, size=n_g), 1.0)
            sig = max(gsize * ppu * 0.5, 0.5)
            g = _smooth(g, sig) * (2 * np.pi * sig * sig)
            g = np.clip(g, 0, 1.5) * a_cell
            box += g[..., None] * np.array(gconc)[None, None, :]
    # Auer rods: thin red-purple needles in the cytoplasm
    if t.get("auer") and rng.random() < t["auer"][0]:
        n_rods = int(rng.integers(t["auer"][1][0], t["auer"][1][1] + 1))
        base_ang = rng.uniform(0, np.pi)
        for _ in range(n_rods):
            ang = base_ang + rng.normal(0, 0.25)
            L = rng.uniform(3.0, 6.0) * ppu / 2
            rad = rng.uniform(0.55, 0.8) * R
            pa = rng.uniform(0, 2 * np.pi)
            c0 = (rad * np.sin(pa), rad * np.cos(pa))
            p0 = (c0[0] - L * np.sin(ang), c0[1] - L * np.cos(ang))
            p1 = (c0[0] + L * np.sin(ang), c0[1] + L * np.cos(ang))
            rod = _soft(0.45 * ppu - _segment_dist(yy, xx, p0, p1)) * a_cell
            box += rod[..., None] * np.array([0.9, 1.2, 0.0])[None, None, :]
    np.maximum(box, 0, out=box)
    m = mask[y0:y1, x0:x1]
    m[hard_cell] = 1
    m[hard_nuc] = 2
    ys, xs = np.nonzero(hard_cell)
    return float(ys.mean() + y0), float(xs.mean() + x0)


def _rbc_sprite(rng, r: float) -> tuple[np.ndarray, int]:
    """One red cell: a pink disc with a pale centre (central pallor); returns (conc, pad)."""
    pad = int(np.ceil(r * 1.12)) + 2
    yy, xx = np.mgrid[-pad:pad + 1, -pad:pad + 1].astype(np.float64)
    ecc = rng.uniform(1.0, 1.1)
    sd = _wobbly_ellipse(yy, xx, r * ecc, r / ecc, rng.uniform(0, np.pi), _harmonics(rng, 0.02, (2, 3)), r)
    rho = 1.0 - sd / r
    pallor = 1.0 - rng.uniform(0.35, 0.55) * np.exp(-(rho / 0.42) ** 2)
    return _soft(sd) * rng.uniform(0.48, 0.6) * pallor, pad


@functools.lru_cache(maxsize=8)
def _rbc_bank(ppu: float) -> list[tuple[np.ndarray, int]]:
    """A fixed bank of red-cell sprites per drawing scale (each field draws 8 of them)."""
    rng = np.random.default_rng(12345)
    r_mean = 3.7 * ppu
    return [_rbc_sprite(rng, r_mean * rng.uniform(0.88, 1.12)) for _ in range(32)]


def _draw_rbcs(rng, C: np.ndarray, ppu: float, coverage: float) -> None:
    """Red cells, stamped from a few sprites; overlaps look darker (optical densities add).

    All stamps of one sprite are accumulated with a single ``bincount`` on a padded canvas.
    """
    H, W = C.shape[:2]
    r_mean = 3.7 * ppu
    n = int(coverage * H * W / (np.pi * r_mean ** 2))
    bank = _rbc_bank(round(float(ppu), 4))
    sprites = [bank[i] for i in rng.choice(len(bank), size=8, replace=False)]
    P = 2 * max(pad for _, pad in sprites)  # canvas margin: a centre off the field plus a sprite
    Hp, Wp = H + 2 * P, W + 2 * P
    which = rng.integers(0, len(sprites), size=n)
    cys = rng.integers(P - int(r_mean), H + P + int(r_mean), size=n)
    cxs = rng.integers(P - int(r_mean), W + P + int(r_mean), size=n)
    acc = np.zeros(Hp * Wp)
    for k, (spr, pad) in enumerate(sprites):
        sel = which == k
        if not sel.any():
            continue
        oy, ox = np.mgrid[-pad:pad + 1, -pad:pad + 1]
        offs = (oy * Wp + ox).ravel()
        centres = cys[sel] * Wp + cxs[sel]
        acc += np.bincount((centres[:, None] + offs[None, :]).ravel(),
                           weights=np.tile(spr.ravel(), len(centres)), minlength=Hp * Wp)
    C[..., 0] += acc.reshape(Hp, Wp)[P:P + H, P:P + W]


def _draw_platelets(rng, C: np.ndarray, ppu: float, n: int) -> None:
    H, W = C.shape[:2]
    for _ in range(n):
        r = rng.uniform(0.8, 1.4) * ppu
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        pad = int(r) + 2
        y0, y1 = max(0, int(cy) - pad), min(H, int(cy) + pad + 1)
        x0, x1 = max(0, int(cx) - pad), min(W, int(cx) + pad + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        sd = _wobbly_ellipse(yy - cy, xx - cx, r * 1.2, r / 1.2, rng.uniform(0, np.pi), _harmonics(rng, 0.15), r)
        a = _soft(sd) * (0.7 + 0.3 * rng.random(sd.shape))
        C[y0:y1, x0:x1, 1] += a * rng.uniform(0.5, 0.8)
        C[y0:y1, x0:x1, 0] += a * 0.1


def _blur3(a: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap blur [w, 1-2w, w] along the first two axes (edges replicated)."""
    w = np.float32(w)
    p = np.concatenate([a[:1], a, a[-1:]], axis=0)
    a = w * (p[:-2] + p[2:]) + (1 - 2 * w) * p[1:-1]
    p = np.concatenate([a[:, :1], a, a[:, -1:]], axis=1)
    return w * (p[:, :-2] + p[:, 2:]) + (1 - 2 * w) * p[:, 1:-1]


def _place(rng, radii: list[float], H: int, W: int, margin: float = 2.0) -> list[tuple[float, float, float] | None]:
    """Place non-overlapping discs fully inside the field, in the given order.

    Returns one ``(cy, cx, r)`` per radius, or None where a disc did not fit; a disc too large
    for a tiny field is shrunk to fit.
    """
    placed: list[tuple[float, float, float]] = []
    out: list[tuple[float, float, float] | None] = []
    for r in radii:
        lo = r * 1.15 + margin
        if H - 2 * lo < 1 or W - 2 * lo < 1:
            r = (min(H, W) / 2 - margin) / 1.15 * 0.98
            lo = r * 1.15 + margin
        spot = None
        for _ in range(60):
            cy, cx = rng.uniform(lo, H - lo), rng.uniform(lo, W - lo)
            if all((cy - py) ** 2 + (cx - px) ** 2 > (1.15 * (r + pr) + margin) ** 2 for py, px, pr in placed):
                spot = (cy, cx, r)
                placed.append(spot)
                break
        out.append(spot)
    return out


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
    _draw_rbcs(rng, C, ppu, coverage=rng.uniform(0.32, 0.48))
    _draw_platelets(rng, C, ppu, n=int(rng.integers(2, 6) * H * W / 256 ** 2) + int(rng.integers(0, 2)))
    mask = np.zeros((H, W), dtype=np.uint8)
    wanted = plan.cells[image_index]
    radii = [_spread(rng, CELL_TYPES[ct]["radius"], diff) * ppu for ct, _ in wanted]
    order = np.argsort(radii, kind="stable")[::-1]  # largest first packs best
    spots = _place(rng, [radii[i] for i in order], H, W)
    cells = []
    for spot, i in zip(spots, order):
        if spot is None:
            continue
        cy, cx, r = spot
        ctype, abnormal = wanted[i]
        y, x = _draw_wbc(rng, C, mask, cy, cx, r, ctype, ppu, diff)
        cells.append({"centroid_y": y, "centroid_x": x, "truth": "abnormal" if abnormal else "normal",
                      "cell_type": ctype})
    # Beer-Lambert with the patient's stain, then optics: blur, uneven illumination, sensor noise
    C[..., 2] += 0.03 * C[..., 0]  # red cells take up a trace of blue
    M = (plan.stain_scale[:, None] * plan.stains).astype(np.float32)
    od = (C.astype(np.float32).reshape(-1, 3) @ M).reshape(H, W, 3) + plan.background_od.astype(np.float32)
    od = _blur3(od, 0.12 + 0.12 * diff)  # optics: slight defocus
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
