"""How the synthetic smear's cells look and are drawn: the cell-type catalogue (sizes, nuclear
shapes, chromatin, cytoplasm, granules, Auer rods) and the painters of white cells, red cells
and platelets used by :mod:`hemaflow.lib.smear_generator`."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


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


def spread(rng, lo_hi: tuple[float, float], difficulty: float) -> float:
    lo, hi = lo_hi
    c, h = (lo + hi) / 2, (hi - lo) / 2 * (0.75 + 0.75 * difficulty)
    return float(rng.uniform(c - h, c + h))


def draw_wbc(rng, C: np.ndarray, mask: np.ndarray, cy: float, cx: float, R: float, ctype: str,
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
    sd_nuc = _nucleus_sd(rng, t, yy, xx, R, spread(rng, t["nc"], difficulty))
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
    nconc = spread(rng, t["nuc"], difficulty)
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


def draw_rbcs(rng, C: np.ndarray, ppu: float, coverage: float) -> None:
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


def draw_platelets(rng, C: np.ndarray, ppu: float, n: int) -> None:
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


def blur3(a: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap blur [w, 1-2w, w] along the first two axes (edges replicated)."""
    w = np.float32(w)
    p = np.concatenate([a[:1], a, a[-1:]], axis=0)
    a = w * (p[:-2] + p[2:]) + (1 - 2 * w) * p[1:-1]
    p = np.concatenate([a[:, :1], a, a[:, -1:]], axis=1)
    return w * (p[:, :-2] + p[:, 2:]) + (1 - 2 * w) * p[:, 1:-1]


def place_cells(rng, radii: list[float], H: int, W: int, margin: float = 2.0) -> list[tuple[float, float, float] | None]:
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
