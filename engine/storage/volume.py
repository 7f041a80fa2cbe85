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
from engine.storage.kv import _CONTEXT, _key_exists, _read_json, _ts_message, _write_json
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


def _check_writable(loc: Location) -> None:
    """Fail early, with a clear message, where a local output cannot be created."""
    if not loc.is_local_file:
        return
    path = loc.path
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise StorageError(
            f"cannot write to {path}: {probe} is a file, not a folder", "choose an output path inside a folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write to {path}: {probe} is not writable", "choose another output or fix permissions")
    try:  # os.access says yes to root everywhere; creating the folder is the real test
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise StorageError(
            f"cannot write to {path}: cannot create the folder ({err.strerror or err})", "choose another output or fix permissions"
        ) from err


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
        index = self._index(box)
        retrying(lambda: self.store[index].write(data).result(), self.url, f"writing {box} of")

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


class _Read:
    """A started read of a box: ``result()`` waits, classifying storage errors (see :meth:`Volume.read`)."""

    def __init__(self, volume: Volume, box: Box, future: ts.Future) -> None:
        self.volume, self.box, self.future = volume, box, future

    def result(self) -> Any:
        try:
            return self.future.result()
        except ValueError as err:
            if classify(err) == "transient":
                note_retry(err, self.volume.url, f"reading {self.box} of {self.volume.url}: transient storage error, reading again")
                return self.volume.read(self.box)  # again, with the bounded retries
            raise as_storage_error(err, self.volume.url, f"reading {self.box} of") from err


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


def _lead_names(n: int) -> list[str]:
    """Names of the leading (channel) axes: ``c`` for one, ``c0``, ``c1``, … for more."""
    return ["c"] if n == 1 else [f"c{i}" for i in range(n)]


def _codec_zarr2(compression: str) -> dict[str, Any] | None:
    if compression == "none":
        return None
    if compression == "gzip":
        return {"id": "gzip", "level": 5}
    return {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1}


def _metadata(
    fmt: Format,
    shape: Coord,
    dtype: np.dtype[Any],
    chunks: Coord,
    shards: Coord | None,
    fill_value: Any,
    compression: str,
    voxel_size: tuple[float, ...],
    attrs: dict[str, Any],
) -> dict[str, Any]:
    if fmt == "zarr":
        return {
            "shape": list(shape),
            "chunks": list(chunks),
            "dtype": dtype.str,
            "compressor": _codec_zarr2(compression),
            "fill_value": fill_value,
            "dimension_separator": "/",
        }
    if fmt == "zarr3":
        inner: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if compression != "none":
            inner.append({"name": "zstd", "configuration": {"level": 3}} if compression != "gzip" else {"name": "gzip", "configuration": {"level": 5}})
        names = [*_lead_names(len(shape) - 3), "z", "y", "x"]
        meta: dict[str, Any] = {
            "shape": list(shape),
            "data_type": dtype.name,
            "fill_value": fill_value,
            "dimension_names": names,
            "attributes": attrs,
        }
        if shards is None:
            meta["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(chunks)}}
            meta["codecs"] = inner
        else:
            meta["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(shards)}}
            meta["codecs"] = [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(chunks),
                        "codecs": inner,
                        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
                    },
                }
            ]
        return meta
    if fmt == "n5":
        comp = {"type": "raw"} if compression == "none" else ({"type": "gzip"} if compression == "gzip" else {"type": "zstd", "level": 3})
        return {"dimensions": list(shape), "blockSize": list(chunks), "dataType": dtype.name, "compression": comp}
    raise AssertionError(fmt)


