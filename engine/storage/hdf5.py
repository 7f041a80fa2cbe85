"""HDF5 inputs: ``FILE.h5[:DATASET]`` names, gzip-compressed files, dataset choice and id maps.

A source is written ``path/to/file.h5:group/dataset``; without ``:DATASET`` the file's only 3D
dataset is taken. ``.h5.gz`` files are streamed into a temporary file (:mod:`tempfile`) that is
unlinked as soon as it is open (on POSIX; elsewhere deleted when the file is closed), so nothing is
left behind even when a worker process is killed.

Label volumes are sometimes stored as supervoxels plus a map to bodies (the FlyEM convention:
datasets ``stack`` and ``transforms``, an Nx2 table of (supervoxel, body) rows). :class:`IdMap`
applies such a map like ``lut[t[:, 0]] = t[:, 1]; body = lut[stack]``: ids absent from the table
become 0.

>>> split_hdf5("gt.h5.gz:stack"), split_hdf5("gt.h5"), split_hdf5("slices/*.png")
(('gt.h5.gz', 'stack'), ('gt.h5', None), None)
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import posixpath
import re
import shutil
import tempfile
import weakref
import zlib
from typing import Any

import h5py
import numpy as np

from engine.errors import StorageError

log = logging.getLogger(__name__)

_HDF5 = re.compile(r"^(?P<path>.+?\.(?:h5|hdf5|hdf|he5)(?:\.gz)?)(?::(?P<dataset>[^:]*))?$", re.IGNORECASE)
#: Name of the supervoxel -> body table that is used automatically when it sits next to the dataset.
AUTO_LUT_NAME = "transforms"
_COPY_BUFFER = 1 << 22


def split_hdf5(src: str) -> tuple[str, str | None] | None:
    """``(file, dataset or None)`` when ``src`` names an HDF5 file, else None."""
    m = _HDF5.match(src)
    if m is None:
        return None
    dataset = (m.group("dataset") or "").strip("/")
    return m.group("path"), dataset or None


def _gunzip(path: str) -> str:
    """Stream ``path`` (gzip) into a new temporary file and return its name."""
    fd, tmp = tempfile.mkstemp(prefix="connectile-ingest-", suffix=".h5")
    log.info("decompressing %s into the temporary file %s", path, tmp)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_BUFFER)
    except BaseException as err:  # also Ctrl-C: never leave a partial copy behind
        os.remove(tmp)
        if isinstance(err, (OSError, EOFError, zlib.error)):
            raise StorageError(
                f"cannot decompress {path}: {err}", "check that it is a complete gzip file (download it again), or gunzip it yourself"
            ) from err
        raise
    return tmp


def _close(file: h5py.File, tmp: str | None) -> None:
    try:
        file.close()
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


class Hdf5File:
    """An HDF5 file open for reading; a ``.gz`` file is decompressed to a temporary file first."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise StorageError(f"source {path} does not exist", "check the path of the HDF5 file")
        self.path = path
        tmp = _gunzip(path) if path.lower().endswith(".gz") else None
        try:
            self.file = h5py.File(tmp or path, "r")
        except OSError as err:
            if tmp is not None:
                os.remove(tmp)
            raise StorageError(f"cannot open {path} as HDF5: {err}", "check that it is a complete HDF5 file (download it again)") from err
        if tmp is not None:
            # POSIX: drop the name now; the open file stays readable and the OS frees it however this
            # process ends (Ray may kill a worker without running finalizers). Elsewhere: on close.
            with contextlib.suppress(OSError):
                os.remove(tmp)
        self._finalizer = weakref.finalize(self, _close, self.file, tmp)

    def close(self) -> None:
        """Close the file and delete the temporary copy (if any). Safe to call twice."""
        self._finalizer()

    def datasets(self) -> dict[str, h5py.Dataset]:
        """Every dataset in the file by its path (no leading '/')."""
        found: dict[str, h5py.Dataset] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

        self.file.visititems(visit)
        return found

    def _listing(self) -> str:
        return ", ".join(f"{n} {tuple(d.shape)} {d.dtype}" for n, d in self.datasets().items()) or "nothing"

    def choose(self, name: str | None) -> str:
        """The dataset to ingest: ``name``, or the only 3D dataset of the file."""
        if name is not None:
            if not isinstance(self.file.get(name), h5py.Dataset):
                raise StorageError(
                    f"{self.path} has no dataset {name!r} (it holds: {self._listing()})", f"write {self.path}:NAME with one of those names"
                )
            return name
        volumes = [n for n, d in self.datasets().items() if d.ndim == 3]
        if len(volumes) == 1:
            log.info("%s: ingesting its only 3D dataset %r", self.path, volumes[0])
            return volumes[0]
        if not volumes:
            raise StorageError(f"{self.path} holds no 3D dataset (it holds: {self._listing()})", "ingest reads (z, y, x) datasets: check the file")
        raise StorageError(
            f"{self.path} holds {len(volumes)} 3D datasets ({self._listing()})", f"name one, e.g. {self.path}:{volumes[0]}"
        )

    def find_lut(self, dataset: str, lut: str | bool | None) -> str | None:
        """The id map to apply: ``lut`` when a name, none when False, else ``transforms`` beside ``dataset``."""
        if lut is False:
            return None
        if isinstance(lut, str):
            obj = self.file.get(lut.strip("/"))
            if not isinstance(obj, h5py.Dataset):
                raise StorageError(f"{self.path} has no dataset {lut!r} for --lut (it holds: {self._listing()})", "check the dataset name")
            _check_table(self.path, lut, obj)
            return lut.strip("/")
        sibling = posixpath.join(posixpath.dirname(dataset), AUTO_LUT_NAME)
        obj = self.file.get(sibling)
        if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.shape[1] == 2 and obj.dtype.kind in "iu":
            log.info(
                "%s: found %r (%d rows) beside %r: mapping supervoxel ids to body ids with it (pass --no-lut to keep the supervoxel ids)",
                self.path, sibling, obj.shape[0], dataset,
            )
            return sibling
        return None


