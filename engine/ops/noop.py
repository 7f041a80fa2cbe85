"""An operation that does nothing (or sleeps): measures the runtime's own dispatch cost."""

from __future__ import annotations

import time
from typing import ClassVar

from engine.geometry import Block
from engine.runtime.op import BlockOp


class NoOp(BlockOp):
    """Touches no data. ``sleep`` seconds per block simulate work; ``sleeps`` gives some blocks (by id)
    another cost (uneven work)."""

    kind: ClassVar[str] = "noop"
    sleep: float = 0.0
    sleeps: dict[int, float] = {}

    def process(self, block: Block) -> dict[str, float] | None:
        seconds = self.sleeps.get(block.id, self.sleep)
        if seconds:
            time.sleep(seconds)
        return None
