"""kNN balls in embedding space: exact (chunked brute force) or approximate (faiss IVF index).

The ball of patch ``i`` is the set of the ``k`` patches nearest to it in Euclidean distance, itself
included (as in the authors' code: the k-th smallest distance of row ``i`` of the distance matrix,
whose diagonal is 0, is the threshold). Ties are broken by patch id (lower id first), so balls have
exactly ``k`` members and are deterministic; the authors keep every patch at the threshold
distance, which only differs when two distances are exactly equal. ``include_self=False`` makes
the ball the ``k`` nearest *other* patches.

Balls are stored as an ``(N, k)`` array of patch ids (row ``i``: the ball of ``i``, nearest first) --
``N * k`` integers, never an ``N x N`` matrix. :func:`ball_matrix` turns them into a sparse CSR
matrix with ``k`` non-zeros per row.

For large ``N`` the exact search costs ``N^2 D`` flops. :class:`IVFIndex` is faiss's inverted-file
index (``IndexIVFFlat``: k-means coarse quantiser, exact distances inside the ``nprobe`` nearest
lists); :func:`knn_recall` measures its error against the exact search on a sample of queries and
:func:`tune_nprobe` raises ``nprobe`` until a target recall is reached.

>>> x = np.array([[0.0], [1.0], [3.0], [10.0]])
>>> exact_knn(x, 2).tolist()
[[0, 1], [1, 0], [2, 1], [3, 2]]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.errors import ConfigError

log = logging.getLogger(__name__)

#: Rows of the distance matrix computed at once by the exact search (memory: chunk * N * 8 bytes).
_TARGET_CHUNK_BYTES = 256 * 2**20


def _check(x: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(f"embeddings must be a 2-d array (patches, features), got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ConfigError(f"k must be between 1 and the number of patches ({x.shape[0]}), got {k}", "use a smaller --k")
    if not np.isfinite(x).all():
        raise ConfigError("the embeddings hold NaN or infinite values", "re-run connectile embed with a trained encoder")
    return x


def sq_distances(q: np.ndarray, x: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances (float64) between the rows of ``q`` and ``x``, clipped at 0."""
    q = np.asarray(q, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    xs = (x * x).sum(1) if x_sq is None else x_sq
    d = (q * q).sum(1)[:, None] - 2.0 * (q @ x.T) + xs[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def k_smallest(d: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Per row, the columns of the ``k`` smallest values, ordered by (value, column id).

    ``ids`` (default: ``arange(columns)``) are the ids of the columns, used to break ties and
    returned in place of column positions.
    """
    n, m = d.shape
    ids = np.arange(m) if ids is None else np.asarray(ids)
    if k >= m:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    else:
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(d, part, axis=1)
    if k < m:
        # argpartition picks arbitrarily among columns equal to the k-th value: redo those rows.
        kth = vals.max(axis=1)
        ties = (d == kth[:, None]).sum(axis=1) > (vals == kth[:, None]).sum(axis=1)
        for r in np.flatnonzero(ties):
            order = np.lexsort((ids, d[r]))[:k]
            part[r] = order
            vals[r] = d[r, order]
    order = np.lexsort((ids[part], vals), axis=1) if part.size else part
    return np.asarray(ids[np.take_along_axis(part, order, axis=1)])


def _self_first(d: np.ndarray, rows: np.ndarray, include_self: bool) -> None:
    """Put each query's own patch at distance -1 (always in its ball) or +inf (never)."""
    d[np.arange(len(rows)), rows] = -1.0 if include_self else np.inf


def exact_knn(x: np.ndarray, k: int, *, include_self: bool = True, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Exact kNN balls (``(len(rows), k)`` patch ids; default all rows), brute force in row chunks.

    Memory is ``chunk x N`` distances, never ``N x N``.
    """
    x = _check(x, k if include_self else k + 1)
    n = x.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    xf = np.asarray(x, dtype=np.float64)
    x_sq = (xf * xf).sum(1)
    chunk = max(1, min(len(rows), _TARGET_CHUNK_BYTES // (8 * n)))
    out = np.empty((len(rows), k), dtype=np.int64)
    starts = range(0, len(rows), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="exact kNN", unit="chunk")
    for s in starts:
        r = rows[s : s + chunk]
        d = sq_distances(xf[r], xf, x_sq)
        _self_first(d, r, include_self)
        out[s : s + chunk] = k_smallest(d, k)
    return out


def ball_matrix(balls: np.ndarray, n: int | None = None, rows: np.ndarray | None = None) -> object:
    """The balls as a sparse boolean ``n x n`` CSR matrix: row ``i`` holds the ``k`` patches ``i`` covers.

    ``rows`` (sorted patch ids) says whose balls ``balls`` holds; the other rows stay empty.
    """
    import scipy.sparse as sp

    balls = np.asarray(balls)
    nb, k = balls.shape
    n = nb if n is None else n
    counts = np.zeros(n, dtype=np.int64)
    counts[np.arange(nb) if rows is None else np.asarray(rows, dtype=np.int64)] = k
    indptr = np.concatenate([[0], np.cumsum(counts)])
    m = sp.csr_matrix((np.ones(nb * k, dtype=bool), balls.ravel().astype(np.int64), indptr), shape=(n, n))
    m.sort_indices()
    return m


class IVFIndex:
    """Inverted-file index (faiss ``IndexIVFFlat``): points grouped by their nearest k-means centroid.

    A query is compared exactly (float32) with the points of its ``nprobe`` nearest lists. The coarse
    quantiser is faiss's k-means (10 iterations) on a seeded sample of ``max(train_size, 39 nlist)``
    points (all where fewer); ``nlist`` defaults to about ``2 sqrt(N)``. The pickle holds the points
    twice (``x`` for the queries and the lists), as does memory. Pickles through ``faiss.serialize_index`` (Ray actors
    get it through the object store). Where faiss has GPU support and sees a GPU (``faiss-gpu``),
    :meth:`search` runs there; ``faiss-cpu`` runs on the CPU threads of the process.
    """

    def __init__(self, x: np.ndarray, index: Any) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.index = index
        self._gpu: Any = None

    @classmethod
    def build(cls, x: np.ndarray, nlist: int | None = None, *, seed: int = 0, train_size: int = 100_000) -> IVFIndex:
        """Train the coarse quantiser on a seeded sample and fill the lists with every point."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        n, dim = x.shape
        nlist = int(nlist or max(1, min(n // 39, round(2 * np.sqrt(n)))))
        rng = np.random.default_rng(seed)
        train = min(n, max(train_size, 39 * nlist))
        sample = x if n <= train else x[np.sort(rng.choice(n, train, replace=False))]
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        index.cp.seed = int(seed)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1  # no warning (and no subsampling) below 39 points per list
        index.cp.max_points_per_centroid = max(39, -(-train // nlist))
        index.train(sample)
        index.add(x)
        lists = index.invlists
        sizes = np.array([lists.list_size(i) for i in range(nlist)]) if lists is not None else np.zeros(1)
        log.info("IVF index (faiss): %d points in %d lists (largest %d)", n, nlist, int(sizes.max()))
        return cls(x, index)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def __getstate__(self) -> dict[str, Any]:
        import faiss

        return {"x": self.x, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import faiss

        self.x = state["x"]
        self.index = faiss.deserialize_index(state["index"])
        self._gpu = None

    def _searcher(self) -> Any:
        """The index on a GPU where faiss can use one (built once), else the CPU index."""
        if self._gpu is None:
            self._gpu = self.index
            if faiss_gpus() > 0:
                import faiss

                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
                log.info("IVF search on %d GPU(s)", faiss_gpus())
        return self._gpu

    def search(self, rows: np.ndarray, k: int, nprobe: int = 16, *, include_self: bool = True) -> np.ndarray:
        """Approximate kNN balls of the points ``rows`` (ids into the indexed points), nearest first."""
        rows = np.asarray(rows, dtype=np.int64)
        searcher = self._searcher()
        nprobe = min(nprobe, self.nlist)
        searcher.nprobe = nprobe  # CPU and GPU IVF indexes alike
        d, ids = searcher.search(self.x[rows], k + 1)
        return _balls_from_hits(d, ids, rows, k, include_self)


def faiss_gpus() -> int:
    """GPUs faiss can use here (0 with ``faiss-cpu``)."""
    try:
        import faiss
    except ImportError:
        return 0
    fn = getattr(faiss, "get_num_gpus", None)
    return int(fn()) if fn is not None and hasattr(faiss, "StandardGpuResources") else 0


def _balls_from_hits(d: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int, include_self: bool) -> np.ndarray:
    """``(len(rows), k)`` balls from ``k + 1`` hits per query: the query itself first (``include_self``)
    or left out, the rest nearest first, ties by id; too few hits raise a ConfigError."""
    d = np.asarray(d, dtype=np.float64).copy()
    ids = np.asarray(ids, dtype=np.int64).copy()
    missing = ids < 0
    d[missing] = np.inf
    ids[missing] = np.iinfo(np.int64).max
    own = ids == rows[:, None]
    d[own] = -1.0 if include_self else np.inf
    if include_self:  # the query itself, where the search did not find it, replaces the last hit
        absent = ~own.any(axis=1)
        ids[absent, -1] = rows[absent]
        d[absent, -1] = -1.0
    order = np.lexsort((ids, d), axis=1)[:, :k]
    out = np.take_along_axis(ids, order, axis=1)
    if not np.isfinite(np.take_along_axis(d, order, axis=1)).all():
        raise ConfigError(f"the approximate index found fewer than k={k} neighbours for some patches", "raise nprobe (--nprobe) or use knn exact (--knn exact)")
    return out


def approx_knn(
    x: np.ndarray, k: int, *, nlist: int | None = None, nprobe: int = 16, seed: int = 0, include_self: bool = True,
    target_recall: float | None = None, index: IVFIndex | None = None,
) -> np.ndarray:
    """Approximate kNN balls of all points through an :class:`IVFIndex` (built here unless given).

    ``target_recall``: first raise ``nprobe`` (doubling, up to every list) until the recall measured on
    a seeded sample of 256 patches reaches it (:func:`tune_nprobe`).
    """
    x = _check(x, k)
    index = index or IVFIndex.build(x, nlist, seed=seed)
    if target_recall is not None:
        nprobe = tune_nprobe(index, k, nprobe, target_recall, seed=seed, include_self=include_self)
    out = np.empty((x.shape[0], k), dtype=np.int64)
    for s in range(0, x.shape[0], 65536):
        out[s : s + 65536] = index.search(np.arange(s, min(s + 65536, x.shape[0])), k, nprobe, include_self=include_self)
    return out


def tune_nprobe(index: IVFIndex, k: int, nprobe: int, target: float, *, seed: int = 0, include_self: bool = True, sample: int = 256) -> int:
    """The smallest ``nprobe`` of ``nprobe, 2 nprobe, 4 nprobe, ...`` (capped at every list) whose recall
    on a seeded sample of patches (against the exact search) reaches ``target``."""
    n = index.x.shape[0]
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, min(sample, n), replace=False))
    exact = exact_knn(index.x, k, include_self=include_self, rows=rows)
    nprobe = max(1, min(nprobe, index.nlist))
    while True:
        try:
            got = index.search(rows, k, nprobe, include_self=include_self)
            recall = float(np.mean([len(np.intersect1d(e, g, assume_unique=True)) for e, g in zip(exact, got, strict=True)]) / k)
        except ConfigError:  # lists too small for k neighbours: more lists
            recall = 0.0
        log.info("IVF nprobe %d of %d lists: recall %.3f on %d patches", nprobe, index.nlist, recall, len(rows))
        if recall >= target or nprobe >= index.nlist:
            return nprobe
        nprobe = min(2 * nprobe, index.nlist)


def knn_recall(x: np.ndarray, approx: np.ndarray, *, sample: int = 1000, seed: int = 0, include_self: bool = True) -> float:
    """Mean fraction of the exact k nearest that ``approx`` found, over ``sample`` random patches."""
    n, k = approx.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    exact = exact_knn(x, k, include_self=include_self, rows=rows)
    hits = [len(np.intersect1d(exact[i], approx[r], assume_unique=True)) for i, r in enumerate(rows)]
    return float(np.mean(hits) / k)
