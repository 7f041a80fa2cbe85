"""Query suggestion: which ROIs to show a reviewer.

Methods (``--method``):

================ ====================================================================================
hierarchical     the paper's two-stream method: k-means into N clusters on the mask features (E_s),
                 then each cluster into M sub-clusters on the image features (E_u); Q representatives
                 per sub-cluster (k-means into Q inside it, the member nearest each centre). N*M*Q queries.
late-fusion      k-means into N*M clusters on the concatenated features (the ablation that loses), Q each
mask             k-means into N*M clusters on the mask features only, Q each
image            k-means into N*M clusters on the image features only, Q each
random           a uniform random sample of the budget
coreset          k-center greedy (Sener and Savarese) on the mask features, starting from the reviewed ROIs
uncertainty      the ROIs whose mean predicted probability is closest to 0.5
================ ====================================================================================

Only ROIs without an answer in any round are candidates, so a reviewed ROI is never suggested again.
Queries are ordered by cluster (largest first), then sub-cluster, then distance to the centre: that
is their ``rank`` (the display order). Baselines have one cluster (0) and keep their selection order.
When clusters are too small to give Q representatives each, the shortfall is filled by k-center greedy
on the mask features, so a clustering method returns exactly N*M*Q queries whenever that many
candidates exist.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> fm, fi = rng.normal(size=(200, 4)), rng.normal(size=(200, 8))
>>> s = suggest("hierarchical", fm, fi, n_clusters=4, n_sub=2, per_cluster=1, reviewed={0, 1, 2})
>>> len(s.roi_id), len(set(s.roi_id.tolist())), bool({0, 1, 2} & set(s.roi_id.tolist()))
(8, 8, False)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, get_args

import numpy as np
from typing_extensions import Unpack

from engine.errors import ConfigError
from engine.params import QueryMethod

log = logging.getLogger(__name__)

Method = QueryMethod
METHODS: tuple[str, ...] = get_args(Method)
CLUSTER_METHODS = ("hierarchical", "late-fusion", "mask", "image")
QUERY_COLUMNS = ("roi_id", "cluster", "subcluster", "rank", "method", "distance")


@dataclass
class Suggestion:
    """The queries (in display order) and, for clustering methods, the cluster of every candidate
    (``assignment[i]`` for ``candidates[i]``; -1 where there is none) for label propagation."""

    method: str
    roi_id: np.ndarray
    cluster: np.ndarray
    subcluster: np.ndarray
    distance: np.ndarray
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    assignment: np.ndarray | None = None

    @property
    def rank(self) -> np.ndarray:
        return np.arange(self.roi_id.size, dtype=np.int32)

    def __len__(self) -> int:
        return int(self.roi_id.size)


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centres of k-means with at most as many clusters as distinct points."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, x.shape[0], np.unique(x, axis=0).shape[0]))
    if k == 1:
        return np.zeros(x.shape[0], np.int64), x.mean(axis=0, keepdims=True)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_


def _representatives(x: np.ndarray, q: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``x``) of ``q`` representatives of the points ``x`` and their distances to the
    centre of the group: with q == 1 the point nearest the mean; else k-means into q, the member
    nearest each centre."""
    centre = x.mean(axis=0)
    if q == 1 or x.shape[0] <= 1:
        d = np.linalg.norm(x - centre, axis=1)
        i = int(np.argmin(d))
        return np.array([i]), d[[i]]
    if x.shape[0] <= q:
        idx = np.arange(x.shape[0])
    else:
        labels, centres = _kmeans(x, q, seed, n_init)
        idx_list = []
        for j in range(centres.shape[0]):
            members = np.flatnonzero(labels == j)
            if members.size:
                idx_list.append(members[np.argmin(np.linalg.norm(x[members] - centres[j], axis=1))])
        idx = np.asarray(idx_list, np.int64)
    return idx, np.linalg.norm(x[idx] - centre, axis=1)


def k_center_greedy(x: np.ndarray, budget: int, start: Iterable[int] = (), exclude: Iterable[int] = (), seed: int = 0) -> np.ndarray:
    """Indices of ``budget`` points of ``x`` chosen one by one as the point farthest from all chosen
    ones (the ``start`` points count as chosen but are not returned; ``exclude`` are never chosen).
    Without ``start`` the first point is the one nearest the mean."""
    n = x.shape[0]
    budget = int(min(budget, n))
    chosen: list[int] = []
    mind = np.full(n, np.inf)
    for s in start:
        mind = np.minimum(mind, np.linalg.norm(x - x[int(s)], axis=1))
    banned = np.zeros(n, bool)
    banned[list(exclude)] = True
    banned[list(start)] = True
    if not np.isfinite(mind).any():
        d0 = np.linalg.norm(x - x.mean(axis=0), axis=1)
        d0[banned] = np.inf
        if np.isfinite(d0).any():
            first = int(np.argmin(d0))
            chosen.append(first)
            banned[first] = True
            mind = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < budget:
        score = np.where(banned, -np.inf, mind)
        i = int(np.argmax(score))
        if not np.isfinite(score[i]):
            break
        chosen.append(i)
        banned[i] = True
        mind = np.minimum(mind, np.linalg.norm(x - x[i], axis=1))
    return np.asarray(chosen[:budget], np.int64)


