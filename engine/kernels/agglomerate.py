"""Agglomeration of fragments over their region-adjacency graph.

Two rules, both on edges ``(a, b)`` carrying the sum and the count of the affinities across them:

``threshold``  merge every edge whose own score (``sum / count``) reaches the threshold (connected
               components of the strong edges: one pass, no re-scoring).
``mean``       hierarchical, like waterz's mean-affinity agglomeration: repeatedly merge the two regions
               joined by the edge of highest mean affinity; the edges of a merged region to each
               neighbour are combined (sums and counts added, so the new score is the mean affinity of
               all voxel pairs between the two regions); stop when the best score is below the
               threshold. Ties are broken by the smaller ``(a, b)``, so the result depends only on the
               graph, not on the order the edges were collected in.

>>> a, b = np.array([1, 2, 1]), np.array([2, 3, 3])
>>> s, c = np.array([0.9, 1.6, 0.1]), np.array([1, 2, 1])  # scores 0.9, 0.8, 0.1
>>> mean_agglomeration(a, b, s, c, 0.5).tolist()
[[1, 2], [1, 3]]
>>> mean_agglomeration(a, b, s, c, 0.85).tolist()  # after 1+2 merge, the edge to 3 scores (1.6 + 0.1) / 3
[[1, 2]]
"""

from __future__ import annotations

import heapq
import logging

import numpy as np

log = logging.getLogger(__name__)


def edge_sums(a: np.ndarray, b: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unique edges ``(lo, hi)`` with ``lo < hi`` and the sum (float64) and count of their values.

    >>> lo, hi, s, c = edge_sums(np.array([2, 1, 1]), np.array([1, 2, 3]), np.array([0.5, 0.25, 1.0]))
    >>> lo.tolist(), hi.tolist(), s.tolist(), c.tolist()
    ([1, 1], [2, 3], [0.75, 1.0], [2, 1])
    """
    lo, hi = np.minimum(a, b).astype(np.uint64), np.maximum(a, b).astype(np.uint64)
    if lo.size == 0:
        empty = np.zeros(0, np.uint64)
        return empty, empty.copy(), np.zeros(0, np.float64), np.zeros(0, np.int64)
    uniq, inv, counts = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True, return_counts=True)
    sums = np.bincount(inv.ravel(), weights=values.astype(np.float64), minlength=len(uniq))
    return uniq[:, 0].copy(), uniq[:, 1].copy(), sums, counts.astype(np.int64)


def mean_agglomeration(a: np.ndarray, b: np.ndarray, sums: np.ndarray, counts: np.ndarray, threshold: float) -> np.ndarray:
    """The merges ``(n, 2)`` (uint64 pairs of original node ids) of hierarchical mean-affinity
    agglomeration down to ``threshold``. ``(a, b)`` must be unique edges (see :func:`edge_sums`)."""
    a = np.asarray(a, np.uint64)
    b = np.asarray(b, np.uint64)
    if a.size == 0:
        return np.zeros((0, 2), np.uint64)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: a.size].tolist(), inv[a.size :].tolist()
    # region -> {neighbour region: [sum, count]}; regions are named by one of their nodes (index)
    adj: list[dict[int, list[float]]] = [{} for _ in range(nodes.size)]
    heap: list[tuple[float, int, int]] = []
    for x, y, s, c in zip(ia, ib, np.asarray(sums, np.float64).tolist(), np.asarray(counts, np.int64).tolist(), strict=True):
        x, y = min(x, y), max(x, y)
        adj[x][y] = [s, c]
        adj[y][x] = adj[x][y]
        heap.append((-s / c, x, y))
    heapq.heapify(heap)
    parent = list(range(nodes.size))
    merges: list[tuple[int, int]] = []
    while heap:
        neg, x, y = heapq.heappop(heap)
        if -neg < threshold:
            break
        got = adj[x].get(y)
        if got is None or parent[x] != x or parent[y] != y or got[0] / got[1] != -neg:
            continue  # stale: a region merged away, or the edge was re-scored since
        merges.append((x, y))
        keep, gone = (x, y) if len(adj[x]) >= len(adj[y]) else (y, x)
        parent[gone] = keep
        del adj[keep][gone]
        del adj[gone][keep]
        for z, sc in adj[gone].items():
            del adj[z][gone]
            cur = adj[keep].get(z)
            if cur is None:
                cur = [sc[0], sc[1]]
                adj[keep][z] = cur
                adj[z][keep] = cur
            else:
                cur[0] += sc[0]
                cur[1] += sc[1]
            heapq.heappush(heap, (-cur[0] / cur[1], min(keep, z), max(keep, z)))
        adj[gone] = {}
    out = np.asarray(merges, np.int64).reshape(-1, 2)
    log.info("mean agglomeration: %d edges, %d merges at threshold %g", a.size, len(merges), threshold)
    return nodes[out].astype(np.uint64)


def threshold_merges(a: np.ndarray, b: np.ndarray, sums: np.ndarray, counts: np.ndarray, threshold: float) -> np.ndarray:
    """The edges whose own mean score reaches ``threshold``, as merges ``(n, 2)``."""
    keep = np.asarray(sums, np.float64) / np.maximum(np.asarray(counts), 1) >= threshold
    return np.stack([np.asarray(a, np.uint64)[keep], np.asarray(b, np.uint64)[keep]], axis=1)
