"""Progress and run statistics, kept beside the scheduler rather than inside it.

:class:`RunObserver` collects per-block timings and counts, drives a progress bar on the driver
(blocks done / failed / running, voxels per second, ETA) and produces the :class:`RunSummary` that is
printed and saved as JSON beside the output.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.runtime.execute import BatchResult
from engine.runtime.markers import DONE, SKIPPED

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a blockwise run did. ``ok`` is False whenever any block failed."""

    name: str
    backend: str
    total_blocks: int
    done: int = 0
    already_done: int = 0
    skipped: int = 0
    failed: int = 0
    retried: int = 0
    workers_replaced: int = 0
    wall_seconds: float = 0.0
    blocks_per_second: float = 0.0
    voxels: int = 0
    voxels_per_second: float = 0.0
    block_seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    state_dir: str = ""
    #: the run id its done-markers share with its outputs (see engine.runtime.ownership)
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def save(self, path: str | os.PathLike[str]) -> None:
        from engine.storage.safety import write_json_atomic

        write_json_atomic(path, self.to_dict())

    def lines(self) -> list[str]:
        """A human summary, a few lines."""
        t = self.block_seconds
        out = [
            f"{self.name}: {self.done} blocks computed, {self.already_done} already done, {self.skipped} skipped, "
            f"{self.failed} failed of {self.total_blocks} ({self.backend}, {len(self.workers)} worker(s))",
            f"  {self.wall_seconds:.1f} s, {self.blocks_per_second:.1f} blocks/s, {self.voxels_per_second / 1e6:.2f} Mvoxel/s",
        ]
        if t:
            out.append(
                f"  per block: mean {t['mean']:.4f} s, median {t['median']:.4f} s, p95 {t['p95']:.4f} s, max {t['max']:.4f} s"
            )
        if self.retried or self.workers_replaced:
            out.append(f"  {self.retried} block retries, {self.workers_replaced} worker(s) replaced")
        if self.stats.get("storage_retries"):
            out.append(f"  {int(self.stats['storage_retries'])} storage request(s) retried after transient errors (unavailable, timeouts)")
        for f in self.failures[:10]:
            first = (f.get("error") or "").splitlines()[0] if f.get("error") else ""
            out.append(f"  FAILED block {f['id']} after {f['attempts']} attempt(s): {first}")
        if len(self.failures) > 10:
            out.append(f"  … and {len(self.failures) - 10} more failed blocks (see summary.json)")
        if self.state_dir:
            out.append(f"  summary: {Path(self.state_dir) / 'summary.json'}")
        return out


def timing_stats(seconds: np.ndarray) -> dict[str, float]:
    if seconds.size == 0:
        return {}
    q = np.percentile(seconds, [50, 95])
    return {
        "count": float(seconds.size),
        "mean": float(seconds.mean()),
        "median": float(q[0]),
        "p95": float(q[1]),
        "min": float(seconds.min()),
        "max": float(seconds.max()),
        "sum": float(seconds.sum()),
    }


class TimingSample:
    """Per-block seconds of a run in bounded memory: count, sum, min and max exact; the median and
    p95 from a uniform sample of at most ``keep`` blocks (all of them in runs up to that size).

    >>> t = TimingSample(keep=100)
    >>> for k in range(50):
    ...     t.add(np.full(1000, float(k % 10), np.float32))
    >>> s = t.stats(); s["count"], s["mean"], s["max"], len(t.sample)
    (50000.0, 4.5, 9.0, 100)
    """

    def __init__(self, keep: int = 1 << 16, seed: int = 0) -> None:
        self.keep = keep
        self.sample = np.zeros(0, np.float32)
        self.count = 0
        self.total = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self._rng = np.random.default_rng(seed)

    def add(self, seconds: np.ndarray) -> None:
        m = int(seconds.size)
        if not m:
            return
        self.total += float(seconds.sum(dtype=np.float64))
        self.lo, self.hi = min(self.lo, float(seconds.min())), max(self.hi, float(seconds.max()))
        room = max(0, self.keep - self.sample.size)
        if room:
            self.sample = np.concatenate([self.sample, seconds[:room].astype(np.float32)])
        rest = seconds[room:]
        if rest.size:  # reservoir sampling (Algorithm R): the i-th value replaces a kept one with probability keep / i
            slot = self._rng.integers(0, np.arange(self.count + room, self.count + m) + 1)
            hit = slot < self.keep
            self.sample[slot[hit]] = rest[hit]
        self.count += m

    def stats(self) -> dict[str, float]:
        if not self.count:
            return {}
        out = timing_stats(self.sample)
        out.update(count=float(self.count), mean=self.total / self.count, min=self.lo, max=self.hi, sum=self.total)
        return out


class RunObserver:
    """Counts, timings and the progress bar of one run."""

    def __init__(self, summary: RunSummary, todo: int, *, progress: bool = True) -> None:
        self.summary = summary
        self.todo = todo
        self._t0 = time.monotonic()
        self._times = TimingSample()  # bounded: a run of 10^7 blocks keeps no array per block
        self._bar: Any = None
        if progress and todo:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=todo, desc=summary.name, unit="block", dynamic_ncols=True, smoothing=0.1)

    def batch(self, result: BatchResult) -> None:
        s = self.summary
        done = result.status == DONE
        s.done += int(done.sum())
        s.skipped += int((result.status == SKIPPED).sum())
        s.voxels += result.voxels
        self._times.add(result.seconds[done])
        for key, value in result.stats.items():
            s.stats[key] = s.stats.get(key, 0.0) + value
        finished = int(done.sum() + (result.status == SKIPPED).sum())
        if self._bar is not None and finished:
            self._bar.update(finished)

    def failed(self, n: int = 1) -> None:
        self.summary.failed += n
        if self._bar is not None:
            self._bar.update(n)

    def retried(self, n: int = 1) -> None:
        self.summary.retried += n

    def running(self, n: int) -> None:
        if self._bar is not None:
            s = self.summary
            elapsed = max(time.monotonic() - self._t0, 1e-9)
            self._bar.set_postfix(
                done=s.done, failed=s.failed, skipped=s.skipped, running=n, vox_s=f"{s.voxels / elapsed:.3g}", refresh=False
            )

    def finish(self) -> RunSummary:
        if self._bar is not None:
            self.running(0)
            self._bar.close()
        s = self.summary
        s.wall_seconds = time.monotonic() - self._t0
        s.block_seconds = self._times.stats()
        s.blocks_per_second = (s.done + s.skipped) / s.wall_seconds if s.wall_seconds > 0 else 0.0
        s.voxels_per_second = s.voxels / s.wall_seconds if s.wall_seconds > 0 else 0.0
        return s
