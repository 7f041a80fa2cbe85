"""Boxes and block grids: tiny geometries worked out by hand, then properties checked with hypothesis."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.geometry import FITS, Block, BlockGrid, Box, Contact

# ------------------------------------------------------------------------------------------------
# Box
# ------------------------------------------------------------------------------------------------


def test_box_shape_size_and_empty() -> None:
    b = Box((1, 2, 3), (4, 6, 8))
    assert b.ndim == 3
    assert b.shape == (3, 4, 5)
    assert b.size == 60
    assert not b.empty
    # stop <= start on one axis makes the box empty; its shape is clamped to 0 there
    e = Box((0, 5, 0), (4, 2, 4))
    assert e.empty and e.shape == (4, 0, 4) and e.size == 0
    assert Box((0, 0, 0), (0, 3, 3)).empty


def test_box_coordinates_are_normalised_to_int_tuples() -> None:
    b = Box([np.int64(1), 2.0, 3], np.array([4, 5, 6]))
    assert b.start == (1, 2, 3) and b.stop == (4, 5, 6)
    assert all(type(v) is int for v in b.start + b.stop)
    assert b == Box((1, 2, 3), (4, 5, 6))
    assert hash(b) == hash(Box((1, 2, 3), (4, 5, 6)))


def test_box_rejects_fractional_voxels_and_mismatched_axes() -> None:
    with pytest.raises(ValueError, match="whole voxels"):
        Box((0, 0.5, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="different numbers of axes"):
        Box((0, 0), (1, 1, 1))


def test_box_from_shape() -> None:
    assert Box.from_shape((2, 3, 4)) == Box((0, 0, 0), (2, 3, 4))
    assert Box.from_shape((2, 3, 4), offset=(10, 20, 30)) == Box((10, 20, 30), (12, 23, 34))


def test_box_intersect() -> None:
    a = Box((0, 0, 0), (4, 4, 4))
    b = Box((2, -1, 3), (6, 2, 9))
    # z: [2, 4)  y: [0, 2)  x: [3, 4)
    assert a.intersect(b) == Box((2, 0, 3), (4, 2, 4))
    assert a.intersect(b) == b.intersect(a)
    # disjoint boxes give an empty box, whose stop is never before its start
    far = Box((10, 10, 10), (12, 12, 12))
    empty = a.intersect(far)
    assert empty.empty and empty.size == 0
    assert all(s <= e for s, e in zip(empty.start, empty.stop, strict=True))


def test_box_grow_and_shift() -> None:
    b = Box((2, 2, 2), (4, 4, 4))
    assert b.grow(1) == Box((1, 1, 1), (5, 5, 5))
    assert b.grow((0, 1, 2)) == Box((2, 1, 0), (4, 5, 6))
    # before and after differ: 1 voxel at the start, 3 at the stop
    assert b.grow(1, 3) == Box((1, 1, 1), (7, 7, 7))
    assert b.grow((1, 0, 0), (0, 0, 2)) == Box((1, 2, 2), (4, 4, 6))
    assert b.grow(np.int64(2)) == b.grow(2)  # numpy ints count as one value for every axis
    assert b.grow(-1) == Box((3, 3, 3), (3, 3, 3))  # negative growth shrinks
    assert b.shift((10, -2, 0)) == Box((12, 0, 2), (14, 2, 4))
    with pytest.raises(ValueError):
        b.grow((1, 1))  # two values for three axes


def test_box_contains() -> None:
    outer = Box((0, 0, 0), (10, 10, 10))
    assert outer.contains(Box((0, 0, 0), (10, 10, 10)))
    assert outer.contains(Box((2, 3, 4), (5, 6, 7)))
    assert not outer.contains(Box((2, 3, 4), (5, 6, 11)))
    assert not outer.contains(Box((-1, 3, 4), (5, 6, 7)))
    # an empty box lies anywhere, even far outside
    assert outer.contains(Box((50, 50, 50), (50, 60, 60)))
    assert outer.contains_point((0, 9, 5))
    assert not outer.contains_point((0, 10, 5))  # half-open: stop is outside
    assert not outer.contains_point((-1, 0, 0))


def test_box_scale_down() -> None:
    # [3, 9) on a grid 4x coarser is [0, 3): voxels 3..8 fall in coarse cells 0, 1 and 2
    assert Box((3,), (9,)).scale_down((4,)) == Box((0,), (3,))
    assert Box((4, 0, 8), (8, 1, 16)).scale_down((4, 2, 8)) == Box((1, 0, 1), (2, 1, 2))


def test_box_to_slices() -> None:
    b = Box((2, 3, 4), (5, 6, 7))
    assert b.to_slices() == (slice(2, 5), slice(3, 6), slice(4, 7))
    base = Box((1, 1, 1), (10, 10, 10))
    assert b.to_slices(relative_to=base) == (slice(1, 4), slice(2, 5), slice(3, 6))
    array = np.arange(1000).reshape(10, 10, 10)
    assert np.array_equal(array[b.to_slices()], array[2:5, 3:6, 4:7])


def test_box_to_dict_and_repr() -> None:
    b = Box((0, 1, 2), (3, 4, 5))
    assert b.to_dict() == {"start": [0, 1, 2], "stop": [3, 4, 5]}
    assert repr(b) == "Box([0, 1, 2]:[3, 4, 5])"
    assert Box(**b.to_dict()) == b


def test_box_is_frozen() -> None:
    b = Box((0, 0, 0), (1, 1, 1))
    with pytest.raises(AttributeError):
        b.start = (1, 1, 1)  # type: ignore[misc]


def test_box_pickles() -> None:
    b = Box((-3, 0, 7), (5, 8, 9))
    assert pickle.loads(pickle.dumps(b)) == b


# ------------------------------------------------------------------------------------------------
# BlockGrid: tiny geometries with expected values worked out by hand
# ------------------------------------------------------------------------------------------------


def _grid_1d(fit: str, total: int = 10, write: int = 4, context: int = 1, volume: Box | None = None) -> BlockGrid:
    return BlockGrid(Box((0,), (total,)), write_shape=(write,), context=context, fit=fit, volume=volume)  # type: ignore[arg-type]


def test_shrink_1d() -> None:
    # total [0, 10), write 4, context 1:
    #   write   [0,4) [4,8) [8,10)        the last one is cut to the total box
    #   read    [0,5) [3,9) [7,10)        grown by 1, clipped to the volume (= total)
    g = _grid_1d("shrink")
    assert g.grid_shape == (3,) and g.num_blocks == 3 == len(g)
    assert [b.write for b in g.blocks()] == [Box((0,), (4,)), Box((4,), (8,)), Box((8,), (10,))]
    assert [b.nominal for b in g.blocks()] == [b.write for b in g.blocks()]
    assert [b.read for b in g.blocks()] == [Box((0,), (5,)), Box((3,), (9,)), Box((7,), (10,))]
    assert g.covered == g.total


def test_overhang_1d() -> None:
    # total [0, 10), write 4, context 1:
    #   nominal [0,4) [4,8) [8,12)        the last block keeps its full shape ...
    #   write   [0,4) [4,8) [8,10)        ... but writes only inside the total box
    #   read    [0,5) [3,9) [7,10)        nominal grown by 1 is [7,13), clipped to the volume [0,10)
    g = _grid_1d("overhang")
    assert g.grid_shape == (3,)
    last = g.block(2)
    assert last.nominal == Box((8,), (12,))
    assert last.write == Box((8,), (10,))
    assert last.read == Box((7,), (10,))
    # with a bigger volume the overhanging read box reaches past the total box: [7, 13)
    wide = _grid_1d("overhang", volume=Box((-5,), (20,)))
    assert wide.block(2).read == Box((7,), (13,))
    assert wide.block(0).read == Box((-1,), (5,))
    assert wide.block(2).write == Box((8,), (10,))  # still never written past the total box


def test_valid_1d() -> None:
    # total [0, 10), write 4: only two whole blocks [0,4) [4,8); [8,10) is not covered
    g = _grid_1d("valid")
    assert g.grid_shape == (2,)
    assert [b.write for b in g.blocks()] == [Box((0,), (4,)), Box((4,), (8,))]
    assert g.covered == Box((0,), (8,))
    # read boxes: [0,4) grown by 1 is [-1,5) -> [0,5); [4,8) -> [3,9)
    assert [b.read for b in g.blocks()] == [Box((0,), (5,)), Box((3,), (9,))]


def test_valid_with_total_smaller_than_a_block_has_no_blocks() -> None:
    # total 3 voxels, write 4: not one whole block fits
    g = _grid_1d("valid", total=3)
    assert g.grid_shape == (0,) and g.num_blocks == 0
    assert list(g.blocks()) == []
    assert g.covered.empty
    assert g.blocks_in(g.total) == []


def test_exact_division_is_the_same_in_every_fit() -> None:
    # total 12, write 4: three whole blocks whatever the fit
    grids = [_grid_1d(fit, total=12) for fit in FITS]
    blocks = [list(g.blocks()) for g in grids]
    assert all(len(b) == 3 for b in blocks)
    assert blocks[0] == blocks[1] == blocks[2]


def test_docstring_grid_3d() -> None:
    # 10^3 voxels, write 4^3, context 1: 3 blocks per axis, 27 in all; block 26 is the far corner
    g = BlockGrid(Box((0, 0, 0), (10, 10, 10)), write_shape=(4, 4, 4), context=(1, 1, 1))
    assert g.grid_shape == (3, 3, 3) and g.num_blocks == 27
    b = g.block(26)
    assert b.index == (2, 2, 2)
    assert b.write == Box((8, 8, 8), (10, 10, 10))
    assert b.read == Box((7, 7, 7), (10, 10, 10))
    # the centre block reads one voxel around its write box on every side
    c = g.block(13)
    assert c.index == (1, 1, 1)
    assert c.write == Box((4, 4, 4), (8, 8, 8))
    assert c.read == Box((3, 3, 3), (9, 9, 9))


def test_grid_with_offset_total_and_anisotropic_context() -> None:
    # total z [10,14) y [20,26) x [30,31) inside a volume z [0,100) y [0,100) x [0,100)
    # write (2, 4, 1): grid (2, 2, 1); context (0, 2, 5)
    volume = Box((0, 0, 0), (100, 100, 100))
    g = BlockGrid(Box((10, 20, 30), (14, 26, 31)), (2, 4, 1), context=(0, 2, 5), volume=volume)
    assert g.grid_shape == (2, 2, 1)
    b = g.block_at((1, 1, 0))
    assert b.id == 3  # C order: 1 * (2 * 1) + 1 * 1 + 0
    # y: [24, 28) cut to the total's stop 26 -> [24, 26); grown by 2 -> [22, 28), inside the volume
    assert b.write == Box((12, 24, 30), (14, 26, 31))
    assert b.read == Box((12, 22, 25), (14, 28, 36))


def test_grid_layout_equality_hash_and_repr() -> None:
    a = BlockGrid(Box((0, 0, 0), (8, 8, 8)), (4, 4, 4), context=1, fit="overhang")
    b = BlockGrid(Box((0, 0, 0), (8, 8, 8)), [4, 4, 4], context=(1, 1, 1), fit="overhang")
    c = BlockGrid(Box((0, 0, 0), (8, 8, 8)), (4, 4, 4), context=2, fit="overhang")
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a.layout() == {
        "total": {"start": [0, 0, 0], "stop": [8, 8, 8]},
        "volume": {"start": [0, 0, 0], "stop": [8, 8, 8]},
        "write_shape": [4, 4, 4],
        "context": [1, 1, 1],
        "fit": "overhang",
    }
    assert "overhang" in repr(a) and "(2, 2, 2)" in repr(a)


def test_grid_accepts_numpy_ints() -> None:
    g = BlockGrid(Box((0, 0, 0), (8, 8, 8)), np.array([4, 4, 4]), context=np.int64(1))
    assert g.write_shape == (4, 4, 4) and g.context == (1, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"write_shape": (4, 4)}, "must have 3 axes"),
        ({"context": (1, 1)}, "must have 3 axes"),
        ({"write_shape": (4, 0, 4)}, "write_shape must be positive"),
        ({"write_shape": (4, 2.5, 4)}, "whole voxels"),
        ({"context": (1, -1, 0)}, "context must be >= 0"),
        ({"fit": "pad"}, "fit must be one of valid, overhang, shrink"),
        ({"total": Box((0, 0, 0), (0, 8, 8))}, "is empty"),
        ({"volume": Box((0, 0, 0), (8, 8, 7))}, "must lie inside the volume box"),
    ],
)
def test_grid_rejects_bad_layouts(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"total": Box((0, 0, 0), (8, 8, 8)), "write_shape": (4, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=match):
        BlockGrid(**args)  # type: ignore[arg-type]


def test_ids_are_c_order() -> None:
    # grid (2, 3, 4): id = z * 12 + y * 4 + x
    g = BlockGrid(Box((0, 0, 0), (2, 3, 4)), (1, 1, 1))
    assert g.id_of((1, 2, 3)) == 23
    assert g.index_of(23) == (1, 2, 3)
    assert g.id_of((0, 1, 0)) == 4
    assert g.index_of(4) == (0, 1, 0)
    assert [b.id for b in g.blocks()] == list(range(24))
    assert [b.index for b in g.blocks()] == list(itertools.product(range(2), range(3), range(4)))


def test_ids_outside_the_grid_raise() -> None:
    g = BlockGrid(Box((0, 0, 0), (2, 3, 4)), (1, 1, 1))
    for bad in (-1, 24):
        with pytest.raises(IndexError, match="outside the grid"):
            g.index_of(bad)
        with pytest.raises(IndexError):
            g.block(bad)
    with pytest.raises(IndexError, match="outside the grid"):
        g.id_of((0, 3, 0))
    with pytest.raises(IndexError, match="outside the grid"):
        g.block_at((0, 0, -1))


def test_neighbours_in_a_3x3x3_grid() -> None:
    g = BlockGrid(Box((0, 0, 0), (3, 3, 3)), (1, 1, 1))
    centre = g.id_of((1, 1, 1))  # 13
    # centre: 6 faces, +12 edges = 18, +8 corners = 26
    assert g.neighbours(centre, 6) == [4, 10, 12, 14, 16, 22]
    assert len(g.neighbours(centre, 18)) == 18
    assert g.neighbours(centre, 26) == [i for i in range(27) if i != centre]
    # corner block 0: 3 faces, 3 edges (6 in all), 1 corner (7 in all)
    assert g.neighbours(0, 6) == [1, 3, 9]
    assert g.neighbours(0, 18) == [1, 3, 4, 9, 10, 12]
    assert g.neighbours(0, 26) == [1, 3, 4, 9, 10, 12, 13]
    # a block in the middle of a face: 5 faces, 5 + 8 = 13 (edges), 13 + 4 = 17 (corners)
    face = g.id_of((0, 1, 1))
    assert [len(g.neighbours(face, c)) for c in (6, 18, 26)] == [5, 13, 17]


def test_neighbours_reject_other_connectivities() -> None:
    g = BlockGrid(Box((0, 0, 0), (3, 3, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="6, 18 or 26; got 8"):
        g.neighbours(0, 8)  # type: ignore[arg-type]


def test_contact_face_edge_corner() -> None:
    # 8^3 voxels in blocks of 4^3: grid (2, 2, 2)
    g = BlockGrid(Box((0, 0, 0), (8, 8, 8)), (4, 4, 4))
    # face: block 0 (0,0,0) and block 1 (0,0,1) differ along x; a's last x voxel 3, b's first 4
    c = g.contact(0, 1)
    assert c.axes == (2,)
    assert c.a == Box((0, 0, 3), (4, 4, 4))
    assert c.b == Box((0, 0, 4), (4, 4, 5))
    # the same contact seen from the other side swaps a and b
    r = g.contact(1, 0)
    assert (r.a, r.b, r.axes) == (c.b, c.a, c.axes)
    # edge: block 0 and block 3 (0,1,1) touch along a line in z
    e = g.contact(0, 3)
    assert e.axes == (1, 2)
    assert e.a == Box((0, 3, 3), (4, 4, 4))
    assert e.b == Box((0, 4, 4), (4, 5, 5))
    # corner: block 0 and block 7 (1,1,1) touch in a single voxel each
    k = g.contact(0, 7)
    assert k.axes == (0, 1, 2)
    assert k.a == Box((3, 3, 3), (4, 4, 4)) and k.a.size == 1
    assert k.b == Box((4, 4, 4), (5, 5, 5)) and k.b.size == 1


def test_contact_with_a_shrunk_edge_block() -> None:
    # total 10 in x, write 4: block 2 writes [8, 10); its contact with block 1 is x=7 | x=8
    g = BlockGrid(Box((0, 0, 0), (2, 2, 10)), (2, 2, 4))
    c = g.contact(1, 2)
    assert c.a == Box((0, 0, 7), (2, 2, 8))
    assert c.b == Box((0, 0, 8), (2, 2, 9))


def test_contact_rejects_non_neighbours() -> None:
    g = BlockGrid(Box((0, 0, 0), (12, 4, 4)), (4, 4, 4))
    with pytest.raises(ValueError, match="not neighbours"):
        g.contact(0, 2)  # two blocks apart along z
    with pytest.raises(ValueError, match="not neighbours"):
        g.contact(1, 1)  # a block and itself


def test_blocks_in() -> None:
    # total [0, 10) in x, write 4: write boxes [0,4) [4,8) [8,10)
    g = BlockGrid(Box((0, 0, 0), (1, 1, 10)), (1, 1, 4))
    assert g.blocks_in(Box((0, 0, 3), (1, 1, 5))) == [0, 1]
    assert g.blocks_in(Box((0, 0, 4), (1, 1, 8))) == [1]
    assert g.blocks_in(Box((0, 0, -5), (1, 1, 50))) == [0, 1, 2]
    assert g.blocks_in(Box((0, 0, 10), (1, 1, 20))) == []  # past the total box
    assert g.blocks_in(Box((0, 0, -9), (1, 1, 0))) == []  # before it
    assert g.blocks_in(Box((0, 0, 5), (1, 1, 5))) == []  # an empty box touches nothing


def test_blocks_in_ignores_the_overhang() -> None:
    # overhang: block 2's nominal box is [8, 12) but it writes only [8, 10); a box over [10, 12)
    # lies in no write box (regression: it used to return block 2)
    g = BlockGrid(Box((0, 0, 0), (1, 1, 10)), (1, 1, 4), fit="overhang", volume=Box((0, 0, 0), (1, 1, 20)))
    assert g.blocks_in(Box((0, 0, 10), (1, 1, 12))) == []
    assert g.blocks_in(Box((0, 0, 9), (1, 1, 12))) == [2]


def test_blocks_in_valid_ignores_the_uncovered_rest() -> None:
    # valid: write boxes [0,4) [4,8); [8,10) is covered by no block
    g = BlockGrid(Box((0, 0, 0), (1, 1, 10)), (1, 1, 4), fit="valid")
    assert g.blocks_in(Box((0, 0, 8), (1, 1, 10))) == []
    assert g.blocks_in(Box((0, 0, 7), (1, 1, 10))) == [1]


def test_block_grid_and_contact_pickle() -> None:
    g = BlockGrid(Box((2, 0, 0), (11, 9, 7)), (4, 4, 4), context=(1, 2, 0), fit="overhang", volume=Box((0, 0, 0), (20, 20, 20)))
    g2 = pickle.loads(pickle.dumps(g))
    assert g2 == g and g2.grid_shape == g.grid_shape
    assert list(g2.blocks()) == list(g.blocks())
    b = g.block(5)
    assert isinstance(b, Block)
    assert pickle.loads(pickle.dumps(b)) == b
    c = g.contact(0, 1)
    assert isinstance(c, Contact)
    assert pickle.loads(pickle.dumps(c)) == c


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis), on grids of at most 4 blocks per axis so a run takes a few seconds
# ------------------------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def grids(draw: st.DrawFn, max_blocks: int = 4) -> BlockGrid:
    write = tuple(draw(st.integers(1, 5)) for _ in range(3))
    # per axis: n blocks, the last one r voxels long (r == w: the axis divides evenly)
    shape = []
    for w in write:
        n = draw(st.integers(1, max_blocks))
        r = draw(st.integers(1, w))
        shape.append((n - 1) * w + r)
    start = tuple(draw(st.integers(-6, 6)) for _ in range(3))
    total = Box.from_shape(shape, start)
    margin_lo = tuple(draw(st.integers(0, 3)) for _ in range(3))
    margin_hi = tuple(draw(st.integers(0, 3)) for _ in range(3))
    volume = total.grow(margin_lo, margin_hi)
    context = tuple(draw(st.integers(0, 3)) for _ in range(3))
    fit = draw(st.sampled_from(FITS))
    return BlockGrid(total, write, context=context, fit=fit, volume=volume)  # type: ignore[arg-type]


def _write_counts(g: BlockGrid) -> np.ndarray:
    """How many write boxes cover each voxel of the volume box."""
    counts = np.zeros(g.volume.shape, dtype=np.int32)
    for b in g.blocks():
        counts[b.write.to_slices(relative_to=g.volume)] += 1
    return counts


@PROPERTY_SETTINGS
@given(grids())
def test_write_boxes_tile_exactly_once(g: BlockGrid) -> None:
    counts = _write_counts(g)
    expected = np.zeros_like(counts)
    covered = g.covered
    assert g.total.contains(covered)
    if g.fit != "valid":
        assert covered == g.total
    expected[covered.to_slices(relative_to=g.volume)] = 1
    # every voxel of the covered box is written by exactly one block, and nothing else is written
    assert np.array_equal(counts, expected)
    for b in g.blocks():
        assert not b.write.empty
        assert covered.contains(b.write)
        assert b.write.start == b.nominal.start
        if g.fit == "valid":
            assert b.write.shape == g.write_shape == b.nominal.shape
        elif g.fit == "overhang":
            assert b.nominal.shape == g.write_shape
            assert b.write == b.nominal.intersect(g.total)
        else:
            assert b.nominal == b.write


@PROPERTY_SETTINGS
@given(grids())
def test_read_boxes_are_grown_write_boxes_clipped_to_the_volume(g: BlockGrid) -> None:
    for b in g.blocks():
        base = b.nominal if g.fit == "overhang" else b.write
        assert b.read == base.grow(g.context).intersect(g.volume)
        assert b.read.contains(b.write)
        assert g.volume.contains(b.read)


@PROPERTY_SETTINGS
@given(grids())
def test_ids_round_trip_in_c_order(g: BlockGrid) -> None:
    blocks = list(g.blocks())
    assert [b.id for b in blocks] == list(range(g.num_blocks))
    for b in blocks:
        assert g.index_of(b.id) == b.index
        assert g.id_of(b.index) == b.id
        assert b.id == int(np.ravel_multi_index(b.index, g.grid_shape))
        assert g.block(b.id) == b == g.block_at(b.index)


@PROPERTY_SETTINGS
@given(grids())
def test_neighbours_are_symmetric_and_nested(g: BlockGrid) -> None:
    indices = np.array([b.index for b in g.blocks()]).reshape(-1, 3)
    for bid in range(g.num_blocks):
        n6, n18, n26 = (g.neighbours(bid, c) for c in (6, 18, 26))  # type: ignore[arg-type]
        assert set(n6) <= set(n18) <= set(n26)
        assert bid not in n26
        assert n26 == sorted(n26)
        for c, ns in ((6, n6), (18, n18), (26, n26)):
            for other in ns:
                assert bid in g.neighbours(other, c)  # type: ignore[arg-type]
        # brute force: every other block whose index differs by at most one per axis, on at most
        # 1 (6), 2 (18) or 3 (26) axes
        diff = np.abs(indices - indices[bid])
        near = diff.max(axis=1) == 1
        moved = np.count_nonzero(diff, axis=1)
        for c, ns, max_axes in ((6, n6, 1), (18, n18, 2), (26, n26, 3)):
            assert ns == np.flatnonzero(near & (moved <= max_axes)).tolist(), c


@PROPERTY_SETTINGS
@given(grids())
def test_interior_blocks_have_6_18_26_neighbours(g: BlockGrid) -> None:
    for b in g.blocks():
        if all(0 < i < n - 1 for i, n in zip(b.index, g.grid_shape, strict=True)):
            assert [len(g.neighbours(b.id, c)) for c in (6, 18, 26)] == [6, 18, 26]


@PROPERTY_SETTINGS
@given(grids(max_blocks=3))
def test_contacts_are_adjacent_slabs_inside_the_write_boxes(g: BlockGrid) -> None:
    for a in g.blocks():
        for bid in g.neighbours(a.id, 26):
            b = g.block(bid)
            c = g.contact(a.id, bid)
            delta = [j - i for i, j in zip(a.index, b.index, strict=True)]
            assert c.axes == tuple(ax for ax, d in enumerate(delta) if d)
            assert a.write.contains(c.a) and not c.a.empty
            assert b.write.contains(c.b) and not c.b.empty
            for ax, d in enumerate(delta):
                if d:
                    # one voxel thick, and b's slab is the very next voxel after (before) a's
                    assert c.a.shape[ax] == 1 == c.b.shape[ax]
                    assert c.b.start[ax] == c.a.start[ax] + d
                else:
                    assert (c.a.start[ax], c.a.stop[ax]) == (a.write.start[ax], a.write.stop[ax])
                    assert (c.b.start[ax], c.b.stop[ax]) == (b.write.start[ax], b.write.stop[ax])
            # shifting a's slab by the index difference lands exactly on b's slab
            assert c.a.shift(delta) == c.b


@PROPERTY_SETTINGS
@given(grids(), st.data())
def test_blocks_in_is_exactly_the_intersecting_write_boxes(g: BlockGrid, data: st.DataObject) -> None:
    around = g.volume.grow(4)
    start = [data.draw(st.integers(a, b)) for a, b in zip(around.start, around.stop, strict=True)]
    length = [data.draw(st.integers(-1, 10)) for _ in start]  # empty boxes (length <= 0) included
    box = Box(start, [s + n for s, n in zip(start, length, strict=True)])
    expected = [b.id for b in g.blocks() if not b.write.intersect(box).empty]
    assert g.blocks_in(box) == expected


# ------------------------------------------------------------------------------------------------
# The per-axis tables behind BlockGrid.block against the Box construction they replace
# ------------------------------------------------------------------------------------------------


def _box_construction(g: BlockGrid, index: tuple[int, ...]) -> Block:
    """A block as BlockGrid.block_at built it before the per-axis tables: one validated Box per step."""
    start = tuple(t + i * w for t, i, w in zip(g.total.start, index, g.write_shape, strict=True))
    nominal = Box(start, tuple(s + w for s, w in zip(start, g.write_shape, strict=True)))
    write = nominal.intersect(g.total)
    read = (write if g.fit == "shrink" else nominal).grow(g.context).intersect(g.volume)
    return Block(g.id_of(index), index, write, write if g.fit == "shrink" else nominal, read)


def _assert_blocks_match_the_box_construction(g: BlockGrid) -> None:
    indices = list(itertools.product(*(range(n) for n in g.grid_shape)))
    assert [b.index for b in g.blocks()] == indices
    for bid, index in enumerate(indices):
        want = _box_construction(g, index)
        for got in (g.block(bid), g.block(np.int64(bid)), g.block_at(index), g.block_at(np.array(index))):
            assert got == want and repr(got) == repr(want)
            coords = (got.id, *got.index, *(v for box in (got.write, got.nominal, got.read) for v in box.start + box.stop))
            assert all(type(v) is int for v in coords)
            assert (got.write.shape, got.write.size, got.write.empty) == (want.write.shape, want.write.size, want.write.empty)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(
    ("total", "write_shape", "context", "volume"),
    [
        (Box((0, 0, 0), (10, 10, 10)), (4, 4, 4), 1, None),  # edge blocks cut (shrink), overhanging or left out (valid)
        (Box((3, -2, 5), (14, 9, 12)), (4, 5, 3), (2, 0, 3), Box((0, -5, 0), (20, 20, 13))),  # offset total, volume beyond it
        (Box((0, 0, 0), (7, 9, 5)), (2, 3, 5), (5, 7, 9), None),  # context wider than a block: clipped to the volume
        (Box((0, 0, 0), (8, 8, 8)), (8, 8, 8), 0, None),  # one block
        (Box((1, 2), (12, 9)), (5, 4), (3, 1), Box((0, 0), (13, 10))),  # 2-D
        (Box((4,), (23,)), (6,), 2, Box((0,), (25,))),  # 1-D
    ],
)
def test_block_tables_give_the_blocks_of_the_box_construction(fit: str, total: Box, write_shape: tuple[int, ...], context: object, volume: Box | None) -> None:
    g = BlockGrid(total, write_shape, context=context, fit=fit, volume=volume)  # type: ignore[arg-type]
    _assert_blocks_match_the_box_construction(g)
    g2 = pickle.loads(pickle.dumps(g))  # the tables are not pickled: a worker makes its own
    assert g2._spans is None and g._spans is not None
    _assert_blocks_match_the_box_construction(g2)
    g3 = BlockGrid.__new__(BlockGrid)  # a grid pickled before the tables existed: no _spans in its state
    g3.__dict__.update({k: v for k, v in g.__dict__.items() if k != "_spans"})
    _assert_blocks_match_the_box_construction(g3)


@PROPERTY_SETTINGS
@given(grids())
def test_block_tables_match_the_box_construction_on_any_grid(g: BlockGrid) -> None:
    _assert_blocks_match_the_box_construction(g)


def test_trusted_box_equals_a_checked_box() -> None:
    from engine.geometry.box import trusted_box

    for start, stop in (((1, 2, 3), (4, 6, 8)), ((0, 5, 0), (4, 2, 4)), ((-3,), (2,))):
        b = trusted_box(start, stop)
        assert b == Box(start, stop) and hash(b) == hash(Box(start, stop)) and repr(b) == repr(Box(start, stop))
        assert (b.shape, b.size, b.empty) == (Box(start, stop).shape, Box(start, stop).size, Box(start, stop).empty)
        assert pickle.loads(pickle.dumps(b)) == b
