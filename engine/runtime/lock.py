"""One driver per output: a lock file in the run's state folder.

``driver.lock`` is held with ``flock`` for as long as the driver runs and names its holder (host, pid,
start time, command). A second driver refuses with one line naming the holder. The kernel drops the
lock when its holder dies (even by SIGKILL), so a lock file left by a dead driver is stale: the next
driver takes it over (and says so). A process that holds the lock of a folder may open runs in folders
below it (the passes of a multi-pass command) without locking again.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with driver_lock(d):
...     with driver_lock(f"{d}/pass-a"):  # nested: the same driver
...         pass
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConnectileError, StorageError

log = logging.getLogger(__name__)

LOCK_FILE = "driver.lock"
_HELD: dict[Path, int] = {}  # folder -> open descriptor, in this process

F = TypeVar("F", bound=Callable[..., Any])


class DriverBusy(ConnectileError):
    """Another driver is running on the same output."""


def _held_above(folder: Path) -> bool:
    return any(folder == held or held in folder.parents for held in _HELD)


def _holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode(errors="replace")
        info = json.loads(text) if text.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (no holder recorded yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')} (since {since}: {info.get('command', '')[:120]})"


def _acquire(folder: Path) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (err.strerror or str(err))
        raise StorageError(f"cannot create the run state folder {folder}: {why}", "choose an output path inside a writable folder") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _holder(fd)
        os.close(fd)
        raise DriverBusy(
            f"another driver is running on this output ({folder}): {_describe(info)}",
            "wait for it to finish, or stop it; a lock whose driver died is taken over by the next run",
        ) from None
    except OSError as err:
        os.close(fd)
        raise StorageError(f"cannot lock {folder / LOCK_FILE}: {err.strerror or err}", "use a file system that supports file locks for the state folder") from err
    old = _holder(fd)
    if old.get("pid") and (old.get("host"), old.get("pid")) != (socket.gethostname(), os.getpid()):
        log.warning("taking over the lock of %s: its driver (%s) is gone", folder, _describe(old))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


@contextlib.contextmanager
def driver_lock(state_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the driver lock of ``state_dir`` (re-entrant below a folder this process holds)."""
    folder = Path(os.path.abspath(state_dir))
    if _held_above(folder):
        yield
        return
    fd = _acquire(folder)
    _HELD[folder] = fd
    try:
        yield
    finally:
        del _HELD[folder]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released: the file stays, naming no holder
        os.close(fd)


def one_driver(name: str) -> Callable[[F], F]:
    """Decorate a multi-pass command ``fn(input, output, ..., state_dir=None)``: it runs holding the
    lock of its state folder (``state_dir``, else :func:`~engine.runtime.scheduler.default_state_dir`
    of ``output`` and ``name``), so its passes and its clean-up belong to one driver."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from engine.runtime.scheduler import default_state_dir

            bound = sig.bind(*args, **kwargs)
            state = bound.arguments.get("state_dir") or default_state_dir(os.fspath(bound.arguments["output"]), name)
            with driver_lock(state):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


__all__ = ["LOCK_FILE", "DriverBusy", "driver_lock", "one_driver"]
