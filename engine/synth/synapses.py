"""Synapses: a presynaptic axon and a postsynaptic neighbour, at a patch of their shared membrane.

An axon makes a synapse with ``synapse_probability``. Its partner is chosen among the neighbours
behind its six nearest cell boundaries, those where a synapse fits: a dendrite if there is one, else
one picked by hash. The synapse is a disc of ``synapse_radius`` on their common boundary, centred where
the line between the two sites crosses it; it fits if the middle half of the disc lies well inside the
face the two cells share (the disc itself is cut to the two cells). All of it is decided analytically
from the sites around the axon, so it is the same in every block.

In the ``synapses`` volume (uint8): ``1`` marks the presynaptic side (voxels of the axon within
``PRE_DEPTH`` nm of the disc), ``2`` the postsynaptic side (voxels of the partner within ``PSD_DEPTH``
nm: the postsynaptic density). In the raw image the postsynaptic density is a dark fuzzy band along
the membrane and the presynaptic side is filled with vesicles: small dark rings about 40 nm across,
up to ``CLOUD_DEPTH`` nm from the membrane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.geometry import Box
from engine.synth.fields import smoothstep, uniform
from engine.synth.neurons import NeuronField, warp_amplitude
from engine.synth.params import SynthParams
from engine.synth.sites import Sites, neighbourhood, sites_in

S_SYNAPSE, S_VESICLE = 50, 60
PRE_DEPTH, PSD_DEPTH, CLOUD_DEPTH = 40.0, 40.0, 260.0
VESICLE_CELL, VESICLE_RADIUS = 52.0, 21.0
MARGIN = 25.0
FACE_CAP = 0.8  # x neuron_spacing: how far from the axon's site its synapse may sit
PARTNERS = 6  # nearest faces considered
CHUNK = 256  # axons per vectorised batch (bounds the memory)
DARK_PSD, DARK_CLEFT, DARK_VESICLE = 0.6, 0.25, 0.75


@dataclass(frozen=True)
class Synapses:
    """Synapse discs: centre (Q-space nm), unit normal from pre to post (physical), radius, and the
    pre- and postsynaptic neuron ids."""

    centre: np.ndarray  # (m, 3)
    normal: np.ndarray  # (m, 3)
    radius: np.ndarray  # (m,)
    pre: np.ndarray  # (m,) uint64
    post: np.ndarray  # (m,) uint64

    def __len__(self) -> int:
        return int(self.pre.size)


def _powers(points: np.ndarray, nb: Sites) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out = ((points[:, None, :] - nb.pos) ** 2).sum(-1) - nb.weight
    return np.where(nb.ids != 0, out, np.inf)


def _physical_norm(delta: np.ndarray, st: float) -> np.ndarray:
    return np.sqrt((delta[..., 0] / st) ** 2 + delta[..., 1] ** 2 + delta[..., 2] ** 2)


def _choose(p: SynthParams, pre: Sites, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each axon: whether it has a partner, the partner's id, the disc centre (M-space) and the
    unit normal (M-space, pre to post)."""
    st = p.neuron_stretch
    cap = FACE_CAP * p.neuron_spacing
    nb = neighbourhood(p, pre.pos, cap + 0.5 * p.synapse_radius[1] + MARGIN)
    valid = (nb.ids != 0) & (nb.ids != pre.ids[:, None])
    # no reciprocal pairs (two synapses on one spot): an axon synapses onto another axon only if it
    # comes first in a random order
    partner = valid & (nb.dendrite | (uniform(p.seed, S_SYNAPSE + 2, pre.ids)[:, None] < uniform(p.seed, S_SYNAPSE + 2, nb.ids)))
    delta = nb.pos - pre.pos[:, None, :]
    dist = np.where(valid, np.sqrt((delta**2).sum(-1)), 1.0)
    face = (_powers(pre.pos, nb) + pre.weight[:, None]) / (2.0 * dist)  # M-distance from the site to each bisector
    face = np.where(partner & (face > 0) & (face <= cap), face, np.inf)
    order = np.argsort(face, axis=1, kind="stable")[:, :PARTNERS]
    fd = np.take_along_axis(face, order, 1)
    unit = np.take_along_axis(delta, order[..., None], 1) / np.take_along_axis(dist, order, 1)[..., None]
    point = pre.pos[:, None, :] + np.where(np.isfinite(fd), fd, 0.0)[..., None] * unit  # the bisector's nearest point
    post_ids = np.take_along_axis(nb.ids, order, 1)
    post_pos = np.take_along_axis(nb.pos, order[..., None], 1)

    # clearance of each candidate centre from every other boundary of the axon and of the partner
    with np.errstate(invalid="ignore"):
        pw = ((point[:, :, None, :] - nb.pos[:, None, :, :]) ** 2).sum(-1) - nb.weight[:, None, :]
    here = ((point - pre.pos[:, None, :]) ** 2).sum(-1) - pre.weight[:, None]
    others = valid[:, None, :] & (nb.ids[:, None, :] != post_ids[..., None])
    need = 0.5 * radius[:, None, None] + MARGIN
    ok = np.isfinite(fd)
    for norm in (_physical_norm(delta, st)[:, None, :], _physical_norm(nb.pos[:, None, :, :] - post_pos[:, :, None, :], st)):
        clear = (pw - here[..., None]) / (2.0 * np.where(others, norm, 1.0))
        ok &= np.where(others, clear >= need, True).all(-1)

    # dendrites first, else the valid neighbour with the least hash
    dend = np.take_along_axis(nb.dendrite, order, 1) & ok
    rank = np.where(ok, uniform(p.seed, S_SYNAPSE + 3, pre.ids[:, None], post_ids), np.inf)
    pick = np.where(dend.any(1), dend.argmax(1), rank.argmin(1))
    rows = np.arange(len(pick))
    return ok.any(1), post_ids[rows, pick], point[rows, pick], unit[rows, pick]


