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


def pack_arrays(**arrays: Any) -> bytes:
    """Arrays as one value of a scratch key, read back by :func:`unpack_arrays`: a JSON header of names,
    types and shapes, then the raw bytes. A tenth of the time of an ``.npz`` there and back (no zip
    directory), for the small arrays a pass writes per block and the next pass reads many times.

    >>> import numpy as np
    >>> got = unpack_arrays(pack_arrays(a=np.arange(3, dtype=np.uint16), b=np.ones((2, 1))))
    >>> got["a"].tolist(), got["b"].shape
    ([0, 1, 2], (2, 1))
    """
    import json

    import numpy as np

    parts = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = json.dumps([[k, v.dtype.str, list(v.shape)] for k, v in parts.items()]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(v.tobytes() for v in parts.values())])


def unpack_arrays(data: bytes) -> dict[str, Any]:
    """The arrays of :func:`pack_arrays` (read-only views of ``data``)."""
    import json

    import numpy as np

    size = int.from_bytes(data[:4], "little")
    pos = 4 + size
    out = {}
    for name, dtype, shape in json.loads(data[4:pos]):
        arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=pos).reshape(shape)
        out[name] = arr
        pos += arr.nbytes
    return out


def npz_bytes(**arrays: Any) -> bytes:
    """Arrays as the bytes of one ``.npz`` file (the value of a scratch key; ``np.load(io.BytesIO(b))``
    reads them back)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    savez: Any = np.savez  # its stubs do not type **arrays
    savez(buf, **arrays)
    return buf.getvalue()
