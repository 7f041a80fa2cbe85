"""Time budgets of training runs: stop after so many seconds of CPU time (this process, all its threads)
or of wall time. Light on purpose (no torch): the configs of :mod:`engine.active` use :class:`TimeBudget`.

A stopped run has written a checkpoint at the step it reached (where it has an output folder); running
it again continues from there.

>>> clock = TimeBudget(seconds=3600, clock="wall").start()
>>> clock.spent()
False
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from engine.config import Config
from engine.errors import ConnectileError


class TimeBudget(Config):
    """How long a training run may take before it stops with a checkpoint."""

    seconds: float = Field(gt=0, description="stop once this many seconds are used")
    clock: Literal["cpu", "wall"] = Field(default="cpu", description="cpu: CPU time of this process (all threads); wall: elapsed time")

    def start(self) -> Clock:
        return Clock(self)


class Clock:
    """A started budget; one clock can be shared by the stages of one run (pretraining, then training)."""

    def __init__(self, budget: TimeBudget) -> None:
        self.budget = budget
        self._read = time.process_time if budget.clock == "cpu" else time.perf_counter
        self._start = self._read()

    def used(self) -> float:
        return self._read() - self._start

    def spent(self) -> bool:
        return self.used() >= self.budget.seconds


def start(budget: TimeBudget | Clock | None) -> Clock | None:
    """A clock for ``budget`` (a clock already running is shared, not restarted)."""
    if budget is None or isinstance(budget, Clock):
        return budget
    return budget.start()


class BudgetSpent(ConnectileError):
    """A training stage stopped at its time budget before its last step (its checkpoint is written)."""
