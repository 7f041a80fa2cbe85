"""The answer store of a review round: one SQLite file per round, every change committed at once.

A run directory holds one ``rounds/round-NN/answers.sqlite`` per round of query suggestion. The review
page writes a person's True/False answers here and the next round reads them; an oracle (ground truth)
writes the same table with ``source="oracle"``. Tables (the run-directory contract)::

    answers(roi_id INTEGER PRIMARY KEY, accepted INTEGER NOT NULL CHECK (accepted IN (0,1)),
            updated_at REAL NOT NULL, source TEXT NOT NULL)          -- 'oracle' or 'person'
    history(seq INTEGER PRIMARY KEY AUTOINCREMENT, roi_id INTEGER, previous INTEGER NULL,
            accepted INTEGER, at REAL)                               -- for undo
    meta(key TEXT PRIMARY KEY, value TEXT)                           -- 'finished' = '1' when done

The database runs in WAL mode with ``synchronous=FULL``: a change that returned is on disk, and a store
reopened after a crash holds every change that returned before it.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "answers.sqlite"
>>> with AnswerStore(path) as store:
...     store.set(3, True)
...     store.set(5, False)
...     store.undo()
...     store.answers()
5
{3: True}
"""

from __future__ import annotations

import logging
import operator
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from engine.errors import ConnectileError

log = logging.getLogger(__name__)