def _check_table(path: str, name: str, ds: h5py.Dataset) -> None:
    if ds.ndim != 2 or ds.shape[1] != 2 or ds.dtype.kind not in "iu":
        raise StorageError(
            f"dataset {name!r} of {path} is {tuple(ds.shape)} {ds.dtype}, not an Nx2 integer table of (id, new id) rows",
            "name the supervoxel -> body table with --lut",
        )


class IdMap:
    """A table of (id, new id) rows applied to label arrays; ids not in the table become 0.

    >>> m = IdMap(np.array([[1, 10], [2, 20], [7, 10]]))
    >>> m(np.array([[0, 1], [2, 7]], dtype=np.int32))
    array([[ 0, 10],
           [20, 10]], dtype=uint64)
    """

    #: Tables whose largest id is below this (or below 4x their length) are applied as dense arrays.
    DENSE_LIMIT = 1 << 22

    def __init__(self, pairs: np.ndarray, where: str = "the id map") -> None:
        pairs = np.asarray(pairs)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise StorageError(f"{where} has shape {pairs.shape}, not Nx2", "give an Nx2 table of (id, new id) rows")
        if pairs.size and (pairs.min() < 0 or (pairs.dtype == np.uint64 and pairs[:, 0].max() >= 1 << 63)):
            raise StorageError(f"{where} holds negative or too large ids", "ids must lie in [0, 2**63)")
        keys = pairs[:, 0].astype(np.int64)
        values = pairs[:, 1].astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        last = np.ones(len(keys), bool)  # like lut[keys] = values: the last row of a repeated id wins
        last[:-1] = keys[1:] != keys[:-1]
        self.keys, self.values = keys[last], values[last]
        self.max_key = int(self.keys[-1]) if len(self.keys) else -1
        self.dense: np.ndarray | None = None
        if 0 <= self.max_key < max(self.DENSE_LIMIT, 4 * len(self.keys)):
            self.dense = np.zeros(self.max_key + 1, np.uint64)
            self.dense[self.keys] = self.values

    def __len__(self) -> int:
        return len(self.keys)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if ids.dtype.kind not in "iu":
            raise StorageError(f"cannot map ids of dtype {ids.dtype}", "the mapped dataset must hold integer ids")
        flat = ids.astype(np.int64, copy=False)
        if self.max_key < 0:
            return np.zeros(ids.shape, np.uint64)
        if self.dense is not None:
            out = self.dense[np.clip(flat, 0, self.max_key)]
            out[(flat < 0) | (flat > self.max_key)] = 0
            return out
        pos = np.clip(np.searchsorted(self.keys, flat), 0, len(self.keys) - 1)
        found = self.keys[pos] == flat
        return np.where(found, self.values[pos], np.uint64(0))
