"""Neurons: the power diagram of the sites (:mod:`engine.synth.sites`) in a warped, z-stretched space.

Geometry, for a voxel ``p = (z, y, x)`` with voxel size ``v`` (nm):

- physical position ``P = p * v``;
- warped position ``Q = (Pz, Py + Fy(Pz, Px), Px + Fx(Pz, Py))``: ``F`` are smooth value-noise fields
  (a small-scale *wobble* that makes boundaries wavy, plus a slow *meander* that makes neurites drift
  from section to section); each shift depends on the other in-plane axis, so the map stays one to one;
- metric position ``M = (Qz / stretch, Qy, Qx)``: in M-space the cells are compact; in the tissue
  they are ``stretch`` times longer along z, like neurites running through the sections.

A voxel belongs to the site of least power ``|M - s|**2 - w``. Power cells are convex in M-space, so
every neuron is one connected piece, and the warp moves everything inside a cell with it (organelles
are placed in Q-space).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.geometry import Box
from engine.synth.fields import value_noise
from engine.synth.params import SynthParams
from engine.synth.sites import Sites, sites_near

S_WARP = 30
_TILE = (8, 32, 32)


def warp_amplitude(p: SynthParams) -> float:
    """The largest in-plane shift (nm) of the warp."""
    return p.boundary_wobble + p.meander


@dataclass(frozen=True)
class Warp:
    """The in-plane warp over a box: ``Qy = Py + fy`` with fy (Z, 1, X), ``Qx = Px + fx`` with fx (Z, Y, 1)."""

    pz: np.ndarray  # (Z,) physical z, nm
    py: np.ndarray  # (Y,)
    px: np.ndarray  # (X,)
    fy: np.ndarray  # (Z, 1, X)
    fx: np.ndarray  # (Z, Y, 1)

    def qy(self, sl: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
        """Warped y (nm) of the voxels ``sl`` (slices relative to the box), shape (Z, Y, X)."""
        return self.py[None, sl[1], None] + self.fy[sl[0], :, sl[2]]

    def qx(self, sl: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
        """Warped x (nm) of the voxels ``sl`` (slices relative to the box), shape (Z, Y, X)."""
        return self.px[None, None, sl[2]] + self.fx[sl[0], sl[1], :]


def _shift(p: SynthParams, stream: int, pz: np.ndarray, pa: np.ndarray) -> np.ndarray:
    """One in-plane shift field (nm) over (z, a): wobble (long along z, like the neurites) plus meander."""
    out = np.zeros((pz.size, pa.size))
    if p.boundary_wobble > 0:
        zscale = p.wobble_scale * p.neuron_stretch
        out += p.boundary_wobble * value_noise(p.seed, stream, [pz / zscale, pa / p.wobble_scale])
    if p.meander > 0:
        out += p.meander * value_noise(p.seed, stream + 1, [pz / p.meander_scale, pa / p.meander_scale])
    return out


def make_warp(p: SynthParams, box: Box) -> Warp:
    """The warp for the voxels of ``box``."""
    vz, vy, vx = p.voxel_size
    pz = np.arange(box.start[0], box.stop[0], dtype=np.float64) * vz
    py = np.arange(box.start[1], box.stop[1], dtype=np.float64) * vy
    px = np.arange(box.start[2], box.stop[2], dtype=np.float64) * vx
    fy = _shift(p, S_WARP, pz, px)[:, None, :]
    fx = _shift(p, S_WARP + 2, pz, py)[:, :, None]
    return Warp(pz, py, px, fy, fx)


@dataclass(frozen=True)
class NeuronField:
    """Per voxel of a box: the owning site (``first``), the physical distance in nm to the boundary
    with the runner-up site (``dist``) and ``|cos|`` of the angle between that boundary's normal and z
    (``tilt``: 0 for a membrane cut square by the section, 1 for one lying in the section plane)."""

    sites: Sites
    warp: Warp
    first: np.ndarray  # (Z, Y, X) int32 index into sites
    dist: np.ndarray  # (Z, Y, X) float32
    tilt: np.ndarray  # (Z, Y, X) float32

    @property
    def labels(self) -> np.ndarray:
        """Neuron ids (uint64) per voxel."""
        return self.sites.ids[self.first]


def _candidates(pos: np.ndarray, weight: np.ndarray, sq: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the sites that can be among the two least-power sites somewhere in the
    box ``lo..hi``: a site is dropped when two others have less power on the whole box."""
    slack = 1.0 + 1e-9 * float(sq.max())
    nearest = np.clip(pos, lo, hi)
    least = ((pos - nearest) ** 2).sum(1) - weight
    far = np.maximum(pos - lo, hi - pos)
    most = (far**2).sum(1) - weight
    pre = np.flatnonzero(least <= np.partition(most, 1)[1] + slack)
    pp = pos[pre]
    diff = pp[None, :, :] - pp[:, None, :]  # [s, t] = t - s
    const = sq[pre][None, :] - sq[pre][:, None] - weight[pre][None, :] + weight[pre][:, None]
    worst = np.maximum(-2.0 * diff * lo, -2.0 * diff * hi).sum(2) + const  # max over the box of pow_t - pow_s
    dominated = (worst < -slack).sum(1)
    return pre[dominated < 2]


