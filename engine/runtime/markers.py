"""Durable done-markers: which blocks of a run are finished, keyed by block id and a run hash.

One SQLite database per run (``markers.sqlite`` in the run's state folder), written only by the
driver, so workers never contend for it. A block is marked done only after its worker returned, and a
worker returns only after TensorStore confirmed the block's write: a marker never points at data that
is not on disk. In WAL mode with ``synchronous=NORMAL`` a committed marker survives the driver being
killed (SIGKILL); at most the markers of the last flush interval are lost, and those blocks are simply
recomputed (block writes are idempotent).

Markers belong to the outputs they describe: a run id kept in the markers and in each output's
attributes (:mod:`engine.runtime.ownership`); markers whose output was deleted or recreated since are
forgotten, and the blocks computed again.

Storage errors of the markers database are classified (:mod:`engine.storage.errors`): a busy or
flaky database is retried with bounded backoff, a full disk is named (its mount point), a corrupt
database says which file to delete.

The hash covers the grid layout and the operation's parameters. Opening markers made under another hash
raises :class:`~engine.errors.ResumeMismatch` showing what changed, unless ``overwrite`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ResumeMismatch, StorageError
from engine.storage.errors import as_storage_error, classify, retrying

log = logging.getLogger(__name__)

DONE, SKIPPED, FAILED = 1, 2, 3
STATUS_NAMES = {DONE: "done", SKIPPED: "skipped", FAILED: "failed"}
#: a marker row as the driver records it: (id, status, seconds, attempts, worker name, error)
MarkerRow = tuple[int, int, float, int, str, str]


def run_hash(description: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description (sorted keys)."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


_CORRUPT_FIX = "delete that file to recompute every block, or pass --overwrite"
#: A block row's worker: its name from the workers table (stores written before that table hold the name itself)
_WORKER = "COALESCE(w.name, b.worker, '')"


class DoneStore:
    """Markers of one run. Use :meth:`open`; call :meth:`flush` often and :meth:`close` at the end."""

    def __init__(self, path: Path, digest: str, description: dict[str, Any]) -> None:
        self.path = path
        self.digest = digest
        self.description = description
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._pending: list[MarkerRow] = []
        self._workers: dict[str, int] = {}  # worker name -> its number in the workers table
        self._last_flush = time.monotonic()

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], description: dict[str, Any], *, overwrite: bool = False,
             outputs_lost: Callable[[str | None], bool] | None = None) -> DoneStore:
        """Open (or create) the markers of ``state_dir`` for a run described by ``description``. Markers
        of other settings are a :class:`ResumeMismatch` unless ``overwrite``, or unless ``outputs_lost(run_id)``
        says that no output holds their run any more (:func:`engine.runtime.ownership.none_owned`:
        deleted, or a fresh bucket at the same address): they protect nothing then and are forgotten,
        with a warning."""
        folder = Path(state_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the run state folder {folder}: {err.strerror}", "choose a writable output location") from err
        digest = run_hash(description)
        path = folder / "markers.sqlite"
        try:
            store = cls(path, digest, description)
            store._init_schema(overwrite, outputs_lost)
        except sqlite3.Error as err:
            if classify(err) in ("corrupt", "other"):
                raise StorageError(f"the done-markers {path} are unreadable ({err})", _CORRUPT_FIX) from err
            raise as_storage_error(err, str(path), "opening the done-markers") from err
        return store

    def _transaction(self, doing: str, statements: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``statements`` in one transaction; a busy or flaky database is retried (bounded), a
        full disk or a corrupt file fails at once with one line (:mod:`engine.storage.errors`)."""

        def once() -> None:
            c = self._conn
            try:
                c.execute("BEGIN")
                statements(c)
                c.execute("COMMIT")
            except sqlite3.Error:
                if c.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                raise

        retrying(once, str(self.path), doing, errors=(sqlite3.Error,), fix=_CORRUPT_FIX)

    def _init_schema(self, overwrite: bool, outputs_lost: Callable[[str | None], bool] | None = None) -> None:
        c = self._conn
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute(
            "CREATE TABLE IF NOT EXISTS blocks (id INTEGER PRIMARY KEY, status INTEGER NOT NULL, seconds REAL,"
            " attempts INTEGER, worker TEXT, error TEXT)"
        )
        # workers by number: a block's row holds a small integer, the worker's "host:pid" is stored once here
        c.execute("CREATE TABLE IF NOT EXISTS workers (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)")
        # failed blocks only: the summary's failure list without a scan of every block's row
        c.execute(f"CREATE INDEX IF NOT EXISTS blocks_failed ON blocks(id) WHERE status={FAILED}")
        row = c.execute("SELECT value FROM meta WHERE key='hash'").fetchone()
        if row is not None and row[0] != self.digest:
            old_row = c.execute("SELECT value FROM meta WHERE key='description'").fetchone()
            old = json.loads(old_row[0]) if old_row else {}
            changes = _diff(old, json.loads(json.dumps(self.description, default=str)))
            if not overwrite and outputs_lost is not None and outputs_lost(self.run_id):
                log.warning("%s holds a run with other settings whose outputs were deleted since: forgetting it", self.path.parent)
                overwrite = True
            if not overwrite:
                shown = "; ".join(changes[:6]) + (f"; … {len(changes) - 6} more" if len(changes) > 6 else "")
                raise ResumeMismatch(
                    f"{self.path.parent} holds a run with other settings ({shown})",
                    "pass --overwrite to recompute everything with the new settings, or choose another output",
                )
            log.warning("overwriting run %s: %s", self.path.parent, "; ".join(changes))
        if row is None or row[0] != self.digest or overwrite:
            c.execute("BEGIN")
            c.execute("DELETE FROM blocks")
            c.execute("DELETE FROM meta WHERE key='run_id'")  # a new run: its outputs get a new id
            c.execute("INSERT OR REPLACE INTO meta VALUES ('hash', ?)", (self.digest,))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('description', ?)", (json.dumps(self.description, default=str),))
            c.execute("COMMIT")

    # -- the run id: which outputs these markers belong to (see engine.runtime.ownership) ------
    @property
    def run_id(self) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()
        return None if row is None else str(row[0])

    def start_over(self, run_id: str) -> None:
        """Forget every block and belong to a new run ``run_id`` (one transaction)."""
        self._pending.clear()

        def statements(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM blocks")
            c.execute("INSERT OR REPLACE INTO meta VALUES ('run_id', ?)", (run_id,))

        self._transaction("starting over in", statements)

    # -- queries --------------------------------------------------------------------------------
    def ids_with(self, status: int) -> np.ndarray:
        self.flush(force=True)
        rows = self._conn.execute("SELECT id FROM blocks WHERE status=?", (status,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def done_ids(self) -> np.ndarray:
        return self.ids_with(DONE)

    def done_ranges(self, chunk: int = 1 << 15) -> np.ndarray:
        """``[start, stop)`` ranges of the ids marked done, shape (k, 2). The ids are looked at
        ``chunk`` at a time: SQLite counts a chunk's done markers (in C, no row reaches Python), a
        chunk done whole is one range and only the ids of a chunk done in part are read; done ids
        without a gap are one range found by one count. Resuming a finished run of 10^7 blocks never
        holds a Python object per block (memory follows the number of ranges), and takes seconds."""
        from engine.runtime.pending import merge_runs, runs

        self.flush(force=True)
        c = self._conn
        lo, hi, n = c.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM blocks WHERE status={DONE}").fetchone()
        if lo is None:
            return np.zeros((0, 2), dtype=np.int64)
        if n == hi - lo + 1:  # one range (a finished run): one pass over the table, in C
            return np.array([[lo, hi + 1]], dtype=np.int64)

        def parts() -> Iterator[np.ndarray]:
            for a in range(lo - lo % chunk, hi + 1, chunk):
                b = a + chunk
                k = c.execute(f"SELECT COUNT(*) FROM blocks WHERE id >= ? AND id < ? AND status={DONE}", (a, b)).fetchone()[0]
                if k == chunk:
                    yield np.array([[a, b]], dtype=np.int64)
                elif k:
                    rows = c.execute(f"SELECT id FROM blocks WHERE id >= ? AND id < ? AND status={DONE} ORDER BY id", (a, b)).fetchall()
                    yield runs(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))

        return merge_runs(parts())

    def count(self, status: int) -> int:
        self.flush(force=True)
        return int(self._conn.execute("SELECT COUNT(*) FROM blocks WHERE status=?", (status,)).fetchone()[0])

    def count_any(self) -> int:
        """Blocks with any marker (done, skipped or failed)."""
        self.flush(force=True)
        return int(self._conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    def failures(self) -> list[dict[str, Any]]:
        self.flush(force=True)
        rows = self._conn.execute(
            f"SELECT b.id, b.attempts, {_WORKER}, b.error FROM blocks b LEFT JOIN workers w ON w.id = b.worker WHERE b.status={FAILED} ORDER BY b.id"
        ).fetchall()
        return [{"id": r[0], "attempts": r[1], "worker": r[2], "error": r[3]} for r in rows]

    def done_by_worker(self) -> dict[str, int]:
        self.flush(force=True)
        rows = self._conn.execute(
            f"SELECT {_WORKER}, COUNT(*) FROM blocks b LEFT JOIN workers w ON w.id = b.worker WHERE b.status={DONE} GROUP BY b.worker"
        ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def _worker_number(self, name: str, c: sqlite3.Connection) -> int | None:
        """The number of worker ``name`` in the ``workers`` table (added on first use); None for no name."""
        if not name:
            return None
        number = self._workers.get(name)
        if number is None:  # kept by flush once its transaction committed (a rolled-back insert is not)
            c.execute("INSERT OR IGNORE INTO workers (name) VALUES (?)", (name,))
            number = int(c.execute("SELECT id FROM workers WHERE name=?", (name,)).fetchone()[0])
        return number

    # -- updates --------------------------------------------------------------------------------
    def record(self, entries: Iterable[MarkerRow]) -> None:
        """Queue (id, status, seconds, attempts, worker, error) rows; :meth:`flush` commits them."""
        self._pending.extend(entries)

    def flush(self, *, force: bool = False, interval: float = 0.2) -> None:
        """Commit queued rows if ``interval`` seconds passed since the last commit (or ``force``)."""
        if not self._pending:
            return
        now = time.monotonic()
        if not force and now - self._last_flush < interval:
            return
        rows, self._pending = self._pending, []
        number: dict[str, int | None] = {}

        def statements(c: sqlite3.Connection) -> None:
            number.update({name: self._worker_number(name, c) for name in {r[4] for r in rows}})
            c.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?, ?)", [(i, st, sec, a, number[w], e) for i, st, sec, a, w, e in rows])

        self._transaction("committing done-markers to", statements)
        self._workers.update({k: v for k, v in number.items() if v is not None})
        self._last_flush = now

    def clear(self, ids: Iterable[int]) -> None:
        keys = [(int(i),) for i in ids]
        self._transaction("clearing done-markers in", lambda c: c.executemany("DELETE FROM blocks WHERE id=?", keys))

    def close(self) -> None:
        self.flush(force=True)
        self._conn.close()
