"""Coverage gains of candidate sub-volumes, kept up to date as the greedy search picks.

For a set ``S`` of patches, ``cover(S)`` is the union of the kNN balls of its patches and the score
is ``|cover(S)|``. A candidate window ``c`` with patches ``W_c`` covers ``cover(W_c)``; once the
patches ``U`` are covered, picking ``c`` gains ``|cover(W_c) - U|``, so the score of
``chosen + c`` is ``|U| + gain(c)``.

:class:`CoverageScorer` holds the gains of a shard of the candidates (all of them in one process, or
a block of the candidate grid on a Ray actor):

- initial gains ``|cover(W_c)|`` are the non-zeros per row of the sparse product ``A @ B`` (``A``:
  candidates x patches membership, ``B``: the balls, ``k`` non-zeros per row), computed for blocks
  of candidates so memory stays at one block's product;
- after a pick that newly covers the patches ``D``, every candidate that covers some ``j`` in ``D``
  loses one per such ``j``: the balls restricted to ``D`` name the patches whose ball meets ``D``,
  the grid the windows holding them, and a sparse product of those windows with the restricted
  balls counts the distinct new patches each would have added. Work is proportional to the windows
  near the new patches' holders, not to all candidates.

Memory is ``O(N k + M)``; nothing is ``N x N``.

Ties between equal gains go to the candidate of lowest :func:`tie_key`: the lowest id by default (the
authors' argmax), or with a ``seed`` (selection ``ties: seeded``) a seeded pseudo-random order. Where gains
saturate (small ``k``, a small budget: every window's balls disjoint, so every candidate gains ``k`` per
patch), the lowest id puts every pick in the first sections of the volume (the label-efficiency benchmark
on Lucchi++ picked all 8 boxes of a 0.5% budget in section 0); the seeded order spreads them. It is not
the default: in a small volume a random first pick can leave no room for the next box.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.select.candidates import Windows, containing
from engine.select.knn import ball_matrix

log = logging.getLogger(__name__)

#: Non-zeros of one block's product A @ B held at once (about 9 bytes each).
_BLOCK_NNZ = 16_000_000


def tie_rank(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A pseudo-random rank (uint64) of each candidate id, fixed by ``seed`` (splitmix64 of id + seed):
    the same in every process, so shards and the references break ties alike.

    >>> tie_rank(np.arange(3), seed=1).tolist() == tie_rank(np.arange(3), seed=1).tolist() != tie_rank(np.arange(3), seed=2).tolist()
    True
    """
    x = np.asarray(ids, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def tie_key(ids: np.ndarray, seed: int | None = None) -> np.ndarray:
    """The order (lowest first) in which candidates ``ids`` win ties between equal gains: their id
    (``seed`` None: the authors' argmax), or :func:`tie_rank` with ``seed``."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids.astype(np.uint64) if seed is None else tie_rank(ids, seed)


class CoverageScorer:
    """Gains of the candidates ``ids`` (sorted candidate ids; default: all) of ``windows``.

    ``balls`` holds the balls of the patches ``rows`` (sorted; default: all patches), enough for the
    shard when ``rows`` includes every patch of its windows.
    """

    def __init__(
        self,
        windows: Windows,
        balls: np.ndarray,
        ids: np.ndarray | None = None,
        *,
        rows: np.ndarray | None = None,
        progress: bool = False,
        seed: int | None = None,
    ) -> None:
        self.windows = windows
        self.n = windows.grid.size
        expected = self.n if rows is None else len(rows)
        if balls.shape[0] != expected:
            raise ValueError(f"balls hold {balls.shape[0]} rows but {expected} patches are given")
        self.ids = np.arange(windows.size, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.rank = tie_key(self.ids, seed)
        self.k = int(balls.shape[1])
        self.balls = ball_matrix(balls, self.n, rows=rows)
        indptr = self.balls.indptr  # type: ignore[attr-defined]
        self._entry_rows = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(indptr))
        self._in_shard = np.zeros(windows.size, dtype=bool)
        self._in_shard[self.ids] = True
        self.valid = np.ones(len(self.ids), dtype=bool)
        self.gain = self._initial_gains(progress)

    def _initial_gains(self, progress: bool) -> np.ndarray:
        per_row = max(1, int(np.prod(self.windows.window)) * self.k)
        block = max(1, _BLOCK_NNZ // per_row)
        gain = np.empty(len(self.ids), dtype=np.int64)
        starts = range(0, len(self.ids), block)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="coverage of candidates", unit="block")
        for s in starts:
            a = self.windows.membership(self.ids[s : s + block])
            prod = a @ self.balls  # type: ignore[operator]
            gain[s : s + block] = np.diff(prod.indptr)
        return gain

    def best(self) -> tuple[int, int] | None:
        """``(gain, candidate id)`` of the best valid candidate (lowest :func:`tie_key` among equals), or None."""
        if not self.valid.any():
            return None
        masked = np.where(self.valid, self.gain, -1)
        top = masked.max()
        equal = np.flatnonzero(masked == top)
        i = int(equal[np.argmin(self.rank[equal])])
        return int(top), int(self.ids[i])

    def _local(self, cids: np.ndarray) -> np.ndarray:
        """Positions in this shard of the candidate ids ``cids`` (those that are in it)."""
        pos = np.searchsorted(self.ids, cids)
        pos = np.minimum(pos, len(self.ids) - 1)
        return pos[self.ids[pos] == cids] if len(self.ids) else pos[:0]

    def exclude(self, pick: int) -> None:
        """Rule out every candidate that shares voxels with the candidate ``pick``."""
        sl = self.windows.overlapping(pick)
        grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in sl), indexing="ij")
        cids = np.ravel_multi_index(tuple(g.ravel() for g in grids), self.windows.shape)
        self.valid[self._local(np.sort(cids))] = False

    def losses(self, newly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the newly covered patches, the shard positions whose gain drops and by how much.

        The balls restricted to the new patches (``B_D``: same rows, only columns in ``D``) give the
        holders (patches whose ball meets ``D``); the candidates holding a holder are the affected
        ones, and their loss is the non-zeros per row of ``A_affected @ B_D`` -- distinct new
        patches per candidate, counted by scipy's sparse product without sorting pairs.
        """
        import scipy.sparse as sp

        newly = np.asarray(newly, dtype=np.int64)
        if len(newly) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        in_d = np.zeros(self.n, dtype=bool)
        in_d[newly] = True
        keep = in_d[self.balls.indices]  # type: ignore[attr-defined]
        if not keep.any():
            return np.empty(0, np.int64), np.empty(0, np.int64)
        row_counts = np.bincount(self._entry_rows[keep], minlength=self.n)
        indptr = np.concatenate([[0], np.cumsum(row_counts)])
        b_d = sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), self.balls.indices[keep], indptr), shape=(self.n, self.n))  # type: ignore[attr-defined]
        holders = np.flatnonzero(row_counts)
        _, cids = containing(self.windows, holders)
        affected = np.zeros(self.windows.size, dtype=bool)
        affected[cids] = True
        affected &= self._in_shard
        aff = np.flatnonzero(affected)
        if len(aff) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        prod = self.windows.membership(aff) @ b_d  # type: ignore[operator]
        drop = np.diff(prod.indptr)
        nz = drop > 0
        return np.searchsorted(self.ids, aff[nz]), drop[nz]

    def update(self, newly: np.ndarray, pick: int | None = None) -> None:
        """Account for newly covered patches, then exclude candidates overlapping ``pick``."""
        pos, drop = self.losses(newly)
        self.gain[pos] -= drop
        if pick is not None:
            self.exclude(pick)

    def gains_of(self, cids: np.ndarray) -> np.ndarray:
        """Current gains of candidate ids in this shard."""
        return self.gain[self._local(np.asarray(cids, dtype=np.int64))]
