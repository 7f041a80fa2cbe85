"""Rendering: from neurons and organelles to the raw image and the label volumes of a box.

:func:`synth_box` is a pure function of ``(params, box)``: every voxel depends only on its global
coordinates, the seed and the parameters, so boxes can be computed in any order, on any worker, and
assembled byte-identically.

The raw intensity of a voxel (in [0, 1], then 0..255) is built in this order: cytoplasm (a level per
neuron, lighter in axons, plus texture), times the membrane band, mitochondria and synapses
(postsynaptic density, vesicles) and dark bodies as darkening layers; then the microscope: an in-plane Gaussian blur
(computed on the box grown by a halo, then cropped), a brightness and contrast change per section, and
pixel noise. Finally the section defects: misaligned sections show the raw image of a shifted box,
missing sections are uniform.
"""

from __future__ import annotations

import math

import numpy as np

from engine.geometry import Box
from engine.synth.bodies import bodies_near, render_bodies
from engine.synth.fields import normal_like, uniform, value_noise
from engine.synth.mito import Mitos, mitos_near, render_mitos
from engine.synth.neurons import NeuronField, crop_field, membrane_darkness, neuron_field, warp_amplitude
from engine.synth.params import SynthParams
from engine.synth.synapses import Synapses, render_synapses, synapses_near

S_TEXTURE, S_SECTION, S_NOISE, S_SHIFT, S_MISSING, S_SHADE = 70, 80, 90, 100, 110, 120
S_DARK, S_ER, S_ILLUM = 130, 140, 150
OUTPUTS: dict[str, str] = {"raw": "uint8", "neurons": "uint64", "mito": "uint64", "synapses": "uint8"}
MEMBRANE_DARK = 0.74
#: endoplasmic reticulum: darkness of a tubule, its lattice (nm: along z, in-plane), the half-width of
#: a tubule in noise units, the lattice of the patches that hold ER, the gap (nm) it keeps from the membrane
#: band and the width (nm) over which it fades in beyond that gap
ER_DARK, ER_SCALE, ER_WIDTH, ER_PATCH, ER_GAP, ER_FADE = 0.6, (240.0, 80.0), 0.12, (900.0, 450.0), 20.0, 15.0


def blur_radius(p: SynthParams) -> tuple[int, int]:
    """The in-plane halo (y, x voxels) the blur needs."""
    return (math.ceil(3.0 * p.blur / p.voxel_size[1]), math.ceil(3.0 * p.blur / p.voxel_size[2])) if p.blur > 0 else (0, 0)


def _exp_neg(x: float) -> float:
    """``exp(-x)`` for x >= 0 by arithmetic only (a Taylor series of ``x / 1024``, squared ten times),
    so the blur weights are the same bits on every machine, whatever its libm."""
    y = x / 1024.0
    term, total = 1.0, 1.0
    for k in range(1, 10):
        term *= -y / k
        total += term
    for _ in range(10):
        total *= total
    return total


def _blur_axis(a: np.ndarray, sigma: float, radius: int, axis: int) -> np.ndarray:
    """Gaussian blur along ``axis``, valid part only (the output is ``2 * radius`` shorter)."""
    if radius == 0:
        return a
    w = [_exp_neg(0.5 * (k / sigma) ** 2) for k in range(radius + 1)]
    total = w[0] + 2.0 * sum(w[1:])
    n = a.shape[axis] - 2 * radius

    def cut(start: int) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, start + n)
        return a[tuple(idx)]

    out = cut(radius) * np.float32(w[0] / total)
    for k in range(1, radius + 1):
        out += (cut(radius - k) + cut(radius + k)) * np.float32(w[k] / total)
    return out


