"""Blockwise operations: what the runtime runs on every block.

An operation is a strict pydantic model (its fields are its parameters, hashed into the done-markers)
with three hooks::

    class Smooth(BlockOp):
        kind: ClassVar[str] = "smooth"
        input: str
        output: str
        sigma: float = 1.0

        def prepare(self, grid):          # once, on the driver: create outputs, check inputs
            ...
        def setup(self, grid):            # once per worker: open volumes, load a model
            ...
        def process(self, block):         # per block: read block.read, write only block.write
            ...

Subclasses register themselves by ``kind`` (see :data:`OPS`), so a worker, a config file or the CLI
can name an operation without a hand-kept list.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.geometry import Block, BlockGrid

OPS: dict[str, type[BlockOp]] = {}


class BlockOp(BaseModel):
    """Base class of blockwise operations (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    kind: ClassVar[str] = ""
    #: Ask for one GPU per worker when the cluster has GPUs.
    wants_gpu: ClassVar[bool] = False
    #: Volumes only this process can see (memory://) cannot be used by Ray workers.
    process_local: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.kind:
            other = OPS.get(cls.kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"operation kind {cls.kind!r} is registered twice ({other.__qualname__}, {cls.__qualname__})")
            OPS[cls.kind] = cls

    def params(self) -> dict[str, Any]:
        """The parameters that decide the output (hashed into done-markers)."""
        return {"kind": self.kind, **self.model_dump(mode="json")}

    def outputs(self) -> list[str]:
        """URLs of what this op writes (volumes, or folders of files): its done-markers belong to
        them (see :mod:`engine.runtime.ownership`), and are forgotten if one is deleted or recreated.
        Default: the ``output`` field, else ``scratch``, else ``out``; plus the outputs of nested ops."""
        found: list[str] = []
        for name in ("output", "scratch", "out"):
            value = getattr(self, name, None)
            if isinstance(value, str) and value:
                found.append(value)
                break
        for value in self.__dict__.values():
            if isinstance(value, BlockOp):
                found += [u for u in value.outputs() if u not in found]
        return found

    def prepare(self, grid: BlockGrid) -> None:
        """Driver side, once before any block: create outputs, validate inputs. Must be idempotent."""

    def setup(self, grid: BlockGrid | None = None) -> None:
        """Worker side, once per worker process before its first block. ``grid`` is the run's block grid
        (the runtime always gives it; None only where an op is set up by hand outside a run), so an op
        that needs the grid on its workers gets it here, not through state set in :meth:`prepare`."""

    def process(self, block: Block) -> dict[str, float] | None:
        """Compute one block: read ``block.read``, write exactly ``block.write``.

        May return a few numbers (e.g. ``{"voxels": n, "foreground": m}``); the runtime sums them
        over blocks into the run summary. Must be idempotent: a block may run again after a crash.
        """
        raise NotImplementedError

    def flush(self) -> dict[int, BaseException]:
        """Worker side, after the last block of every batch and before the batch is reported: wait for
        the writes that ``process`` started without waiting (:class:`PendingWrites`), and give the ids
        of blocks whose write failed, with the error. A block is marked done only after this returns."""
        return {}

    def teardown(self) -> None:
        """Worker side, once when the worker is done with this op (close files, free memory)."""

    def is_empty(self, block: Block) -> bool:
        """Optional cheap test run before ``process``: True means nothing to do (recorded as skipped)."""
        return False


class PendingWrites:
    """Writes a worker started and has not waited for (``Volume.write_async``), per block, at most
    ``limit`` in flight: adding one more waits for the oldest, so memory holds a few blocks. An op
    keeps one, adds each block's writes in ``process`` and returns :meth:`wait` from ``flush``."""

    def __init__(self, limit: int = 2) -> None:
        self.limit = limit
        self._pending: list[tuple[int, Any]] = []
        self._failed: dict[int, BaseException] = {}

    def add(self, block_id: int, write: Any) -> None:
        self._pending.append((block_id, write))
        while len(self._pending) > self.limit:
            self._finish(*self._pending.pop(0))

    def _finish(self, block_id: int, write: Any) -> None:
        try:
            write.result()
        except Exception as err:  # noqa: BLE001 - reported per block by the runner
            self._failed.setdefault(block_id, err)

    def wait(self) -> dict[int, BaseException]:
        """Wait for every write; the blocks whose write failed (then forgotten)."""
        while self._pending:
            self._finish(*self._pending.pop(0))
        failed, self._failed = self._failed, {}
        return failed
