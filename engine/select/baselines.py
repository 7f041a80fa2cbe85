"""Baselines for sub-volume selection: random windows, k-center greedy (core-set), k-means centroids.

All three pick windows of the same shape as coverage selection and never two that share voxels, so
that only the choice differs. The embedding of a window is the mean of its patches' embeddings.

- ``random``: candidates in a seeded random order, each kept if it overlaps no earlier pick.
- ``kcenter``: k-center greedy (the core-set method of Sener and Savarese, 2018) on window
  embeddings: a seeded random first pick, then repeatedly the window farthest (Euclidean) from its
  nearest pick so far.
- ``kmeans``: k-means with ``budget`` clusters on window embeddings (scikit-learn, seeded), then for
  each centroid, largest cluster first, the non-overlapping window nearest to it.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.select.candidates import Windows
from engine.select.greedy import Selection, coverage_curve
from engine.select.knn import sq_distances

log = logging.getLogger(__name__)


def window_embeddings(windows: Windows, emb: np.ndarray) -> np.ndarray:
    """Mean embedding of every candidate window, ``(M, D)`` float32, from box sums of the patch grid."""
    g = windows.grid.shape
    d = emb.shape[-1]
    grid = emb.reshape(*g, d)
    wz, wy, wx = windows.window
    sz, sy, sx = windows.step
    mz, my, mx = windows.shape
    out = np.empty((mz, my, mx, d), dtype=np.float32)
    for c0 in range(0, d, 16):
        part = grid[..., c0 : c0 + 16].astype(np.float64)
        s = np.zeros((g[0] + 1, g[1] + 1, g[2] + 1, part.shape[-1]))
        s[1:, 1:, 1:] = part.cumsum(0).cumsum(1).cumsum(2)
        z0 = np.arange(mz) * sz
        y0 = np.arange(my) * sy
        x0 = np.arange(mx) * sx
        z1, y1, x1 = z0 + wz, y0 + wy, x0 + wx
        ix = np.ix_
        box = (
            s[ix(z1, y1, x1)] - s[ix(z0, y1, x1)] - s[ix(z1, y0, x1)] - s[ix(z1, y1, x0)]
            + s[ix(z0, y0, x1)] + s[ix(z0, y1, x0)] + s[ix(z1, y0, x0)] - s[ix(z0, y0, x0)]
        )
        out[..., c0 : c0 + 16] = box / (wz * wy * wx)
    return out.reshape(-1, d)


def _overlaps(windows: Windows, a: int, picks: list[int]) -> bool:
    pa = windows.positions([a])[0]
    for p in picks:
        pp = windows.positions([p])[0]
        if all(abs(int(u) - int(v)) <= r for u, v, r in zip(pa, pp, windows.exclusion, strict=True)):
            return True
    return False


def _finish(method: str, windows: Windows, balls: np.ndarray, picks: list[int], seed: int | None) -> Selection:
    gains, curve = coverage_curve(windows, balls, picks)
    return Selection(method, picks, [windows.box(p) for p in picks], gains, curve, windows.grid.size, seed=seed)


def random_select(windows: Windows, balls: np.ndarray, budget: int, seed: int = 0) -> Selection:
    """Random non-overlapping windows (seeded)."""
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for c in rng.permutation(windows.size):
        if len(picks) == budget:
            break
        if not _overlaps(windows, int(c), picks):
            picks.append(int(c))
    return _finish("random", windows, balls, picks, seed)


def _exclude(windows: Windows, allowed: np.ndarray, pick: int) -> None:
    allowed.reshape(windows.shape)[windows.overlapping(pick)] = False


def kcenter_select(windows: Windows, balls: np.ndarray, emb: np.ndarray, budget: int, seed: int = 0) -> Selection:
    """k-center greedy on window embeddings (seeded random first pick)."""
    we = window_embeddings(windows, emb)
    rng = np.random.default_rng(seed)
    allowed = np.ones(windows.size, dtype=bool)
    first = int(rng.integers(windows.size))
    picks = [first]
    _exclude(windows, allowed, first)
    mind = sq_distances(we, we[[first]])[:, 0]
    while len(picks) < budget and allowed.any():
        c = int(np.argmax(np.where(allowed, mind, -1.0)))
        picks.append(c)
        _exclude(windows, allowed, c)
        np.minimum(mind, sq_distances(we, we[[c]])[:, 0], out=mind)
    return _finish("kcenter", windows, balls, picks, seed)


def kmeans_select(windows: Windows, balls: np.ndarray, emb: np.ndarray, budget: int, seed: int = 0, max_fit: int = 200_000) -> Selection:
    """k-means (``budget`` clusters, seeded; fitted on at most ``max_fit`` windows) then nearest windows."""
    from sklearn.cluster import KMeans

    we = window_embeddings(windows, emb)
    rng = np.random.default_rng(seed)
    fit = we if len(we) <= max_fit else we[np.sort(rng.choice(len(we), max_fit, replace=False))]
    km = KMeans(n_clusters=min(budget, len(fit)), random_state=seed, n_init=3).fit(fit)
    sizes = np.bincount(km.labels_, minlength=km.n_clusters)
    allowed = np.ones(windows.size, dtype=bool)
    picks: list[int] = []
    for cl in np.argsort(-sizes, kind="stable"):
        if not allowed.any():
            break
        d = sq_distances(we, km.cluster_centers_[[cl]])[:, 0]
        c = int(np.argmin(np.where(allowed, d, np.inf)))
        picks.append(c)
        _exclude(windows, allowed, c)
    return _finish("kmeans", windows, balls, picks, seed)