def metric_box(p: SynthParams, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The M-space box that the voxels of ``box`` can map to (warp included)."""
    vz, vy, vx = p.voxel_size
    st = p.neuron_stretch
    amp = warp_amplitude(p)
    lo = np.array([box.start[0] * vz / st, box.start[1] * vy - amp, box.start[2] * vx - amp])
    hi = np.array([(box.stop[0] - 1) * vz / st, (box.stop[1] - 1) * vy + amp, (box.stop[2] - 1) * vx + amp])
    return lo, hi


def organelles(p: SynthParams, box: Box) -> tuple[Mitos, Synapses, Mitos]:
    """The mitochondria, synapses and dark bodies that can reach ``box`` (plus the blur halo)."""
    lo, hi = metric_box(p, box.grow((0, *blur_radius(p))))
    return mitos_near(p, lo, hi), synapses_near(p, lo, hi), bodies_near(p, lo, hi)


def _cytoplasm(p: SynthParams, field: NeuronField, box: Box) -> np.ndarray:
    sites = field.sites
    u = uniform(p.seed, S_SHADE, sites.ids)
    level = np.where(sites.dendrite, 0.82, 0.76) + 0.05 * p.texture * (u - 0.5)
    if p.dark_cells > 0:
        level = np.where(uniform(p.seed, S_DARK, sites.ids) < p.dark_cells, level * p.dark_cell_level, level)
    base = level.astype(np.float32)[field.first]
    if p.texture > 0:
        vz = p.voxel_size[0]
        fine = value_noise(p.seed, S_TEXTURE, [field.warp.pz / max(vz, 30.0), field.warp.py / 36.0, field.warp.px / 36.0])
        coarse = value_noise(p.seed, S_TEXTURE + 1, [field.warp.pz / 160.0, field.warp.py / 150.0, field.warp.px / 150.0])
        speck = value_noise(p.seed, S_TEXTURE + 2, [field.warp.pz / max(vz, 30.0), field.warp.py / 14.0, field.warp.px / 14.0])
        speck = np.clip((speck - np.float32(0.45)) * np.float32(1.0 / 0.55), 0.0, 1.0)
        base += np.float32(0.03 * p.texture) * fine + np.float32(0.035 * p.texture) * coarse
        base *= np.float32(1.0) - np.float32(0.3 * p.texture) * speck * speck
    return base


def er_halo(p: SynthParams) -> tuple[int, int]:
    """The extra in-plane halo (y, x voxels) that the ER's distance to the membranes needs."""
    if p.er <= 0:
        return (0, 0)
    reach = 0.5 * p.membrane_thickness + ER_GAP + ER_FADE
    return (math.ceil(reach / p.voxel_size[1]) + 1, math.ceil(reach / p.voxel_size[2]) + 1)


def edge_distance(p: SynthParams, labels: np.ndarray) -> np.ndarray:
    """In-plane distance (nm) of every voxel to the nearest voxel that has a 4-neighbour of another
    neuron (exact up to the halo of :func:`er_halo` away from the array's border)."""
    from scipy.ndimage import distance_transform_edt

    edge = np.zeros(labels.shape, bool)
    dy = labels[:, 1:] != labels[:, :-1]
    dx = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:] |= dy
    edge[:, :-1] |= dy
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    out = np.empty(labels.shape, np.float32)
    for z in range(labels.shape[0]):
        out[z] = distance_transform_edt(~edge[z], sampling=p.voxel_size[1:]) if edge[z].any() else np.float32(1e9)
    return out


def er_darkness(p: SynthParams, field: NeuronField, dist: np.ndarray) -> np.ndarray:
    """Darkness (0..1) of the endoplasmic reticulum over the field's box: the zero lines of a value
    noise (thin tubules running along z over a few sections), in patches that cover about ``p.er`` of
    the cytoplasm, faded out from ``ER_GAP`` nm off the membrane band inwards (``dist``: the in-plane
    distance to the cell boundary, :func:`edge_distance`), so a tubule never touches the cell's
    boundary (the labels: it belongs to the cell)."""
    w = field.warp
    n = value_noise(p.seed, S_ER, [w.pz / ER_SCALE[0], w.py / ER_SCALE[1], w.px / ER_SCALE[1]])
    line = np.clip(np.float32(1.0) - np.abs(n) * np.float32(1.0 / ER_WIDTH), 0.0, 1.0)
    patch = value_noise(p.seed, S_ER + 1, [w.pz / ER_PATCH[0], w.py / ER_PATCH[1], w.px / ER_PATCH[1]])
    # value noise is roughly symmetric around 0 with most values within +-0.6: the threshold that keeps a share er
    keep = np.clip((patch - np.float32(0.6 - 1.2 * p.er)) * np.float32(1.0 / 0.15), 0.0, 1.0)
    edge = np.float32(0.5 * p.membrane_thickness + ER_GAP)
    away = np.clip((dist - edge) * np.float32(1.0 / ER_FADE), 0.0, 1.0)
    return np.asarray(np.float32(ER_DARK) * line * keep * away, np.float32)


