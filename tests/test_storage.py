"""Volumes on TensorStore: URLs, formats, round trips, metadata, alignment, errors and pickling."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

from engine.errors import StorageError
from engine.geometry import Box
from engine.storage import (
    FORMATS,
    Location,
    Volume,
    check_write_alignment,
    create_volume,
    detect_format,
    open_volume,
    parse_url,
)

META_KEY = {"zarr": ".zarray", "zarr3": "zarr.json", "n5": "attributes.json", "precomputed": "info"}
SHAPE = (6, 10, 12)  # not a multiple of the chunks below: the edge chunks are partial
CHUNKS = (4, 4, 4)
OME_SPACE_UNITS = {"angstrom", "nanometer", "micrometer", "millimeter", "meter"}


def _memory_url(name: str = "raw") -> str:
    """A fresh memory:// URL (memory stores are shared by the whole process, so names must differ)."""
    return f"memory://{uuid.uuid4().hex}/data.zarr/{name}"


def _url(where: str, tmp_path: Path, name: str = "raw") -> str:
    return str(tmp_path / "data.zarr" / name) if where == "file" else _memory_url(name)


def _data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dt)
    return rng.integers(0, np.iinfo(dt).max, size=shape, dtype=dt, endpoint=True)


def _fails(fn: Any, *words: str) -> StorageError:
    """Call ``fn``; it must raise a one-line StorageError that names a fix and contains ``words``."""
    with pytest.raises(StorageError) as info:
        fn()
    err = info.value
    msg = str(err)
    assert "\n" not in msg, msg
    assert err.fix, f"no fix given in: {msg}"
    assert len(msg) < 600, f"message too long ({len(msg)} characters): {msg}"
    for word in words:
        assert word in msg, f"{word!r} not in: {msg}"
    return err


# ------------------------------------------------------------------------------------------------
# URLs
# ------------------------------------------------------------------------------------------------


def test_parse_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("data.zarr/raw") == Location("file", str(tmp_path / "data.zarr" / "raw"))
    assert parse_url(tmp_path / "a.zarr") == Location("file", str(tmp_path / "a.zarr"))
    assert parse_url(f"file://{tmp_path}/a.zarr/raw") == Location("file", f"{tmp_path}/a.zarr/raw")
    loc = parse_url("data.zarr/raw")
    assert loc.is_local_file and not loc.process_local
    assert loc.kvstore() == {"driver": "file", "path": f"{tmp_path}/data.zarr/raw/"}
    assert loc.kvstore(".zarray") == {"driver": "file", "path": f"{tmp_path}/data.zarr/raw/.zarray"}
    assert loc.name == "raw"
    assert loc.parent() == Location("file", str(tmp_path / "data.zarr"))
    assert parse_url("/top").parent() == Location("file", "/")
    assert parse_url(loc.url()) == loc


def test_parse_memory() -> None:
    loc = parse_url("memory://scratch/data.zarr/raw/")
    assert loc == Location("memory", "scratch/data.zarr/raw")
    assert loc.process_local and not loc.is_local_file
    assert loc.kvstore() == {"driver": "memory", "path": "scratch/data.zarr/raw/"}
    assert loc.url() == "memory://scratch/data.zarr/raw"
    assert parse_url(loc.url()) == loc
    assert loc.parent().url() == "memory://scratch/data.zarr"
    # the root of memory is "", not "/" (which would prefix every key)
    assert parse_url("memory://raw").parent().kvstore() == {"driver": "memory", "path": ""}


@pytest.mark.parametrize(("scheme", "driver"), [("gs", "gcs"), ("s3", "s3")])
def test_parse_cloud_urls(scheme: str, driver: str) -> None:
    loc = parse_url(f"{scheme}://bucket/em/data.zarr/raw")
    assert loc == Location(scheme, "em/data.zarr/raw", "bucket")
    assert not loc.is_local_file and not loc.process_local
    assert loc.url() == f"{scheme}://bucket/em/data.zarr/raw"
    assert parse_url(loc.url()) == loc
    assert loc.kvstore() == {"driver": driver, "bucket": "bucket", "path": "em/data.zarr/raw/"}
    assert loc.kvstore("zarr.json") == {"driver": driver, "bucket": "bucket", "path": "em/data.zarr/raw/zarr.json"}
    assert loc.parent() == Location(scheme, "em/data.zarr", "bucket")
    # TensorStore accepts the spec (parsed, not opened: no network here) and names the same place
    spec = ts.Spec({"driver": "zarr", "kvstore": loc.kvstore()})
    assert spec.kvstore is not None
    assert spec.kvstore.url == f"{scheme}://bucket/em/data.zarr/raw/"
    # the root of a bucket has the empty path, not "/"
    root = parse_url(f"{scheme}://bucket")
    assert root.kvstore() == {"driver": driver, "bucket": "bucket", "path": ""}
    assert parse_url(f"{scheme.upper()}://bucket/x") == Location(scheme, "x", "bucket")  # schemes ignore case


