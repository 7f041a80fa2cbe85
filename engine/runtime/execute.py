"""Worker side: run one batch of blocks of an operation and report compactly.

A batch carries block ids only (coordinates, never voxel data). The result carries per-block status and
seconds as small numpy arrays, tracebacks of failed blocks, and the op's numbers summed over the batch,
so a batch of a thousand blocks costs one small message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.errors import ConnectileError
from engine.geometry import Block, BlockGrid
from engine.runtime.markers import DONE, FAILED, SKIPPED
from engine.runtime.mask import BlockMask
from engine.runtime.op import BlockOp
from engine.storage.errors import retry_count

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a worker returns for a batch."""

    ids: np.ndarray
    status: np.ndarray
    seconds: np.ndarray
    voxels: int
    errors: dict[int, str] = field(default_factory=dict)
    #: failed blocks whose error is a user error (bad input, bad parameters): retrying cannot help
    permanent: set[int] = field(default_factory=set)
    stats: dict[str, float] = field(default_factory=dict)
    worker: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _record_failure(block_id: int, where: str, err: BaseException, errors: dict[int, str], permanent: set[int], *, with_traceback: bool) -> None:
    """A failed block's error line: a ConnectileError is one line, and permanent unless transient (bad input
    or parameters: retrying cannot help); any other error is retried, its traceback kept when asked."""
    errors[block_id] = f"{where}: {type(err).__name__}: {err}"
    if isinstance(err, ConnectileError):
        if not getattr(err, "transient", False):
            permanent.add(block_id)
    elif with_traceback:
        errors[block_id] += f"\n{traceback.format_exc(limit=8)}"
    log.debug("%s failed: %s", where, err)


class BlockRunner:
    """Holds an operation after its ``setup()`` and runs batches of its blocks."""

    def __init__(self, op: BlockOp, grid: BlockGrid, mask: BlockMask | None = None) -> None:
        self.op = op
        self.grid = grid
        self.mask = mask
        self.name = worker_name()
        op.setup(grid)
        if mask is not None:
            mask.setup()

    def _flush(self, ids: Sequence[int], status: list[int], errors: dict[int, str], permanent: set[int]) -> None:
        """The op's :meth:`~engine.runtime.op.BlockOp.flush`: blocks whose write failed are failed."""
        position = {int(b): k for k, b in enumerate(ids)}
        try:
            failed = self.op.flush()
        except Exception as err:  # noqa: BLE001 - a flush that fails loses the whole batch's writes
            failed = dict.fromkeys(position, err)
        for block_id, failure in failed.items():
            k = position.get(int(block_id))
            if k is None:
                continue
            status[k] = FAILED
            _record_failure(int(block_id), f"block {block_id}", failure, errors, permanent, with_traceback=False)

    def close(self) -> None:
        try:
            self.op.teardown()
        except Exception as err:  # noqa: BLE001 - a failing teardown must not hide the run's outcome
            log.warning("teardown of %s failed: %s", self.op.kind, err)

    def run(self, ids: Sequence[int]) -> BatchResult:
        n = len(ids)
        status = [DONE] * n  # Python lists while the loop runs (a numpy item write costs more), arrays at the end
        seconds = [0.0] * n
        errors: dict[int, str] = {}
        permanent: set[int] = set()
        stats: dict[str, float] = {}
        voxels = 0
        retries_before = retry_count()
        block_of, op_is_empty, process = self.grid.block, self.op.is_empty, self.op.process
        mask_is_empty = self.mask.is_empty if self.mask is not None else None
        clock = time.perf_counter
        for k, bid in enumerate(ids):
            t0 = clock()
            block: Block | None = None
            try:
                block = block_of(int(bid))
                if (mask_is_empty is not None and mask_is_empty(block)) or op_is_empty(block):
                    status[k] = SKIPPED
                else:
                    got = process(block)
                    if got:
                        for key, value in got.items():
                            stats[key] = stats.get(key, 0.0) + float(value)
                    voxels += block.write.size
            except Exception as err:  # noqa: BLE001 - a failing block is reported, not raised
                status[k] = FAILED
                where = f"block {bid}" + (f" {block.index} {block.write}" if block is not None else "")
                _record_failure(int(bid), where, err, errors, permanent, with_traceback=True)
            seconds[k] = clock() - t0
        if n:
            t0 = clock()
            self._flush(ids, status, errors, permanent)  # writes process() left in flight: done only once stored
            seconds[-1] += clock() - t0
        retried = retry_count() - retries_before
        if retried:  # transient storage errors retried in this batch (here and inside TensorStore)
            stats["storage_retries"] = stats.get("storage_retries", 0.0) + retried
        arrays = np.asarray(ids, dtype=np.int64), np.array(status, dtype=np.int8), np.array(seconds, dtype=np.float32)
        return BatchResult(*arrays, voxels, errors, permanent, stats, self.name)