def illumination_gain(p: SynthParams, box: Box) -> np.ndarray:
    """The slow multiplicative brightness of uneven staining and illumination over ``box`` (around 1,
    within ``1 +- p.illumination``)."""
    vz, vy, vx = p.voxel_size
    s = p.illumination_scale
    coords = [np.arange(a, b) * v / d for a, b, v, d in zip(box.start, box.stop, (vz, vy, vx), (4.0 * s, s, s), strict=True)]
    return np.float32(1.0) + np.float32(p.illumination) * np.clip(np.float32(1.6) * value_noise(p.seed, S_ILLUM, coords), -1.0, 1.0)


def render_core(p: SynthParams, box: Box, found: tuple[Mitos, Synapses, Mitos] | None = None) -> dict[str, np.ndarray]:
    """All outputs of ``box`` without section defects (misalignment, missing sections); ``found``:
    the organelles, if already placed for a box that covers this one."""
    ry, rx = blur_radius(p)
    grown = box.grow((0, ry, rx))
    ey, ex = er_halo(p)
    if ey or ex:  # the ER keeps off the membranes: the neurons a little farther out are needed
        wide = grown.grow((0, ey, ex))
        big = neuron_field(p, wide)
        inner = grown.to_slices(wide)
        dist = edge_distance(p, big.labels)[inner]
        field = crop_field(big, inner)
    else:
        field = neuron_field(p, grown)
    intensity = _cytoplasm(p, field, grown)
    intensity *= np.float32(1.0) - np.float32(MEMBRANE_DARK) * membrane_darkness(field, p)

    mitos, synapses, bodies = found if found is not None else organelles(p, box)
    mito_ids, mito_dark = render_mitos(p, mitos, field, grown)
    syn_labels, syn_dark = render_synapses(p, synapses, field, grown)
    syn_dark[mito_ids != 0] = 0.0
    body_dark = render_bodies(p, bodies, field, grown) if len(bodies) else None
    if body_dark is not None:
        body_dark[mito_ids != 0] = 0.0
        syn_dark[body_dark != 0] = 0.0
    if p.er > 0:
        er = er_darkness(p, field, dist)
        er[(mito_ids != 0) | (syn_labels != 0)] = 0.0
        if body_dark is not None:
            er[body_dark != 0] = 0.0
        intensity *= np.float32(1.0) - er
    if body_dark is not None:
        intensity *= np.float32(1.0) - body_dark
    intensity *= np.float32(1.0) - mito_dark
    intensity *= np.float32(1.0) - syn_dark

    if p.blur > 0:
        intensity = _blur_axis(intensity, p.blur / p.voxel_size[1], ry, 1)
        intensity = _blur_axis(intensity, p.blur / p.voxel_size[2], rx, 2)
    crop = box.to_slices(grown)
    zs = np.arange(box.start[0], box.stop[0])[:, None, None]
    if p.illumination > 0:
        intensity = intensity * illumination_gain(p, box)
    if p.texture > 0:
        gain = 1.0 + 0.05 * p.texture * (2.0 * uniform(p.seed, S_SECTION, zs) - 1.0)
        offset = 0.025 * p.texture * (2.0 * uniform(p.seed, S_SECTION + 1, zs) - 1.0)
        intensity = intensity * gain.astype(np.float32) + offset.astype(np.float32)
    if p.noise > 0:
        ys = np.arange(box.start[1], box.stop[1])[None, :, None]
        xs = np.arange(box.start[2], box.stop[2])[None, None, :]
        intensity += np.float32(p.noise) * normal_like(p.seed, S_NOISE, zs, ys, xs)
    raw = np.clip(np.floor(intensity * np.float32(255.0) + np.float32(0.5)), 0, 255).astype(np.uint8)
    return {"raw": raw, "neurons": field.labels[crop], "mito": mito_ids[crop], "synapses": syn_labels[crop]}


