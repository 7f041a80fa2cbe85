"""Creating volumes: :func:`create_volume` checks the layout, refuses to replace what is not one array
of its own, writes the format's metadata (zarr v2/v3, n5, precomputed) and the voxel size and offset
where each format keeps them (see :mod:`engine.storage.volume` and :mod:`engine.storage.ome`).

>>> v = create_volume("memory://doc-create/raw", (2, 4, 4), "uint8", (2, 4, 4), voxel_size=(40, 4, 4))
>>> v.voxel_size, v.shape
((40.0, 4.0, 4.0), (2, 4, 4))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import tensorstore as ts
from typing_extensions import Unpack

from engine.errors import StorageError
from engine.geometry import Coord
from engine.options import check_keys
from engine.storage import ome
from engine.storage.kv import _CONTEXT, _read_json, _ts_message, _write_json
from engine.storage.urls import Location, parse_url
from engine.storage.volume import FORMATS, Format, Volume, _dtype, detect_format

log = logging.getLogger(__name__)


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


def _lead_names(n: int) -> list[str]:
    """Names of the leading (channel) axes: ``c`` for one, ``c0``, ``c1``, … for more."""
    return ["c"] if n == 1 else [f"c{i}" for i in range(n)]


#: zarr v2 codec of segmentation volumes (``compression="zstd"`` with ``layer_type="segmentation"``):
#: on the integer ids of a label volume, zstd level 1 with bit shuffle costs a quarter less CPU than
#: level 3 with byte shuffle and stores a tenth less (measured on 128^3 blocks of uint32 labels:
#: 14.6 against 19.6 ms, 117 against 127 KB; benchmarks/RESULTS.md)
SEGMENTATION_ZARR2 = {"id": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 2}


def _codec_zarr2(compression: str) -> dict[str, Any] | None:
    if compression == "segmentation":
        return dict(SEGMENTATION_ZARR2)
    if compression == "none":
        return None
    if compression == "gzip":
        return {"id": "gzip", "level": 5}
    if compression == "lz4":  # fast to write and read back: volumes that live briefly
        return {"id": "blosc", "cname": "lz4", "clevel": 1, "shuffle": 0}
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
        if compression == "lz4":
            inner.append({"name": "blosc", "configuration": {"cname": "lz4", "clevel": 1, "shuffle": "noshuffle", "typesize": dtype.itemsize, "blocksize": 0}})
        elif compression == "segmentation":
            inner.append({"name": "blosc", "configuration": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle", "typesize": dtype.itemsize, "blocksize": 0}})
        elif compression != "none":
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
        n5_codecs: dict[str, dict[str, Any]] = {"none": {"type": "raw"}, "gzip": {"type": "gzip"}, "lz4": {"type": "blosc", "cname": "lz4", "clevel": 1, "shuffle": 0},
                                                "segmentation": {"type": "blosc", "cname": "zstd", "clevel": 1, "shuffle": 2}}
        comp = n5_codecs.get(compression, {"type": "zstd", "level": 3})
        return {"dimensions": list(shape), "blockSize": list(chunks), "dataType": dtype.name, "compression": comp}
    raise AssertionError(fmt)


class VolumeMeta(TypedDict, total=False):
    """What a new volume records about its data (every key optional): ``voxel_size`` (z, y, x nm,
    default 1, 1, 1) and ``offset`` (nm, the world position of voxel 0, default 0), ``fill_value``
    (0), free ``attrs``, and ``layer_type`` (``image``, or ``segmentation``, the precomputed default for
    uint64; with ``compression="zstd"`` a segmentation zarr/n5 volume gets :data:`SEGMENTATION_ZARR2`'s
    codec)."""

    voxel_size: Sequence[float] | None
    offset: Sequence[float] | None
    fill_value: int | float
    attrs: dict[str, Any] | None
    layer_type: Literal["image", "segmentation"] | None


@dataclass(frozen=True)
class _Layout:
    """The checked layout of a volume to create."""

    loc: Location
    fmt: Format
    shape: Coord
    dtype: np.dtype[Any]
    chunks: Coord
    shards: Coord | None
    voxel_size: tuple[float, ...]
    offset: tuple[float, ...]

    @property
    def write_chunks(self) -> Coord:
        return (self.shards or self.chunks)[-3:]

    def matches(self, vol: Volume) -> bool:
        return vol.format == self.fmt and vol.shape == self.shape and vol.dtype == self.dtype and vol.write_chunk_shape == self.write_chunks


def create_volume(
    url: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    *,
    format: Format = "zarr",  # noqa: A002 - the natural name for users
    shards: Sequence[int] | None = None,
    compression: Literal["zstd", "gzip", "lz4", "none"] = "zstd",
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    **meta: Unpack[VolumeMeta],
) -> Volume:
    """Create a volume (or open an existing one with the same layout; ``overwrite`` replaces it).

    ``shape`` is (channels…, z, y, x); ``chunks`` and ``shards`` may give the spatial axes only.
    ``shards`` (zarr3 only) groups chunks into shards: the shard becomes the unit of writing.
    ``overwrite`` deletes only an existing array (see :func:`engine.storage.safety.check_removable`):
    a group, a folder of other files, a root or home folder, or a path equal to or holding one of
    ``inputs`` (the run's inputs) is refused with one line. ``meta``: voxel size, offset, fill value,
    attributes, layer type (:class:`VolumeMeta`).
    """
    check_keys(meta, VolumeMeta, "create_volume")
    lay = _layout(parse_url(url), format, shape, dtype, chunks, shards, meta)
    loc = lay.loc
    meta_attrs = {"voxel_size": list(lay.voxel_size), "offset": list(lay.offset), "axis_names": ["z", "y", "x"], "units": ["nm", "nm", "nm"],
                  **(meta.get("attrs") or {})}
    _check_writable(loc)
    existing = _check_replaceable(loc, overwrite, inputs)
    if existing is not None and not overwrite:
        vol = Volume(url, existing, "r+")
        if not lay.matches(vol):
            raise StorageError(
                f"{loc.url()} already holds a {existing} volume of shape {vol.shape}, dtype {vol.dtype}, "
                f"write chunks {vol.write_chunk_shape}; asked for {lay.fmt} {lay.shape} {lay.dtype} chunks {lay.write_chunks}",
                "pass overwrite (--overwrite) to replace it, or choose another output",
            )
        return vol
    if lay.fmt == "precomputed":
        _create_precomputed(lay, meta.get("layer_type") or ("segmentation" if lay.dtype == np.uint64 else "image"), overwrite)
    else:
        codec = "segmentation" if compression == "zstd" and meta.get("layer_type") == "segmentation" else compression
        _create_array(lay, meta.get("fill_value", 0), codec, meta_attrs, overwrite)
    log.info("created %s volume %s shape=%s dtype=%s chunks=%s shards=%s", lay.fmt, loc.url(), lay.shape, lay.dtype, lay.chunks, lay.shards)
    return Volume(url, lay.fmt, "r+")


def _layout(loc: Location, fmt: Format, shape: Sequence[int], dtype: Any, chunks: Sequence[int], shards: Sequence[int] | None,
            meta: VolumeMeta) -> _Layout:
    """Check the layout asked for; chunks and shards of the spatial axes only get the leading axes."""
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
    shards_t = None if shards is None else _shards(fmt, tuple(int(s) for s in shards), shape_t, chunks_t)
    voxel_size, offset = meta.get("voxel_size"), meta.get("offset")
    vs = tuple(float(v) for v in (voxel_size if voxel_size is not None else (1.0, 1.0, 1.0)))
    off = tuple(float(v) for v in (offset if offset is not None else (0.0, 0.0, 0.0)))
    if len(vs) != 3 or len(off) != 3 or any(v <= 0 for v in vs):
        raise StorageError(f"voxel size {vs} and offset {off} must each give z, y, x", "e.g. --voxel-size 40,8,8 (nm); voxel sizes are positive")
    return _Layout(loc, fmt, shape_t, _dtype(dtype), chunks_t, shards_t, vs, off)


def _shards(fmt: Format, shards_t: Coord, shape_t: Coord, chunks_t: Coord) -> Coord:
    if fmt != "zarr3":
        raise StorageError(f"shards are a zarr v3 feature, but format {fmt!r} was asked for", "use format='zarr3' or drop shards")
    if len(shards_t) == 3:
        shards_t = shape_t[:-3] + shards_t
    if len(shards_t) != len(shape_t) or any(s <= 0 for s in shards_t):
        raise StorageError(f"shard shape {shards_t} does not fit volume shape {shape_t}", "give one positive shard size per axis")
    if any(s % c for s, c in zip(shards_t, chunks_t, strict=True)):
        fixed = tuple(-(-s // c) * c for s, c in zip(shards_t, chunks_t, strict=True))
        raise StorageError(
            f"shard shape {shards_t} is not a multiple of chunk shape {chunks_t}",
            f"make every shard a whole number of chunks, e.g. shards={fixed[-3:]}",
        )
    return shards_t


def _create_array(lay: _Layout, fill_value: int | float, compression: str, meta_attrs: dict[str, Any], overwrite: bool) -> None:
    """A zarr, zarr v3 or n5 array with its attributes, listed in its group's OME-Zarr metadata."""
    loc, fmt, lead = lay.loc, lay.fmt, lay.shape[:-3]
    meta = _metadata(fmt, lay.shape, lay.dtype, lay.chunks, lay.shards, fill_value, compression, lay.voxel_size, meta_attrs)
    spec = {"driver": fmt, "kvstore": loc.kvstore(), "metadata": meta}
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
        n5["resolution"] = [1.0] * len(lead) + list(lay.voxel_size)
        n5["units"] = [""] * len(lead) + ["nm"] * 3
        _write_json(loc, "attributes.json", n5)
    ome.register_in_group(loc, fmt, len(lead), lay.voxel_size, lay.offset)


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


def _create_precomputed(lay: _Layout, layer_type: str, overwrite: bool) -> None:
    loc, shape, dtype, chunks, vs, off = lay.loc, lay.shape, lay.dtype, lay.chunks, lay.voxel_size, lay.offset
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
