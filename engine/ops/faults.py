"""A Gaussian filter with injectable faults, for testing the runtime against real failures.

Faults are steered by files, not by parameters, so a test can change them between two runs of the
*same* operation (same hash, so the second run resumes the first):

- ``fail_blocks``: block ids that fault;
- ``how``: ``raise`` an exception, ``kill`` the worker process with SIGKILL, or ``hang`` (sleep forever);
- ``armed_file``: faults fire only while this file exists (delete it to "fix the bug");
- ``once_dir``: each block faults only once (a file per block remembers it), like a transient error;
- ``sleep``: seconds per block, so a test can interrupt a run midway;
- ``kill_setup_once``: a flag file; the first worker to set the op up (while the file is absent)
  creates it and SIGKILLs itself, as a worker killed while starting.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import ClassVar, Literal

from engine.geometry import Block, BlockGrid
from engine.ops.filters import GaussianFilter


class FaultyGaussian(GaussianFilter):
    """:class:`GaussianFilter` plus the faults described in the module docstring."""

    kind: ClassVar[str] = "faulty-gaussian"
    fail_blocks: list[int] = []
    how: Literal["raise", "kill", "hang"] = "raise"
    armed_file: str | None = None
    once_dir: str | None = None
    sleep: float = 0.0
    fail_setup: bool = False
    kill_setup_once: str | None = None

    def setup(self, grid: BlockGrid | None = None) -> None:
        if self.fail_setup:
            raise RuntimeError("injected setup failure")
        if self.kill_setup_once is not None and not os.path.exists(self.kill_setup_once):
            Path(self.kill_setup_once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().setup(grid)

    def _fault_fires(self, block: Block) -> bool:
        if block.id not in self.fail_blocks:
            return False
        if self.armed_file is not None and not os.path.exists(self.armed_file):
            return False
        if self.once_dir is not None:
            flag = Path(self.once_dir) / f"fired-{block.id}"
            if flag.exists():
                return False
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()
        return True

    def process(self, block: Block) -> dict[str, float] | None:
        if self.sleep:
            time.sleep(self.sleep)
        if self._fault_fires(block):
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            while self.how == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected fault in block {block.id}")
        return super().process(block)
