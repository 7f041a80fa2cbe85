"""Guarded deletes and atomic writes: the only ways the engine removes or replaces what is on disk.

Every delete names what it expects to remove (``kind``):

- ``"volume"``: one array (zarr v2/v3, n5, precomputed) and nothing else. A group, a folder holding
  other arrays or files that are not parts of one array, is refused;
- ``"scratch"``: a folder the runtime made for itself (inside a ``.connectile`` or ``.scratch`` folder);
- ``"checkpoint"``: a training checkpoint folder (``step-NNNNNN``, its temporary and set-aside names);
- ``"run-files"``: files a run made under its own output folder (only the general checks below).

Whatever the kind, the root of a file system or bucket, a home folder (or a folder above one), a folder
holding the current folder, and any path equal to or containing an input of the run are refused, with
one line (:class:`~engine.errors.StorageError`) naming the path and what it holds.

Bookkeeping files that resume relies on (results, metadata, summaries) are written with
:func:`write_atomic`: into a temporary file of the same folder, flushed, then renamed over the old
one, so a reader (or a run restarted after a crash) sees the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import tensorstore as ts

from engine.errors import StorageError
from engine.storage.urls import Location, parse_url

log = logging.getLogger(__name__)

Kind = Literal["volume", "scratch", "checkpoint", "run-files"]
SCRATCH_FOLDERS = (".connectile", ".scratch")
# the files of one array (a precomputed layer's meshes, skeletons and properties are parts of it)
_ARRAY_META = {".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json", "info", "provenance", "mesh", "skeletons", "segment_properties"}
_NESTED_META = (".zarray", ".zgroup", "zarr.json", "attributes.json", "info")
_CHUNK = re.compile(r"^c?[0-9._-]*$")  # chunk keys/folders: 0, 0.1.2, c (zarr3), 8_8_40 / 0-64_0-64_0-64 (precomputed)
_CHECKPOINT = re.compile(r"^(\.tmp-|\.old-)?step-\d{6,}(-\d+)?$")

Url = str | os.PathLike[str] | Location
_INPUT = ", an input of this run"


def _loc(url: Url) -> Location:
    return url if isinstance(url, Location) else parse_url(url)


def _real(path: str) -> str:
    return os.path.realpath(path)


def _within(inner: str, outer: str) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it (whole path components)."""
    outer = outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/") or outer == ""


@functools.lru_cache(maxsize=1)
def _user_homes() -> frozenset[str]:
    """Home folders of the users this machine knows (read once: a directory service may be slow)."""
    with contextlib.suppress(OSError, KeyError):  # no passwd database: the current user's home is enough
        return frozenset(_real(p.pw_dir) for p in pwd.getpwall() if p.pw_dir and p.pw_dir != "/")
    return frozenset()


def _homes() -> set[str]:
    return {_real(os.path.expanduser("~")), *_user_homes()}


def _general_problem(loc: Location, inputs: Iterable[Url]) -> str | None:
    """Why no delete may touch ``loc`` whatever it holds, or None."""
    if loc.is_local_file:
        path = _real(loc.path)
        if path == "/":
            return "it is the root of the file system"
        for home in _homes():
            if _within(home, path):
                return "it is a home folder" if home == path else f"it holds the home folder {home}"
        try:
            cwd = _real(os.getcwd())
        except OSError:  # the current folder was deleted: nothing to protect there
            cwd = ""
        if cwd and _within(cwd, path):
            return "it holds the current folder"
    elif not loc.path.strip("/"):
        return "it is the root of the bucket" if loc.bucket else "it is the root of the memory store"
    for item in inputs:
        other = _loc(item)
        if (other.scheme, other.bucket) != (loc.scheme, loc.bucket):
            continue
        inner = _real(other.path) if other.is_local_file else other.path.strip("/")
        outer = _real(loc.path) if loc.is_local_file else loc.path.strip("/")
        if _within(inner, outer):
            return f"it {'is' if inner == outer else 'holds'} {other.url()}{_INPUT}"
    return None


