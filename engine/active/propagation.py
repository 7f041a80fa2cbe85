"""Label propagation (the protocol of Table 2 of the paper): every ROI gets the majority answer of the
reviewed representatives of its cluster; reviewed ROIs keep their own answer; ROIs in clusters without
a reviewed member keep the default (the base model's claim: correct). Accuracy = fraction of ROIs whose
propagated label equals the truth.

Random one-by-one annotation of ``s`` of ``N`` ROIs with initial accuracy ``p`` reaches
``p (1 - s/N) + s/N`` in expectation (:func:`random_expected_accuracy`).

>>> import numpy as np
>>> truth = np.array([1, 1, 0, 0, 0, 1], bool)
>>> clusters = np.array([0, 0, 1, 1, 1, 2])
>>> labels = propagate(clusters, {0: True, 2: False})
>>> labels.astype(int).tolist(), float(accuracy(labels, truth))
([1, 1, 0, 0, 0, 1], 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def propagate(clusters: np.ndarray | None, answers: Mapping[int, bool], n: int | None = None, default: bool = True) -> np.ndarray:
    """Propagated labels of ROIs ``0..n-1``. ``clusters[i]`` is the cluster of ROI ``i`` (-1: none);
    None means no clustering (only the answered ROIs change). Ties in a cluster count as accepted."""
    if clusters is None:
        if n is None:
            raise ValueError("give n without clusters")
        out = np.full(n, default, bool)
    else:
        clusters = np.asarray(clusters)
        n = clusters.size if n is None else n
        out = np.full(n, default, bool)
        votes: dict[int, list[int]] = {}
        for r, ok in answers.items():
            c = int(clusters[r])
            if c >= 0:
                votes.setdefault(c, [0, 0])[int(bool(ok))] += 1
        if votes:
            keys = np.fromiter(votes, np.int64)
            majority = np.asarray([votes[k][1] >= votes[k][0] for k in keys.tolist()], bool)
            lut = {int(k): bool(m) for k, m in zip(keys, majority, strict=True)}
            for i in range(n):
                c = int(clusters[i])
                if c in lut:
                    out[i] = lut[c]
    for r, ok in answers.items():
        out[int(r)] = bool(ok)
    return out


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of ROIs whose label equals the truth."""
    labels, truth = np.asarray(labels, bool), np.asarray(truth, bool)
    return float((labels == truth).mean()) if truth.size else float("nan")


def random_expected_accuracy(p: float, s: int, n: int) -> float:
    """Expected accuracy after randomly reviewing ``s`` of ``n`` ROIs of initial accuracy ``p``."""
    return p * (1.0 - s / n) + s / n


def full_clusters(assignment: np.ndarray | None, candidates: np.ndarray, n: int) -> np.ndarray | None:
    """Cluster of every ROI ``0..n-1`` from a suggestion's ``assignment`` over its ``candidates`` (-1 elsewhere)."""
    if assignment is None:
        return None
    out = np.full(n, -1, np.int64)
    out[candidates] = assignment
    return out
