"""Metadata files on a TensorStore kvstore: the process's TensorStore context, one-line TensorStore
errors, and JSON keys read and written with the bounded retries of :mod:`engine.storage.errors`."""

from __future__ import annotations

import json
from typing import Any

import tensorstore as ts

from engine.errors import StorageError
from engine.storage.errors import retrying
from engine.storage.urls import Location

_CONTEXT = ts.Context()  # one per process, so memory:// volumes are shared between opens
#: for scratch files that live for one run: written without fsync (they survive the process, not a power
#: loss; a later pass that misses one says so and asks for --overwrite). The memory:// stores are shared.
_SCRATCH_CONTEXT = ts.Context({"file_io_sync": False}, parent=_CONTEXT)


def _ts_message(err: BaseException) -> str:
    """A TensorStore error as one short line: without the echoed spec (hundreds of characters of
    JSON) or source locations, and without line breaks."""
    text = str(err)
    for marker in (" [tensorstore_spec=", " [source locations="):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())


def _kv(loc: Location) -> ts.KvStore:
    from engine.storage.errors import check_store_reachable

    check_store_reachable(loc)  # one line now, not minutes of retries, where a cloud store does not answer
    spec = loc.kvstore()
    try:
        return ts.KvStore.open(spec, context=_CONTEXT).result()
    except Exception as err:
        raise StorageError(f"cannot open the store at {loc.url()}: {_ts_message(err)}", "check the path and your credentials") from err


def _read_key(loc: Location, key: str) -> Any:
    """A kvstore read of ``key``, transient errors retried, others one classified line."""
    kv = _kv(loc)
    return retrying(lambda: kv.read(key).result(), f"{loc.url()}/{key}", "reading")


def _key_exists(loc: Location, key: str) -> bool:
    return bool(_read_key(loc, key).state == "value")


def _read_json(loc: Location, key: str) -> dict[str, Any] | None:
    res = _read_key(loc, key)
    if res.state != "value":
        return None
    try:
        out = json.loads(bytes(res.value))
    except ValueError as err:
        raise StorageError(
            f"{loc.url()}/{key} is corrupt (not JSON: {err})", "re-create the volume or restore it from a copy"
        ) from err
    if not isinstance(out, dict):
        raise StorageError(f"{loc.url()}/{key} is corrupt (not a JSON object)", "re-create the volume or restore it from a copy")
    return out


def _write_json(loc: Location, key: str, obj: dict[str, Any]) -> None:
    kv = _kv(loc)
    data = json.dumps(obj, indent=1).encode()
    retrying(lambda: kv.write(key, data).result(), f"{loc.url()}/{key}", "writing")


def npz_bytes(**arrays: Any) -> bytes:
    """Arrays as the bytes of one ``.npz`` file (the value of a scratch key; ``np.load(io.BytesIO(b))``
    reads them back)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    savez: Any = np.savez  # its stubs do not type **arrays
    savez(buf, **arrays)
    return buf.getvalue()
