"""The options of a blockwise run, declared once (``**options: Unpack[...]`` in every function that
takes them, so that callers pass plain keywords and mypy checks them).

- :class:`RunOptions`: where and how the blocks run (backend, workers, cluster, retries, overwrite, progress).
- :class:`RuntimeOptions`: those and the state folder: what every ``*_volume`` driver takes.
- :class:`Pacing`: how :func:`engine.runtime.run_blockwise` sizes and paces its calls.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from engine.runtime.backends import Backend

BackendName = Literal["serial", "ray"]


class RunOptions(TypedDict, total=False):
    """Where and how the blocks run (every key optional; the function taking them gives the defaults).

    ``backend``: ``serial``, ``ray`` or a started :class:`~engine.runtime.backends.Backend`;
    ``workers``/``address``: the Ray workers and cluster; ``max_retries``: attempts of a failing block
    after the first (default 2); ``overwrite``: start again instead of resuming; ``progress``: a
    progress bar (default on).
    """

    backend: BackendName | Backend
    workers: int | None
    address: str | None
    max_retries: int
    overwrite: bool
    progress: bool


class RuntimeOptions(RunOptions, total=False):
    """The runtime tail of every ``*_volume`` driver: :class:`RunOptions` and ``state_dir``, the folder
    of the done-markers (default: beside the output, see :func:`engine.runtime.default_state_dir`)."""

    state_dir: str | os.PathLike[str] | None


def pop_runtime(settings: dict[str, Any], keep: Collection[str] = ()) -> RuntimeOptions:
    """Take the runtime options out of a function's mixed keywords ``settings`` (but those in ``keep``).

    >>> kw = {"window": (4, 8, 8), "backend": "serial", "overwrite": True}
    >>> pop_runtime(kw, keep=("overwrite",)), kw
    ({'backend': 'serial'}, {'window': (4, 8, 8), 'overwrite': True})
    """
    keys = set(RuntimeOptions.__optional_keys__) - set(keep)
    return {k: settings.pop(k) for k in list(settings) if k in keys}  # type: ignore[return-value]


class Pacing(TypedDict, total=False):
    """How the dispatch loop paces a run (see :mod:`engine.runtime.scheduler`): ``window`` batches in
    flight per worker (default 2), batches sized to last about ``target_call_seconds`` (0.05) and of
    at most ``max_batch`` blocks (4096), at most ``max_worker_restarts`` dead workers replaced (default
    twice the workers plus two)."""

    window: int
    target_call_seconds: float
    max_batch: int
    max_worker_restarts: int | None


class BlockwiseOptions(RunOptions, Pacing, total=False):
    """What :func:`engine.runtime.run_blockwise` takes beside its operation, grid and state folder."""


__all__ = ["BackendName", "BlockwiseOptions", "Pacing", "RunOptions", "RuntimeOptions", "pop_runtime"]
