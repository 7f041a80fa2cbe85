"""The blockwise scheduler: run an operation over every block of a grid, resumably.

>>> import numpy as np
>>> from engine.geometry import Box, BlockGrid
>>> from engine.runtime import BlockOp, run_blockwise
>>> class Count(BlockOp):
...     kind = "doc-count"
...     def process(self, block):
...         return {"voxels": block.write.size}
>>> grid = BlockGrid(Box((0, 0, 0), (10, 10, 10)), write_shape=(4, 4, 4))
>>> import tempfile; state = tempfile.mkdtemp()
>>> s = run_blockwise(Count(), grid, state_dir=state, backend="serial", progress=False)
>>> s.done, s.stats["voxels"]
(27, 1000.0)
>>> run_blockwise(Count(), grid, state_dir=state, backend="serial", progress=False).already_done
27

Rules:
- Blocks are dispatched as batches of ids, at most ``window`` batches in flight per worker. The batch
  size adapts so that a call lasts about ``target_call_seconds`` (cheap blocks travel in large
  batches; expensive ones one at a time), shrinking near the end so workers finish together. In the
  tail (no more blocks than the workers' windows hold) a worker holds one batch at a time, so the last
  blocks go to whichever worker frees first.
- A block that raises is retried up to ``max_retries`` times, unless it raised a
  :class:`~engine.errors.ConnectileError` (bad input or parameters: the same again every time); a block whose worker died counts an
  attempt too (a block that kills its worker every time must not loop forever). Dead workers are
  replaced, at most ``max_worker_restarts`` times per run.
- Done-markers (see :mod:`engine.runtime.markers`) are recorded only from results a worker returned
  after its writes completed. Failed and skipped blocks are recorded as such, never as done.
- The run raises :class:`~engine.errors.BlocksFailed` (after saving the summary) if any block failed.
- The driver holds no object per block: the blocks still to run are id ranges
  (:class:`~engine.runtime.pending.PendingBlocks`), found from the done-markers without reading them
  one by one (:meth:`~engine.runtime.markers.DoneStore.done_ranges`); 10^7 blocks take about 190 MiB
  of driver memory in all and resume in seconds (benchmarks/RESULTS.md, "Driver scale").
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import Unpack

from engine.errors import BlocksFailed, ConfigError
from engine.faults import kill_point
from engine.geometry import BlockGrid
from engine.options import check_keys
from engine.runtime.backends import Backend, Completion, RayBackend, SerialBackend
from engine.runtime.deadline import BatchClock, Deadline
from engine.runtime.execute import BatchResult
from engine.runtime.lock import driver_lock
from engine.runtime.markers import FAILED, SKIPPED, DoneStore, MarkerRow
from engine.runtime.mask import BlockMask
from engine.runtime.op import BlockOp
from engine.runtime.options import BackendName, BlockwiseOptions
from engine.runtime.ownership import claim_outputs, none_owned
from engine.runtime.pending import PendingBlocks, todo_ranges
from engine.runtime.progress import RunObserver, RunSummary

log = logging.getLogger(__name__)



def default_state_dir(output_url: str, name: str) -> Path:
    """Where a run keeps its done-markers and summary: beside a local output
    (``data.zarr/.connectile/raw.<name>``), else under ``~/.cache/connectile/runs``."""
    from engine.runtime.markers import run_hash
    from engine.storage import parse_url

    loc = parse_url(output_url)
    if loc.is_local_file:
        return Path(loc.parent().path) / ".connectile" / f"{loc.name}.{name}"
    return Path.home() / ".cache" / "connectile" / "runs" / f"{loc.name}.{name}.{run_hash({'url': loc.url()})}"


def make_backend(backend: BackendName | Backend, workers: int | None = None, address: str | None = None) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if backend == "serial":
        return SerialBackend()
    if backend == "ray":
        return RayBackend(workers, address=address)
    raise ConfigError(f"unknown backend {backend!r}", "use 'serial' or 'ray'")


def run_blockwise(
    op: BlockOp,
    grid: BlockGrid,
    *,
    state_dir: str | os.PathLike[str],
    mask: BlockMask | None = None,
    name: str | None = None,
    raise_on_failure: bool = True,
    deadline: Deadline | None = None,
    **options: Unpack[BlockwiseOptions],
) -> RunSummary:
    """Run ``op`` over every block of ``grid`` not yet done, and return the run summary.

    ``state_dir`` holds the done-markers, ``summary.json`` and the driver lock of this run.
    ``deadline`` bounds how long a batch may run on a Ray worker (default: :meth:`Deadline.from_env`,
    derived from the observed block times, see :mod:`engine.runtime.deadline`). ``options``: where
    and how the blocks run (:class:`~engine.runtime.options.RunOptions`, backend ``ray`` by default)
    and the pacing of the dispatch (:class:`~engine.runtime.options.Pacing`).
    """
    max_retries = options.get("max_retries", 2)
    check_keys(options, BlockwiseOptions, "run_blockwise")
    if max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
    name = name or op.kind or type(op).__name__
    deadline = deadline or Deadline.from_env()
    be = make_backend(options.get("backend", "ray"), options.get("workers"), options.get("address"))
    if be.name == "ray" and (op.process_local or _uses_memory(op)):
        raise ConfigError(
            f"operation {name!r} uses memory:// volumes, which Ray workers in other processes cannot see",
            "use backend='serial' or file/cloud volumes",
        )
    description = {"layout": grid.layout(), "op": op.params()}
    with driver_lock(state_dir):  # one driver per output: a second one refuses, naming this one
        markers = DoneStore.open(state_dir, description, overwrite=options.get("overwrite", False), outputs_lost=lambda run: none_owned(op.outputs(), run))
        try:
            op.prepare(grid)
            run_id = claim_outputs(markers, op.outputs())
            todo = PendingBlocks(todo_ranges(markers.done_ranges(), grid.num_blocks))  # ranges: no object per block
            summary = RunSummary(name, be.name, grid.num_blocks, already_done=grid.num_blocks - len(todo), state_dir=str(state_dir), run_id=run_id)
            log.info("%s: %d blocks, %d already done, %d to run", name, grid.num_blocks, summary.already_done, len(todo))
            observer = RunObserver(summary, len(todo), progress=options.get("progress", True))
            if todo:
                be.start(op, grid, mask)
                try:
                    _Dispatcher(be, markers, observer, todo, grid, _Pacing.of(options, be.num_workers, deadline)).run()
                    summary.workers = _worker_counts(be, markers)
                finally:
                    be.stop()
            markers.flush(force=True)
            summary = observer.finish()
            summary.failures = markers.failures()
            summary.failed = len(summary.failures)
        finally:
            markers.close()
        summary.save(Path(state_dir) / "summary.json")
    for line in summary.lines():
        log.info("%s", line)
    if raise_on_failure and not summary.ok:
        first = summary.failures[0]
        msg = (first.get("error") or "").splitlines()[0]
        raise BlocksFailed(
            f"{name}: {summary.failed} of {summary.total_blocks} blocks failed (first: {msg})",
            f"see {Path(state_dir) / 'summary.json'}; fix the cause and run again to redo only those blocks",
        )
    return summary


def _uses_memory(op: BlockOp) -> bool:
    return any(isinstance(v, str) and v.startswith("memory://") for v in op.model_dump().values())


def _worker_counts(be: Backend, markers: DoneStore) -> list[dict[str, object]]:
    markers.flush(force=True)
    counts = markers.done_by_worker()
    return [{**w, "blocks": int(counts.get(str(w.get("name")), 0))} for w in be.workers()]


@dataclass(frozen=True)
class _Pacing:
    """The limits of one run's dispatch loop (see :class:`~engine.runtime.options.Pacing`)."""

    max_retries: int
    max_restarts: int
    window: int
    target: float
    max_batch: int
    deadline: Deadline

    @classmethod
    def of(cls, options: BlockwiseOptions, num_workers: int, deadline: Deadline) -> _Pacing:
        restarts = options.get("max_worker_restarts")
        return cls(
            max_retries=options.get("max_retries", 2), max_restarts=restarts if restarts is not None else 2 * num_workers + 2,
            window=options.get("window", 2), target=options.get("target_call_seconds", 0.05), max_batch=options.get("max_batch", 4096),
            deadline=deadline,
        )


