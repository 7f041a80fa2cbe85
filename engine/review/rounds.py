"""What the review page shows: the ROI crops of a run and the queries of one round.

Reads the run-directory contract (see :mod:`engine.active.answers`)::

    RUN/rois/rois.zarr/{image,mask}      (N, S, S) uint8 crops, row i = ROI i
    RUN/rois/index.parquet               roi_id, object_id, z, y, x, area, angle, score
    RUN/rounds/round-NN/queries.parquet  roi_id, cluster, subcluster, rank, method
    RUN/rounds/round-NN/answers.sqlite   written through AnswerStore
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.active.answers import AnswerStore, answers_path, current_round, round_dirs
from engine.errors import ConnectileError, StorageError
from engine.geometry import Box

log = logging.getLogger(__name__)

QUERY_COLUMNS = ("roi_id", "cluster", "subcluster", "rank", "method")
INDEX_COLUMNS = ("roi_id", "object_id", "z", "y", "x", "area", "angle", "score")


class ReviewError(ConnectileError):
    """A run directory the review page cannot show (missing or inconsistent ROI store or queries)."""


def _read_parquet(path: Path, columns: tuple[str, ...], what: str) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ReviewError(f"{what} {path} does not exist", "run connectile query first (it writes the ROIs and the queries)")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise ReviewError(f"{what} {path} is not a readable Parquet file ({err})", "write it again with connectile query") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ReviewError(f"{what} {path} lacks the column(s) {', '.join(missing)}", f"it needs {', '.join(columns)}")
    return {c: table.column(c).to_pylist() for c in table.column_names}


class RoiStore:
    """The ROI crops (image and mask) and their index, read lazily, thread-safe."""

    def __init__(self, run_dir: str | Path) -> None:
        from engine.storage import open_volume

        self.run_dir = Path(run_dir)
        root = self.run_dir / "rois"
        try:
            self.image = open_volume(root / "rois.zarr" / "image", dtype="uint8")
            self.mask = open_volume(root / "rois.zarr" / "mask", dtype="uint8")
        except StorageError as err:
            raise ReviewError(f"the ROI crops of {self.run_dir} cannot be read: {err.problem}", "run connectile query first") from err
        if self.image.shape != self.mask.shape or len(self.image.shape) != 3:
            raise ReviewError(
                f"ROI image {self.image.shape} and mask {self.mask.shape} in {root / 'rois.zarr'} differ or are not (N, S, S)",
                "write the ROIs again with connectile query",
            )
        self.count = self.image.shape[0]
        cols = _read_parquet(root / "index.parquet", INDEX_COLUMNS, "ROI index")
        ids = cols["roi_id"]
        if sorted(ids) != list(range(self.count)):
            raise ReviewError(
                f"ROI index {root / 'index.parquet'} lists {len(ids)} roi_id values but rois.zarr holds {self.count} crops",
                "roi_id must run over 0..N-1, one row per crop",
            )
        order = np.argsort(np.asarray(ids))
        self.index: dict[str, list[Any]] = {c: [v[i] for i in order] for c, v in cols.items()}
        self._lock = threading.Lock()

    def info(self, roi_id: int) -> dict[str, Any]:
        """The index row of one ROI as JSON-ready values (NaN becomes None)."""
        out: dict[str, Any] = {}
        for col in INDEX_COLUMNS:
            value = self.index[col][roi_id]
            if isinstance(value, float) and math.isnan(value):
                value = None
            out[col] = value
        return out

    def crop(self, roi_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The (S, S) image and mask of one ROI."""
        if not 0 <= roi_id < self.count:
            raise ReviewError(f"roi_id {roi_id} is not in 0..{self.count - 1}")
        box = Box((roi_id, 0, 0), (roi_id + 1, *self.image.shape[1:]))
        with self._lock:
            return self.image.read(box)[0], self.mask.read(box)[0]


@dataclass
class ReviewRound:
    """One round: its queries in display order (by ``rank``) and its answer store."""

    name: str
    path: Path
    queries: list[dict[str, Any]]
    store: AnswerStore
    roi_ids: frozenset[int] = field(default_factory=frozenset)

    def clusters(self) -> list[int]:
        """Cluster ids in the order of their first query."""
        seen: dict[int, None] = {}
        for q in self.queries:
            seen.setdefault(int(q["cluster"]), None)
        return list(seen)


def load_round(run_dir: str | Path, rois: RoiStore, name: str | None = None) -> ReviewRound:
    """Open round ``name`` (e.g. ``round-02``), or the current round: the highest one not finished."""
    run = Path(run_dir)
    if name is None:
        path = current_round(run)
        if path is None:
            raise ReviewError(f"{run} has no rounds/round-NN folder", "run connectile query first")
    else:
        path = run / "rounds" / name
        if path not in round_dirs(run):
            known = ", ".join(p.name for p in round_dirs(run)) or "none"
            raise ReviewError(f"{run} has no round {name!r} (rounds: {known})", "give one of the rounds listed, e.g. round-01")
    cols = _read_parquet(path / "queries.parquet", QUERY_COLUMNS, "query list")
    n = len(cols["roi_id"])
    rows = [{c: cols[c][i] for c in QUERY_COLUMNS} for i in range(n)]
    bad = sorted({int(r["roi_id"]) for r in rows if not 0 <= int(r["roi_id"]) < rois.count})
    if bad:
        raise ReviewError(
            f"queries {path / 'queries.parquet'} name roi_id(s) {bad[:5]} that the ROI store (0..{rois.count - 1}) does not hold",
            "write the queries and the ROIs of the same run",
        )
    if len({int(r["roi_id"]) for r in rows}) != n:
        raise ReviewError(f"queries {path / 'queries.parquet'} list an roi_id twice", "each ROI is queried once per round")
    rows.sort(key=lambda r: (int(r["rank"]), int(r["roi_id"])))
    for r in rows:
        r.update({k: v for k, v in rois.info(int(r["roi_id"])).items() if k != "roi_id"})
    store = AnswerStore(answers_path(path))
    return ReviewRound(path.name, path, rows, store, frozenset(int(r["roi_id"]) for r in rows))
