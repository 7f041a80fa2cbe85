"""Hierarchical coverage selection: a coarse grid first, then the fine grid inside the best regions.

At petascale the patch grid has far more patches than one kNN search or one coverage table can hold.
The hierarchical mode

1. pools the patch embeddings over blocks of ``factor`` patches (a coarse patch grid whose patches are
   the union of ``factor`` fine patches: stride ``stride * factor``),
2. runs coverage selection on the coarse grid with windows just larger than a fine window, picking
   ``regions_per_pick * budget`` non-overlapping regions,
3. runs coverage selection on the fine grid restricted to those regions: the population is the fine
   patches inside the regions (their kNN balls computed among themselves), the candidates the fine
   windows inside a region.

Cost: the coarse stage works on ``N / prod(factor)`` patches, the fine stage on the regions' patches,
so neither grows with the volume's full fine grid. The result is an approximation of flat selection
(a region the coarse stage misses cannot be picked); ``benchmarks/bench_select.py`` measures both its
cost and the coverage its picks reach over the whole fine grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from engine.errors import ConfigError
from engine.select.candidates import Windows
from engine.select.greedy import Selection, greedy_select
from engine.select.patches import PatchGrid

log = logging.getLogger(__name__)

KnnFn = Callable[[np.ndarray, int], np.ndarray]


def coarse_grid(grid: PatchGrid, factor: Sequence[int]) -> PatchGrid:
    """The patch grid whose patch (a, b, c) is the union of fine patches ``(a, b, c) * factor + [0, factor)``."""
    f = tuple(int(v) for v in factor)
    if any(v < 1 for v in f):
        raise ConfigError(f"hierarchical factor must be positive, got {f}")
    patch = tuple(p + (v - 1) * s for p, v, s in zip(grid.patch, f, grid.stride, strict=True))
    stride = tuple(s * v for s, v in zip(grid.stride, f, strict=True))
    return PatchGrid(grid.volume_shape, patch, stride, grid.origin)


def pool(grid: PatchGrid, emb: np.ndarray, factor: Sequence[int]) -> tuple[PatchGrid, np.ndarray]:
    """Mean-pool fine embeddings over ``factor`` blocks of patches -> (coarse grid, coarse embeddings)."""
    cg = coarse_grid(grid, factor)
    fz, fy, fx = (int(v) for v in factor)
    cz, cy, cx = cg.shape
    d = emb.shape[-1]
    e = emb.reshape(*grid.shape, d)[: cz * fz, : cy * fy, : cx * fx]
    pooled = e.reshape(cz, fz, cy, fy, cx, fx, d).mean(axis=(1, 3, 5), dtype=np.float64)
    return cg, pooled.reshape(-1, d).astype(np.float32)


def _ranges(grid_shape: Sequence[int], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Ids of the grid cells in the union of the boxes [lo, hi) (per row), sorted and unique."""
    mask = np.zeros(tuple(grid_shape), dtype=bool)
    for a, b in zip(lo, hi, strict=True):
        mask[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = True
    return np.flatnonzero(mask)


def hierarchical_select(
    grid: PatchGrid,
    emb: np.ndarray,
    window: Sequence[int],
    budget: int,
    k: int,
    knn: KnnFn,
    *,
    factor: Sequence[int] = (1, 4, 4),
    regions_per_pick: int = 2,
    step: Sequence[int] = (1, 1, 1),
    seed: int | None = None,
) -> Selection:
    """Coarse-then-fine coverage selection (see the module docstring); ``knn(x, k)`` gives balls."""
    t0 = time.perf_counter()
    f = np.asarray(factor, dtype=np.int64)
    w = np.asarray(window, dtype=np.int64)
    cg, cemb = pool(grid, emb, factor)
    cwin = np.where(f > 1, -(-w // f) + 1, w)
    cwin = np.minimum(cwin, cg.shape)
    cwindows = Windows(cg, tuple(int(v) for v in cwin))
    cballs = knn(cemb, min(k, cg.size))
    coarse = greedy_select(cwindows, cballs, regions_per_pick * budget, seed=seed)
    t1 = time.perf_counter()
    # fine patches and fine windows inside the regions
    cpos = cwindows.positions(coarse.picks)
    lo = cpos * f
    hi = np.minimum((cpos + cwin) * f, grid.shape)
    population = _ranges(grid.shape, lo, hi)
    fwindows = Windows(grid, tuple(int(v) for v in w), tuple(int(v) for v in step))
    st = np.asarray(fwindows.step)
    wlo = -(-lo // st)
    whi = np.minimum((hi - w) // st + 1, fwindows.shape)
    ok = (whi > wlo).all(axis=1)
    if not ok.any():
        raise ConfigError(f"no fine window of {tuple(w)} patches fits in a coarse region", "use a smaller factor or window")
    ids = _ranges(fwindows.shape, wlo[ok], whi[ok])
    local = knn(emb[population], min(k, len(population)))
    balls = population[local]
    fine = greedy_select(fwindows, balls, budget, ids=ids, rows=population, seed=seed)
    t2 = time.perf_counter()
    fine.method = "hierarchical"
    fine.extra.update(
        {
            "coarse_seconds": t1 - t0,
            "fine_seconds": t2 - t1,
            "coarse_patches": cg.size,
            "fine_population": len(population),
            "fine_candidates": len(ids),
            "regions": [b.to_dict() for b in coarse.boxes],
        }
    )
    log.info(
        "hierarchical: %d coarse patches (%.1f s), %d fine patches in %d regions, %d candidates (%.1f s)",
        cg.size, t1 - t0, len(population), len(coarse.picks), len(ids), t2 - t1,
    )
    return fine
