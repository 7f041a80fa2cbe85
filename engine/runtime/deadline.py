"""Per-batch deadlines: a block that hangs does not hang the run.

The scheduler gives every batch a deadline once it starts running on its worker (a worker runs its
batches in order, so a batch starts when the one before it returned). Past it, the worker is killed and
replaced and the batch's blocks are retried like the blocks of a worker that died, then failed.

By default the deadline follows the blocks of the run: ``factor`` times the slowest block seen so far,
times the blocks in the batch, never below ``floor`` seconds; before any block has returned it is
``first`` seconds (model loading and cold caches make first blocks slow). ``fixed`` gives every block
the same number of seconds instead. The environment can set these for any command:
``CONNECTILE_BLOCK_TIMEOUT`` (fixed seconds per block), ``CONNECTILE_BLOCK_TIMEOUT_FLOOR``.

Only the Ray backend can stop a block (it kills the worker process); the serial backend runs blocks
in the driver, where nothing can interrupt them.

>>> d = Deadline(floor=2.0, factor=10.0, first=60.0)
>>> d.seconds(4, None), d.seconds(4, 0.01), d.seconds(4, 1.0)
(60.0, 2.0, 40.0)
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

from engine.errors import ConfigError


@dataclass(frozen=True)
class Deadline:
    """How long a batch may run (see the module docstring)."""

    floor: float = 120.0
    factor: float = 20.0
    first: float = 1800.0
    fixed: float | None = None

    def __post_init__(self) -> None:
        for name in ("floor", "factor", "first"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"the block deadline's {name} must be > 0, got {getattr(self, name)}")
        if self.fixed is not None and not self.fixed > 0:
            raise ConfigError(f"a block timeout must be > 0 seconds, got {self.fixed}", "e.g. CONNECTILE_BLOCK_TIMEOUT=600")

    @classmethod
    def from_env(cls) -> Deadline:
        def number(key: str) -> float | None:
            text = os.environ.get(key, "").strip()
            if not text:
                return None
            try:
                return float(text)
            except ValueError as err:
                raise ConfigError(f"{key}={text!r} is not a number of seconds", f"e.g. {key}=600") from err

        floor, fixed = number("CONNECTILE_BLOCK_TIMEOUT_FLOOR"), number("CONNECTILE_BLOCK_TIMEOUT")
        return cls(floor=floor if floor is not None else cls.floor, fixed=fixed)

    def seconds(self, blocks: int, slowest_block: float | None) -> float:
        """The deadline of a batch of ``blocks`` blocks, given the slowest block seen (None: none yet)."""
        if self.fixed is not None:
            return self.fixed * blocks
        if slowest_block is None:
            return self.first
        return max(self.floor, self.factor * slowest_block * blocks)


class BatchClock:
    """When each worker's running batch started, and which ones are past their deadline."""

    def __init__(self, deadline: Deadline, workers: int) -> None:
        self.deadline = deadline
        self.queues: list[deque[tuple[list[int], float]]] = [deque() for _ in range(workers)]
        self.last_return = [0.0] * workers
        self.slowest: float | None = None

    def submitted(self, worker: int, ids: list[int]) -> None:
        self.queues[worker].append((ids, time.monotonic()))

    def returned(self, worker: int, ids: list[int], block_seconds: float | None = None) -> None:
        q = self.queues[worker]
        for i, (queued, _) in enumerate(q):
            if queued is ids:
                del q[i]
                break
        self.last_return[worker] = time.monotonic()
        if block_seconds is not None:
            self.slowest = block_seconds if self.slowest is None else max(self.slowest, block_seconds)

    def forget(self, worker: int) -> None:
        """The worker was replaced: nothing of it is running any more."""
        self.queues[worker].clear()
        self.last_return[worker] = time.monotonic()

    def overdue(self) -> list[tuple[int, float]]:
        """(worker, deadline in seconds) of each worker whose running batch is past its deadline."""
        now = time.monotonic()
        out = []
        for w, q in enumerate(self.queues):
            if q:
                ids, submitted = q[0]
                limit = self.deadline.seconds(len(ids), self.slowest)
                if now - max(submitted, self.last_return[w]) > limit:
                    out.append((w, limit))
        return out


__all__ = ["BatchClock", "Deadline"]