def create_volume(
    url: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    *,
    format: Format = "zarr",  # noqa: A002 - the natural name for users
    shards: Sequence[int] | None = None,
    voxel_size: Sequence[float] | None = None,
    offset: Sequence[float] | None = None,
    fill_value: int | float = 0,
    compression: Literal["zstd", "gzip", "none"] = "zstd",
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    layer_type: Literal["image", "segmentation"] | None = None,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> Volume:
    """Create a volume (or open an existing one with the same layout; ``overwrite`` replaces it).

    ``shape`` is (channels…, z, y, x); ``chunks`` and ``shards`` may give the spatial axes only.
    ``shards`` (zarr3 only) groups chunks into shards: the shard becomes the unit of writing.
    ``overwrite`` deletes only an existing array (see :func:`engine.storage.safety.check_removable`):
    a group, a folder of other files, a root or home folder, or a path equal to or holding one of
    ``inputs`` (the run's inputs) is refused with one line.
    """
    loc = parse_url(url)
    fmt: Format = format
    if fmt not in FORMATS:
        raise StorageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) < 3 or any(s <= 0 for s in shape_t):
        raise StorageError(f"cannot create {loc.url()} with shape {shape_t}", "give a positive (z, y, x) shape, channels first if any")
    lead = shape_t[:-3]
    if fmt == "precomputed" and len(lead) > 1:
        raise StorageError(f"precomputed volumes hold (channels, z, y, x) at most, not {shape_t}", "use zarr for more axes")
    if fmt == "precomputed" and lead == (1,):
        # it would read back as (z, y, x): a re-create or a write of (1, z, y, x) data would not fit
        raise StorageError(
            f"a precomputed volume of one channel is a (z, y, x) volume, not {shape_t}", f"give shape {shape_t[1:]}"
        )
    chunks_t = tuple(int(c) for c in chunks)
    if len(chunks_t) == 3:
        chunks_t = lead + chunks_t
    if len(chunks_t) != len(shape_t) or any(c <= 0 for c in chunks_t):
        raise StorageError(f"chunk shape {tuple(chunks)} does not fit volume shape {shape_t}", "give one positive chunk size per axis")
    shards_t = None if shards is None else tuple(int(s) for s in shards)
    if shards_t is not None:
        if fmt != "zarr3":
            raise StorageError(f"shards are a zarr v3 feature, but format {fmt!r} was asked for", "use format='zarr3' or drop shards")
        if len(shards_t) == 3:
            shards_t = lead + shards_t
        if len(shards_t) != len(shape_t) or any(s <= 0 for s in shards_t):
            raise StorageError(f"shard shape {shards_t} does not fit volume shape {shape_t}", "give one positive shard size per axis")
        if any(s % c for s, c in zip(shards_t, chunks_t, strict=True)):
            fixed = tuple(-(-s // c) * c for s, c in zip(shards_t, chunks_t, strict=True))
            raise StorageError(
                f"shard shape {shards_t} is not a multiple of chunk shape {chunks_t}",
                f"make every shard a whole number of chunks, e.g. shards={fixed[-3:]}",
            )
    dt = _dtype(dtype)
    vs = tuple(float(v) for v in (voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)))
    off = tuple(float(v) for v in (offset if offset is not None else (0.0, 0.0, 0.0)))
    if len(vs) != 3 or len(off) != 3 or any(v <= 0 for v in vs):
        raise StorageError(f"voxel size {vs} and offset {off} must each give z, y, x", "e.g. --voxel-size 40,8,8 (nm); voxel sizes are positive")
    meta_attrs = {"voxel_size": list(vs), "offset": list(off), "axis_names": ["z", "y", "x"], "units": ["nm", "nm", "nm"], **(attrs or {})}
    _check_writable(loc)

    existing = _check_replaceable(loc, overwrite, inputs)
    if existing is not None and not overwrite:
        vol = Volume(url, existing, "r+")
        same = existing == fmt and vol.shape == shape_t and vol.dtype == dt and vol.write_chunk_shape == (shards_t or chunks_t)[-3:]
        if not same:
            raise StorageError(
                f"{loc.url()} already holds a {existing} volume of shape {vol.shape}, dtype {vol.dtype}, "
                f"write chunks {vol.write_chunk_shape}; asked for {fmt} {shape_t} {dt} chunks {(shards_t or chunks_t)[-3:]}",
                "pass overwrite (--overwrite) to replace it, or choose another output",
            )
        return vol

    if fmt == "precomputed":
        _create_precomputed(loc, shape_t, dt, chunks_t, vs, off, layer_type or ("segmentation" if dt == np.uint64 else "image"), overwrite)
    else:
        meta = _metadata(fmt, shape_t, dt, chunks_t, shards_t, fill_value, compression, vs, meta_attrs)
        driver = {"zarr": "zarr", "zarr3": "zarr3", "n5": "n5"}[fmt]
        spec = {"driver": driver, "kvstore": loc.kvstore(), "metadata": meta}
        try:
            ts.open(spec, create=True, delete_existing=overwrite, context=_CONTEXT).result()
        except ValueError as err:
            raise StorageError(f"cannot create {fmt} volume at {loc.url()}: {_ts_message(err)}", "check the path and the layout") from err
        if fmt == "zarr":
            _write_json(loc, ".zattrs", meta_attrs)
        elif fmt == "n5":
            n5 = _read_json(loc, "attributes.json") or {}
            n5.update(meta_attrs)
            # "resolution" and "units" give one entry per axis in the order of "dimensions" (that is
            # how TensorStore, neuroglancer and the n5 viewers read them); channel axes are unitless
            n5["resolution"] = [1.0] * len(lead) + list(vs)
            n5["units"] = [""] * len(lead) + ["nm"] * 3
            _write_json(loc, "attributes.json", n5)
        ome.register_in_group(loc, fmt, len(lead), vs, off)
    log.info("created %s volume %s shape=%s dtype=%s chunks=%s shards=%s", fmt, loc.url(), shape_t, dt, chunks_t, shards_t)
    return Volume(url, fmt, "r+")


def _check_replaceable(loc: Location, overwrite: bool, inputs: Sequence[str | os.PathLike[str]]) -> Format | None:
    """The format of the array at ``loc`` (None: none); refuse to create over, or to delete, anything
    that is not one array of its own."""
    from engine.storage.safety import _volume_problem, check_removable

    if overwrite:
        check_removable(loc, "volume", inputs=inputs)
        return detect_format(loc.url())
    existing = detect_format(loc.url())
    if existing is None:
        why = _volume_problem(loc)
        if why is not None:
            raise StorageError(f"cannot create a volume at {loc.url()}: {why}", f"name an array inside it, e.g. {loc.url().rstrip('/')}/out")
    return existing


def _create_precomputed(
    loc: Location, shape: Coord, dtype: np.dtype[Any], chunks: Coord, vs: tuple[float, ...], off: tuple[float, ...], layer_type: str, overwrite: bool
) -> None:
    channels = shape[0] if len(shape) == 4 else 1
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": loc.kvstore(),
        "multiscale_metadata": {"type": layer_type, "data_type": dtype.name, "num_channels": channels},
        "scale_metadata": {
            "size": list(reversed(shape[-3:])),
            "resolution": list(reversed(vs)),
            "chunk_size": list(reversed(chunks[-3:])),
            "encoding": "compressed_segmentation" if layer_type == "segmentation" and dtype in (np.uint32, np.uint64) else "raw",
            "voxel_offset": [round(o / r) for o, r in zip(reversed(off), reversed(vs), strict=True)],
        },
    }
    try:
        ts.open(spec, create=True, delete_existing=overwrite, context=_CONTEXT).result()
    except ValueError as err:
        raise StorageError(f"cannot create precomputed volume at {loc.url()}: {_ts_message(err)}", "check the path and the layout") from err


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