def neuron_field(p: SynthParams, box: Box) -> NeuronField:
    """Owner and boundary distance of every voxel of ``box`` (see :class:`NeuronField`).

    The box is cut into small tiles; each tile keeps only the sites that can be one of the two
    least-power sites somewhere in it (usually a handful), and tracks the two best with strict
    comparisons in id order, so ties go to the smaller id and the result is exact whatever the box.
    """
    st = p.neuron_stretch
    warp = make_warp(p, box)
    mz = warp.pz / st
    amp = warp_amplitude(p)
    lo = np.array([mz[0], warp.py[0] - amp, warp.px[0] - amp])
    hi = np.array([mz[-1], warp.py[-1] + amp, warp.px[-1] + amp])
    sites = sites_near(p, lo, hi)
    pos, weight = sites.pos, sites.weight
    sq = (pos**2).sum(1)

    shape = box.shape
    first = np.empty(shape, np.int32)
    dist = np.empty(shape, np.float32)
    tilt = np.empty(shape, np.float32)
    col_z, col_y, col_x = pos[:, 0].copy(), pos[:, 1].copy(), pos[:, 2].copy()
    tz, ty, tx = _TILE
    for z0 in range(0, shape[0], tz):
        zs = slice(z0, min(shape[0], z0 + tz))
        zz = mz[zs, None, None]
        for y0 in range(0, shape[1], ty):
            ys = slice(y0, min(shape[1], y0 + ty))
            for x0 in range(0, shape[2], tx):
                sl = (zs, ys, slice(x0, min(shape[2], x0 + tx)))
                yy = warp.qy(sl)
                xx = warp.qx(sl)
                tlo = np.array([zz[0, 0, 0], yy.min(), xx.min()])
                thi = np.array([zz[-1, 0, 0], yy.max(), xx.max()])
                cand = _candidates(pos, weight, sq, tlo, thi)
                d1 = np.full(yy.shape, np.inf)
                d2 = d1.copy()
                i1 = np.zeros(d1.shape, np.int32)
                i2 = np.zeros(d1.shape, np.int32)
                for k in cand:
                    s = pos[k]
                    d = (yy - s[1]) ** 2
                    d += (xx - s[2]) ** 2
                    d += (zz - s[0]) ** 2 - weight[k]
                    m1 = d < d1
                    m2 = d < d2
                    np.copyto(i2, k, where=m2 > m1)
                    np.copyto(i2, i1, where=m1)
                    np.copyto(i1, k, where=m1)
                    np.minimum(d2, np.maximum(d1, d), out=d2)
                    np.minimum(d1, d, out=d1)
                first[sl] = i1
                # distance to the bisector of the two sites (a plane), and its tilt, in physical units
                dz = (col_z[i2] - col_z[i1]) / st
                dy = col_y[i2] - col_y[i1]
                dx = col_x[i2] - col_x[i1]
                norm = np.sqrt(dz * dz + dy * dy + dx * dx)
                dist[sl] = (d2 - d1) / (2.0 * norm)
                tilt[sl] = np.abs(dz) / norm
    return NeuronField(sites, warp, first, dist, tilt)


def crop_field(field: NeuronField, sl: tuple[slice, ...]) -> NeuronField:
    """The part ``sl`` (slices of the field's box, steps of 1) of a neuron field."""
    w = field.warp
    warp = Warp(w.pz[sl[0]], w.py[sl[1]], w.px[sl[2]], w.fy[sl[0], :, sl[2]], w.fx[sl[0], sl[1], :])
    return NeuronField(field.sites, warp, field.first[sl], field.dist[sl], field.tilt[sl])


def membrane_darkness(field: NeuronField, p: SynthParams) -> np.ndarray:
    """How much of each voxel's section column is membrane (0..1).

    The membrane is a sheet of ``membrane_thickness`` around each cell boundary; a section of
    thickness ``vz`` images its projection, so a boundary tilted toward the section plane appears as a
    wider, paler band (a membrane lying in the section plane is a faint smear).
    """
    t = 0.5 * p.membrane_thickness
    a = field.tilt * np.float32(0.5 * p.voxel_size[0])
    d = field.dist
    overlap = np.clip(np.minimum(d + a, t) - np.maximum(d - a, -t), 0.0, None)
    frac = np.where(a > 1e-3, overlap / np.maximum(2.0 * a, 1e-3), (d < t).astype(np.float32))
    return np.clip(frac, 0.0, 1.0).astype(np.float32)