def test_cloud_volume_pickles_without_opening() -> None:
    vol = Volume("gs://bucket/data.zarr/raw", "zarr3", "r+")
    back = pickle.loads(pickle.dumps(vol))
    assert (back.url, back.format, back.mode) == ("gs://bucket/data.zarr/raw", "zarr3", "r+")
    assert back.loc.kvstore() == {"driver": "gcs", "bucket": "bucket", "path": "data.zarr/raw/"}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", ("empty volume path",)),
        ("ftp://host/data.zarr", ("unknown storage scheme 'ftp'", "gs://")),
        ("http://host/data.zarr", ("unknown storage scheme 'http'",)),
        ("gs:///data.zarr/raw", ("no bucket", "gs://BUCKET/")),
        ("s3://", ("no bucket", "s3://BUCKET/")),
    ],
)
def test_bad_urls(url: str, words: tuple[str, ...]) -> None:
    _fails(lambda: parse_url(url), *words)
    _fails(lambda: open_volume(url), *words)


def test_unknown_scheme_on_create() -> None:
    _fails(lambda: create_volume("zarr://x/raw", SHAPE, "uint8", CHUNKS), "unknown storage scheme 'zarr'")


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "memory"])
@pytest.mark.parametrize("dtype", ["uint8", "uint64", "float32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt: str, dtype: str, where: str, tmp_path: Path) -> None:
    url = _url(where, tmp_path)
    vol = create_volume(url, SHAPE, dtype, CHUNKS, format=fmt)  # type: ignore[arg-type]
    assert (vol.format, vol.mode, vol.shape, vol.spatial_shape) == (fmt, "r+", SHAPE, SHAPE)
    assert vol.dtype == np.dtype(dtype)
    assert vol.box == Box((0, 0, 0), SHAPE)
    assert vol.chunk_shape == CHUNKS == vol.write_chunk_shape
    assert np.array_equal(vol.read(vol.box), np.zeros(SHAPE, dtype))  # fill value before any write

    data = _data(SHAPE, dtype)
    vol.write(vol.box, data)
    assert detect_format(url) == fmt
    again = open_volume(url)
    assert again.format == fmt and again.mode == "r"
    assert np.array_equal(again.read(again.box), data)
    sub = Box((1, 3, 5), (5, 9, 12))
    assert np.array_equal(again.read(sub), data[sub.to_slices()])
    assert np.array_equal(again.read_async(sub).result(), data[sub.to_slices()])

    # a partial write changes only its box
    patch = _data(sub.shape, dtype, seed=1)
    vol.write(sub, patch)
    expected = data.copy()
    expected[sub.to_slices()] = patch
    assert np.array_equal(open_volume(url).read(vol.box), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_with_channels(fmt: str, tmp_path: Path) -> None:
    url = str(tmp_path / "data.zarr" / "aff")
    shape = (3, *SHAPE)
    vol = create_volume(url, shape, "float32", CHUNKS, format=fmt)  # type: ignore[arg-type]
    assert vol.shape == shape and vol.spatial_shape == SHAPE and vol.box == Box((0, 0, 0), SHAPE)
    assert vol.chunk_shape == CHUNKS
    data = _data(shape, "float32")
    vol.write(vol.box, data)
    again = open_volume(url)
    assert again.shape == shape
    assert np.array_equal(again.read(again.box), data)
    sub = Box((0, 2, 4), (3, 6, 8))
    assert np.array_equal(again.read(sub), data[(slice(None), *sub.to_slices())])
    again.expect(dtype="float32", spatial_shape=SHAPE, ndim=4)


@pytest.mark.parametrize("where", ["file", "memory"])
def test_round_trip_sharded(where: str, tmp_path: Path) -> None:
    url = _url(where, tmp_path)
    vol = create_volume(url, (8, 16, 16), "uint64", (2, 4, 4), format="zarr3", shards=(4, 8, 8))
    assert vol.chunk_shape == (2, 4, 4)
    assert vol.write_chunk_shape == (4, 8, 8)  # the shard is the unit of writing
    data = _data((8, 16, 16), "uint64")
    for z in (0, 4):  # one write per row of shards
        box = Box((z, 0, 0), (z + 4, 16, 16))
        vol.write(box, data[box.to_slices()])
    again = open_volume(url)
    assert again.write_chunk_shape == (4, 8, 8) and again.chunk_shape == (2, 4, 4)
    assert np.array_equal(again.read(again.box), data)
    meta = json.loads(Path(url, "zarr.json").read_text()) if where == "file" else None
    if meta is not None:
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 8, 8]
        assert meta["codecs"][0]["name"] == "sharding_indexed"
        assert meta["codecs"][0]["configuration"]["chunk_shape"] == [2, 4, 4]


def test_writes_cast_safely_and_refuse_lossy_casts(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "raw", (2, 2, 2), "uint16", (2, 2, 2))
    vol.write(vol.box, np.full((2, 2, 2), 7, np.uint8))  # uint8 fits in uint16
    assert vol.read(vol.box).dtype == np.uint16 and int(vol.read(vol.box).sum()) == 56
    _fails(lambda: vol.write(vol.box, np.zeros((2, 2, 2), np.float32)), "float32", "uint16", "astype")
    _fails(lambda: vol.write(vol.box, np.zeros((2, 2, 2), np.int64)), "int64")
    floats = create_volume(tmp_path / "a.zarr" / "prob", (2, 2, 2), "float32", (2, 2, 2))
    floats.write(floats.box, np.full((2, 2, 2), 0.5, np.float64))  # same kind: float64 -> float32
    assert np.allclose(floats.read(floats.box), 0.5)


def test_memory_volumes_are_shared_within_the_process() -> None:
    url = _memory_url()
    vol = create_volume(url, (4, 4, 4), "uint8", (2, 2, 2))
    assert vol.process_local
    vol.write(Box((0, 0, 0), (2, 2, 2)), np.full((2, 2, 2), 9, np.uint8))
    other = open_volume(url)  # another open sees the same bytes
    assert other is not vol and other.process_local
    assert int(other.read(other.box).sum()) == 9 * 8
    assert detect_format(url) == "zarr"
    assert detect_format(_memory_url()) is None  # a fresh name holds nothing


def test_create_is_idempotent_for_the_same_layout(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    vol = create_volume(url, SHAPE, "uint8", CHUNKS)
    vol.write(vol.box, np.ones(SHAPE, np.uint8))
    same = create_volume(url, SHAPE, "uint8", CHUNKS)  # opens what is there, keeps the data
    assert same.mode == "r+"
    assert int(same.read(same.box).sum()) == int(np.prod(SHAPE))


# ------------------------------------------------------------------------------------------------
# Format detection, zarr groups and zarr-python
# ------------------------------------------------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    for fmt in FORMATS:
        create_volume(tmp_path / fmt, SHAPE, "uint8", CHUNKS, format=fmt)  # type: ignore[arg-type]
        assert detect_format(tmp_path / fmt) == fmt
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path / "empty") is None
    assert detect_format(tmp_path / "missing") is None


@pytest.mark.parametrize(("fmt", "shards"), [("zarr", None), ("zarr3", None), ("zarr3", (4, 8, 8))])
def test_zarr_group_opens_in_zarr_python(fmt: str, shards: tuple[int, ...] | None, tmp_path: Path) -> None:
    group_path = tmp_path / "data.zarr"
    raw = create_volume(group_path / "raw", (8, 16, 16), "uint8", (4, 4, 4), format=fmt, shards=shards)  # type: ignore[arg-type]
    aff = create_volume(group_path / "aff", (3, 8, 16, 16), "float32", (4, 4, 4), format=fmt, shards=shards)  # type: ignore[arg-type]
    raw_data, aff_data = _data(raw.shape, "uint8"), _data(aff.shape, "float32")
    raw.write(raw.box, raw_data)
    aff.write(aff.box, aff_data)

    if fmt == "zarr":
        assert json.loads((group_path / ".zgroup").read_text()) == {"zarr_format": 2}
        assert (group_path / "raw" / ".zarray").is_file()
    else:
        meta = json.loads((group_path / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
        assert json.loads((group_path / "raw" / "zarr.json").read_text())["node_type"] == "array"

    group = zarr.open_group(str(group_path), mode="r")
    assert group.metadata.zarr_format == (2 if fmt == "zarr" else 3)
    assert sorted(group.array_keys()) == ["aff", "raw"]
    assert np.array_equal(group["raw"][:], raw_data)
    assert np.array_equal(group["aff"][:], aff_data)
    assert group["raw"].chunks == (4, 4, 4)
    if shards is not None:
        assert group["raw"].shards == shards
    # zarr-python also opens the array by its own path
    assert np.array_equal(zarr.open_array(str(group_path / "raw"), mode="r")[:], raw_data)


def test_nested_groups_are_all_groups(tmp_path: Path) -> None:
    create_volume(tmp_path / "data.zarr" / "volumes" / "raw", (4, 4, 4), "uint8", (2, 2, 2))
    assert (tmp_path / "data.zarr" / ".zgroup").is_file()
    assert (tmp_path / "data.zarr" / "volumes" / ".zgroup").is_file()
    assert not (tmp_path / ".zgroup").exists()  # groups start at the first *.zarr folder
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="r")
    assert group["volumes/raw"].shape == (4, 4, 4)


# ------------------------------------------------------------------------------------------------
# Voxel size, offset and OME-Zarr metadata
# ------------------------------------------------------------------------------------------------


def _check_ome_multiscales(multiscales: list[dict[str, Any]], version: str, arrays: dict[str, int]) -> None:
    """Validate against the OME-Zarr 0.4 / 0.5 "multiscales" rules; ``arrays`` maps path -> ndim."""
    assert isinstance(multiscales, list) and multiscales
    seen = set()
    for ms in multiscales:
        if version == "0.4":
            assert ms["version"] == "0.4"
        else:
            assert "version" not in ms  # 0.5 keeps the version in "ome"
        axes = ms["axes"]
        names = [a["name"] for a in axes]
        types = [a.get("type") for a in axes]
        assert len(set(names)) == len(names), names
        assert 2 <= types.count("space") <= 3
        assert types.count("time") <= 1 and types.count("channel") <= 1
        order = {"time": 0, "channel": 1, "space": 2}
        assert [order[t] for t in types] == sorted(order[t] for t in types), types  # time, channel, space
        for a in axes:
            if a.get("type") == "space":
                assert a["unit"] in OME_SPACE_UNITS
        assert ms["datasets"]
        for ds in ms["datasets"]:
            path = ds["path"]
            assert isinstance(path, str) and path in arrays
            assert arrays[path] == len(axes), f"{path}: {arrays[path]} dimensions but {len(axes)} axes"
            seen.add(path)
            transforms = ds["coordinateTransformations"]
            assert [t["type"] for t in transforms] in (["scale"], ["scale", "translation"])
            assert len(transforms[0]["scale"]) == len(axes)
            assert all(isinstance(v, (int, float)) and v > 0 for v in transforms[0]["scale"])
            if len(transforms) == 2:
                assert len(transforms[1]["translation"]) == len(axes)
    assert seen == set(arrays)


def test_ome_zarr_04_metadata(tmp_path: Path) -> None:
    group_path = tmp_path / "data.zarr"
    create_volume(group_path / "raw", SHAPE, "uint8", CHUNKS, voxel_size=(40, 8, 4), offset=(400, 80, 40))
    create_volume(group_path / "aff", (3, *SHAPE), "float32", CHUNKS, voxel_size=(40, 8, 4))
    create_volume(group_path / "raw", SHAPE, "uint8", CHUNKS, overwrite=True, voxel_size=(40, 8, 4), offset=(400, 80, 40))
    zattrs = json.loads((group_path / ".zattrs").read_text())
    _check_ome_multiscales(zattrs["multiscales"], "0.4", {"raw": 3, "aff": 4})
    assert len(zattrs["multiscales"]) == 2  # re-creating "raw" replaced its entry
    raw = next(ms for ms in zattrs["multiscales"] if ms["datasets"][0]["path"] == "raw")
    assert [a["name"] for a in raw["axes"]] == ["z", "y", "x"]
    assert raw["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0, 8.0, 4.0]},
        {"type": "translation", "translation": [400.0, 80.0, 40.0]},
    ]
    aff = next(ms for ms in zattrs["multiscales"] if ms["datasets"][0]["path"] == "aff")
    assert (aff["axes"][0]["name"], aff["axes"][0]["type"]) == ("c", "channel")
    assert aff["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 40.0, 8.0, 4.0]


def test_ome_zarr_05_metadata(tmp_path: Path) -> None:
    group_path = tmp_path / "data.zarr"
    create_volume(group_path / "raw", SHAPE, "uint8", CHUNKS, format="zarr3", voxel_size=(40, 8, 4), offset=(400, 80, 40))
    create_volume(group_path / "aff", (3, *SHAPE), "float32", CHUNKS, format="zarr3", shards=(4, 8, 8))
    meta = json.loads((group_path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    _check_ome_multiscales(ome["multiscales"], "0.5", {"raw": 3, "aff": 4})
    # the arrays' dimension_names match the axes names (an OME-Zarr 0.5 rule)
    for ms in ome["multiscales"]:
        path = ms["datasets"][0]["path"]
        array_meta = json.loads((group_path / path / "zarr.json").read_text())
        assert array_meta["dimension_names"] == [a["name"] for a in ms["axes"]]


def test_arrays_with_several_leading_axes_stay_out_of_ome(tmp_path: Path) -> None:
    group_path = tmp_path / "data.zarr"
    vol = create_volume(group_path / "emb", (2, 3, 4, 4, 4), "float32", (2, 2, 2), format="zarr3")
    assert vol.shape == (2, 3, 4, 4, 4)
    meta = json.loads((group_path / "emb" / "zarr.json").read_text())
    assert meta["dimension_names"] == ["c0", "c1", "z", "y", "x"]  # unique names
    group = json.loads((group_path / "zarr.json").read_text())
    assert "multiscales" not in group["attributes"].get("ome", {})


@pytest.mark.parametrize("fmt", FORMATS)
def test_voxel_size_and_offset_round_trip(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS, format=fmt, voxel_size=(40, 8, 4), offset=(400, 80, 40))  # type: ignore[arg-type]
    vol = open_volume(url)
    assert vol.voxel_size == (40.0, 8.0, 4.0)
    assert vol.offset == (400.0, 80.0, 40.0)
    if fmt in ("n5", "precomputed"):
        # TensorStore reads the same resolution, axis by axis (z, y, x)
        units = vol.store.dimension_units
        assert [(u.multiplier, u.base_unit) for u in units] == [(40.0, "nm"), (8.0, "nm"), (4.0, "nm")]
    if fmt == "n5":
        attrs = json.loads((url / "attributes.json").read_text())
        assert attrs["dimensions"] == list(SHAPE)
        assert attrs["resolution"] == [40.0, 8.0, 4.0]  # in the order of "dimensions"


def test_default_voxel_size_and_offset(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "raw", SHAPE, "uint8", CHUNKS)
    assert vol.voxel_size == (1.0, 1.0, 1.0) and vol.offset == (0.0, 0.0, 0.0)


def test_n5_with_channels_has_one_unit_per_axis(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.n5", (2, *SHAPE), "uint8", CHUNKS, format="n5", voxel_size=(40, 8, 4))
    again = open_volume(vol.url)
    assert again.shape == (2, *SHAPE) and again.voxel_size == (40.0, 8.0, 4.0)
    assert [u.multiplier for u in again.store.dimension_units] == [1.0, 40.0, 8.0, 4.0]


@pytest.mark.parametrize("fmt", ["zarr", "zarr3"])
def test_voxel_size_falls_back_to_the_group_multiscales(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS, format=fmt, voxel_size=(40, 8, 4), offset=(400, 80, 40))  # type: ignore[arg-type]
    # drop the array's own attributes: only the OME-Zarr metadata of the group is left
    if fmt == "zarr":
        (url / ".zattrs").write_text("{}")
    else:
        meta = json.loads((url / "zarr.json").read_text())
        meta["attributes"] = {}
        (url / "zarr.json").write_text(json.dumps(meta))
    vol = open_volume(url)
    assert vol.voxel_size == (40.0, 8.0, 4.0)
    assert vol.offset == (400.0, 80.0, 40.0)


def test_funlib_resolution_attribute_is_read(tmp_path: Path) -> None:
    url = tmp_path / "plain" / "raw.zarr"  # no *.zarr parent: no group, no multiscales
    create_volume(url, SHAPE, "uint8", CHUNKS)
    (url / ".zattrs").write_text(json.dumps({"resolution": [40, 8, 4], "offset": [0, 8, 4]}))
    vol = open_volume(url)
    assert vol.voxel_size == (40.0, 8.0, 4.0) and vol.offset == (0.0, 8.0, 4.0)


# ------------------------------------------------------------------------------------------------
# Write-chunk alignment
# ------------------------------------------------------------------------------------------------


def test_write_alignment_with_chunks(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "raw", (16, 32, 32), "uint8", (4, 8, 8))
    check_write_alignment(vol, (4, 8, 8))
    check_write_alignment(vol, (8, 16, 24), origin=(4, 8, 16))
    err = _fails(lambda: check_write_alignment(vol, (6, 8, 8)), "(6, 8, 8)", "(4, 8, 8)", "same chunk")
    assert err.fix is not None and "(8, 8, 8)" in err.fix  # 6 rounded up to a multiple of 4
    err = _fails(lambda: check_write_alignment(vol, (4, 8, 8), origin=(0, 4, 0)), "(0, 4, 0)")
    assert err.fix is not None and "start the blocks" in err.fix


def test_write_alignment_with_shards(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "raw", (16, 32, 32), "uint8", (2, 4, 4), format="zarr3", shards=(4, 8, 8))
    assert vol.write_chunk_shape == (4, 8, 8)
    check_write_alignment(vol, (4, 8, 8))
    check_write_alignment(vol, (8, 16, 16))
    # whole chunks are not enough: two blocks would write the same shard
    err = _fails(lambda: check_write_alignment(vol, (2, 4, 4)), "(4, 8, 8)")
    assert err.fix is not None and "e.g. (4, 8, 8)" in err.fix


def test_write_alignment_with_channels_checks_spatial_axes(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "aff", (3, 8, 8, 8), "float32", (4, 4, 4))
    assert vol.write_chunk_shape == (4, 4, 4)
    check_write_alignment(vol, (8, 8, 4))
    _fails(lambda: check_write_alignment(vol, (8, 8, 3)), "(4, 4, 4)")


# ------------------------------------------------------------------------------------------------
# Errors: each one line, naming the problem and a fix
# ------------------------------------------------------------------------------------------------


def test_missing_store(tmp_path: Path) -> None:
    _fails(lambda: open_volume(tmp_path / "nothing.zarr" / "raw"), "no volume", "does not exist")
    (tmp_path / "empty.zarr").mkdir()
    _fails(lambda: open_volume(tmp_path / "empty.zarr"), "no volume", "no zarr, zarr3, n5 or precomputed metadata")
    _fails(lambda: open_volume(_memory_url()), "no volume", "memory://")


@pytest.mark.parametrize("fmt", ["zarr", "zarr3"])
def test_group_instead_of_array(fmt: str, tmp_path: Path) -> None:
    create_volume(tmp_path / "data.zarr" / "raw", SHAPE, "uint8", CHUNKS, format=fmt)  # type: ignore[arg-type]
    err = _fails(lambda: open_volume(tmp_path / "data.zarr"), "group, not an array")
    assert err.fix is not None and "data.zarr/raw" in err.fix


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_metadata(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS, format=fmt)  # type: ignore[arg-type]
    (url / META_KEY[fmt]).write_text("{this is not json")
    _fails(lambda: open_volume(url), META_KEY[fmt], "corrupt")
    # creating over it fails the same way rather than writing into a broken store
    _fails(lambda: create_volume(url, SHAPE, "uint8", CHUNKS, format=fmt), META_KEY[fmt])  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["zarr", "zarr3", "precomputed"])
def test_metadata_of_the_wrong_shape(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS, format=fmt)  # type: ignore[arg-type]
    (url / META_KEY[fmt]).write_text(json.dumps({"zarr_format": 99, "node_type": "array"}))
    _fails(lambda: open_volume(url), f"cannot open {fmt} volume", META_KEY[fmt])


def test_metadata_that_is_not_an_object(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS, format="zarr3")
    (url / "zarr.json").write_text("[1, 2, 3]")
    _fails(lambda: open_volume(url), "zarr.json is corrupt", "not a JSON object")


def test_wrong_dtype_and_shape(tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    create_volume(url, SHAPE, "uint8", CHUNKS)
    assert open_volume(url, dtype="uint8", spatial_shape=SHAPE).dtype == np.uint8
    assert open_volume(url, dtype=["uint16", np.uint8]).dtype == np.uint8  # any of several
    _fails(lambda: open_volume(url, dtype="uint64"), "dtype uint8", "uint64 is needed")
    _fails(lambda: open_volume(url, dtype=["uint16", "uint64"]), "uint16 or uint64")
    _fails(lambda: open_volume(url, spatial_shape=(6, 10, 13)), str(SHAPE), "(6, 10, 13) is needed")
    vol = open_volume(url)
    _fails(lambda: vol.expect(dtype="float32"), "float32 is needed")
    _fails(lambda: vol.expect(spatial_shape=(1, 2, 3)), "(1, 2, 3)")
    _fails(lambda: vol.expect(ndim=4), "3 axes", "4 are needed")
    _fails(lambda: vol.expect(dtype="not-a-dtype"), "unknown dtype")
    assert vol.expect(dtype="uint8", spatial_shape=SHAPE, ndim=3) is vol


def test_writing_the_wrong_array(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "data.zarr" / "raw", SHAPE, "uint8", CHUNKS)
    box = Box((0, 0, 0), (2, 2, 2))
    err = _fails(lambda: vol.write(box, np.zeros((2, 2, 3), np.uint8)), "(2, 2, 3)")
    assert err.fix is not None and "(2, 2, 2)" in err.fix
    _fails(lambda: vol.write(Box((0, 0, 0), (7, 1, 1)), np.zeros((7, 1, 1), np.uint8)), "outside volume")
    _fails(lambda: vol.read(Box((-1, 0, 0), (1, 1, 1))), "outside volume")
    reader = open_volume(vol.url)
    _fails(lambda: reader.write(box, np.zeros((2, 2, 2), np.uint8)), "read-only", "mode='r+'")
    aff = create_volume(tmp_path / "data.zarr" / "aff", (3, *SHAPE), "float32", CHUNKS)
    err = _fails(lambda: aff.write(box, np.zeros((2, 2, 2), np.float32)), "(2, 2, 2)")
    assert err.fix is not None and "(3, 2, 2, 2)" in err.fix


def test_unwritable_destination(tmp_path: Path) -> None:
    # tests run as root, so permission bits stop nothing: use a path under a regular file ...
    (tmp_path / "a-file").write_text("not a folder")
    _fails(lambda: create_volume(tmp_path / "a-file" / "data.zarr" / "raw", SHAPE, "uint8", CHUNKS), "is a file, not a folder")
    # ... and /proc, where nobody creates folders
    target = f"/proc/connectile-{uuid.uuid4().hex}.zarr/raw"
    for fmt in FORMATS:
        _fails(lambda fmt=fmt: create_volume(target, SHAPE, "uint8", CHUNKS, format=fmt), "cannot write to /proc")
    assert not os.path.exists(target)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"shape": (6, 10, 13)}, ("(6, 10, 12)", "(6, 10, 13)")),
        ({"dtype": "uint16"}, ("uint8", "uint16")),
        ({"chunks": (2, 4, 4)}, ("(4, 4, 4)", "(2, 4, 4)")),
        ({"format": "zarr3"}, ("a zarr volume", "asked for zarr3")),
    ],
)
def test_create_over_another_layout(change: dict[str, Any], words: tuple[str, ...], tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    vol = create_volume(url, SHAPE, "uint8", CHUNKS)
    vol.write(vol.box, np.ones(SHAPE, np.uint8))
    args: dict[str, Any] = {"shape": SHAPE, "dtype": "uint8", "chunks": CHUNKS, **change}
    err = _fails(lambda: create_volume(url, **args), "already holds", *words)
    assert err.fix is not None and "overwrite" in err.fix
    assert int(open_volume(url).read(vol.box).sum()) == int(np.prod(SHAPE))  # untouched
    # overwrite replaces it: the new layout, and none of the old data
    new = create_volume(url, **args, overwrite=True)
    assert detect_format(url) == args.get("format", "zarr")
    assert new.shape == tuple(args["shape"]) and new.dtype == np.dtype(args["dtype"])
    assert new.write_chunk_shape == tuple(args["chunks"])
    assert int(open_volume(url).read(new.box).sum()) == 0


@pytest.mark.parametrize(("old", "new"), [("zarr", "n5"), ("n5", "precomputed"), ("precomputed", "zarr3"), ("zarr3", "zarr")])
def test_overwrite_with_another_format(old: str, new: str, tmp_path: Path) -> None:
    url = tmp_path / "vol"
    create_volume(url, SHAPE, "uint8", CHUNKS, format=old).write(Box((0, 0, 0), SHAPE), np.ones(SHAPE, np.uint8))  # type: ignore[arg-type]
    create_volume(url, SHAPE, "uint16", CHUNKS, format=new, overwrite=True)  # type: ignore[arg-type]
    vol = open_volume(url)
    assert vol.format == new and vol.dtype == np.uint16
    assert int(vol.read(vol.box).sum()) == 0
    assert not (url / META_KEY[old]).exists()  # no stale metadata left to confuse detection


@pytest.mark.parametrize("fmt", ["zarr", "n5", "precomputed"])
def test_shards_need_zarr3(fmt: str, tmp_path: Path) -> None:
    _fails(lambda: create_volume(tmp_path / "v", SHAPE, "uint8", CHUNKS, format=fmt, shards=(8, 8, 8)), "zarr v3", "format='zarr3'")  # type: ignore[arg-type]
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"shards": (6, 8, 8)}, ("not a multiple of chunk shape", "shards=(8, 8, 8)")),
        ({"shards": (8, 8)}, ("shard shape",)),
        ({"chunks": (4, 4)}, ("chunk shape (4, 4)",)),
        ({"chunks": (4, 0, 4)}, ("chunk shape",)),
        ({"shape": (6, 10)}, ("with shape (6, 10)",)),
        ({"shape": (6, 0, 12)}, ("with shape",)),
        ({"dtype": "not-a-dtype"}, ("unknown dtype",)),
        ({"format": "hdf5"}, ("unknown format 'hdf5'",)),
        ({"voxel_size": (8, 8)}, ("voxel size",)),
        ({"voxel_size": (40, 0, 8)}, ("voxel size",)),
        ({"offset": (1, 2)}, ("offset",)),
    ],
)
def test_bad_layouts(kwargs: dict[str, Any], words: tuple[str, ...], tmp_path: Path) -> None:
    args: dict[str, Any] = {"shape": SHAPE, "dtype": "uint8", "chunks": CHUNKS, "format": "zarr3", **kwargs}
    _fails(lambda: create_volume(tmp_path / "v", **args), *words)


