"""Block grids: how a volume is cut into blocks with a write box and a read box each.

A grid covers a *total box* (the voxels to write) with write boxes of ``write_shape``, starting at the
total box's start. Each block also reads ``context`` voxels around its write box (its *read box*),
clipped to the *volume box* (the voxels that exist; by default the total box).

Fit modes decide what happens where the total box does not divide evenly (one axis drawn, ``|`` is the
end of the total box, ``=`` the write boxes)::

    shrink     [====][====][==]|     the last write box is cut to the total box
    overhang   [====][====][==|==]   the last block keeps its full (nominal) shape; the part past
                                     the total box is read/computed (padded by the op) but never written
    valid      [====][====]   |      only whole write boxes; the remainder is not covered

In every mode the write boxes are disjoint; in ``shrink`` and ``overhang`` they tile the total box
exactly once. Block ids are the C-order ravel of the block's grid index, so they are deterministic
from the layout and key done-markers, label offsets and retries.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from engine.geometry.box import Box, Coord, _as_coord, _per_axis, trusted_box

Fit = Literal["valid", "overhang", "shrink"]
FITS: tuple[str, ...] = get_args(Fit)
Connectivity = Literal[6, 18, 26]
#: one grid index on one axis: the write, nominal and read box's (start, stop) there
Span = tuple[int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Block:
    """One block: ``write`` (inside the total box), ``nominal`` (full write shape; differs from
    ``write`` only for overhanging edge blocks) and ``read`` (nominal grown by the context, clipped to
    the volume)."""

    id: int
    index: Coord
    write: Box
    nominal: Box
    read: Box


_SET_ID, _SET_INDEX, _SET_WRITE, _SET_NOMINAL, _SET_READ = (Block.__dict__[f].__set__ for f in ("id", "index", "write", "nominal", "read"))


def _trusted_block(bid: int, index: Coord, write: Box, nominal: Box, read: Box) -> Block:
    """``Block(bid, index, write, nominal, read)`` without the frozen dataclass's ``__init__`` (five
    ``object.__setattr__`` calls, half the cost of a block): for values a grid has made itself."""
    block = object.__new__(Block)
    _SET_ID(block, bid)
    _SET_INDEX(block, index)
    _SET_WRITE(block, write)
    _SET_NOMINAL(block, nominal)
    _SET_READ(block, read)
    return block


@dataclass(frozen=True, slots=True)
class Contact:
    """Where two neighbouring blocks touch: the voxels of each write box adjacent to the other.

    Face neighbours touch in a one-voxel slab on each side, edge neighbours in a line, corner
    neighbours in a single voxel. ``axes`` are the axes along which the blocks differ.
    """

    a: Box
    b: Box
    axes: tuple[int, ...]


class BlockGrid:
    """A grid of blocks over ``total``.

    >>> g = BlockGrid(Box((0, 0, 0), (10, 10, 10)), write_shape=(4, 4, 4), context=(1, 1, 1))
    >>> g.grid_shape, g.num_blocks
    ((3, 3, 3), 27)
    >>> b = g.block(26)
    >>> b.write, b.read
    (Box([8, 8, 8]:[10, 10, 10]), Box([7, 7, 7]:[10, 10, 10]))
    """

    #: per-axis tables of the block boxes (see :meth:`_axis_spans`), made on first use; the class-level
    #: None also covers a grid unpickled from a state without them
    _spans: list[list[Span]] | None = None

    def __init__(
        self,
        total: Box,
        write_shape: Sequence[int],
        context: int | Sequence[int] = 0,
        fit: Fit = "shrink",
        volume: Box | None = None,
    ) -> None:
        ndim = total.ndim
        self.total = total
        self.write_shape: Coord = _as_coord(write_shape, "write_shape")
        self.context: Coord = _per_axis(context, ndim, "context")
        self.fit: Fit = fit
        self.volume = volume if volume is not None else total
        if len(self.write_shape) != ndim or len(self.context) != ndim:
            raise ValueError(
                f"write_shape {self.write_shape} and context {self.context} must have {ndim} axes like the total box"
            )
        if any(s <= 0 for s in self.write_shape):
            raise ValueError(f"write_shape must be positive on every axis, got {self.write_shape}")
        if any(c < 0 for c in self.context):
            raise ValueError(f"context must be >= 0 on every axis, got {self.context}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
        if total.empty:
            raise ValueError(f"the total box {total} is empty")
        if not self.volume.contains(total):
            raise ValueError(f"the total box {total} must lie inside the volume box {self.volume}")
        if fit == "valid":
            self.grid_shape: Coord = tuple(t // w for t, w in zip(total.shape, self.write_shape, strict=True))
        else:
            self.grid_shape = tuple(-(-t // w) for t, w in zip(total.shape, self.write_shape, strict=True))

    # -- layout ---------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def covered(self) -> Box:
        """The part of the total box that the write boxes cover (all of it unless ``fit='valid'``)."""
        if self.fit != "valid":
            return self.total
        return Box.from_shape(
            tuple(g * w for g, w in zip(self.grid_shape, self.write_shape, strict=True)), self.total.start
        )

    def layout(self) -> dict[str, object]:
        """A JSON-able description of the layout (hashed into done-markers)."""
        return {
            "total": self.total.to_dict(),
            "volume": self.volume.to_dict(),
            "write_shape": list(self.write_shape),
            "context": list(self.context),
            "fit": self.fit,
        }

    # -- ids and blocks -------------------------------------------------------------------------
    def index_of(self, block_id: int) -> Coord:
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"block id {block_id} is outside the grid of {self.num_blocks} blocks")
        out = []
        rest = int(block_id)
        for g in reversed(self.grid_shape):
            rest, i = divmod(rest, g)
            out.append(i)
        out.reverse()
        return tuple(out)

    def id_of(self, index: Sequence[int]) -> int:
        bid = 0
        for i, g in zip(index, self.grid_shape, strict=True):
            if not 0 <= i < g:
                raise IndexError(f"block index {tuple(index)} is outside the grid {self.grid_shape}")
            bid = bid * g + int(i)
        return bid

    def block(self, block_id: int) -> Block:
        index = self.index_of(block_id)
        return self._block(int(block_id), index)

    def block_at(self, index: Sequence[int]) -> Block:
        bid = self.id_of(index)
        return self._block(bid, tuple(int(i) for i in index))

    def _block(self, bid: int, index: Coord) -> Block:
        """The block at a checked ``index``, from the per-axis tables (see :meth:`_axis_spans`)."""
        spans = self._spans if self._spans is not None else self._build_spans()
        ws, we, ns, ne, rs, re = zip(*map(operator.getitem, spans, index), strict=True)
        write = trusted_box(ws, we)
        return _trusted_block(bid, index, write, write if self.fit == "shrink" else trusted_box(ns, ne), trusted_box(rs, re))

    def _build_spans(self) -> list[list[Span]]:
        self._spans = [self._axis_spans(ax) for ax in range(self.total.ndim)]
        return self._spans

    def _axis_spans(self, ax: int) -> list[Span]:
        """For each grid index along axis ``ax``: the write, nominal and read box's start and stop on
        that axis. A block's boxes are the product of its axes' spans, because every step that makes
        them (cut to the total box, grow by the context, clip to the volume) works axis by axis: these
        are the steps of ``Box(start, start + write_shape).intersect(total)``, ``.grow(context)`` and
        ``.intersect(volume)``, done once per axis instead of once per block."""
        t0, t1 = self.total.start[ax], self.total.stop[ax]
        v0, v1 = self.volume.start[ax], self.volume.stop[ax]
        w, c = self.write_shape[ax], self.context[ax]
        out: list[Span] = []
        for i in range(self.grid_shape[ax]):
            n0 = t0 + i * w
            n1 = n0 + w
            w0 = max(n0, t0)
            w1 = max(w0, min(n1, t1))
            g0, g1 = (w0 - c, w1 + c) if self.fit == "shrink" else (n0 - c, n1 + c)
            r0 = max(g0, v0)
            out.append((w0, w1, n0, n1, r0, max(r0, min(g1, v1))))
        return out

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_spans": None}  # the tables are rebuilt where they are used

    def blocks(self) -> Iterator[Block]:
        for index in itertools.product(*(range(g) for g in self.grid_shape)):
            yield self.block_at(index)

    def __len__(self) -> int:
        return self.num_blocks

    # -- neighbourhood --------------------------------------------------------------------------
    def neighbours(self, block_id: int, connectivity: Connectivity = 6) -> list[int]:
        """Ids of the blocks that share a face (6), also an edge (18), also a corner (26)."""
        if connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26; got {connectivity}")
        max_axes = {6: 1, 18: 2, 26: 3}[connectivity]
        index = self.index_of(block_id)
        out = []
        for delta in itertools.product((-1, 0, 1), repeat=len(index)):
            moved = sum(1 for d in delta if d)
            if moved == 0 or moved > max_axes:
                continue
            other = tuple(i + d for i, d in zip(index, delta, strict=True))
            if all(0 <= o < g for o, g in zip(other, self.grid_shape, strict=True)):
                out.append(self.id_of(other))
        return out

    def contact(self, a_id: int, b_id: int) -> Contact:
        """The voxels where the write boxes of neighbouring blocks ``a`` and ``b`` touch."""
        a, b = self.block(a_id), self.block(b_id)
        delta = [j - i for i, j in zip(a.index, b.index, strict=True)]
        if any(abs(d) > 1 for d in delta) or not any(delta):
            raise ValueError(f"blocks {a_id} {a.index} and {b_id} {b.index} are not neighbours")
        a_start, a_stop, b_start, b_stop = [], [], [], []
        for ax, d in enumerate(delta):
            wa, wb = a.write, b.write
            if d == 0:
                a_start.append(wa.start[ax])
                a_stop.append(wa.stop[ax])
                b_start.append(wb.start[ax])
                b_stop.append(wb.stop[ax])
            elif d > 0:  # b follows a along this axis
                a_start.append(wa.stop[ax] - 1)
                a_stop.append(wa.stop[ax])
                b_start.append(wb.start[ax])
                b_stop.append(wb.start[ax] + 1)
            else:
                a_start.append(wa.start[ax])
                a_stop.append(wa.start[ax] + 1)
                b_start.append(wb.stop[ax] - 1)
                b_stop.append(wb.stop[ax])
        axes = tuple(ax for ax, d in enumerate(delta) if d)
        return Contact(Box(tuple(a_start), tuple(a_stop)), Box(tuple(b_start), tuple(b_stop)), axes)

    def blocks_in(self, box: Box) -> list[int]:
        """Ids of the blocks whose write box intersects ``box``, in increasing order."""
        # Write boxes lie inside ``covered``: clip first, so that an empty box, or one that only
        # touches an overhanging block's part past the total box, selects nothing.
        box = box.intersect(self.covered)
        if box.empty:
            return []
        lo = [(s - t) // w for s, t, w in zip(box.start, self.total.start, self.write_shape, strict=True)]
        hi = [-(-(e - t) // w) for e, t, w in zip(box.stop, self.total.start, self.write_shape, strict=True)]
        return [self.id_of(i) for i in itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True)))]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockGrid) and self.layout() == other.layout()

    def __hash__(self) -> int:
        return hash(repr(self.layout()))

    def __repr__(self) -> str:
        return (
            f"BlockGrid(total={self.total}, write_shape={self.write_shape}, context={self.context}, "
            f"fit={self.fit!r}, blocks={self.grid_shape})"
        )