def _order(cluster: np.ndarray, sub: np.ndarray, dist: np.ndarray) -> np.ndarray:
    return np.lexsort((dist, sub, cluster))


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0.. in decreasing size (ties: old id)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    lut = np.empty(int(ids.max()) + 1, np.int64)
    lut[order] = np.arange(order.size)
    return lut[labels]


class Clustering(TypedDict, total=False):
    """The shape of a clustering query: ``n_clusters`` (N, default 64) top clusters, ``n_sub`` (M, 4)
    sub-clusters each, ``per_cluster`` (Q, 1) representatives each; k-means with ``n_init`` (3)
    restarts from ``seed`` (0), which also seeds the baselines."""

    n_clusters: int
    n_sub: int
    per_cluster: int
    seed: int
    n_init: int


@dataclass(frozen=True)
class _Shape:
    n_clusters: int = 64
    n_sub: int = 4
    per_cluster: int = 1
    seed: int = 0
    n_init: int = 3

    @property
    def target(self) -> int:
        return self.n_clusters * self.n_sub * self.per_cluster


def suggest(
    method: str,
    mask_features: np.ndarray | None,
    image_features: np.ndarray | None,
    *,
    budget: int | None = None,
    reviewed: Iterable[int] = (),
    scores: np.ndarray | None = None,
    **clustering: Unpack[Clustering],
) -> Suggestion:
    """Suggest queries among ROIs ``0..n-1`` (rows of the feature arrays). ``budget`` defaults to
    ``n_clusters * n_sub * per_cluster`` (the baselines use it; the clustering methods always aim at
    that number). ``scores`` (mean probabilities) are needed by ``uncertainty``. ``clustering``:
    N, M, Q and the k-means seed and restarts (:class:`Clustering`)."""
    shape = _Shape(**clustering)
    n = _check_suggest(method, mask_features, image_features, scores, shape)
    budget = shape.target if budget is None else int(budget)
    if budget < 1:
        raise ConfigError(f"the budget must be >= 1, got {budget}")
    seen = np.zeros(n, bool)
    rev = np.asarray(sorted(int(r) for r in reviewed if 0 <= int(r) < n), np.int64)
    seen[rev] = True
    cand = np.flatnonzero(~seen)
    empty = np.zeros(0, np.int64)
    if cand.size == 0:
        return Suggestion(method, empty, empty.astype(np.int32), empty.astype(np.int32), np.zeros(0), cand, None)
    if method not in CLUSTER_METHODS:
        return _baseline(method, cand, rev, budget, mask_features, scores, shape.seed)
    fm = None if mask_features is None else mask_features[cand].astype(np.float64)
    fi = None if image_features is None else image_features[cand].astype(np.float64)
    if method == "hierarchical":
        assert fm is not None and fi is not None
        chosen, dist, cl, sc = _hierarchical(fm, fi, shape)
        assignment = cl * shape.n_sub + sc
    else:
        feats = {"late-fusion": None if fm is None or fi is None else np.concatenate([fm, fi], axis=1), "mask": fm, "image": fi}[method]
        assert feats is not None
        chosen, dist, cl, sc = _one_level(feats, shape)
        assignment = cl
    if chosen.size < shape.target:  # clusters too small for Q representatives each: fill up, diverse
        base = fm if fm is not None else fi
        assert base is not None
        extra = k_center_greedy(base, shape.target - chosen.size, start=chosen.tolist(), seed=shape.seed)
        chosen = np.concatenate([chosen, extra])
        dist = np.concatenate([dist, np.full(extra.size, np.inf)])
    chosen, dist = chosen[: shape.target], dist[: shape.target]
    order = _order(cl[chosen], sc[chosen], dist)
    chosen, dist = chosen[order], dist[order]
    return Suggestion(method, cand[chosen], cl[chosen].astype(np.int32), sc[chosen].astype(np.int32), dist, cand, assignment)


