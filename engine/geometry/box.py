"""Axis-aligned boxes in voxel coordinates (z, y, x), half-open."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

Coord = tuple[int, ...]
#: a z, y, x triple (a shape, block, chunk or window size): the one alias every module uses
Triple = tuple[int, int, int]


def _as_coord(values: Iterable[Any], what: str) -> Coord:
    out = []
    for v in values:
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{what} must be whole voxels, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _per_axis(value: int | Sequence[int], ndim: int, what: str) -> Coord:
    """``value`` for every axis: one int (numpy ints too) repeated, or one whole number per axis."""
    if isinstance(value, Iterable):
        return _as_coord(value, what)
    return _as_coord((value,), what) * ndim


@dataclass(frozen=True, slots=True)
class Box:
    """A half-open box ``[start, stop)`` in voxels, axes ordered z, y, x.

    >>> b = Box((0, 0, 0), (4, 8, 8))
    >>> b.shape, b.size
    ((4, 8, 8), 256)
    >>> b.grow(1).intersect(b) == b
    True
    """

    start: Coord
    stop: Coord

    def __post_init__(self) -> None:
        start = _as_coord(self.start, "box start")
        stop = _as_coord(self.stop, "box stop")
        if len(start) != len(stop):
            raise ValueError(f"box start {start} and stop {stop} have different numbers of axes")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @classmethod
    def from_shape(cls, shape: Sequence[int], offset: Sequence[int] | None = None) -> Box:
        """The box of ``shape`` starting at ``offset`` (default: the origin)."""
        off = tuple(offset) if offset is not None else (0,) * len(shape)
        return cls(off, tuple(o + s for o, s in zip(off, shape, strict=True)))

    @property
    def ndim(self) -> int:
        return len(self.start)

    # shape, size and empty run once per block in a worker's loop: map over C functions, no Python
    # frame per axis (start and stop have one length, checked in __post_init__)
    @property
    def shape(self) -> Coord:
        return tuple(map(max, map(operator.sub, self.stop, self.start), repeat(0)))

    @property
    def size(self) -> int:
        return math.prod(map(max, map(operator.sub, self.stop, self.start), repeat(0)))

    @property
    def empty(self) -> bool:
        return any(map(operator.le, self.stop, self.start))

    def intersect(self, other: Box) -> Box:
        """The overlap of two boxes; empty where they do not overlap (then ``stop == start`` on an axis)."""
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop, strict=True))
        return Box(start, tuple(max(a, b) for a, b in zip(start, stop, strict=True)))

    def grow(self, before: int | Sequence[int], after: int | Sequence[int] | None = None) -> Box:
        """Grow by ``before`` voxels at the start and ``after`` (default: same) at the stop."""
        lo = _per_axis(before, self.ndim, "grow before")
        hi = lo if after is None else _per_axis(after, self.ndim, "grow after")
        return Box(
            tuple(s - g for s, g in zip(self.start, lo, strict=True)),
            tuple(s + g for s, g in zip(self.stop, hi, strict=True)),
        )

    def shift(self, offset: Sequence[int]) -> Box:
        return Box(
            tuple(s + o for s, o in zip(self.start, offset, strict=True)),
            tuple(s + o for s, o in zip(self.stop, offset, strict=True)),
        )

    def contains(self, other: Box) -> bool:
        """True if ``other`` lies entirely inside this box (an empty box lies anywhere)."""
        if other.empty:
            return True
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop, strict=True))

    def contains_point(self, point: Sequence[int]) -> bool:
        return all(a <= p < b for a, b, p in zip(self.start, self.stop, point, strict=True))

    def scale_down(self, factor: Sequence[int]) -> Box:
        """The smallest box on a grid coarser by ``factor`` that covers this box."""
        return Box(
            tuple(s // f for s, f in zip(self.start, factor, strict=True)),
            tuple(-(-e // f) for e, f in zip(self.stop, factor, strict=True)),
        )

    def to_slices(self, relative_to: Box | None = None) -> tuple[slice, ...]:
        """Slices that cut this box out of an array covering ``relative_to`` (default: the origin)."""
        base = relative_to.start if relative_to is not None else (0,) * self.ndim
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, base, strict=True))

    def to_dict(self) -> dict[str, list[int]]:
        return {"start": list(self.start), "stop": list(self.stop)}

    def __repr__(self) -> str:
        return f"Box({list(self.start)}:{list(self.stop)})"


_SET_START = Box.__dict__["start"].__set__
_SET_STOP = Box.__dict__["stop"].__set__


def trusted_box(start: Coord, stop: Coord) -> Box:
    """A :class:`Box` of ``start`` and ``stop`` as given, without :meth:`Box.__post_init__`'s checks:
    only for tuples of Python ints of one length that the caller has made itself (a block grid's
    per-axis tables), where the checks would cost ten times the box. Equal to ``Box(start, stop)``."""
    box = object.__new__(Box)
    _SET_START(box, start)
    _SET_STOP(box, stop)
    return box


def dict_voxels(boxes: Iterable[Mapping[str, Sequence[int]]]) -> list[int]:
    """The voxels of each box written as :meth:`Box.to_dict` writes it (``{"start", "stop"}``).

    >>> dict_voxels([{"start": [0, 0, 0], "stop": [1, 4, 4]}, Box((2, 0), (4, 3)).to_dict()])
    [16, 6]
    """
    return [math.prod(b - a for a, b in zip(d["start"], d["stop"], strict=True)) for d in boxes]
