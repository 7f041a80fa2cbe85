"""The object-table format, in one place: Parquet, one row per object (the ROI proposals for active
learning) with its id, voxel count, bounding box (half-open, voxels), centroid (voxels) and mean
probability (:data:`COLUMNS`, in that order). ``engine.kernels.objects`` measures the rows; the label
op writes them; ``engine.active`` and the pipeline read them.

Rows are written in increasing id order, in row groups of about ``rows_per_group`` rows, so the
writer holds one group in memory whatever the number of objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import StorageError

#: the columns of an object table, in order
COLUMNS = ("id", "voxels", "z0", "y0", "x0", "z1", "y1", "x1", "cz", "cy", "cx", "mean_probability")


class ObjectTableWriter:
    """Append columns block by block; ``close()`` writes the last group. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None, rows_per_group: int = 1 << 16) -> None:
        import pyarrow as pa

        self.path = Path(path)
        self.rows_per_group = rows_per_group
        self.rows = 0
        self._buf: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        fields = [pa.field(c, pa.uint64() if c == "id" else pa.int64() if c in ("voxels", "z0", "y0", "x0", "z1", "y1", "x1") else pa.float64()) for c in COLUMNS]
        self.schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import pyarrow.parquet as pq

            self._writer: Any = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        except OSError as err:
            raise StorageError(f"cannot write the object table {self.path}: {err.strerror or err}", "choose another --table path") from err

    def append(self, columns: dict[str, np.ndarray]) -> None:
        n = len(columns["id"])
        if not n:
            return
        self._buf.append(columns)
        self._buffered += n
        if self._buffered >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buf:
            return
        cols = {c: np.concatenate([b[c] for b in self._buf]) for c in COLUMNS}
        self._writer.write_table(pa.table(cols, schema=self.schema))
        self.rows += self._buffered
        self._buf, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __enter__(self) -> ObjectTableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_object_table(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The object table at ``path`` as numpy columns."""
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise StorageError(f"no object table at {path}", "run connectile label with --table first")
    table = pq.read_table(str(path))
    return {c: table.column(c).to_numpy() for c in table.column_names}