def _check_suggest(method: str, mask_features: np.ndarray | None, image_features: np.ndarray | None, scores: np.ndarray | None,
                   shape: _Shape) -> int:
    """The number of ROIs, once the method, the clustering and the features it needs are checked."""
    if method not in METHODS:
        raise ConfigError(f"unknown query method {method!r}", f"use one of {', '.join(METHODS)}")
    for name, v in (("n_clusters", shape.n_clusters), ("n_sub", shape.n_sub), ("per_cluster", shape.per_cluster)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    sizes = [f.shape[0] for f in (mask_features, image_features, scores) if f is not None]
    if not sizes:
        raise ConfigError("no features were given")
    if any(s != sizes[0] for s in sizes):
        raise ConfigError(f"the features hold different numbers of ROIs: {sizes}", "compute the features of this run again")
    if method in ("hierarchical", "late-fusion", "mask", "coreset") and mask_features is None:
        raise ConfigError(f"method {method!r} needs the mask features")
    if method in ("hierarchical", "late-fusion", "image") and image_features is None:
        raise ConfigError(f"method {method!r} needs the image features")
    return int(sizes[0])


def _baseline(method: str, cand: np.ndarray, rev: np.ndarray, budget: int, mask_features: np.ndarray | None, scores: np.ndarray | None,
              seed: int) -> Suggestion:
    """random, uncertainty and coreset: one cluster, in selection order."""
    if method == "random":
        rng = np.random.default_rng(seed)
        return _flat(method, rng.choice(cand, size=min(budget, cand.size), replace=False), cand)
    if method == "uncertainty":
        if scores is None or not np.isfinite(scores[cand]).any():
            raise ConfigError("method 'uncertainty' needs the mean predicted probability of every ROI (score)",
                              "extract the ROIs from a table with mean probabilities, or with --prob")
        s = np.nan_to_num(scores[cand].astype(np.float64), nan=1.0)
        u = 1.0 - np.abs(2.0 * s - 1.0)
        return _flat(method, cand[np.lexsort((cand, -u))[:budget]], cand)
    assert method == "coreset" and mask_features is not None
    return _flat(method, k_center_greedy(mask_features.astype(np.float64), budget, start=rev.tolist(), seed=seed), cand)


def _hierarchical(fm: np.ndarray, fi: np.ndarray, shape: _Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """N clusters on the mask features, M sub-clusters each on the image features, Q representatives
    each: the chosen candidates, their distances, and every candidate's cluster and sub-cluster."""
    top = _renumber_by_size(_kmeans(fm, shape.n_clusters, shape.seed, shape.n_init)[0])
    sub = np.full(fm.shape[0], -1, np.int64)
    picks: list[np.ndarray] = []
    dists: list[np.ndarray] = []
    for c in range(int(top.max()) + 1):
        members = np.flatnonzero(top == c)
        lab = _renumber_by_size(_kmeans(fi[members], shape.n_sub, shape.seed, shape.n_init)[0])
        sub[members] = lab
        for s_ in range(int(lab.max()) + 1):
            mm = members[lab == s_]
            idx, d = _representatives(fi[mm], shape.per_cluster, shape.seed, shape.n_init)
            picks.append(mm[idx])
            dists.append(d)
    return np.concatenate(picks), np.concatenate(dists), top, sub


def _one_level(feats: np.ndarray, shape: _Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """N*M clusters of ``feats``, Q representatives each (sub-cluster -1)."""
    top = _renumber_by_size(_kmeans(feats, shape.n_clusters * shape.n_sub, shape.seed, shape.n_init)[0])
    picks, dists = [], []
    for c in range(int(top.max()) + 1):
        members = np.flatnonzero(top == c)
        idx, d = _representatives(feats[members], shape.per_cluster, shape.seed, shape.n_init)
        picks.append(members[idx])
        dists.append(d)
    return np.concatenate(picks), np.concatenate(dists), top, np.full(feats.shape[0], -1, np.int64)


def _flat(method: str, pick: np.ndarray, cand: np.ndarray) -> Suggestion:
    pick = np.asarray(pick, np.int64)
    z = np.zeros(pick.size, np.int32)
    return Suggestion(method, pick, z, z - 1, np.zeros(pick.size), cand, None)


# -- files ---------------------------------------------------------------------------------------
def write_queries(path: str | os.PathLike[str], s: Suggestion) -> None:
    """``queries.parquet`` of the run-directory contract (plus ``distance``), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "roi_id": pa.array(s.roi_id, pa.int64()),
        "cluster": pa.array(s.cluster, pa.int32()),
        "subcluster": pa.array(s.subcluster, pa.int32()),
        "rank": pa.array(s.rank, pa.int32()),
        "method": pa.array([s.method] * len(s), pa.string()),
        "distance": pa.array(s.distance, pa.float64()),
    })
    tmp = p.with_suffix(".tmp")
    pq.write_table(table, str(tmp))
    os.replace(tmp, p)


def read_queries(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(str(path))
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def save_preview(images: np.ndarray, masks: np.ndarray, s: Suggestion, path: str | os.PathLike[str], max_tiles: int = 64) -> None:
    """A PNG of the first ``max_tiles`` queries in display order: image with the mask outlined,
    titled by cluster/sub-cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(max_tiles, len(s))
    if k == 0:
        return
    cols = min(8, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= k:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if masks[i].any():
            ax.contour(masks[i] > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        sub = "" if s.subcluster[i] < 0 else f".{int(s.subcluster[i])}"
        ax.set_title(f"{int(s.roi_id[i])} c{int(s.cluster[i])}{sub}", fontsize=6)
    fig.suptitle(f"{s.method}: {len(s)} queries", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