def _children(loc: Location, keys: list[str] | None = None) -> dict[str, bool]:
    """Direct children of a folder: name -> whether it is a folder (for stores: has keys below it)."""
    if loc.is_local_file:
        if not os.path.isdir(loc.path):
            return {os.path.basename(loc.path): False} if os.path.lexists(loc.path) else {}
        with os.scandir(loc.path) as it:
            return {e.name: e.is_dir(follow_symlinks=False) for e in it}
    out: dict[str, bool] = {}
    for key in _store_keys(loc) if keys is None else keys:
        head, sep, _ = key.partition("/")
        out[head] = out.get(head, False) or bool(sep)
    return out


def _store_keys(loc: Location) -> list[str]:
    from engine.storage.errors import check_store_reachable
    from engine.storage.volume import _CONTEXT, _ts_message

    check_store_reachable(loc)
    try:
        kv = ts.KvStore.open(loc.kvstore(), context=_CONTEXT).result()
        return [k.decode(errors="replace") for k in kv.list().result()]
    except Exception as err:
        raise StorageError(f"cannot list {loc.url()}: {_ts_message(err)}", "check the path and your credentials") from err


def _nested_arrays(loc: Location, children: dict[str, bool], keys: list[str] | None = None) -> list[str]:
    """Children of an array folder that hold array or group metadata of their own."""
    found: list[str] = []
    if loc.is_local_file:
        for name, is_dir in children.items():
            if is_dir and any(os.path.exists(os.path.join(loc.path, name, m)) for m in _NESTED_META):
                found.append(name)
        return found
    for key in _store_keys(loc) if keys is None else keys:
        parts = key.split("/")
        if len(parts) > 1 and parts[-1] in _NESTED_META and parts[0] not in found:
            found.append(parts[0])
    return found


