"""Neurons from affinities, the parts that need no runtime: watershed fragments seeded at maxima of
the distance transform (in 3D, or per section for anisotropic data), and region-adjacency edges scored
by the mean or a quantile of the affinities between two fragments.

Affinities are ``(3, z, y, x)``: channel ``d`` at a voxel is the affinity between that voxel and its
predecessor along axis ``d`` (z, y, x), in [0, 1] (uint8 is read as ``v / 255``).

>>> import numpy as np
>>> affs = np.ones((3, 1, 4, 9), np.float32); affs[1:, :, :, 4] = 0.2   # a wall at x = 4
>>> frag, n = fragments(affs, per_section=True)
>>> n, frag[0, :, 0].tolist(), frag[0, :, 8].tolist()
(2, [1, 1, 1, 1], [2, 2, 2, 2])
>>> a, b, score = edge_scores(np.array([1, 2, 1]), np.array([2, 1, 3]), np.array([0.2, 0.4, 0.9]))
>>> a.tolist(), b.tolist(), score.round(6).tolist()
([1, 1], [2, 3], [0.3, 0.9])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.params import Scoring
from engine.values import to_unit


def as_float(affs: np.ndarray) -> np.ndarray:
    """Affinities as float32 in [0, 1]."""
    if affs.dtype == np.uint8:
        return to_unit(affs)
    return affs.astype(np.float32, copy=False)


def _seeds_and_flood(boundary: np.ndarray, seed_mask: np.ndarray, mask: np.ndarray, seed_sigma: float) -> tuple[np.ndarray, int]:
    import cc3d
    from scipy.ndimage import distance_transform_edt, gaussian_filter, maximum_filter
    from skimage.segmentation import watershed

    if not seed_mask.any():
        return np.zeros(mask.shape, np.uint32), 0
    dt = distance_transform_edt(seed_mask).astype(np.float32)
    if seed_sigma > 0:
        dt = gaussian_filter(dt, seed_sigma)
    peaks = (dt == maximum_filter(dt, size=3)) & seed_mask
    markers, n = cc3d.connected_components(peaks[None] if peaks.ndim == 2 else peaks, connectivity=26, return_N=True, out_dtype=np.uint32)
    markers = markers.reshape(mask.shape)
    frag = watershed(boundary, markers, mask=seed_mask).astype(np.uint32)
    return frag, int(n)


#: Voxels left without a fragment that hang together through strong affinities become fragments of
#: their own when there are at least this many of them (thin processes with no seed of their own).
#: Only voxels with no strong link at all are then given to a neighbour across a weak one: a piece of
#: one neuron given to another would make a strong edge between the two (a false merge).
MIN_RESCUED = 2


def _grow(frag: np.ndarray, nb: np.ndarray, axes: Sequence[int], mask: np.ndarray, rounds: int = 8, min_aff: float = -1.0) -> np.ndarray:
    """Give each unassigned voxel of ``mask`` the fragment of the neighbour it has the highest
    affinity to (above ``min_aff``), a layer per round: the thin boundaries left out of the flooding
    go to the side their affinities point to, so fragment borders follow the affinity cuts."""
    for _ in range(rounds):
        todo = (frag == 0) & mask
        if not todo.any():
            break
        best = np.full(frag.shape, min_aff, np.float32)
        pick = np.zeros_like(frag)
        for k, d in enumerate(axes):
            for side, step in ((0, -1), (1, 1)):
                other = np.zeros_like(frag)
                n = frag.shape[d]
                src = [slice(None)] * frag.ndim
                dst = [slice(None)] * frag.ndim
                src[d], dst[d] = (slice(0, n - 1), slice(1, n)) if step < 0 else (slice(1, n), slice(0, n - 1))
                other[tuple(dst)] = frag[tuple(src)]
                aff = nb[2 * k + side]
                better = todo & (other != 0) & (aff > best)
                best[better] = aff[better]
                pick[better] = other[better]
        if not pick.any():
            break
        frag = np.where(pick != 0, pick, frag)
    return frag


def _strong_components(rest: np.ndarray, pred: Sequence[np.ndarray], min_aff: float, min_size: int) -> tuple[np.ndarray, int]:
    """Connected components of the voxels ``rest`` joined where their affinity exceeds ``min_aff``
    (``pred[k]``: affinity of each voxel to its predecessor along axis ``k``), keeping those of at
    least ``min_size`` voxels: ``(ids uint32 1..k, k)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    out = np.zeros(rest.shape, np.uint32)
    where = np.flatnonzero(rest)
    if where.size < min_size:
        return out, 0
    index = np.full(rest.shape, -1, np.int64)
    index.flat[where] = np.arange(where.size)
    rows, cols = [], []
    for k, aff in enumerate(pred):
        cur = [slice(None)] * rest.ndim
        prev = [slice(None)] * rest.ndim
        cur[k], prev[k] = slice(1, None), slice(0, -1)
        ok = rest[tuple(cur)] & rest[tuple(prev)] & (aff[tuple(cur)] > min_aff)
        rows.append(index[tuple(cur)][ok])
        cols.append(index[tuple(prev)][ok])
    r, c = np.concatenate(rows), np.concatenate(cols)
    _, comp = connected_components(coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(where.size, where.size)), directed=False)
    sizes = np.bincount(comp)
    big = sizes >= min_size
    new_id = np.zeros(sizes.size, np.uint32)
    new_id[big] = np.arange(1, int(big.sum()) + 1, dtype=np.uint32)
    out.flat[where] = new_id[comp]
    return out, int(big.sum())


