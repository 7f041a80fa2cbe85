"""Coverage scoring on Ray actors: the candidate windows split into blocks of the candidate grid.

Each actor holds the candidates of its blocks and only the kNN balls of the patches those windows
hold (the shard's patches): a covered patch ``j`` lowers a candidate's gain only through a patch of
that candidate, so nothing else is needed. Per greedy step the driver asks every actor for its best
``(gain, id)``, keeps the best (highest gain, then the same tie order as in one process), and
sends the newly covered patches and the pick to all actors. The picks equal those of
:func:`engine.select.greedy.greedy_select` in one process; memory per actor is its shard's.

kNN balls themselves are computed blockwise on actors too (:func:`distributed_knn`): every actor gets
the faiss IVF index once (through the object store) and searches blocks of query patches.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.geometry import BlockGrid, Box
from engine.select.candidates import Windows
from engine.select.coverage import CoverageScorer, tie_key

log = logging.getLogger(__name__)


class _ShardScorer:
    """Actor body: a :class:`CoverageScorer` over a shard, from the shard's ball rows only."""

    def __init__(self, windows: Windows, ids: np.ndarray, rows: np.ndarray, balls_rows: np.ndarray, seed: int | None = None) -> None:
        self.scorer = CoverageScorer(windows, balls_rows, ids, rows=rows, seed=seed)

    def best(self) -> tuple[int, int] | None:
        return self.scorer.best()

    def update(self, newly: np.ndarray, pick: int) -> None:
        self.scorer.update(newly, pick)

    def size(self) -> int:
        return len(self.scorer.ids)


def candidate_blocks(windows: Windows, parts: int) -> list[np.ndarray]:
    """Candidate ids split into about ``parts`` contiguous blocks of the candidate grid (sorted ids)."""
    shape = windows.shape
    # cut the largest axes until there are enough blocks
    split = [1, 1, 1]
    while int(np.prod(split)) < parts:
        ax = int(np.argmax([s / c for s, c in zip(shape, split, strict=True)]))
        if split[ax] >= shape[ax]:
            break
        split[ax] += 1
    bs = tuple(-(-s // c) for s, c in zip(shape, split, strict=True))
    grid = BlockGrid(Box.from_shape(shape), bs)
    out = []
    for block in grid.blocks():
        axes = [np.arange(a, b) for a, b in zip(block.write.start, block.write.stop, strict=True)]
        mesh = np.meshgrid(*axes, indexing="ij")
        out.append(np.sort(np.ravel_multi_index(tuple(m.ravel() for m in mesh), shape)))
    return out


class RayShards:
    """The candidate set on ``workers`` Ray actors (``blocks_per_worker`` blocks each)."""

    def __init__(self, windows: Windows, balls: np.ndarray, *, workers: int = 2, blocks_per_worker: int = 1, seed: int | None = None) -> None:
        import ray

        self.ray = ray
        self.seed = seed
        actor_cls: Any = ray.remote(num_cpus=1)(_ShardScorer)
        blocks = candidate_blocks(windows, workers * blocks_per_worker)
        groups = [np.sort(np.concatenate(blocks[i::workers])) for i in range(min(workers, len(blocks)))]
        self.actors: list[Any] = []
        for ids in groups:
            rows = np.unique(windows.patches(ids).ravel())
            self.actors.append(actor_cls.remote(windows, ids, rows, balls[rows], seed))
        sizes = ray.get([a.size.remote() for a in self.actors])
        log.info("coverage scoring on %d actors, %s candidates each", len(self.actors), sizes)

    def best(self) -> tuple[int, int] | None:
        results = [r for r in self.ray.get([a.best.remote() for a in self.actors]) if r is not None]
        if not results:
            return None
        return max(results, key=lambda r: (r[0], -int(tie_key(np.array([r[1]]), self.seed)[0])))

    def update(self, newly: np.ndarray, pick: int) -> None:
        ref = self.ray.put(np.asarray(newly))
        self.ray.get([a.update.remote(ref, pick) for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []


class _KnnSearcher:
    def __init__(self, index: Any) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # the actor's one CPU
        self.index = index

    def search(self, rows: np.ndarray, k: int, nprobe: int, include_self: bool) -> np.ndarray:
        return np.asarray(self.index.search(rows, k, nprobe, include_self=include_self))


def distributed_knn(
    x: np.ndarray, k: int, *, workers: int = 2, nlist: int | None = None, nprobe: int = 16, seed: int = 0, include_self: bool = True, block: int = 65536,
    target_recall: float | None = None,
) -> np.ndarray:
    """Approximate kNN balls: the IVF index built once (``nprobe`` tuned to ``target_recall`` on the
    driver, as :func:`engine.select.knn.approx_knn` does), query blocks searched on ``workers`` actors."""
    import ray

    from engine.select.knn import IVFIndex, tune_nprobe

    index = IVFIndex.build(x, nlist, seed=seed)
    if target_recall is not None:
        nprobe = tune_nprobe(index, k, nprobe, target_recall, seed=seed, include_self=include_self)
    ref = ray.put(index)
    actor_cls: Any = ray.remote(num_cpus=1)(_KnnSearcher)
    actors: list[Any] = [actor_cls.remote(ref) for _ in range(workers)]
    n = x.shape[0]
    starts = list(range(0, n, block))
    futures = [actors[i % workers].search.remote(np.arange(s, min(s + block, n)), k, nprobe, include_self) for i, s in enumerate(starts)]
    out = np.concatenate(ray.get(futures), axis=0)
    for a in actors:
        ray.kill(a)
    return out