def test_precomputed_axes(tmp_path: Path) -> None:
    _fails(lambda: create_volume(tmp_path / "v", (2, 2, *SHAPE), "uint8", CHUNKS, format="precomputed"), "at most")
    # one channel reads back as (z, y, x), so asking for (1, z, y, x) is refused up front
    err = _fails(lambda: create_volume(tmp_path / "v", (1, *SHAPE), "uint8", CHUNKS, format="precomputed"), "one channel")
    assert err.fix is not None and str(SHAPE) in err.fix
    assert not (tmp_path / "v").exists()


def test_precomputed_segmentation_encoding(tmp_path: Path) -> None:
    labels = create_volume(tmp_path / "labels", SHAPE, "uint64", CHUNKS, format="precomputed")
    info = json.loads((tmp_path / "labels" / "info").read_text())
    assert info["type"] == "segmentation"
    assert info["scales"][0]["encoding"] == "compressed_segmentation"
    data = _data(SHAPE, "uint64") % 5  # few labels, as in a segmentation
    labels.write(labels.box, data)
    assert np.array_equal(open_volume(labels.url).read(labels.box), data)
    # a float "segmentation" cannot use compressed_segmentation (uint32/uint64 only): stored raw
    create_volume(tmp_path / "scores", SHAPE, "float32", CHUNKS, format="precomputed", layer_type="segmentation")
    assert json.loads((tmp_path / "scores" / "info").read_text())["scales"][0]["encoding"] == "raw"