def _complete(frag: np.ndarray, n: int, nb: np.ndarray, pred: Sequence[np.ndarray], axes: Sequence[int], mask: np.ndarray, strong: float) -> tuple[np.ndarray, int]:
    """Assign the voxels of ``mask`` the flooding left out: first through strong affinities only
    (``> strong``), then pieces still left that hang together strongly (a thin process without a seed)
    become fragments of their own, and last the rest go to their best-linked neighbour."""
    frag = _grow(frag, nb, axes, mask, min_aff=strong)
    extra, k = _strong_components((frag == 0) & mask, pred, strong, MIN_RESCUED)
    if k:
        frag = np.where(extra > 0, extra + np.uint32(n), frag)
        n += k
    # A lone voxel on the block's border may belong to the neuron on the other side of the face: one
    # fragment each, so the agglomeration decides (given to a neighbour here, it would join two neurons).
    rim = np.zeros(frag.shape, bool)
    for d in range(frag.ndim):
        first = [slice(None)] * frag.ndim
        last = [slice(None)] * frag.ndim
        first[d], last[d] = slice(0, 1), slice(-1, None)
        rim[tuple(first)] = rim[tuple(last)] = True
    lone = np.flatnonzero(rim & (frag == 0) & mask)
    if lone.size:
        frag.flat[lone] = np.arange(n + 1, n + 1 + lone.size, dtype=np.uint32)
        n += int(lone.size)
    return _grow(frag, nb, axes, mask), n