def _listing(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _volume_problem(loc: Location) -> str | None:
    """None if ``loc`` holds nothing or exactly one array; else what it holds instead."""
    from engine.storage.volume import _group_kind, detect_format

    keys = None if loc.is_local_file else _store_keys(loc)  # a store is listed once
    children = _children(loc, keys)
    if not children:
        return None
    if loc.is_local_file and not os.path.isdir(loc.path):
        return "it is a file, not a volume"
    fmt = detect_format(loc.url())
    if fmt is None:
        group = _group_kind(loc)
        inside = sorted(n for n in children if n not in _ARRAY_META)
        if group is not None:
            return f"it is {group} group holding {_listing(inside) or 'no arrays yet'}, not one array"
        if all(_CHUNK.match(n) for n in children) and not _nested_arrays(loc, children, keys):
            return None  # chunks of an array whose metadata is gone (a delete cut short): replaceable
        return f"it holds {len(children)} file(s) or folder(s) that are not a volume ({_listing(list(children))})"
    strangers = [n for n in children if n not in _ARRAY_META and not _CHUNK.match(n)]
    nested = _nested_arrays(loc, children, keys)
    if strangers or nested:
        return f"it is a {fmt} array but also holds {_listing(strangers + nested)}"
    return None


def _kind_problem(loc: Location, kind: Kind) -> str | None:
    if kind == "volume":
        return _volume_problem(loc)
    if kind == "scratch":
        parts = loc.path.strip("/").split("/")
        if not any(p in SCRATCH_FOLDERS for p in parts):
            return f"it is not a scratch folder of a run (those lie inside {' or '.join(SCRATCH_FOLDERS)})"
    if kind == "checkpoint":
        if not _CHECKPOINT.match(loc.name):
            return "it is not a checkpoint folder (step-NNNNNN)"
        subdirs = [n for n, d in _children(loc).items() if d]
        if subdirs:
            return f"it is a checkpoint folder but also holds {_listing(subdirs)}"
    return None


def check_removable(url: Url, kind: Kind, *, inputs: Iterable[Url] = ()) -> Location:
    """Raise :class:`StorageError` unless ``url`` may be deleted as a ``kind`` (see the module docstring)."""
    loc = _loc(url)
    general = _general_problem(loc, inputs)
    if general is not None and not general.endswith(_INPUT):  # a root or home: refused without listing it
        why: str | None = general
    else:  # say what it holds, and that it holds an input
        why = ", and ".join(p for p in (_kind_problem(loc, kind), general) if p) or None
    if why is not None:
        what = {"volume": "a volume", "scratch": "scratch space", "checkpoint": "a checkpoint", "run-files": "run files"}[kind]
        raise StorageError(
            f"refusing to delete {loc.url()} as {what}: {why}",
            "name the exact array or folder to replace (e.g. data.zarr/out, not data.zarr), or move it away by hand",
        )
    return loc


def remove(url: Url, kind: Kind, *, inputs: Iterable[Url] = ()) -> bool:
    """Delete ``url`` after :func:`check_removable`; False when nothing was there."""
    loc = check_removable(url, kind, inputs=inputs)
    if loc.is_local_file:
        path = loc.path
        if not os.path.lexists(path):
            return False
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                _rmtree_marks_first(path, kind)
            else:
                os.unlink(path)
        except OSError as err:
            raise StorageError(f"cannot delete {path}: {err.strerror or err}", "check the permissions, or delete it by hand") from err
        log.info("deleted %s (%s)", path, kind)
        return True
    from engine.faults import kill_point
    from engine.storage.errors import check_store_reachable
    from engine.storage.volume import _CONTEXT, _ts_message

    check_store_reachable(loc)
    try:
        kv = ts.KvStore.open(loc.kvstore(), context=_CONTEXT).result()
        for mark in _MARKS:  # see _rmtree_marks_first
            kv.delete_range(ts.KvStore.KeyRange(mark, mark + "\x00")).result()
            kv.delete_range(ts.KvStore.KeyRange(mark + "/", mark + "0")).result()
        kill_point(f"remove-{kind}:partly")
        kv.delete_range(ts.KvStore.KeyRange()).result()
    except Exception as err:
        raise StorageError(f"cannot delete {loc.url()}: {_ts_message(err)}", "check your credentials, or delete it by hand") from err
    log.info("deleted %s (%s)", loc.url(), kind)
    return True


# What says what a folder is and whom it belongs to: array and group metadata, and the run ids that tie
# done-markers to it (engine.runtime.ownership). A delete removes these first.
_MARKS = (".connectile-runs", ".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json", "attributes.json", "info")


def _rmtree_marks_first(path: str, kind: Kind) -> None:
    """Delete the folder ``path``: first its marks (metadata, run ids), then the rest, entry by entry.

    A delete cut short (a killed driver, a full quota) so leaves a folder that no longer claims to be
    anything: chunks without metadata (which a later delete may replace), scratch files without the run
    ids whose done-markers described them (the rerun computes those passes again), never a volume or a
    set of markers that vouches for files that are gone. The kill point ``remove-<kind>:partly`` (see
    :mod:`engine.faults`) follows each entry."""
    from engine.faults import kill_point

    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: (not (e.name in _MARKS or e.name.startswith(".")), e.name))
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
        kill_point(f"remove-{kind}:partly")
    os.rmdir(path)


# -- atomic writes --------------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` by write-then-rename (flushed to disk first); make the folder if needed."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as err:
        raise StorageError(f"cannot write {p}: {err.strerror or err}", "check that the folder is writable") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise StorageError(f"cannot write {p}: {err.strerror or err}", "check that the disk has room and the folder is writable") from err
        raise
    _fsync_dir(p.parent)
    return p


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON."""
    return write_atomic(path, json.dumps(obj, indent=indent, default=str))


def write_npy_atomic(path: str | os.PathLike[str], array: Any) -> Path:
    """:func:`write_atomic` of ``array`` in NumPy's ``.npy`` format (what ``np.save`` writes)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_atomic(path, buf.getvalue())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


__all__ = ["Kind", "check_removable", "remove", "write_atomic", "write_json_atomic", "write_npy_atomic"]