def place_synapses(p: SynthParams, sites: Sites) -> Synapses:
    """The synapses made by the axons among ``sites`` (deterministic per axon)."""
    st = p.neuron_stretch
    u = [uniform(p.seed, S_SYNAPSE + q, sites.ids) for q in range(2)]
    pre_idx = np.flatnonzero((u[0] < p.synapse_probability) & ~sites.dendrite)
    radius = p.synapse_radius[0] + u[1][pre_idx] * (p.synapse_radius[1] - p.synapse_radius[0])
    found, post, centre, unit = [], [], [], []
    for start in range(0, pre_idx.size, CHUNK):
        part = slice(start, start + CHUNK)
        f, q, c, n = _choose(p, sites.take(pre_idx[part]), radius[part])
        found.append(f)
        post.append(q)
        centre.append(c)
        unit.append(n)
    if not found:
        return Synapses(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    keep = np.flatnonzero(np.concatenate(found))
    scale = np.array([st, 1.0, 1.0])
    nv = np.concatenate(unit)[keep] / scale
    normal = nv / np.sqrt((nv**2).sum(-1))[:, None]
    return Synapses(np.concatenate(centre)[keep] * scale, normal, radius[keep], sites.ids[pre_idx[keep]], np.concatenate(post)[keep])


def synapses_near(p: SynthParams, lo: np.ndarray, hi: np.ndarray) -> Synapses:
    """Every synapse that can reach the M-space box ``lo..hi`` (its disc, labels or vesicles)."""
    ext = 1.3 * p.synapse_radius[1] + CLOUD_DEPTH
    cap = FACE_CAP * p.neuron_spacing
    margin = np.array([cap + ext / p.neuron_stretch, cap + ext, cap + ext])
    return place_synapses(p, sites_in(p, np.asarray(lo) - margin, np.asarray(hi) + margin))


def _vesicles(p: SynthParams, z: np.ndarray, qy: np.ndarray, qx: np.ndarray, pz: float, syn: Synapses, n: int) -> np.ndarray:
    """Darkness of vesicles at in-section positions (qy, qx) of section index z (arrays, same shape)."""
    c = syn.centre[n]
    nz, ny, nx = syn.normal[n]
    r = syn.radius[n]
    best = np.full(qy.shape, np.inf)
    cy0 = np.floor(qy / VESICLE_CELL).astype(np.int64)
    cx0 = np.floor(qx / VESICLE_CELL).astype(np.int64)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            cy, cx = cy0 + oy, cx0 + ox
            vy = (cy + 0.5 + 0.6 * (uniform(p.seed, S_VESICLE, z, cy, cx) - 0.5)) * VESICLE_CELL
            vx = (cx + 0.5 + 0.6 * (uniform(p.seed, S_VESICLE + 1, z, cy, cx) - 0.5)) * VESICLE_CELL
            h = (pz - c[0]) * nz + (vy - c[1]) * ny + (vx - c[2]) * nx
            lat2 = (pz - c[0]) ** 2 + (vy - c[1]) ** 2 + (vx - c[2]) ** 2 - h * h
            depth = np.clip(-h / CLOUD_DEPTH, 0.0, 1.0)
            density = 0.85 * (1.0 - depth * depth)
            present = (h <= -(VESICLE_RADIUS + 10.0)) & (lat2 <= (1.2 * r) ** 2) & (uniform(p.seed, S_VESICLE + 2, z, cy, cx) < density)
            d = np.sqrt((qy - vy) ** 2 + (qx - vx) ** 2)
            best = np.where(present, np.minimum(best, d), best)
    ring = np.clip(1.5 - np.abs(best - VESICLE_RADIUS + 4.0) / 6.0, 0.0, 1.0)
    return np.asarray(DARK_VESICLE * ring)


def render_synapses(p: SynthParams, syn: Synapses, field: NeuronField, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Synapse labels (uint8: 1 pre, 2 post) and darkness (0..1) over ``box`` (the field's box)."""
    labels = np.zeros(box.shape, np.uint8)
    dark = np.zeros(box.shape, np.float32)
    vz, vy, vx = p.voxel_size
    amp = warp_amplitude(p)
    warp = field.warp
    half_section = 0.5 * vz
    for n in range(len(syn)):
        c = syn.centre[n]
        r = syn.radius[n]
        ext = 1.25 * r + CLOUD_DEPTH
        lo = (int(np.floor((c[0] - ext) / vz)), int(np.floor((c[1] - ext - amp) / vy)), int(np.floor((c[2] - ext - amp) / vx)))
        hi = (int(np.ceil((c[0] + ext) / vz)) + 1, int(np.ceil((c[1] + ext + amp) / vy)) + 1, int(np.ceil((c[2] + ext + amp) / vx)) + 1)
        region = Box(lo, hi).intersect(box)
        if region.empty:
            continue
        sl = region.to_slices(box)
        dz = (warp.pz[sl[0]] - c[0])[:, None, None]
        dy = warp.qy(sl) - c[1]
        dx = warp.qx(sl) - c[2]
        nz, ny, nx = syn.normal[n]
        h = dz * nz + dy * ny + dx * nx  # signed distance from the disc plane, > 0 on the post side
        lat2 = dz * dz + dy * dy + dx * dx - h * h
        ids = field.sites.ids[field.first[sl]]
        in_pre = ids == syn.pre[n]
        in_post = ids == syn.post[n]
        disc = lat2 <= r * r
        lab = labels[sl]
        lab[in_pre & disc & (h >= -PRE_DEPTH) & (h <= 0.0)] = 1
        lab[in_post & disc & (h >= 0.0) & (h <= PSD_DEPTH)] = 2
        # raw: postsynaptic density (a band widened by the section's thickness where tilted), cleft, vesicles
        smear = abs(nz) * half_section
        rim = 1.0 - smoothstep(np.clip((np.sqrt(lat2) - r) / 30.0 + 1.0, 0.0, 1.0))
        band = np.clip(1.0 - np.maximum(h - 0.6 * PSD_DEPTH, 0.0) / (0.4 * PSD_DEPTH + smear), 0.0, 1.0)
        shade = np.where(in_post & (h > -smear) & disc, DARK_PSD * band * rim, 0.0)
        shade = np.maximum(shade, DARK_CLEFT * rim * (np.abs(h) < 6.0 + smear))
        cloud = in_pre & (h < -8.0) & (h > -CLOUD_DEPTH) & (lat2 < (1.3 * r) ** 2)
        if cloud.any():
            zi, yi, xi = np.nonzero(cloud)
            zs = np.arange(region.start[0], region.stop[0])
            ves = np.zeros(cloud.shape)
            for zz in np.unique(zi):
                sel = zi == zz
                qy = dy[zz, yi[sel], xi[sel]] + c[1]
                qx = dx[zz, yi[sel], xi[sel]] + c[2]
                ves[zz, yi[sel], xi[sel]] = _vesicles(p, zs[zz], qy, qx, float(warp.pz[sl[0]][zz]), syn, n)
            shade = np.maximum(shade, ves)
        d = dark[sl]
        np.maximum(d, shade.astype(np.float32), out=d)
    return labels, dark