Source = Literal["oracle", "person"]
SOURCES: tuple[str, ...] = ("oracle", "person")
SCHEMA_VERSION = "1"
ROUND_RE = re.compile(r"^round-(\d{2,})$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    roi_id INTEGER PRIMARY KEY,
    accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
    updated_at REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    roi_id INTEGER,
    previous INTEGER NULL,
    accepted INTEGER,
    at REAL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


class AnswerError(ConnectileError):
    """A bad answer (roi id, value, source), a finished round, or an answer file that cannot be used."""


def _roi_id(roi_id: Any) -> int:
    if isinstance(roi_id, bool):
        raise AnswerError(f"roi_id must be a non-negative integer, got the boolean {roi_id!r}")
    try:
        value = operator.index(roi_id)
    except TypeError as err:
        raise AnswerError(f"roi_id must be a non-negative integer, got {roi_id!r}") from err
    if value < 0:
        raise AnswerError(f"roi_id must be a non-negative integer, got {value}")
    return value


def _accepted(accepted: Any) -> int:
    if isinstance(accepted, str | bytes | float) or accepted not in (0, 1):
        raise AnswerError(f"accepted must be True or False, got {accepted!r}")
    return int(bool(accepted))


class AnswerStore:
    """True/False answers of one round, with undo history and a finished flag.

    Thread-safe (one connection behind a lock), so one store can serve a threaded HTTP server. Every
    method commits before it returns. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise AnswerError(f"answer store {self.path} is a directory", "give the path of answers.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as err:
            raise AnswerError(
                f"cannot open the answer store {self.path}: {err}",
                "check the file is an answers.sqlite written by connectile, or move it away",
            ) from err
        log.debug("opened answer store %s", self.path)

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> AnswerStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AnswerStore({str(self.path)!r})"

    # -- internals -------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AnswerError(f"answer store {self.path} is closed", "open a new AnswerStore")
        return self._db

    def _finished(self, db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT value FROM meta WHERE key = 'finished'").fetchone()
        return row is not None and row[0] == "1"

    def _check_open_round(self, db: sqlite3.Connection) -> None:
        if self._finished(db):
            raise AnswerError(
                f"the round of {self.path} is finished and its answers may already be used",
                "call reopen() first to change them",
            )

    # -- API -------------------------------------------------------------------------------------
    def set(self, roi_id: int, accepted: bool, source: Source = "person") -> None:
        """Record the answer for ``roi_id`` (replacing an earlier one) and push it on the undo history.

        Setting the value an ROI already has changes nothing but its source and adds no undo step.
        """
        rid, value = _roi_id(roi_id), _accepted(accepted)
        if source not in SOURCES:
            raise AnswerError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        now = time.time()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                self._check_open_round(db)
                row = db.execute("SELECT accepted FROM answers WHERE roi_id = ?", (rid,)).fetchone()
                previous = None if row is None else int(row[0])
                db.execute(
                    "INSERT INTO answers(roi_id, accepted, updated_at, source) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(roi_id) DO UPDATE SET accepted = excluded.accepted, "
                    "updated_at = excluded.updated_at, source = excluded.source",
                    (rid, value, now, source),
                )
                if previous != value:
                    db.execute(
                        "INSERT INTO history(roi_id, previous, accepted, at) VALUES (?, ?, ?, ?)",
                        (rid, previous, value, now),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def undo(self) -> int | None:
        """Take back the last change; returns the roi id it touched, or None when there is nothing to undo."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                self._check_open_round(db)
                row = db.execute("SELECT seq, roi_id, previous FROM history ORDER BY seq DESC LIMIT 1").fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                seq, rid, previous = int(row[0]), int(row[1]), row[2]
                if previous is None:
                    db.execute("DELETE FROM answers WHERE roi_id = ?", (rid,))
                else:
                    db.execute(
                        "UPDATE answers SET accepted = ?, updated_at = ? WHERE roi_id = ?", (int(previous), time.time(), rid)
                    )
                db.execute("DELETE FROM history WHERE seq = ?", (seq,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return rid

    def answers(self) -> dict[int, bool]:
        """All answers of the round: ``{roi_id: accepted}``."""
        with self._lock:
            rows = self._conn().execute("SELECT roi_id, accepted FROM answers ORDER BY roi_id").fetchall()
        return {int(r): bool(a) for r, a in rows}

    def sources(self) -> dict[int, str]:
        """Who gave each answer: ``{roi_id: 'oracle' | 'person'}``."""
        with self._lock:
            rows = self._conn().execute("SELECT roi_id, source FROM answers ORDER BY roi_id").fetchall()
        return {int(r): str(s) for r, s in rows}

    def can_undo(self) -> bool:
        """Whether :meth:`undo` would change anything."""
        with self._lock:
            return self._conn().execute("SELECT 1 FROM history LIMIT 1").fetchone() is not None

    def finish(self) -> None:
        """Mark the round finished: the next round may read its answers."""
        with self._lock:
            self._conn().execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('finished', '1')")

    def reopen(self) -> None:
        """Clear the finished flag so the answers can be changed again."""
        with self._lock:
            self._conn().execute("DELETE FROM meta WHERE key = 'finished'")

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` was called (and not reopened)."""
        with self._lock:
            return self._finished(self._conn())

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# -- the rounds of a run directory -----------------------------------------------------------------
def round_dirs(run_dir: str | Path) -> list[Path]:
    """``RUN/rounds/round-NN`` directories in round order (``round-01`` first)."""
    rounds = Path(run_dir) / "rounds"
    if not rounds.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in rounds.iterdir() if p.is_dir() and (m := ROUND_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def answers_path(round_dir: str | Path) -> Path:
    """Where the answers of a round live."""
    return Path(round_dir) / "answers.sqlite"


def round_finished(round_dir: str | Path) -> bool:
    """Whether a round's answers are marked finished (False when it has no answer file yet)."""
    path = answers_path(round_dir)
    if not path.is_file():
        return False
    with AnswerStore(path) as store:
        return store.finished


def current_round(run_dir: str | Path) -> Path | None:
    """The highest round whose answers are not finished, else the last round; None without rounds."""
    dirs = round_dirs(run_dir)
    for d in reversed(dirs):
        if not round_finished(d):
            return d
    return dirs[-1] if dirs else None


def reviewed_roi_ids(run_dir: str | Path) -> set[int]:
    """All ROIs of a run that have an answer, over every round (finished or not)."""
    return set(all_answers(run_dir))


def all_answers(run_dir: str | Path) -> dict[int, bool]:
    """Every answer of a run; where an ROI was answered in several rounds the latest round wins."""
    out: dict[int, bool] = {}
    for d in round_dirs(run_dir):
        path = answers_path(d)
        if path.is_file():
            with AnswerStore(path) as store:
                out.update(store.answers())
    return out


# -- a start-over never deletes a person's answers ---------------------------------------------------
def _holds_person_answers(path: Path) -> bool:
    """Whether an answer file holds at least one answer a person gave (an unreadable one counts: it
    may, and only a person can tell)."""
    try:
        with AnswerStore(path) as store:
            return "person" in store.sources().values()
    except AnswerError as err:
        log.warning("%s cannot be read (%s): kept as if it held a person's answers", path, err)
        return True


def set_aside_answers(folder: str | Path) -> Path | None:
    """Before ``folder`` (a run directory, its ``rounds`` folder, one ``round-NN``, or any folder
    holding review rounds) is deleted to start over, move every round in it whose ``answers.sqlite``
    holds a person's answers to ``<folder>.answers-<UTC time>``, at the same path inside it.

    Rounds answered only by an oracle (ground truth, which a rerun gives again) stay, to be deleted
    with the folder. Returns the folder the answers were moved to, or None when no person answered.
    A rename within the same parent folder: nothing is copied, and nothing is lost if it is cut short.
    """
    root = Path(folder)
    if not root.is_dir():
        return None
    rounds = sorted({p.parent for p in root.rglob("answers.sqlite") if p.is_file() and _holds_person_answers(p)})
    rounds = [r for r in rounds if not any(o != r and o in r.parents for o in rounds)]  # outermost only
    if not rounds:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = root.with_name(f"{root.name}.answers-{stamp}")
    n = 1
    while dest.exists():
        dest = root.with_name(f"{root.name}.answers-{stamp}-{n}")
        n += 1
    for r in rounds:
        target = dest / r.relative_to(root)  # the folder itself a round: it moves whole, to dest
        if r != root:
            target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(r, target)
        log.warning("set aside the answers of %s in %s (a start-over keeps what a person answered)", r, target)
    return dest
