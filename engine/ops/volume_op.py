"""A blockwise operation from one input volume to one output volume (:class:`VolumeOp`): the fields
``input``, ``output`` and ``overwrite``, and a worker that opens both volumes once in ``setup``."""

from __future__ import annotations

from pydantic import Field, PrivateAttr

from engine.geometry import BlockGrid
from engine.runtime.op import BlockOp
from engine.storage import Volume, open_volume


class VolumeOp(BlockOp):
    """Base class of operations that read the volume ``input`` and write the volume ``output`` (which
    their ``prepare`` creates; ``overwrite`` replaces one that exists and is not hashed into the
    done-markers). ``process`` gets both through :meth:`volumes`."""

    input: str
    output: str
    overwrite: bool = Field(default=False, exclude=True)

    _in: Volume | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._in = open_volume(self.input)
        self._out = open_volume(self.output, mode="r+")

    def volumes(self) -> tuple[Volume, Volume]:
        """The input and the output volume, opened by :meth:`setup` (read, and read-write)."""
        assert self._in is not None and self._out is not None, "setup() opens the volumes"
        return self._in, self._out
