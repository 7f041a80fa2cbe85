"""Scratch space of a multi-pass operation: small per-block files (and temporary volumes) kept beside
its output, in the same store, so that workers on any node can write them and the driver read them.

Keys are written whole and atomically by TensorStore's kvstore drivers (file, gs, s3, memory), so a
block that runs twice simply writes its file again. They are written without fsync (TensorStore's
``file_io_sync`` off; a pass's writes measured 5-7 ms each with it, most of pass B's time): they
survive the process, not a power loss of the machine, and a pass that then misses one says so and asks
for ``--overwrite``. Outputs are written with fsync, as before.

>>> s = Scratch("memory://doc-scratch/cells.label")
>>> s.put("stats/3", b"abc"); s.get("stats/3"), s.get("stats/4")
(b'abc', None)
>>> import numpy as np
>>> s.put_arrays("local/3", {"ids": np.arange(6, dtype=np.uint16).reshape(1, 2, 3)}, compress=True)
>>> s.need_arrays("local/3")["ids"].tolist()
[[[0, 1, 2], [3, 4, 5]]]

Arrays are stored in one format (:func:`engine.storage.kv.pack_arrays`), raw or compressed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from engine.errors import StorageError
from engine.storage import parse_url


class Scratch:
    """A folder of small files at ``url`` (a URL or path). Pickles as its URL."""

    def __init__(self, url: str) -> None:
        self.loc = parse_url(url)
        self.url = self.loc.url()
        self._kv: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Scratch, (self.url,))

    @classmethod
    def beside(cls, output_url: str, name: str) -> Scratch:
        """The scratch folder of ``name`` for an output: ``<parent>/.connectile/<output>.<name>``."""
        loc = parse_url(output_url)
        parent = loc.parent().url().rstrip("/")
        return cls(f"{parent}/.connectile/{loc.name}.{name}")

    def volume_url(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    @property
    def kv(self) -> Any:
        if self._kv is None:
            from engine.storage.kv import _SCRATCH_CONTEXT

            try:
                self._kv = ts.KvStore.open(self.loc.kvstore(), context=_SCRATCH_CONTEXT).result()
            except Exception as err:
                raise StorageError(f"cannot open scratch space {self.url}: {err}", "check that the output location is writable") from err
        return self._kv

    def put(self, key: str, data: bytes) -> None:
        try:
            self.kv.write(key, data).result()
        except Exception as err:
            raise StorageError(f"cannot write {self.url}/{key}: {err}", "check that the output location is writable") from err

    def put_many(self, items: dict[str, bytes]) -> None:
        """Write many files at once (all writes in flight together)."""
        futures = [(key, self.kv.write(key, data)) for key, data in items.items()]
        for key, f in futures:
            try:
                f.result()
            except Exception as err:
                raise StorageError(f"cannot write {self.url}/{key}: {err}", "check that the output location is writable") from err

    def get(self, key: str) -> bytes | None:
        try:
            res = self.kv.read(key).result()
        except Exception as err:
            raise StorageError(f"cannot read {self.url}/{key}: {err}", "check the output location") from err
        return bytes(res.value) if res.state == "value" else None

    def get_many(self, keys: list[str], batch: int = 512) -> list[bytes]:
        """Read many files, ``batch`` reads in flight at a time; all must exist."""
        out: list[bytes] = []
        for i in range(0, len(keys), batch):
            part = keys[i : i + batch]
            try:
                futures = [self.kv.read(k) for k in part]
                results = [f.result() for f in futures]
            except Exception as err:
                raise StorageError(f"cannot read from {self.url}: {err}", "check the output location") from err
            for key, res in zip(part, results, strict=True):
                if res.state != "value":
                    raise StorageError(f"{self.url}/{key} is missing", "run the whole command again with --overwrite")
                out.append(bytes(res.value))
        return out

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray], compress: bool = False) -> None:
        """Store named arrays as one file (:func:`engine.storage.kv.pack_arrays`; ``compress`` for large ones)."""
        from engine.storage.kv import pack_arrays

        self.put(key, pack_arrays(arrays, compress=compress))

    def need_arrays(self, key: str) -> dict[str, np.ndarray]:
        """The arrays :meth:`put_arrays` stored (a clear error when the file is missing or of another version)."""
        return self._unpack(key, self.need(key))

    def need_arrays_many(self, keys: list[str]) -> list[dict[str, np.ndarray]]:
        """:meth:`need_arrays` of many files, read together (:meth:`get_many`)."""
        return [self._unpack(k, d) for k, d in zip(keys, self.get_many(keys), strict=True)]

    def _unpack(self, key: str, data: bytes) -> dict[str, np.ndarray]:
        from engine.storage.kv import unpack_arrays

        try:
            return unpack_arrays(data)
        except ValueError as err:
            raise StorageError(f"{self.url}/{key} is not readable ({err})", "run the whole command again with --overwrite") from err

    def need(self, key: str) -> bytes:
        """``get`` that fails clearly when the file is missing (a pass ran without the one before)."""
        data = self.get(key)
        if data is None:
            raise StorageError(f"{self.url}/{key} is missing", "run the whole command again with --overwrite")
        return data

    def remove(self) -> None:
        """Delete everything under the scratch folder (only a run's own: inside ``.connectile`` or
        ``.scratch``, see :func:`engine.storage.safety.remove`)."""
        from engine.storage.safety import remove

        remove(self.loc, "scratch")
        self._kv = None

