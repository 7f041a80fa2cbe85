"""The blocks still to dispatch, kept as ranges of ids: the driver's memory does not grow with the grid.

A run over 10^7 blocks (or 5 x 10^8 for a petabyte at 128^3) must not hold one Python int per block:
the ids still to run are kept as ``[start, stop)`` ranges (one range for a fresh run), and ids handed
back (retries, batches of a worker that died) in small deques before and behind them. Only the ids of
the batches taken are ever made into Python ints.

>>> q = PendingBlocks(np.array([[0, 3], [5, 7]]))
>>> len(q), q[0], q.take(4)
(5, 0, [0, 1, 2, 5])
>>> q.appendleft(1); q.append(9); list(q)
[1, 6, 9]
>>> todo_ranges(np.array([[0, 2], [4, 5]]), 7).tolist()
[[2, 4], [5, 7]]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Iterator

import numpy as np


def runs(ids: np.ndarray) -> np.ndarray:
    """``[start, stop)`` ranges of consecutive values of sorted, distinct ``ids`` (shape (k, 2))."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = ids[np.concatenate(([0], breaks))]
    stops = ids[np.concatenate((breaks - 1, [ids.size - 1]))] + 1
    return np.stack([starts, stops], axis=1)


def merge_runs(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate range arrays of increasing, disjoint ranges, joining ranges that touch."""
    out: list[np.ndarray] = []
    last: np.ndarray | None = None
    for part in parts:
        if part.size == 0:
            continue
        if last is not None and last[-1, 1] == part[0, 0]:
            last[-1, 1] = part[0, 1]
            part = part[1:]
            if part.size == 0:
                continue
        if last is not None:
            out.append(last)
        last = part.copy()
    if last is not None:
        out.append(last)
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def todo_ranges(done: np.ndarray, num_blocks: int) -> np.ndarray:
    """The ranges of ``[0, num_blocks)`` not covered by the sorted, disjoint ranges ``done``."""
    done = done[(done[:, 0] < num_blocks)] if done.size else np.zeros((0, 2), dtype=np.int64)
    edges = np.concatenate(([0], np.minimum(done, num_blocks).ravel(), [num_blocks])).reshape(-1, 2)
    return edges[edges[:, 1] > edges[:, 0]].astype(np.int64)


class PendingBlocks:
    """A double-ended queue of block ids over ranges (the calls the dispatch loop uses of a deque)."""

    def __init__(self, ranges: np.ndarray) -> None:
        self._ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        self._r = 0  # index of the current range
        self._pos = int(self._ranges[0, 0]) if len(self._ranges) else 0  # next id in it
        self._in_ranges = int((self._ranges[:, 1] - self._ranges[:, 0]).sum()) if len(self._ranges) else 0
        self._front: deque[int] = deque()
        self._back: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._front) + self._in_ranges + len(self._back)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, k: int) -> int:
        if k != 0:
            raise IndexError("only the first pending block can be looked at")
        if self._front:
            return self._front[0]
        if self._in_ranges:
            return self._pos
        if self._back:
            return self._back[0]
        raise IndexError("no pending blocks")

    def __iter__(self) -> Iterator[int]:
        yield from self._front
        for r in range(self._r, len(self._ranges)):
            start = self._pos if r == self._r else int(self._ranges[r, 0])
            yield from range(start, int(self._ranges[r, 1]))
        yield from self._back

    def _advance(self, n: int) -> list[int]:
        """Up to ``n`` ids from the ranges, in order."""
        out: list[int] = []
        while n > 0 and self._in_ranges:
            stop = int(self._ranges[self._r, 1])
            k = min(n, stop - self._pos)
            out += range(self._pos, self._pos + k)
            self._pos += k
            self._in_ranges -= k
            n -= k
            if self._pos >= stop and self._r + 1 < len(self._ranges):
                self._r += 1
                self._pos = int(self._ranges[self._r, 0])
        return out

    def popleft(self) -> int:
        if self._front:
            return self._front.popleft()
        if self._in_ranges:
            return self._advance(1)[0]
        return self._back.popleft()

    def take(self, n: int, stop_at: Container[int] = ()) -> list[int]:
        """Up to ``n`` ids from the front, ending before the first id in ``stop_at`` (unless it is the
        first: then that id alone)."""
        if not stop_at and not self._front and self._in_ranges >= n:
            return self._advance(n)  # the common case: a slice of a range
        ids: list[int] = []
        while self and len(ids) < n:
            if self[0] in stop_at:
                if not ids:
                    ids.append(self.popleft())
                break
            ids.append(self.popleft())
        return ids

    def append(self, bid: int) -> None:
        self._back.append(bid)

    def appendleft(self, bid: int) -> None:
        self._front.appendleft(bid)

    def extendleft(self, ids: Iterable[int]) -> None:
        self._front.extendleft(ids)

    def clear(self) -> None:
        self._front.clear()
        self._back.clear()
        self._ranges = np.zeros((0, 2), dtype=np.int64)
        self._r = self._pos = self._in_ranges = 0


__all__ = ["PendingBlocks", "merge_runs", "runs", "todo_ranges"]