def section_shifts(p: SynthParams, z0: int, z1: int) -> np.ndarray:
    """The (y, x) shift in voxels of the raw image of sections ``z0..z1`` (``(n, 2)`` int64).

    In ``slip`` mode a misaligned section alone is shifted; in ``step`` mode each misalignment adds
    to the shift of all later sections (counted from section 0).
    """
    if p.misalign <= 0 or p.misalign_shift == 0 or z1 <= z0:
        return np.zeros((max(0, z1 - z0), 2), np.int64)
    first = 0 if p.misalign_mode == "step" else z0
    zs = np.arange(min(first, z0), z1)
    hit = uniform(p.seed, S_SHIFT, zs) < p.misalign
    span = 2 * p.misalign_shift + 1
    jump = np.stack([np.floor(uniform(p.seed, S_SHIFT + 1 + a, zs) * span).astype(np.int64) - p.misalign_shift for a in (0, 1)], -1)
    jump[~hit] = 0
    shift = np.cumsum(jump, axis=0) if p.misalign_mode == "step" else jump
    return shift[z0 - zs[0] :]


def missing_sections(p: SynthParams, z0: int, z1: int) -> np.ndarray:
    """True for the sections of ``z0..z1`` whose raw image is missing."""
    if p.missing <= 0:
        return np.zeros(max(0, z1 - z0), bool)
    return np.asarray(uniform(p.seed, S_MISSING, np.arange(z0, z1)) < p.missing)


def synth_box(p: SynthParams, box: Box) -> dict[str, np.ndarray]:
    """Raw image and ground truth of ``box`` (global voxel coordinates, z y x): ``raw`` (uint8),
    ``neurons`` and ``mito`` (uint64 ids), ``synapses`` (uint8: 1 pre, 2 post).

    >>> from engine.geometry import Box
    >>> out = synth_box(SynthParams(seed=1), Box((0, 0, 0), (2, 16, 16)))
    >>> sorted(out), out["raw"].dtype.name, out["neurons"].shape
    (['mito', 'neurons', 'raw', 'synapses'], 'uint8', (2, 16, 16))
    """
    if box.ndim != 3 or box.empty:
        raise ValueError(f"synth_box needs a non-empty 3-D box, got {box}")
    z0, z1 = box.start[0], box.stop[0]
    shifts = section_shifts(p, z0, z1)
    moved = np.flatnonzero(shifts.any(axis=1))
    # place the organelles once, for a box covering every shifted copy
    reach = np.abs(shifts).max(axis=0) if moved.size else np.zeros(2, np.int64)
    found = organelles(p, box.grow((0, int(reach[0]), int(reach[1]))))
    out = render_core(p, box, found)
    # runs of consecutive sections with the same shift are rendered together
    runs: list[tuple[int, int]] = []
    for i in moved:
        if runs and runs[-1][1] == i and (shifts[i] == shifts[runs[-1][0]]).all():
            runs[-1] = (runs[-1][0], int(i) + 1)
        else:
            runs.append((int(i), int(i) + 1))
    for a, b in runs:
        dy, dx = (int(v) for v in shifts[a])
        sub = Box((z0 + a, box.start[1] - dy, box.start[2] - dx), (z0 + b, box.stop[1] - dy, box.stop[2] - dx))
        shifted = render_core(p, sub, found)
        names = OUTPUTS if p.misalign_labels else ("raw",)
        for name in names:
            out[name][a:b] = shifted[name]
    gone = missing_sections(p, z0, z1)
    out["raw"][gone] = p.missing_value
    return out
