"""OME-Zarr metadata, in one module: the ``multiscales`` entries of zarr groups (0.4 in the group's
``.zattrs`` for zarr v2, 0.5 under ``attributes.ome`` of its ``zarr.json`` for zarr v3).

- Every zarr array that :func:`engine.storage.create_volume` writes is listed in its parent group
  (:func:`register_in_group`) with its voxel size (``scale``) and offset (``translation``), and an
  array without its own ``voxel_size`` attribute reads them back from there (:func:`dataset_transform`).
- A pyramid (:func:`engine.ops.downsample.build_pyramid`) is a group ``s0``, ``s1``, ... with one entry
  listing the levels (:func:`write_pyramid`); :func:`pyramid_layout`, :func:`multiscale_levels` and
  :func:`find_pyramid` name and find it.

OME-Zarr axes name every array axis: one leading axis is a ``channel`` axis with scale 1; arrays with
more leading axes are beyond OME-Zarr's (t, c, z, y, x) and are not listed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.errors import StorageError
from engine.storage.kv import _read_json, _write_json
from engine.storage.urls import Location, parse_url

if TYPE_CHECKING:
    from engine.storage.volume import Volume

log = logging.getLogger(__name__)

LEVEL_RE = re.compile(r"^s(\d+)$")
PYRAMID_SUFFIX = "_pyramid"


def group_multiscales(group: Location, fmt: str) -> list[dict[str, Any]]:
    """The ``multiscales`` entries of a zarr (``fmt='zarr'``) or zarr v3 group ([] if none)."""
    if fmt == "zarr":
        return list((_read_json(group, ".zattrs") or {}).get("multiscales", []))
    attributes = (_read_json(group, "zarr.json") or {}).get("attributes", {})
    return list(attributes.get("ome", {}).get("multiscales", []))


def _put_multiscales(group: Location, fmt: str, entries: list[dict[str, Any]]) -> None:
    if fmt == "zarr":
        zattrs = _read_json(group, ".zattrs") or {}
        zattrs["multiscales"] = entries
        _write_json(group, ".zattrs", zattrs)
    else:
        meta = _read_json(group, "zarr.json") or {"zarr_format": 3, "node_type": "group"}
        ome = meta.setdefault("attributes", {}).setdefault("ome", {})
        ome["version"] = "0.5"
        ome["multiscales"] = entries
        _write_json(group, "zarr.json", meta)


def _entry(name: str, fmt: str, n_lead: int, datasets: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One ``multiscales`` entry (0.5 keeps the version in ``ome``, 0.4 in the entry)."""
    entry: dict[str, Any] = {"version": "0.4"} if fmt == "zarr" else {}
    axes = [{"name": "c", "type": "channel"}] * n_lead + [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    entry.update({"name": name, "axes": axes, "datasets": datasets, **extra})
    return entry


def _dataset(path: str, n_lead: int, voxel_size: Sequence[float], offset: Sequence[float]) -> dict[str, Any]:
    return {
        "path": path,
        "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * n_lead + list(voxel_size)},
            {"type": "translation", "translation": [0.0] * n_lead + list(offset)},
        ],
    }


def dataset_transform(loc: Location, fmt: str) -> dict[str, Any]:
    """``voxel_size`` and ``offset`` of the array at ``loc`` as its parent group lists them ({} if not)."""
    for ms in group_multiscales(loc.parent(), fmt):
        for ds in ms.get("datasets", []):
            if ds.get("path") == loc.name:
                out: dict[str, Any] = {}
                for tr in ds.get("coordinateTransformations", []):
                    if tr.get("type") == "scale":
                        out["voxel_size"] = tr["scale"][-3:]
                    if tr.get("type") == "translation":
                        out["offset"] = tr["translation"][-3:]
                return out
    return {}


def _zarr_group_chain(loc: Location) -> list[Location]:
    """Parent folders of a zarr array that are zarr groups: from the first ``*.zarr`` component down."""
    parts = loc.path.rstrip("/").split("/")[:-1]
    for i, part in enumerate(parts):
        if part.endswith(".zarr"):
            return [Location(loc.scheme, "/".join(parts[: j + 1]), loc.bucket) for j in range(i, len(parts))]
    return []


