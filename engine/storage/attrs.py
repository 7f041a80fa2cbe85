"""Free attributes of an array or a group, whatever the format keeps them in.

zarr v2: ``.zattrs``; zarr v3: ``attributes`` of ``zarr.json``; n5: ``attributes.json``; precomputed:
extra keys of ``info`` (TensorStore and neuroglancer ignore keys they do not know). A folder that is
neither an array nor a group has no attributes (None).

>>> from engine.storage import create_volume
>>> _ = create_volume("memory://doc-attrs/a", (2, 4, 4), "uint8", (2, 4, 4))
>>> update_attrs("memory://doc-attrs/a", {"note": 1}); read_attrs("memory://doc-attrs/a")["note"]
1
"""

from __future__ import annotations

import os
from typing import Any

from engine.errors import StorageError
from engine.storage.urls import Location, parse_url


def _where(loc: Location) -> tuple[str, str | None] | None:
    """(metadata key, sub-key holding the attributes or None for the whole object), or None."""
    from engine.storage.volume import _group_kind, _key_exists, detect_format

    found = detect_format(loc.url())
    fmt: str
    if found is None:
        group = _group_kind(loc)
        if group is None:
            return None
        fmt = {"a zarr": "zarr", "a zarr v3": "zarr3", "an n5": "n5"}[group]
    else:
        fmt = found
    if fmt == "zarr":
        return (".zattrs", None) if _key_exists(loc, ".zarray") or _key_exists(loc, ".zgroup") else None
    return {"zarr3": ("zarr.json", "attributes"), "n5": ("attributes.json", None), "precomputed": ("info", None)}[fmt]


def read_attrs(url: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The attributes of the array or group at ``url``; None where there is neither."""
    from engine.storage.kv import _read_json

    loc = parse_url(url)
    where = _where(loc)
    if where is None:
        return None
    key, sub = where
    meta = _read_json(loc, key) or {}
    return dict(meta.get(sub) or {}) if sub else meta


def update_attrs(url: str | os.PathLike[str], updates: dict[str, Any]) -> None:
    """Merge ``updates`` into the attributes of the array or group at ``url`` (read, update, write)."""
    from engine.storage.kv import _read_json, _write_json

    loc = parse_url(url)
    where = _where(loc)
    if where is None:
        raise StorageError(f"{loc.url()} is neither an array nor a group: it has no attributes", "create the volume first")
    key, sub = where
    meta = _read_json(loc, key) or {}
    if sub:
        meta.setdefault(sub, {}).update(updates)
    else:
        meta.update(updates)
    _write_json(loc, key, meta)


__all__ = ["read_attrs", "update_attrs"]
