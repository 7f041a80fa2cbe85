"""Mitochondria: ellipsoids inside neurons, long along the neurite (z), never crossing a membrane.

Each site tries one mitochondrion (axons, with ``mito_probability``) or three (dendrites): a random
ellipsoid in Q-space (the warped tissue, so it moves with its cell) near the site. It is kept only if
it lies inside its own power cell with a clear gap to every cell boundary, which is decided
analytically from the sites around it (:func:`engine.synth.sites.neighbourhood`), so the decision is
the same in every block. Mitochondria of one dendrite do not overlap. With ``mito_squeeze`` every
tried mitochondrion is kept and cut off ``SQUEEZE_GAP`` nm inside its cell's membrane band, its outer
membrane drawn along the cut (a mitochondrion that fills a thin axon), which gives realistic densities
of a few percent of the voxels.

Mitochondrion ids (uint64): ``8 * neuron_id + k`` (k = 1..3), so ``mito_id // 8`` is the id of the
neuron that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.geometry import Box
from engine.synth.fields import smoothstep, uniform
from engine.synth.neurons import NeuronField, warp_amplitude
from engine.synth.params import SynthParams
from engine.synth.sites import Sites, neighbourhood, sites_in

S_MITO = 40
ATTEMPTS = 3
GAP = 25.0  # nm of cytoplasm kept between a mitochondrion and the membrane band
RING = 14.0  # nm: the dark double membrane of a mitochondrion
DARK_INSIDE, DARK_RING, DARK_CRISTA = 0.38, 0.68, 0.22
SQUEEZE_GAP = 12.0  # nm of cytoplasm kept between a squeezed mitochondrion and the membrane band


@dataclass(frozen=True)
class Mitos:
    """Mitochondria: centres (Q-space nm, z y x), semi-axes (along z, then the two in-plane ones,
    ``a >= b``), the in-plane direction (y, x) of ``a``, and host neuron and own ids."""

    centre: np.ndarray  # (m, 3)
    axes: np.ndarray  # (m, 3)
    direction: np.ndarray  # (m, 2)
    host: np.ndarray  # (m,) uint64
    ids: np.ndarray  # (m,) uint64
    crista: np.ndarray  # (m, 2): crista period (nm) and phase

    def __len__(self) -> int:
        return int(self.ids.size)


def _candidates(p: SynthParams, sites: Sites) -> tuple[Mitos, np.ndarray]:
    """All attempts of ``sites`` as (n, ATTEMPTS) arrays, flattened, and which are tried."""
    ids = sites.ids[:, None]
    k = np.arange(ATTEMPTS)[None, :]
    u = [uniform(p.seed, S_MITO + q, ids, k) for q in range(10)]
    tried = (u[0] < p.mito_probability) & ((k == 0) | sites.dendrite[:, None])
    a = p.mito_radius[0] + u[1] * (p.mito_radius[1] - p.mito_radius[0])
    b = a * (0.55 + 0.45 * u[2])
    half = 0.5 * (p.mito_length[0] + u[3] * (p.mito_length[1] - p.mito_length[0]))
    t = 2.0 * u[4] - 1.0
    direction = np.stack([(1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)], -1)
    spread = np.where(sites.dendrite, 0.6 * np.sqrt(np.maximum(sites.weight, 0.0)), 0.15 * p.neuron_spacing)[:, None]
    offset = np.stack([(2.0 * u[q] - 1.0) * spread for q in (5, 6, 7)], -1)
    centre_m = sites.pos[:, None, :] + offset
    centre = centre_m * np.array([p.neuron_stretch, 1.0, 1.0])
    shape = tried.shape
    mitos = Mitos(
        centre.reshape(-1, 3),
        np.stack([half, a, b], -1).reshape(-1, 3),
        direction.reshape(-1, 2),
        np.broadcast_to(ids, shape).reshape(-1),
        (np.broadcast_to(ids, shape) * np.uint64(8) + (k + 1).astype(np.uint64)).reshape(-1),
        np.stack([30.0 + 15.0 * u[8], u[9]], -1).reshape(-1, 2),
    )
    return mitos, tried.reshape(-1)


def _fits(p: SynthParams, m: Mitos, host_pos: np.ndarray, host_weight: np.ndarray) -> np.ndarray:
    """True where the ellipsoid keeps ``GAP`` nm clear of the membrane band of every cell boundary."""
    st = p.neuron_stretch
    centre_m = m.centre / np.array([st, 1.0, 1.0])
    margin_max = 0.5 * p.membrane_thickness + 0.5 * p.voxel_size[0] + GAP
    # a fixed radius (the largest mitochondrion), so that every block looks at the same sites
    radius = max(0.5 * p.mito_length[1] / st, p.mito_radius[1]) + margin_max
    nb = neighbourhood(p, centre_m, radius)
    other = (nb.ids != 0) & (nb.ids != m.host[:, None])
    delta = nb.pos - host_pos[:, None, :]
    with np.errstate(invalid="ignore"):
        pow_k = ((centre_m[:, None, :] - nb.pos) ** 2).sum(-1) - nb.weight
    pow_i = ((centre_m - host_pos) ** 2).sum(-1) - host_weight
    nv = delta / np.array([st, 1.0, 1.0])
    norm = np.sqrt((nv**2).sum(-1))
    norm = np.where(other, norm, 1.0)
    n = nv / norm[..., None]
    dist = (pow_k - pow_i[:, None]) / (2.0 * norm)  # physical distance from the centre to the boundary
    cy, cx = m.direction[:, None, 0], m.direction[:, None, 1]
    nu = n[..., 1] * cy + n[..., 2] * cx
    nw = -n[..., 1] * cx + n[..., 2] * cy
    support = np.sqrt((n[..., 0] * m.axes[:, None, 0]) ** 2 + (nu * m.axes[:, None, 1]) ** 2 + (nw * m.axes[:, None, 2]) ** 2)
    margin = 0.5 * p.membrane_thickness + np.abs(n[..., 0]) * 0.5 * p.voxel_size[0] + GAP
    ok = np.where(other, dist - support >= margin, True)
    return np.asarray(ok.all(axis=1))


def place_mitos(p: SynthParams, sites: Sites) -> Mitos:
    """The mitochondria of ``sites`` that fit in their cells (deterministic per site)."""
    mitos, tried = _candidates(p, sites)
    if p.bodies > 0:  # a neuron that holds a dark body holds no mitochondrion
        from engine.synth.bodies import holds_body

        tried &= ~np.repeat(holds_body(p, sites), ATTEMPTS)
    host_pos = np.repeat(sites.pos, ATTEMPTS, axis=0)
    host_weight = np.repeat(sites.weight, ATTEMPTS)
    idx = np.flatnonzero(tried)
    fits = tried.copy() if p.mito_squeeze else np.zeros(tried.shape, bool)
    if idx.size and not p.mito_squeeze:
        sub = Mitos(*(arr[idx] for arr in (mitos.centre, mitos.axes, mitos.direction, mitos.host, mitos.ids, mitos.crista)))
        fits[idx] = _fits(p, sub, host_pos[idx], host_weight[idx])
    # mitochondria of the same dendrite must not overlap: later attempts give way to earlier ones
    keep = fits.reshape(-1, ATTEMPTS).copy()
    c = mitos.centre.reshape(-1, ATTEMPTS, 3)
    ax = mitos.axes.reshape(-1, ATTEMPTS, 3)
    for k in range(1, ATTEMPTS):
        for j in range(k):
            dz = np.abs(c[:, k, 0] - c[:, j, 0])
            dxy = np.sqrt(((c[:, k, 1:] - c[:, j, 1:]) ** 2).sum(-1))
            clash = (dz < ax[:, k, 0] + ax[:, j, 0] + GAP) & (dxy < ax[:, k, 1] + ax[:, j, 1] + GAP)
            keep[:, k] &= ~(clash & keep[:, j])
    sel = np.flatnonzero(keep.reshape(-1))
    return Mitos(*(arr[sel] for arr in (mitos.centre, mitos.axes, mitos.direction, mitos.host, mitos.ids, mitos.crista)))


def mitos_near(p: SynthParams, lo: np.ndarray, hi: np.ndarray) -> Mitos:
    """Every mitochondrion that can reach the M-space box ``lo..hi``."""
    st = p.neuron_stretch
    spread = max(0.15 * p.neuron_spacing, 0.6 * p.dendrite_radius[1])
    margin = np.array([spread + 0.5 * p.mito_length[1] / st, spread + p.mito_radius[1], spread + p.mito_radius[1]])
    return place_mitos(p, sites_in(p, np.asarray(lo) - margin, np.asarray(hi) + margin))


def ellipsoid_voxels(p: SynthParams, body: tuple[np.ndarray, ...], field: NeuronField, box: Box, edge: float | None) -> tuple | None:
    """The voxels of one ellipsoid (``body``: centre, semi-axes, in-plane direction, host id) inside its
    host cell over ``box`` (the field's box): ``(slices, inside, depth, dz, u)`` with ``depth`` about the
    in-plane distance (nm) to its surface, or None where it misses the box. ``edge``: cut the ellipsoid
    off this far (nm) from the cell boundary, its surface running along the cut (None: no cut)."""
    vz, vy, vx = p.voxel_size
    (cz, cy, cx), (half, a, b), (ey, ex), host = body
    reach_xy = a + warp_amplitude(p)
    lo = (int(np.floor((cz - half) / vz)), int(np.floor((cy - reach_xy) / vy)), int(np.floor((cx - reach_xy) / vx)))
    hi = (int(np.ceil((cz + half) / vz)) + 1, int(np.ceil((cy + reach_xy) / vy)) + 1, int(np.ceil((cx + reach_xy) / vx)) + 1)
    region = Box(lo, hi).intersect(box)
    if region.empty:
        return None
    sl = region.to_slices(box)
    warp = field.warp
    dz = (warp.pz[sl[0]] - cz)[:, None, None]
    dy = warp.qy(sl) - cy
    dx = warp.qx(sl) - cx
    u = dy * ey + dx * ex
    w = -dy * ex + dx * ey
    r2 = (dz / half) ** 2 + (u / a) ** 2 + (w / b) ** 2
    inside = (r2 < 1.0) & (field.sites.ids[field.first[sl]] == host)
    if edge is not None:
        inside &= field.dist[sl] >= edge
    if not inside.any():
        return None
    grad = 2.0 * np.sqrt((u / (a * a)) ** 2 + (w / (b * b)) ** 2) + 1e-9
    depth = (1.0 - r2) / grad  # ~ in-plane distance to the surface, nm
    if edge is not None:
        depth = np.minimum(depth, field.dist[sl] - edge)
    return sl, inside, depth, dz, u


def render_mitos(p: SynthParams, mitos: Mitos, field: NeuronField, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondrion ids (uint64, 0 outside) and darkness (0..1) over ``box`` (the field's box)."""
    ids = np.zeros(box.shape, np.uint64)
    dark = np.zeros(box.shape, np.float32)
    edge = 0.5 * p.membrane_thickness + SQUEEZE_GAP if p.mito_squeeze else None
    for n in range(len(mitos)):
        found = ellipsoid_voxels(p, (mitos.centre[n], mitos.axes[n], mitos.direction[n], mitos.host[n]), field, box, edge)
        if found is None:
            continue
        sl, inside, depth, dz, u = found
        ring = 1.0 - smoothstep(np.clip((depth - RING) / 8.0, 0.0, 1.0))
        period, phase = mitos.crista[n]
        tri = np.abs(2.0 * (((u + 0.35 * dz) / period + phase) % 1.0) - 1.0)
        crista = smoothstep(np.clip((tri - 0.72) / 0.28, 0.0, 1.0)) * (1.0 - ring)
        shade = DARK_INSIDE + (DARK_RING - DARK_INSIDE) * ring + DARK_CRISTA * crista
        ids[sl] = np.where(inside, mitos.ids[n], ids[sl])
        dark[sl] = np.where(inside, shade.astype(np.float32), dark[sl])
    return ids, dark
