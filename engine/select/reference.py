"""The brute-force reference of coverage selection, for tests and benchmarks only.

It follows the authors' code: the full ``N x N`` Euclidean distance matrix, kNN balls as a dense
boolean ``N x N`` matrix, and every candidate scored by recomputing the union of the balls of
``chosen + window``. It differs only where the authors' code is wrong (see ``papers/README.md``):
picks must not share voxels, and the window's patch ids use the right row length. Memory is
``O(N^2)``: about 9 GB at ``N = 30,000``.
"""

from __future__ import annotations

import numpy as np

from engine.select.candidates import Windows
from engine.select.coverage import tie_key
from engine.select.knn import k_smallest, sq_distances


def dense_balls(x: np.ndarray, k: int, include_self: bool = True) -> np.ndarray:
    """``N x N`` boolean matrix: row ``i`` marks the ``k`` nearest patches of ``i`` (itself included)."""
    d = sq_distances(x, x)
    np.fill_diagonal(d, -1.0 if include_self else np.inf)
    nn = k_smallest(d, k)
    del d
    out = np.zeros((x.shape[0], x.shape[0]), dtype=bool)
    np.put_along_axis(out, nn, True, axis=1)
    return out


def reference_greedy(windows: Windows, dense: np.ndarray, budget: int, seed: int | None = None) -> tuple[list[int], list[int]]:
    """(picks, scores) by recomputing ``|union of balls of chosen + window|`` for every candidate; ties
    to the lowest :func:`~engine.select.coverage.tie_key` (``seed``), as the engine breaks them."""
    rank = tie_key(np.arange(windows.size), seed)
    chosen: list[int] = []
    chosen_patches: list[int] = []
    scores: list[int] = []
    all_patches = windows.patches(np.arange(windows.size))
    for _ in range(budget):
        best, best_score = -1, -1
        for c in range(windows.size):
            box = windows.box(c)
            if any(not box.intersect(windows.box(p)).empty for p in chosen):
                continue
            rows = np.concatenate([np.asarray(chosen_patches, dtype=np.int64), all_patches[c]])
            score = int(dense[rows].any(axis=0).sum())
            if score > best_score or (score == best_score and rank[c] < rank[best]):
                best, best_score = c, score
        if best < 0:
            break
        chosen.append(best)
        chosen_patches.extend(all_patches[best].tolist())
        scores.append(best_score)
    return chosen, scores


def reference_greedy_hoisted(windows: Windows, dense: np.ndarray, budget: int, seed: int | None = None) -> tuple[list[int], list[int]]:
    """:func:`reference_greedy` as a careful brute force writes it: the union of the chosen balls is
    constant within a step, so it is computed once per step and each candidate adds only its own
    window's balls (``|covered| + |window's union minus covered|``); boxes are made once. Same
    picks and scores, same dense ``N x N`` memory."""
    rank = tie_key(np.arange(windows.size), seed)
    chosen: list[int] = []
    scores: list[int] = []
    all_patches = windows.patches(np.arange(windows.size))
    boxes = [windows.box(c) for c in range(windows.size)]
    covered = np.zeros(dense.shape[1], dtype=bool)
    free = np.ones(windows.size, dtype=bool)
    for _ in range(budget):
        base = int(covered.sum())
        uncovered = ~covered
        best, best_score = -1, -1
        for c in np.flatnonzero(free):
            score = base + int(np.count_nonzero(dense[all_patches[c]].any(axis=0) & uncovered))
            if score > best_score or (score == best_score and rank[c] < rank[best]):
                best, best_score = int(c), score
        if best < 0:
            break
        chosen.append(best)
        covered |= dense[all_patches[best]].any(axis=0)
        scores.append(best_score)
        free &= np.array([boxes[best].intersect(b).empty for b in boxes])
    return chosen, scores
