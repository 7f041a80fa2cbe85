"""Greedy maximum coverage over candidate sub-volumes that do not share voxels.

Repeat ``budget`` times: among the candidates that share no voxel with a pick so far, take the one
whose kNN balls add the most not-yet-covered patches (among equals the lowest
:func:`~engine.select.coverage.tie_key`: the lowest id, or a seeded order); that is the
window maximising the score of ``chosen + window`` (the paper's criterion). The shards keep their
gains up to date (see :mod:`engine.select.coverage`); the driver only keeps the best.

>>> from engine.select.patches import PatchGrid
>>> from engine.select.candidates import Windows
>>> w = Windows(PatchGrid((1, 6, 6), (1, 2, 2), (1, 2, 2)), (1, 1, 1))   # 3x3 patches, 1 per window
>>> balls = np.array([[i, 4 if i != 4 else 0] for i in range(9)])       # each covers itself and the centre
>>> r = greedy_select(w, balls, budget=2)          # all gain 2 at first: the tie goes to the lowest id
>>> r.picks, r.gains, r.coverage
([0, 1], [2, 1], [2, 3])
>>> greedy_select(w, balls, budget=2, seed=0).picks  # or to a seeded random order
[3, 5]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.geometry import Box
from engine.select.candidates import Windows
from engine.select.coverage import CoverageScorer

log = logging.getLogger(__name__)


class Shards(Protocol):
    """The candidate set, possibly split over processes."""

    def best(self) -> tuple[int, int] | None: ...

    def update(self, newly: np.ndarray, pick: int) -> None: ...


class LocalShards:
    """All candidates in this process (one :class:`CoverageScorer`)."""

    def __init__(
        self, windows: Windows, balls: np.ndarray, *, ids: np.ndarray | None = None, rows: np.ndarray | None = None, progress: bool = False,
        seed: int | None = None,
    ) -> None:
        self.scorer = CoverageScorer(windows, balls, ids, rows=rows, progress=progress, seed=seed)

    def best(self) -> tuple[int, int] | None:
        return self.scorer.best()

    def update(self, newly: np.ndarray, pick: int) -> None:
        self.scorer.update(newly, pick)


@dataclass
class Selection:
    """Picked sub-volumes and how much each added to the coverage."""

    method: str
    picks: list[int]  # candidate ids
    boxes: list[Box]
    gains: list[int]  # newly covered patches per pick
    coverage: list[int]  # covered patches after each pick
    total: int  # patches on the grid
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "boxes": [b.to_dict() for b in self.boxes],
            "candidates": self.picks,
            "gains": self.gains,
            "coverage": self.coverage,
            "coverage_fraction": [c / self.total for c in self.coverage],
            "patches": self.total,
            **self.extra,
        }


def cover_of(windows: Windows, balls: np.ndarray, picks: Sequence[int]) -> np.ndarray:
    """Boolean mask of the patches covered by the balls of the picked windows' patches."""
    covered = np.zeros(windows.grid.size, dtype=bool)
    if len(picks):
        covered[balls[windows.patches(np.asarray(picks)).ravel()].ravel()] = True
    return covered


def coverage_curve(windows: Windows, balls: np.ndarray, picks: Sequence[int]) -> tuple[list[int], list[int]]:
    """(gains, cumulative coverage) of ``picks`` taken in order -- scores any method's picks."""
    covered = np.zeros(windows.grid.size, dtype=bool)
    gains, curve = [], []
    for p in picks:
        newly = np.unique(balls[windows.patches([p])[0]].ravel())
        newly = newly[~covered[newly]]
        covered[newly] = True
        gains.append(len(newly))
        curve.append(int(covered.sum()))
    return gains, curve


def _balls_of(balls: np.ndarray, rows: np.ndarray | None, patches: np.ndarray) -> np.ndarray:
    if rows is None:
        return balls[patches]
    pos = np.searchsorted(rows, patches)
    if (pos >= len(rows)).any() or (rows[np.minimum(pos, len(rows) - 1)] != patches).any():
        raise ValueError("a candidate holds patches whose balls were not given")
    return balls[pos]


def greedy_select(
    windows: Windows,
    balls: np.ndarray,
    budget: int,
    *,
    ids: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    shards: Shards | None = None,
    progress: bool = False,
    seed: int | None = None,
) -> Selection:
    """Pick up to ``budget`` non-overlapping windows by greedy maximum coverage of the kNN balls.

    ``balls`` is the ``(N, k)`` array of :mod:`engine.select.knn` (or the balls of the sorted patch ids
    ``rows`` only); ``ids`` restricts the candidates. ``shards`` defaults to those candidates in this
    process; :class:`engine.select.distributed.RayShards` spreads them over actors and gives the same
    picks. ``seed`` orders ties between equal gains at random (None: the lowest id; ``shards`` given: theirs).
    """
    if budget < 1:
        from engine.errors import ConfigError

        raise ConfigError(f"budget must be at least 1 sub-volume, got {budget}")
    shards = shards if shards is not None else LocalShards(windows, balls, ids=ids, rows=rows, progress=progress, seed=seed)
    covered = np.zeros(windows.grid.size, dtype=bool)
    picks: list[int] = []
    gains: list[int] = []
    curve: list[int] = []
    for step in range(budget):
        best = shards.best()
        if best is None:
            log.warning("only %d sub-volumes fit without overlapping; asked for %d", step, budget)
            break
        gain, pick = best
        newly = np.unique(_balls_of(balls, rows, windows.patches([pick])[0]).ravel())
        newly = newly[~covered[newly]]
        if len(newly) != gain:
            raise RuntimeError(f"coverage bookkeeping is off: candidate {pick} gains {len(newly)}, scored {gain}")
        covered[newly] = True
        picks.append(pick)
        gains.append(gain)
        curve.append(int(covered.sum()))
        log.info("pick %d: candidate %d %s adds %d patches (covered %d of %d)", step + 1, pick, windows.box(pick), gain, curve[-1], covered.size)
        shards.update(newly, pick)
    return Selection("coverage", picks, [windows.box(p) for p in picks], gains, curve, windows.grid.size)