def register_in_group(loc: Location, fmt: str, n_lead: int, vs: tuple[float, ...], off: tuple[float, ...]) -> None:
    """Make the parent folders zarr groups and list the array in the parent's ``multiscales`` (an
    entry of the same name is replaced). Other formats and arrays of several leading axes: nothing."""
    if fmt not in ("zarr", "zarr3"):
        return
    chain = _zarr_group_chain(loc)
    if not chain:
        return
    for group in chain:
        key = ".zgroup" if fmt == "zarr" else "zarr.json"
        if _read_json(group, key) is None:
            _write_json(group, key, {"zarr_format": 2} if fmt == "zarr" else {"zarr_format": 3, "node_type": "group", "attributes": {}})
    if n_lead > 1:
        log.debug("%s has %d leading axes: not listed in the OME-Zarr multiscales of its group", loc.url(), n_lead)
        return
    parent = chain[-1]
    entry = _entry(loc.name, fmt, n_lead, [_dataset(loc.name, n_lead, vs, off)])
    others = [m for m in group_multiscales(parent, fmt) if m.get("name") != loc.name]
    _put_multiscales(parent, fmt, [*others, entry])


def write_pyramid(group: str, name: str, src: Volume, levels: list[dict[str, Any]], method: str, fmt: str) -> None:
    """The one ``multiscales`` entry of a pyramid group: ``levels`` (path, voxel_size, offset) of ``src``."""
    loc = parse_url(group)
    n_lead = len(src.shape) - 3
    if n_lead > 1:
        log.warning("%s has %d leading axes: OME-Zarr lists (c, z, y, x) at most; the levels are written without multiscales", src.url, n_lead)
        return
    datasets = [_dataset(lv["path"], n_lead, lv["voxel_size"], lv["offset"]) for lv in levels]
    entry = _entry(name, fmt, n_lead, datasets, type=method, metadata={"method": f"connectile.downsample.{method}"})
    if fmt == "zarr" and _read_json(loc, ".zgroup") is None:
        _write_json(loc, ".zgroup", {"zarr_format": 2})
    _put_multiscales(loc, fmt, [entry])


def pyramid_layout(input_url: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> tuple[str, bool]:
    """The group the levels go into, and whether ``s0`` must be copied there.

    ``data.zarr/raw/s0`` -> (``data.zarr/raw``, no copy); ``data.zarr/raw`` -> (``data.zarr/raw_pyramid``, copy).
    """
    loc = parse_url(input_url)
    if output is None and LEVEL_RE.match(loc.name) and loc.name == "s0":
        return loc.parent().url(), False
    group = parse_url(output).url() if output is not None else f"{loc.parent().url().rstrip('/')}/{loc.name}{PYRAMID_SUFFIX}"
    return group, True


def multiscale_levels(group_url: str | os.PathLike[str]) -> list[str]:
    """Paths of the levels listed in the first OME-Zarr ``multiscales`` entry of a group ([] if none)."""
    loc = parse_url(group_url)
    try:
        zattrs = _read_json(loc, ".zattrs")
        meta = _read_json(loc, "zarr.json")
    except StorageError:
        return []
    entries: list[Any] = []
    if zattrs is not None:
        entries = zattrs.get("multiscales", [])
    elif meta is not None and meta.get("node_type") == "group":
        entries = meta.get("attributes", {}).get("ome", {}).get("multiscales", [])
    if not entries or not isinstance(entries[0], dict):
        return []
    return [str(d.get("path")) for d in entries[0].get("datasets", []) if isinstance(d, dict)]


def find_pyramid(volume_url: str | os.PathLike[str]) -> str | None:
    """The multiscale group of a volume where one was built: the volume's own group when it is level
    ``s0`` of a pyramid of several levels, else its sibling ``<name>_pyramid``; None otherwise."""
    loc = parse_url(volume_url)
    candidates = []
    if loc.name == "s0":
        candidates.append(loc.parent().url())
    candidates.append(f"{loc.parent().url().rstrip('/')}/{loc.name}{PYRAMID_SUFFIX}")
    for group in candidates:
        if loc.is_local_file and not os.path.isdir(parse_url(group).path):
            continue
        if len(multiscale_levels(group)) > 1:
            return group
    return None


__all__ = [
    "LEVEL_RE",
    "PYRAMID_SUFFIX",
    "dataset_transform",
    "find_pyramid",
    "group_multiscales",
    "multiscale_levels",
    "pyramid_layout",
    "register_in_group",
    "write_pyramid",
]