class _Dispatcher:
    """The dispatch loop of one run (state kept here so ``run_blockwise`` stays readable)."""

    FAIL_CHUNK = 65536  # marker rows per write when every pending block fails at once

    def __init__(
        self,
        be: Backend,
        markers: DoneStore,
        observer: RunObserver,
        todo: PendingBlocks,
        grid: BlockGrid,
        pacing: _Pacing,
    ) -> None:
        self.be = be
        self.clock = BatchClock(pacing.deadline, be.num_workers)
        self.markers = markers
        self.observer = observer
        self.pending = todo
        self.attempts: dict[int, int] = {}
        self.max_retries = pacing.max_retries
        self.restarts_left = pacing.max_restarts
        self.window = pacing.window
        self.target = pacing.target
        self.max_batch = pacing.max_batch
        self.block_seconds = 0.0  # running estimate of the time per block, for batch sizing
        self.in_flight = [0] * be.num_workers
        self.dead: set[int] = set()
        self.suspects: set[int] = set()  # blocks of a batch whose worker died: dispatched alone
        # A suspect runs alone on its worker: nothing queued before or behind it. When a block kills its
        # worker (os._exit, a segfault), the reply of the call that finished just before may never leave
        # the dying process; with a batch queued ahead of the suspect, that innocent batch would look
        # like the one that was running and be charged the death (seen in CI under load).
        self.isolated: set[int] = set()  # workers running a suspect
        self.running_blocks = 0

    def alive(self) -> list[int]:
        return [w for w in range(self.be.num_workers) if w not in self.dead]

    def batch_size(self) -> int:
        if self.block_seconds <= 0:
            size = 1 if not self.in_flight or max(self.in_flight) == 0 else 8
        else:
            size = int(self.target / self.block_seconds)
        # near the end, split what is left so every worker gets a share
        fair = math.ceil(len(self.pending) / max(1, self.be.num_workers * self.window))
        return max(1, min(size, fair, self.max_batch))

    def next_batch(self) -> list[int]:
        return self.pending.take(self.batch_size(), self.suspects)  # a suspect ends a batch (or is one alone)

    def depth(self, workers: int) -> int:
        """Batches a worker may hold: ``window``, but one in the tail (no more blocks left than the
        workers' windows hold), where a queued batch would tie the last blocks to a worker that may
        finish last (4 expensive blocks on 2 workers went 2 and 2 whatever their costs)."""
        return self.window if len(self.pending) > workers * self.window else 1

    def fill(self) -> None:
        alive = self.alive()
        for w in alive:
            while self.pending and self.in_flight[w] < self.depth(len(alive)) and w not in self.isolated:
                if self.pending[0] in self.suspects and self.in_flight[w] > 0:
                    break  # a suspect waits for a worker with nothing in flight
                ids = self.next_batch()
                self.be.submit(w, ids)
                self.clock.submitted(w, ids)
                self.in_flight[w] += 1
                self.running_blocks += len(ids)
                if ids[0] in self.suspects:
                    self.isolated.add(w)

    def run(self) -> None:
        self.fill()
        while any(self.in_flight):
            self.handle(self.be.wait(timeout=0.5))
            for w, limit in self.clock.overdue():
                why = f"it ran past its deadline of {limit:.1f} s, so its worker was killed"
                lost = self.be.abort(w, why)
                if lost is None:  # this backend cannot stop a block: wait for it
                    self.clock.forget(w)
                    continue
                log.error("worker %d: a batch of %d block(s) ran past its deadline of %.1f s: killing the worker", w, len(lost[0].ids) if lost else 0, limit)
                self.handle(lost)
            self.markers.flush()
            self.observer.running(self.running_blocks)
            self.fill()
        if self.pending and not self.alive():  # batches queued on the last workers came back after they died
            self._fail_pending("no workers left (each died and the replacement budget is spent)")

    def handle(self, completions: list[Completion]) -> None:
        for c in completions:
            self.in_flight[c.worker] -= 1
            self.running_blocks -= len(c.ids)
            if self.in_flight[c.worker] == 0:
                self.isolated.discard(c.worker)
            if c.result is None:
                self.clock.returned(c.worker, c.ids)
                self.worker_lost(c)
            else:
                secs = c.result.seconds
                self.clock.returned(c.worker, c.ids, float(secs.max()) if secs.size else None)
                self.completed(c)

    def completed(self, c: Completion) -> None:
        r = c.result
        assert r is not None
        self.observer.batch(r)
        if r.ids.size:
            per_block = float(r.seconds.sum()) / r.ids.size
            self.block_seconds = per_block if self.block_seconds == 0 else 0.7 * self.block_seconds + 0.3 * per_block
            self.block_seconds = max(self.block_seconds, 1e-7)
        ids, statuses, seconds = r.ids.tolist(), r.status.tolist(), r.seconds.tolist()
        if FAILED in statuses:
            rows = self._rows_with_failures(r, ids, statuses, seconds)
        else:  # the common batch: one marker row per block, made by zip in C (no Python step per block)
            tries = [self.attempts.get(bid, 0) + 1 for bid in ids] if self.attempts else itertools.repeat(1)
            rows = list(zip(ids, statuses, seconds, tries, itertools.repeat(r.worker), itertools.repeat(""), strict=False))
        self.markers.record(rows)
        kill_point(f"{self.observer.summary.name}:batch", lambda: self.markers.flush(force=True))  # tests: a driver killed inside a pass

    def _rows_with_failures(self, r: BatchResult, ids: list[int], statuses: list[int], seconds: list[float]) -> list[MarkerRow]:
        """The marker rows of a batch with failed blocks; a failed block with attempts left is queued again instead."""
        rows: list[MarkerRow] = []
        for bid, status, sec in zip(ids, statuses, seconds, strict=True):
            attempts = self.attempts.get(bid, 0) + 1
            if status == FAILED:
                self.attempts[bid] = attempts
                error = r.errors.get(bid, "")
                if attempts <= self.max_retries and bid not in r.permanent:
                    log.warning("block %d failed (attempt %d of %d), retrying: %s", bid, attempts, self.max_retries + 1, error.splitlines()[0] if error else "")
                    self.observer.retried()
                    self.pending.append(bid)
                else:
                    if bid in r.permanent:  # bad input or parameters: the run's one-line error names it; the traceback is for -vv
                        log.info("block %d failed: %s", bid, error.splitlines()[0] if error else "")
                        log.debug("block %d: %s", bid, error)
                    else:
                        log.error("block %d failed after %d attempts: %s", bid, attempts, error)
                    self.observer.failed()
                    rows.append((bid, FAILED, sec, attempts, r.worker, error))
            else:
                rows.append((bid, int(status), sec, attempts, r.worker, ""))
        return rows

    def worker_lost(self, c: Completion) -> None:
        log.warning("worker %d died with block(s) %s %s: %s", c.worker, c.ids[:8], "running" if c.culprit else "queued", c.lost)
        if not c.culprit:  # only queued behind the batch that died: no attempt used
            self.pending.extendleft(reversed(c.ids))
            return
        if len(c.ids) > 1:
            # Any block of the batch may have killed the worker: run each alone from now on, so that
            # a second death names its block, and charge no attempt yet.
            self.suspects.update(c.ids)
            self.observer.retried(len(c.ids))
            self.pending.extendleft(reversed(c.ids))
        else:
            bid = c.ids[0]
            attempts = self.attempts.get(bid, 0) + 1
            self.attempts[bid] = attempts
            if attempts <= self.max_retries:
                self.observer.retried()
                self.pending.appendleft(bid)
            else:
                self.observer.failed()
                what = f"timed out {attempts} times" if c.timed_out else f"its worker died {attempts} times"
                self.markers.record([(bid, FAILED, 0.0, attempts, "", f"block {bid}: {what}: {c.lost}")])
        if self.restarts_left <= 0:
            log.error("worker %d died and no replacements are left; %d worker(s) remain", c.worker, len(self.alive()) - 1)
            self.dead.add(c.worker)  # with none alive, run() marks every pending block failed once the last batches are back
            return
        self.restarts_left -= 1
        self.observer.summary.workers_replaced += 1
        self.be.replace(c.worker)
        self.clock.forget(c.worker)

    def _fail_pending(self, why: str) -> None:
        """Mark every pending block failed, ``FAIL_CHUNK`` marker rows at a time (10^7 pending blocks would
        be gigabytes as one list of rows)."""
        ids = iter(self.pending)
        while rows := [(bid, FAILED, 0.0, self.attempts.get(bid, 0), "", f"block {bid}: {why}") for bid in itertools.islice(ids, self.FAIL_CHUNK)]:
            self.observer.failed(len(rows))
            self.markers.record(rows)
        self.pending.clear()


__all__ = ["SKIPPED", "BackendName", "default_state_dir", "make_backend", "run_blockwise"]
