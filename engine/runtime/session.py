"""The session that runs the passes of one multi-pass operation.

A driver declares ``**runtime: Unpack[RuntimeOptions]`` (:mod:`engine.runtime.options`) instead of
repeating backend, workers, address, retries, overwrite, progress and state folder, and runs its
passes in a :class:`Session`:

    with Session(runtime, backend="serial") as s:
        a = s.run(op_a, grid, "label-local", state_dir=state / "local", key="local")
        ...

The session starts one set of Ray workers for every pass (``backend='ray'``) and ends them once,
and keeps each pass's wall time and summary. :class:`CompletionRecord` is a multi-pass job's
``result.json``: the result of a finished run, found again only while its parameters are the same and
its outputs still carry the run's id.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from typing_extensions import Unpack

from engine.errors import ResumeMismatch
from engine.geometry import BlockGrid
from engine.runtime.backends import Backend, RayBackend
from engine.runtime.op import BlockOp
from engine.runtime.options import BackendName, Pacing, RuntimeOptions
from engine.runtime.ownership import none_owned, outputs_intact
from engine.runtime.progress import RunSummary
from engine.runtime.scheduler import default_state_dir, run_blockwise
from engine.storage.safety import write_json_atomic

log = logging.getLogger(__name__)


class Session:
    """Runs the passes of one operation on one backend; ``backend`` is the driver's default."""

    def __init__(self, options: RuntimeOptions, *, backend: BackendName | Backend = "serial", share_workers: bool = True) -> None:
        self.backend: BackendName | Backend = options.get("backend", backend)
        self.workers = options.get("workers")
        self.address = options.get("address")
        self.max_retries = options.get("max_retries", 2)
        self.overwrite = options.get("overwrite", False)
        self.progress = options.get("progress", True)
        self.state_dir = options.get("state_dir")
        self.share_workers = share_workers
        self.seconds: dict[str, float] = {}
        self.runs: list[RunSummary] = []
        self._own: RayBackend | None = None

    @property
    def owns_workers(self) -> bool:
        """Whether this session started Ray workers of its own (kept across its passes)."""
        return self._own is not None

    def state(self, output_url: str, name: str) -> Path:
        """The state folder: the one given, else ``default_state_dir(output_url, name)``."""
        return Path(self.state_dir) if self.state_dir is not None else default_state_dir(output_url, name)

    def __enter__(self) -> Session:
        if self.backend == "ray" and self.share_workers:  # one set of workers for every pass
            self._own = RayBackend(self.workers, address=self.address, keep_workers=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.shutdown()
            self._own = None

    def run(self, op: BlockOp, grid: BlockGrid, name: str, *, state_dir: str | os.PathLike[str], key: str | None = None,
            serial: bool = False, **pacing: Unpack[Pacing]) -> RunSummary:
        """One blockwise pass (``serial``: in this process); its wall time is kept under ``key``."""
        backend: BackendName | Backend = "serial" if serial else self._own if self._own is not None else self.backend
        with self.timed(key or name):
            summary = run_blockwise(
                op, grid, state_dir=state_dir, name=name, backend=backend, workers=self.workers, address=self.address,
                max_retries=self.max_retries, overwrite=self.overwrite, progress=self.progress, **pacing,
            )
        self.runs.append(summary)
        return summary

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Keep the wall time of a step that is not a blockwise pass (or of several passes)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t


class CompletionRecord:
    """The ``result.json`` of a multi-pass job: its parameters, its result and its outputs' run ids."""

    def __init__(self, path: Path, params: dict[str, Any]) -> None:
        self.path = path
        self.params = json.loads(json.dumps(params))  # as it reads back
        #: set by :meth:`finished` when it forgot a record of other parameters of which no output is left: the job's
        #: passes may then forget their done-markers of those parameters too (``Session.overwrite``; outputs are not replaced)
        self.forgotten = False

    def finished(self, overwrite: bool, job: str, mismatch: str, fix: str) -> dict[str, Any] | None:
        """The saved result of a finished run with these parameters whose outputs are intact; None when
        the job is to run (again). A record of other parameters is a :class:`ResumeMismatch`
        (``mismatch``, ``fix``), unless ``overwrite``: the record is then removed. ``job`` names the
        job in the log."""
        if overwrite:
            self.path.unlink(missing_ok=True)
            return None
        if not self.path.exists():
            return None
        saved = json.loads(self.path.read_text())
        if saved.get("params") != self.params:
            outputs = saved.get("outputs")
            if isinstance(outputs, dict) and outputs and all(isinstance(i, str) and none_owned([u], i) for u, i in outputs.items()):
                # no output holds that run any more (deleted, or a fresh bucket at the same address): nothing to protect
                log.warning("%s: %s describes a run with other parameters whose outputs were deleted since: running it", job, self.path)
                self.path.unlink(missing_ok=True)
                self.forgotten = True
                return None
            raise ResumeMismatch(f"{mismatch} ({self.path})", fix)
        if outputs_intact(saved):
            log.info("%s is complete already (%s)", job, self.path)
            return dict(saved["result"])
        log.warning("%s: its outputs were deleted or recreated since %s was written: running it again", job, self.path)
        return None

    def save(self, result: dict[str, Any], outputs: dict[str, str]) -> None:
        write_json_atomic(self.path, {"params": self.params, "result": result, "outputs": outputs})


__all__ = ["CompletionRecord", "Session"]