def neighbour_affinities(a: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Per voxel, the affinities to both neighbours along ``axes`` (``2 len(axes)`` channels): to the
    predecessor (the affinity stored at the voxel) and to the successor (stored at the successor; at
    the last voxel of an axis, where there is none, the predecessor's is repeated)."""
    out = []
    for d in axes:
        pred = a[d]
        succ = np.empty_like(pred)
        n = pred.shape[d]
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[d], dst[d] = slice(1, n), slice(0, n - 1)
        succ[tuple(dst)] = pred[tuple(src)]
        last = [slice(None)] * 3
        last[d] = slice(n - 1, n)
        succ[tuple(last)] = pred[tuple(last)]
        out += [pred, succ]
    return np.stack(out)


def fragments(
    affs: np.ndarray, *, seed_threshold: float = 0.5, fg_threshold: float = 0.0, per_section: bool = False, seed_sigma: float = 1.0
) -> tuple[np.ndarray, int]:
    """Watershed fragments of one block: ``(ids uint32 1..n, n)``.

    Each voxel looks at its affinities to its neighbours (both sides, along z, y, x; in-plane only with
    ``per_section``). Seeds are the maxima of the (smoothed) distance transform of the voxels whose
    *lowest* neighbour affinity is above ``seed_threshold`` (so a one-voxel-thin boundary separates
    seeds); the flooding of ``1 - mean`` neighbour affinity covers the voxels whose mean is above
    ``fg_threshold`` (0 elsewhere). Voxels the flooding left out join a neighbouring fragment through
    an affinity above ``seed_threshold``; pieces still left that hang together through such affinities
    (thin processes without a seed, at least ``MIN_RESCUED`` voxels) become fragments of their own, so
    do lone voxels on the block's border; the rest join the neighbour they have the highest affinity to. ``per_section`` works section by section."""
    a = as_float(affs)
    if per_section:
        nb = neighbour_affinities(a, (1, 2))
        low, mean = nb.min(axis=0), nb.mean(axis=0)
        out = np.zeros(mean.shape, np.uint32)
        total = 0
        for z in range(mean.shape[0]):
            frag, n = _seeds_and_flood(1.0 - mean[z], low[z] > seed_threshold, mean[z] > fg_threshold, seed_sigma)
            frag, n = _complete(frag, n, nb[:, z], (a[1, z], a[2, z]), (0, 1), mean[z] > fg_threshold, seed_threshold)
            out[z] = np.where(frag > 0, frag + np.uint32(total), 0)
            total += n
        return out, total
    nb = neighbour_affinities(a, (0, 1, 2))
    low, mean = nb.min(axis=0), nb.mean(axis=0)
    frag, n = _seeds_and_flood(1.0 - mean, low > seed_threshold, mean > fg_threshold, seed_sigma)
    return _complete(frag, n, nb, (a[0], a[1], a[2]), (0, 1, 2), mean > fg_threshold, seed_threshold)


def edge_scores(a: np.ndarray, b: np.ndarray, values: np.ndarray, scoring: Scoring = "mean", quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique edges ``(a, b)`` with ``a < b`` and their score: the mean, or the ``quantile`` ('lower':
    the value at rank ``floor(q (n - 1))``), of the affinities of their voxel pairs."""
    lo, hi = np.minimum(a, b).astype(np.uint64), np.maximum(a, b).astype(np.uint64)
    if lo.size == 0:
        empty = np.zeros(0, np.uint64)
        return empty, empty.copy(), np.zeros(0, np.float64)
    if scoring == "mean":
        keys = np.stack([lo, hi], axis=1)
        uniq, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        sums = np.bincount(inv.ravel(), weights=values.astype(np.float64), minlength=len(uniq))
        return uniq[:, 0], uniq[:, 1], sums / counts
    order = np.lexsort((values, hi, lo))
    lo, hi, v = lo[order], hi[order], values[order].astype(np.float64)
    start = np.flatnonzero(np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])])
    counts = np.diff(np.r_[start, lo.size])
    pick = start + np.floor(quantile * (counts - 1)).astype(np.int64)
    return lo[start], hi[start], v[pick]


def block_edges(frag: np.ndarray, affs: np.ndarray, scoring: Scoring = "mean", quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The region-adjacency edges inside one block (face-adjacent voxels of different nonzero
    fragments) scored by their affinities."""
    return edge_scores(*block_contacts(frag, affs), scoring, quantile)


def block_contacts(frag: np.ndarray, affs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every face-adjacent voxel pair of two different nonzero fragments inside one block: the two
    fragments and the affinity between the voxels (one entry per voxel pair)."""
    a_all, b_all, v_all = [], [], []
    aff = as_float(affs)
    for d in range(3):
        n = frag.shape[d]
        if n < 2:
            continue
        prev = [slice(None)] * 3
        cur = [slice(None)] * 3
        prev[d], cur[d] = slice(0, n - 1), slice(1, n)
        x, y = frag[tuple(prev)], frag[tuple(cur)]
        touch = (x != y) & (x != 0) & (y != 0)
        a_all.append(x[touch])
        b_all.append(y[touch])
        v_all.append(aff[d][tuple(cur)][touch])
    if not a_all:
        return np.zeros(0, frag.dtype), np.zeros(0, frag.dtype), np.zeros(0, np.float32)
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(v_all)
