"""Dark bodies: lysosome-like organelles, confounders for mitochondrion segmentation, in some regions only.

A dark body is about as large and as dark as a mitochondrion, but it is rounder, filled with dense
granules instead of cristae, and bounded by one thin membrane. It is raw image content only: no label
volume holds it (in the ``mito`` labels it is background). Bodies occur only in *body regions*: where
a slow value-noise field (length scale ``body_region_scale``, four times longer along z) lies above a
threshold that leaves about ``body_regions`` of the volume; there each neuron holds one with chance
``bodies``. Because the regions are large, a few small annotated boxes may hold none: a model trained
on them takes the bodies for mitochondria until it is shown otherwise, which is what a round of review
(reject the false objects) and fine-tuning can teach.

Placement is per neuron site, as for mitochondria (:mod:`engine.synth.mito`): an ellipsoid in Q-space
near the site, cut off just inside its cell's membrane band (as squeezed mitochondria), so every block
makes the same decisions. A neuron that holds a body holds no mitochondrion
(:func:`holds_body`, used by :func:`engine.synth.mito.place_mitos`), so the two never touch.
"""

from __future__ import annotations

import numpy as np

from engine.geometry import Box
from engine.synth.fields import smoothstep, uniform, value_noise
from engine.synth.mito import SQUEEZE_GAP, Mitos, ellipsoid_voxels
from engine.synth.neurons import NeuronField
from engine.synth.params import SynthParams
from engine.synth.sites import Sites, sites_in

S_BODY, S_REGION, S_GRAIN = 160, 170, 180
#: darkness of a body: the extra of its granules over its interior (``body_darkness``), its single membrane (nm wide)
DARK_GRAIN, DARK_RIM, RIM = 0.25, 0.75, 8.0
GRAIN = 18.0  # nm: the length scale of the granules


def region_value(p: SynthParams, q: np.ndarray) -> np.ndarray:
    """The body-region field (about -1..1) at Q-space points ``q`` (n, 3), one point at a time (smooth
    value noise, the same lattice as :func:`engine.synth.fields.value_noise`)."""
    s = p.body_region_scale
    t = np.asarray(q, np.float64) / np.array([4.0 * s, s, s])
    base = np.floor(t)
    w = smoothstep(t - base)
    cell = base.astype(np.int64)
    total = np.zeros(len(t))
    for corner in range(8):
        bits = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        c = cell + bits
        value = uniform(p.seed, S_REGION, c[:, 0], c[:, 1], c[:, 2]) * 2.0 - 1.0
        total += value * np.prod(np.where(bits == 1, w, 1.0 - w), axis=1)
    return total


def in_body_region(p: SynthParams, q: np.ndarray) -> np.ndarray:
    """True at the Q-space points ``q`` (n, 3) that lie in a body region."""
    # value noise is roughly symmetric around 0 with most values within +-0.6: the threshold that keeps a share body_regions
    return np.asarray(region_value(p, q) > 0.6 - 1.2 * p.body_regions)


def _bodies(p: SynthParams, sites: Sites) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre (Q-space nm), semi-axes (z first) and in-plane direction of each site's body, and
    whether the site holds one (one try per site)."""
    ids = sites.ids
    u = [uniform(p.seed, S_BODY + q, ids) for q in range(8)]
    r = p.body_radius[0] + u[1] * (p.body_radius[1] - p.body_radius[0])
    axes = np.stack([r * (1.2 + 0.8 * u[2]), r, r * (0.75 + 0.25 * u[3])], -1)
    t = 2.0 * u[4] - 1.0
    direction = np.stack([(1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)], -1)
    spread = np.where(sites.dendrite, 0.6 * np.sqrt(np.maximum(sites.weight, 0.0)), 0.15 * p.neuron_spacing)
    offset = np.stack([(2.0 * u[q] - 1.0) * spread for q in (5, 6, 7)], -1)
    centre = (sites.pos + offset) * np.array([p.neuron_stretch, 1.0, 1.0])
    keep = u[0] < p.bodies
    if keep.any():
        keep[keep] = in_body_region(p, centre[keep])
    return centre, axes, direction, keep


def holds_body(p: SynthParams, sites: Sites) -> np.ndarray:
    """True for the sites that hold a dark body (such a neuron holds no mitochondrion)."""
    if p.bodies <= 0:
        return np.zeros(len(sites.ids), bool)
    return _bodies(p, sites)[3]


def place_bodies(p: SynthParams, sites: Sites) -> Mitos:
    """The dark bodies of ``sites`` (as :class:`~engine.synth.mito.Mitos`, ids ``8 * neuron_id + 4``,
    no cristae)."""
    centre, axes, direction, keep = _bodies(p, sites)
    sel = np.flatnonzero(keep)
    ids = sites.ids[sel]
    return Mitos(centre[sel], axes[sel], direction[sel], ids, ids * np.uint64(8) + np.uint64(4), np.zeros((sel.size, 2)))


def bodies_near(p: SynthParams, lo: np.ndarray, hi: np.ndarray) -> Mitos:
    """Every dark body that can reach the M-space box ``lo..hi`` (none when ``bodies`` is 0)."""
    if p.bodies <= 0:
        return Mitos(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, 2)))
    st = p.neuron_stretch
    spread = max(0.15 * p.neuron_spacing, 0.6 * p.dendrite_radius[1])
    r = p.body_radius[1]
    margin = np.array([spread + 2.0 * r / st, spread + r, spread + r])
    return place_bodies(p, sites_in(p, np.asarray(lo) - margin, np.asarray(hi) + margin))


def render_bodies(p: SynthParams, bodies: Mitos, field: NeuronField, box: Box) -> np.ndarray:
    """Darkness (0..1) of the dark bodies over ``box`` (the field's box)."""
    dark = np.zeros(box.shape, np.float32)
    edge = 0.5 * p.membrane_thickness + SQUEEZE_GAP
    w = field.warp
    for n in range(len(bodies)):
        found = ellipsoid_voxels(p, (bodies.centre[n], bodies.axes[n], bodies.direction[n], bodies.host[n]), field, box, edge)
        if found is None:
            continue
        sl, inside, depth, _, _ = found
        grains = value_noise(p.seed, S_GRAIN, [w.pz[sl[0]] / max(p.voxel_size[0], 30.0), w.py[sl[1]] / GRAIN, w.px[sl[2]] / GRAIN])
        rim = 1.0 - smoothstep(np.clip((depth - RIM) / 6.0, 0.0, 1.0))
        inner = p.body_darkness
        shade = inner + DARK_GRAIN * np.clip(grains, 0.0, 1.0) * (1.0 - rim) + (max(DARK_RIM, inner) - inner) * rim
        dark[sl] = np.where(inside, shade.astype(np.float32), dark[sl])
    return dark
