"""Volumes: n-dimensional arrays on TensorStore, addressed by URL, with voxel size and offset.

The last three axes of a volume are z, y, x; leading axes (if any) are channels. Boxes index the
spatial axes in voxels from 0. Voxel size (nm) and offset (nm, the world position of voxel 0) are
metadata: for zarr they are written both as OME-Zarr ``multiscales`` of the parent group and as
``voxel_size``/``offset`` attributes on the array (what funlib/daisy read); for n5 as attributes
(also ``resolution`` and ``units``, one per axis in the order of ``dimensions``, as TensorStore and
neuroglancer read them); for precomputed in its ``info`` scale.

>>> from engine.storage import create_volume
>>> v = create_volume("memory://doc/raw", shape=(4, 8, 8), dtype="uint8", chunks=(2, 4, 4))
>>> v.write(Box((0, 0, 0), (2, 4, 4)), np.full((2, 4, 4), 7, np.uint8))
>>> int(v.read(Box((0, 0, 0), (4, 8, 8))).sum())
224
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import tensorstore as ts

from engine.errors import StorageError
from engine.geometry import Box, Coord
from engine.storage import ome
from engine.storage.errors import as_storage_error, classify, note_retry, retrying
from engine.storage.kv import _CONTEXT, _key_exists, _read_json, _ts_message
from engine.storage.urls import Location, parse_url

log = logging.getLogger(__name__)

Format = Literal["zarr", "zarr3", "n5", "precomputed"]
FORMATS: tuple[str, ...] = get_args(Format)
_METADATA_KEYS: dict[str, str] = {"zarr": ".zarray", "zarr3": "zarr.json", "n5": "attributes.json", "precomputed": "info"}
def detect_format(url: str | os.PathLike[str]) -> Format | None:
    """The format of the array at ``url`` from its metadata file, or None if there is none."""
    loc = parse_url(url)
    for fmt, key in _METADATA_KEYS.items():
        if _key_exists(loc, key):
            if fmt == "zarr3":
                meta = _read_json(loc, key) or {}
                if meta.get("node_type") == "group":
                    continue
            if fmt == "n5":
                meta = _read_json(loc, key) or {}
                if "dimensions" not in meta:
                    continue
            return fmt  # type: ignore[return-value]
    return None


def _group_kind(loc: Location) -> str | None:
    """'a zarr' / 'a zarr v3' / 'an n5' where ``loc`` holds group metadata (and no array)."""
    if _key_exists(loc, ".zgroup"):
        return "a zarr"
    if (_read_json(loc, "zarr.json") or {}).get("node_type") == "group":
        return "a zarr v3"
    if _key_exists(loc, "attributes.json"):
        return "an n5"
    return None


def _dtype(dtype: Any) -> np.dtype[Any]:
    try:
        return np.dtype(dtype)
    except TypeError as err:
        raise StorageError(f"unknown dtype {dtype!r}", "use a numpy dtype name such as uint8, uint64 or float32") from err


class Volume:
    """An open array. Pickles as its URL (workers reopen it), never as its data."""

    def __init__(self, url: str | os.PathLike[str], fmt: Format, mode: Literal["r", "r+"] = "r") -> None:
        self.loc = parse_url(url)
        self.url = self.loc.url()
        self.format: Format = fmt
        self.mode = mode
        self._store: ts.TensorStore | None = None
        self._attrs: dict[str, Any] | None = None

    # pickling: reopen by URL in the receiving process
    def __reduce__(self) -> tuple[Any, ...]:
        return (Volume, (self.url, self.format, self.mode))

    def __repr__(self) -> str:
        try:
            return f"Volume({self.url!r}, {self.format}, shape={self.shape}, dtype={self.dtype})"
        except StorageError:  # a repr must not fail (it shows up in tracebacks and logs)
            return f"Volume({self.url!r}, {self.format}, unreadable)"

    @property
    def store(self) -> ts.TensorStore:
        """The TensorStore, axes ordered (channels…, z, y, x)."""
        if self._store is None:
            self._store = _open_store(self.loc, self.format, self.mode)
        return self._store

    @property
    def shape(self) -> Coord:
        return tuple(int(s) for s in self.store.shape)

    @property
    def spatial_shape(self) -> Coord:
        return self.shape[-3:]

    @property
    def box(self) -> Box:
        return Box.from_shape(self.spatial_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.store.dtype.numpy_dtype)

    @property
    def chunk_shape(self) -> Coord:
        """The read chunk (inner chunk when sharded), spatial axes."""
        layout = self.store.chunk_layout
        return _spatial(layout.read_chunk.shape or layout.write_chunk.shape)

    @property
    def write_chunk_shape(self) -> Coord:
        """The unit two workers must never share: the shard when sharded, else the chunk."""
        return _spatial(self.store.chunk_layout.write_chunk.shape)

    @property
    def attrs(self) -> dict[str, Any]:
        if self._attrs is None:
            self._attrs = _read_attrs(self.loc, self.format)
        return self._attrs

    @property
    def voxel_size(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.attrs.get("voxel_size", (1.0, 1.0, 1.0)))

    @property
    def offset(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.attrs.get("offset", (0.0, 0.0, 0.0)))

    @property
    def process_local(self) -> bool:
        return self.loc.process_local

    def _index(self, box: Box) -> tuple[slice, ...]:
        if box.ndim != 3:
            raise ValueError(f"boxes index z, y, x; got {box}")
        if not self.box.contains(box):
            raise StorageError(
                f"box {box} is outside volume {self.url} of spatial shape {self.spatial_shape}",
                f"keep boxes inside {self.box} (clip them with box.intersect(volume.box))",
            )
        lead = (slice(None),) * (len(self.shape) - 3)
        return lead + box.to_slices()

    def read(self, box: Box) -> np.ndarray:
        """Read ``box`` (all channels) into a numpy array. Transient storage errors are retried; a
        corrupt chunk fails at once naming its key (:mod:`engine.storage.errors`)."""
        index = self._index(box)
        return np.asarray(retrying(lambda: self.store[index].read().result(), self.url, f"reading {box} of"))

    def read_async(self, box: Box) -> _Read:
        """Start reading ``box``; ``.result()`` gives the array (storage errors classified as by
        :meth:`read`, a transient one retried). Lets a worker overlap I/O and compute."""
        return _Read(self, box, self.store[self._index(box)].read())

    def write(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` into ``box`` and wait until it is stored."""
        index, data = self._writable(box, data)
        retrying(lambda: self.store[index].write(data).result(), self.url, f"writing {box} of")

    def write_async(self, box: Box, data: np.ndarray) -> _Write:
        """Start writing ``data`` into ``box`` (checked now, as by :meth:`write`); ``.result()`` waits
        until it is stored (storage errors classified, a transient one retried). Lets a worker compute
        the next block while this one is compressed and stored; ``data`` must not change meanwhile."""
        index, data = self._writable(box, data)
        return _Write(self, box, data, self.store[index].write(data))

    def _writable(self, box: Box, data: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
        if self.mode != "r+":
            raise StorageError(f"volume {self.url} is open read-only", "open it with mode='r+' to write")
        expected = self.shape[:-3] + box.shape
        if tuple(data.shape) != expected:
            raise StorageError(
                f"cannot write an array of shape {tuple(data.shape)} into {box} of {self.url}",
                f"give an array of shape {expected} (channels, then the box's z, y, x)",
            )
        if data.dtype != self.dtype:
            if not np.can_cast(data.dtype, self.dtype, casting="same_kind"):
                raise StorageError(
                    f"cannot write {data.dtype} data into {self.url} of dtype {self.dtype} without losing values",
                    f"convert it first (e.g. data.astype({str(self.dtype)!r}) after scaling or clipping)",
                )
            data = data.astype(self.dtype)
        return self._index(box), data

    def expect(self, *, dtype: Any = None, spatial_shape: Sequence[int] | None = None, ndim: int | None = None) -> Volume:
        """Check dtype and shape against what a step needs; raise a one-line error if they differ."""
        if dtype is not None:
            allowed = [_dtype(d) for d in (dtype if isinstance(dtype, (list, tuple)) else [dtype])]
            if self.dtype not in allowed:
                names = " or ".join(str(a) for a in allowed)
                raise StorageError(f"volume {self.url} has dtype {self.dtype} but {names} is needed", "convert it or pick the right volume")
        if spatial_shape is not None and tuple(spatial_shape) != self.spatial_shape:
            raise StorageError(
                f"volume {self.url} has shape {self.spatial_shape} (z, y, x) but {tuple(spatial_shape)} is needed",
                "give volumes of the same size",
            )
        if ndim is not None and len(self.shape) != ndim:
            raise StorageError(
                f"volume {self.url} has {len(self.shape)} axes {self.shape} but {ndim} are needed",
                "give a volume with (channels, z, y, x) axes" if ndim == 4 else "give a (z, y, x) volume" if ndim == 3 else "pick the right volume",
            )
        return self


class _Started:
    """A started read or write of a box: ``result()`` waits for it; a transient storage error is tried
    again once through the volume (with its bounded retries), any other becomes one StorageError."""

    doing = ""  # "reading" / "writing"

    def __init__(self, volume: Volume, box: Box, future: Any) -> None:
        self.volume, self.box, self.future = volume, box, future

    def again(self) -> Any:
        raise NotImplementedError

    def result(self) -> Any:
        try:
            return self.future.result()
        except ValueError as err:
            if classify(err) == "transient":
                note_retry(err, self.volume.url, f"{self.doing} {self.box} of {self.volume.url}: transient storage error, {self.doing} again")
                return self.again()
            raise as_storage_error(err, self.volume.url, f"{self.doing} {self.box} of") from err


class _Read(_Started):
    """A started read of a box (see :meth:`Volume.read`)."""

    doing = "reading"

    def again(self) -> Any:
        return self.volume.read(self.box)


class _Write(_Started):
    """A started write of a box (see :meth:`Volume.write_async`)."""

    doing = "writing"

    def __init__(self, volume: Volume, box: Box, data: np.ndarray, future: Any) -> None:
        super().__init__(volume, box, future)
        self.data = data

    def again(self) -> None:
        self.volume.write(self.box, self.data)

    def result(self) -> None:
        super().result()


def _spatial(shape: Sequence[int | None] | None) -> Coord:
    """The spatial (last three) entries of a chunk shape; 1 where TensorStore leaves one unset."""
    return tuple(int(s) if s else 1 for s in (shape or (None,) * 3))[-3:]


def _open_store(loc: Location, fmt: Format, mode: str) -> ts.TensorStore:
    driver = {"zarr": "zarr", "zarr3": "zarr3", "n5": "n5", "precomputed": "neuroglancer_precomputed"}[fmt]
    spec: dict[str, Any] = {"driver": driver, "kvstore": loc.kvstore(), "open": True}
    if fmt == "precomputed":
        spec["scale_index"] = 0
    rw = "r" if mode == "r" else "rw"
    try:
        store = ts.open(spec, read=True, write=(rw == "rw"), context=_CONTEXT).result()
    except ValueError as err:
        raise StorageError(
            f"cannot open {fmt} volume at {loc.url()}: {_ts_message(err)}",
            "check that it is a complete volume; if its metadata is corrupt, re-create it or restore it from a copy",
        ) from err
    if fmt == "precomputed":  # [x, y, z, channel] -> [channel, z, y, x], voxel_offset moved to 0
        store = store[ts.d[:].translate_to[0]].T
        if store.shape[0] == 1:
            store = store[0]
    return store


def _read_attrs(loc: Location, fmt: Format) -> dict[str, Any]:
    """Voxel size, offset and free attributes, gathered from wherever the format keeps them."""
    attrs: dict[str, Any] = {}
    if fmt == "zarr":
        attrs = dict(_read_json(loc, ".zattrs") or {})
        if "voxel_size" not in attrs and "resolution" in attrs:  # funlib convention
            attrs["voxel_size"] = attrs["resolution"]
        if "voxel_size" not in attrs:
            attrs.update(ome.dataset_transform(loc, fmt))
    elif fmt == "zarr3":
        meta = _read_json(loc, "zarr.json") or {}
        attrs = dict(meta.get("attributes", {}))
        if "voxel_size" not in attrs:
            attrs.update(ome.dataset_transform(loc, fmt))
    elif fmt == "n5":
        meta = _read_json(loc, "attributes.json") or {}
        attrs = {k: v for k, v in meta.items() if k not in ("dimensions", "blockSize", "dataType", "compression")}
        if "voxel_size" not in attrs and "resolution" in attrs:  # same order as "dimensions"
            attrs["voxel_size"] = list(attrs["resolution"])[-3:]
    else:
        info = _read_json(loc, "info") or {}
        scale = (info.get("scales") or [{}])[0]
        if "resolution" in scale:
            attrs["voxel_size"] = list(reversed(scale["resolution"]))
            offset = scale.get("voxel_offset", [0, 0, 0])
            attrs["offset"] = [o * r for o, r in zip(reversed(offset), attrs["voxel_size"], strict=True)]
    return attrs


def open_volume(
    url: str | os.PathLike[str],
    mode: Literal["r", "r+"] = "r",
    *,
    dtype: Any = None,
    spatial_shape: Sequence[int] | None = None,
) -> Volume:
    """Open an existing volume, detecting its format; optionally check its dtype and shape.

    Raises :class:`StorageError` with one line if nothing is there or it cannot be read.
    """
    loc = parse_url(url)
    if loc.is_local_file and not os.path.exists(loc.path):
        raise StorageError(f"no volume at {loc.path}: the path does not exist", "check the path, or create it first (connectile synth / ingest)")
    fmt = detect_format(url)
    if fmt is None:
        group = _group_kind(loc)
        if group is not None:
            raise StorageError(
                f"no volume at {loc.url()}: it is {group} group, not an array",
                f"name an array inside it, e.g. {loc.url().rstrip('/')}/raw",
            )
        raise StorageError(
            f"no volume at {loc.url()}: found no zarr, zarr3, n5 or precomputed metadata there",
            "check the path (a zarr array inside a group is written data.zarr/raw)",
        )
    vol = Volume(url, fmt, mode)
    _ = vol.store  # open now, so a corrupt store fails here with a clear message
    if 0 in vol.shape:
        raise StorageError(f"the volume {loc.url()} has shape {vol.shape}: an axis of size 0 holds no voxels", "write the volume again (connectile ingest / synth) with every axis at least 1")
    return vol.expect(dtype=dtype, spatial_shape=spatial_shape)


def check_write_alignment(volume: Volume, write_shape: Sequence[int], origin: Sequence[int] = (0, 0, 0)) -> None:
    """Raise unless write boxes of ``write_shape`` starting at ``origin`` cover whole write chunks
    (whole shards when sharded), so that two workers never write the same chunk."""
    unit = volume.write_chunk_shape
    bad_shape = [w % u != 0 for w, u in zip(write_shape, unit, strict=True)]
    bad_origin = [o % u != 0 for o, u in zip(origin, unit, strict=True)]
    if any(bad_shape) or any(bad_origin):
        fixed = tuple(max(1, -(-w // u)) * u for w, u in zip(write_shape, unit, strict=True))
        fixes = []
        if any(bad_shape):
            fixes.append(f"use a write shape that is a multiple of {unit}, e.g. {fixed}")
        if any(bad_origin):
            start = tuple(o // u * u for o, u in zip(origin, unit, strict=True))
            fixes.append(f"start the blocks at a multiple of {unit}, e.g. {start}")
        raise StorageError(
            f"write blocks of {tuple(write_shape)} at {tuple(origin)} do not cover whole storage chunks "
            f"{unit} of {volume.url}, so two workers could write the same chunk",
            " and ".join(fixes),
        )