def test_numpy_voxel_size_is_accepted(tmp_path: Path) -> None:
    vol = create_volume(tmp_path / "a.zarr" / "raw", SHAPE, "uint8", CHUNKS, voxel_size=np.array([40.0, 8.0, 8.0]))
    assert open_volume(vol.url).voxel_size == (40.0, 8.0, 8.0)


# ------------------------------------------------------------------------------------------------
# Pickling: a Volume travels as its URL and the receiver reopens it
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_volume_pickles_as_its_url(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    vol = create_volume(url, (32, 32, 32), "uint8", (8, 8, 8), format=fmt)  # type: ignore[arg-type]
    data = _data((32, 32, 32), "uint8")
    vol.write(vol.box, data)
    blob = pickle.dumps(vol)
    assert len(blob) < 500  # the URL, never the 32 KiB of data
    back = pickle.loads(blob)
    assert isinstance(back, Volume)
    assert (back.url, back.format, back.mode) == (vol.url, fmt, "r+")
    assert np.array_equal(back.read(back.box), data)
    reader = pickle.loads(pickle.dumps(open_volume(url)))
    assert reader.mode == "r"


def test_memory_volume_pickles_within_the_process() -> None:
    url = _memory_url()
    vol = create_volume(url, (4, 4, 4), "uint8", (2, 2, 2))
    vol.write(vol.box, np.full((4, 4, 4), 3, np.uint8))
    back = pickle.loads(pickle.dumps(vol))
    assert back.process_local and int(back.read(back.box).sum()) == 3 * 64


CHILD = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    from engine.geometry import Box

    with open(sys.argv[1], "rb") as f:
        vol = pickle.load(f)
    data = vol.read(vol.box)
    np.save(sys.argv[2], data)
    vol.write(Box((0, 0, 0), (4, 4, 4)), np.full((4, 4, 4), 200, vol.dtype))
    print(vol.format, vol.shape)
    """
)


@pytest.mark.parametrize("fmt", ["zarr", "zarr3"])
def test_volume_reopens_in_another_process(fmt: str, tmp_path: Path) -> None:
    url = tmp_path / "data.zarr" / "raw"
    vol = create_volume(url, (8, 8, 8), "uint8", (4, 4, 4), format=fmt)  # type: ignore[arg-type]
    data = _data((8, 8, 8), "uint8")
    vol.write(vol.box, data)
    (tmp_path / "vol.pkl").write_bytes(pickle.dumps(vol))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "vol.pkl"), str(tmp_path / "seen.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == fmt
    # the child read what this process wrote ...
    assert np.array_equal(np.load(tmp_path / "seen.npy"), data)
    # ... and this process reads what the child wrote
    expected = data.copy()
    expected[:4, :4, :4] = 200
    assert np.array_equal(open_volume(url).read(vol.box), expected)


def _blosc_recorded(url: str, fmt: str) -> tuple[str, int, Any]:
    """(cname, clevel, shuffle) of the blosc codec a volume's metadata records."""
    if fmt == "zarr":
        c = json.loads((Path(url) / ".zarray").read_text())["compressor"]
    elif fmt == "zarr3":
        [c] = [c["configuration"] for c in json.loads((Path(url) / "zarr.json").read_text())["codecs"] if c["name"] == "blosc"]
    else:
        c = json.loads((Path(url) / "attributes.json").read_text())["compression"]
        assert c["type"] == "blosc"
    return c["cname"], c["clevel"], c["shuffle"]


@pytest.mark.parametrize("fmt", ["zarr", "zarr3", "n5"])
@pytest.mark.parametrize(
    ("dtype", "options", "want"),
    [
        ("uint32", {"compression": "lz4"}, ("lz4", 1, (0, "noshuffle"))),  # fast to write and read back
        ("uint64", {"layer_type": "segmentation"}, ("zstd", 1, (2, "bitshuffle"))),  # the label codec
    ],
)
def test_blosc_codecs_round_trip_and_are_recorded(fmt: str, dtype: str, options: dict[str, str], want: tuple[str, int, tuple[Any, Any]],
                                                  tmp_path: Path) -> None:
    """``compression='lz4'`` and segmentation volumes (default compression: blosc zstd 1 + bit shuffle)
    are written as such in every format and read back; zarr-python reads the zarr and zarr3 arrays
    too. An image volume keeps zstd level 3."""
    url = str(tmp_path / ("s.n5" if fmt == "n5" else "s.zarr") / "v")
    vol = create_volume(url, SHAPE, dtype, CHUNKS, format=fmt, **options)  # type: ignore[arg-type]
    data = _data(SHAPE, dtype)
    vol.write(vol.box, data)
    assert np.array_equal(open_volume(url).read(vol.box), data)
    cname, clevel, shuffle = _blosc_recorded(url, fmt)
    assert cname == want[0] and clevel == want[1] and shuffle in want[2]
    if fmt != "n5":
        assert np.array_equal(zarr.open_array(url, mode="r")[:], data)
    if fmt == "zarr":
        image = create_volume(str(tmp_path / "s.zarr" / "raw"), SHAPE, "uint8", CHUNKS)
        assert json.loads((Path(image.url) / ".zarray").read_text())["compressor"]["clevel"] == 3



def test_scratch_files_skip_fsync_and_outputs_keep_it() -> None:
    """Scratch files of multi-pass ops are written without fsync (the per-file fsync was most of the
    pairs pass); volumes keep TensorStore's default (fsync before a write is confirmed)."""
    from engine.ops.scratch import Scratch
    from engine.storage.kv import _CONTEXT, _SCRATCH_CONTEXT

    assert _SCRATCH_CONTEXT["file_io_sync"].to_json() is False
    assert _CONTEXT["file_io_sync"].to_json() is True
    s = Scratch("memory://fsync-test/x.label")
    s.put("a", b"1")  # memory:// stores are shared with the volumes' context
    assert ts.KvStore.open("memory://fsync-test/x.label/", context=_CONTEXT).result().read("a").result().value == b"1"


def test_scratch_arrays_have_one_format_and_refuse_another(tmp_path: Path) -> None:
    """Every scratch file of arrays is ``pack_arrays``: raw or compressed, any dtype the passes write, empty arrays
    included; a file of another format (an older version's ``.npz``) is one clear error, not garbage ids."""
    import io

    from engine.errors import StorageError
    from engine.ops.scratch import Scratch

    s = Scratch(str(tmp_path / ".connectile" / "x.label"))
    ids = (np.arange(16**3) // 300).astype(np.uint16).reshape(16, 16, 16)  # a few runs of ids, as a block of labels
    s.put_arrays("local/0", {"ids": ids, "empty": np.zeros((0, 2), np.uint64)}, compress=True)
    s.put_arrays("pairs/0", {"pairs": np.arange(6, dtype=np.uint64).reshape(3, 2), "score": np.array([0.5]), "flipped": np.array([True, False])})
    got = s.need_arrays("local/0")
    assert np.array_equal(got["ids"], ids) and got["ids"].dtype == np.uint16 and got["empty"].shape == (0, 2)
    assert len(s.get("local/0") or b"") < ids.nbytes // 2  # compressed
    (pairs,) = s.need_arrays_many(["pairs/0"])
    assert pairs["pairs"].tolist() == [[0, 1], [2, 3], [4, 5]] and pairs["flipped"].tolist() == [True, False]
    buf = io.BytesIO()
    np.savez(buf, pairs=np.zeros((1, 2), np.uint64))
    s.put("pairs/1", buf.getvalue())
    with pytest.raises(StorageError, match=r"pairs/1 is not readable .*--overwrite"):
        s.need_arrays_many(["pairs/0", "pairs/1"])
