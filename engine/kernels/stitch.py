"""Stitching block labels into global connected components, exactly and in bounded memory.

Each block is labelled once on its own (local ids ``1..n_b``). Two components of neighbouring blocks
are the same object where a voxel of one touches a voxel of the other across the blocks' common
face, edge or corner (as the connectivity defines touching). Only the six one-voxel faces of each
block are needed to find those pairs (:func:`block_faces`, :func:`face_pairs`).

Ids are made global in three steps:

1. *provisional* ids: ``p = offset[b] + l`` with ``offset`` the exclusive prefix sum of the per-block
   counts ``n_b`` (dense, no gaps, no guessing of a maximum per block);
2. the pairs, as provisional ids, go through a union-find (:func:`resolve`; scipy's connected
   components on the pair graph). Only labels that touch a face ever enter it, so its memory grows with
   the surface of the blocks, not their volume. Each merged object is *owned* by its smallest
   provisional id (its *representative*, in the first block it appears in);
3. final ids are consecutive: block ``b``'s owned (and kept) labels get ``kept_offset[b] + 1, + 2, …``
   in local order, ``kept_offset`` being the prefix sum of what each block owns (:func:`block_lut`).

>>> pairs = np.array([[2, 4], [4, 7], [1, 5]], np.uint64)  # provisional ids that touch
>>> r = resolve(pairs)
>>> r.keys.tolist(), r.rep.tolist()
([1, 2, 4, 5, 7], [1, 2, 2, 1, 2])
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from engine.geometry import BlockGrid, Box
from engine.storage.kv import pack_arrays, unpack_arrays

_MAX_AXES = {6: 1, 18: 2, 26: 3}


# -- faces ------------------------------------------------------------------------------------------
@dataclass
class Faces:
    """The six one-voxel faces of a block's local labels (and of its input values, for label volumes,
    where touching voxels join only if their values are equal). ``labels[(axis, side)]`` keeps the
    block's shape with size 1 on ``axis``; side 0 is the low face, 1 the high face."""

    labels: dict[tuple[int, int], np.ndarray]
    values: dict[tuple[int, int], np.ndarray] | None = None

    def to_bytes(self) -> bytes:
        arrays = {f"l{a}{s}": v for (a, s), v in self.labels.items()}
        if self.values is not None:
            arrays.update({f"v{a}{s}": v for (a, s), v in self.values.items()})
        return pack_arrays(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> Faces:
        z = unpack_arrays(data)
        labels = {(int(k[1]), int(k[2])): v for k, v in z.items() if k[0] == "l"}
        values = {(int(k[1]), int(k[2])): v for k, v in z.items() if k[0] == "v"}
        return cls(labels, values or None)


def block_faces(labels: np.ndarray, values: np.ndarray | None = None) -> Faces:
    """The six faces of a block (copies, so the block can be freed)."""

    def cut(arr: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        out = {}
        for axis in range(3):
            for side, index in ((0, slice(0, 1)), (1, slice(arr.shape[axis] - 1, arr.shape[axis]))):
                sl = [slice(None)] * 3
                sl[axis] = index
                out[(axis, side)] = np.ascontiguousarray(arr[tuple(sl)])
        return out

    return Faces(cut(labels), None if values is None else cut(values))


def _contact_slab(write: Box, box: Box, axis: int, side: int, faces: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """The voxels ``box`` (touching the other block) of a block with write box ``write``, cut from
    its face on ``axis``/``side``."""
    sl = list(box.to_slices(write))
    sl[axis] = slice(0, 1)
    return faces[(axis, side)][tuple(sl)]


def face_pairs(grid: BlockGrid, a: int, faces_a: Faces, b: int, faces_b: Faces, connectivity: int) -> np.ndarray:
    """Unique pairs ``(local id in a, local id in b)`` of components that touch across the contact of
    neighbouring blocks ``a`` and ``b``, as an ``(n, 2)`` uint64 array.

    For a face contact, a voxel touches the voxel facing it (6), also those one step aside along one
    in-plane axis (18), also the diagonal ones (26); for an edge contact (18, 26) the voxel facing it
    along the edge, and for 26 one step along the edge; corners touch only under 26.
    """
    contact = grid.contact(a, b)
    free = [ax for ax in range(3) if ax not in contact.axes]
    budget = _MAX_AXES[connectivity] - len(contact.axes)
    if budget < 0:
        return np.zeros((0, 2), np.uint64)
    ia, ib = grid.index_of(a), grid.index_of(b)
    axis = contact.axes[0]
    side_a = 1 if ib[axis] > ia[axis] else 0
    wa, wb = grid.block_at(ia).write, grid.block_at(ib).write
    la = _contact_slab(wa, contact.a, axis, side_a, faces_a.labels)
    lb = _contact_slab(wb, contact.b, axis, 1 - side_a, faces_b.labels)
    va = vb = None
    if faces_a.values is not None and faces_b.values is not None:
        va = _contact_slab(wa, contact.a, axis, side_a, faces_a.values)
        vb = _contact_slab(wb, contact.b, axis, 1 - side_a, faces_b.values)
    keys = []
    for shift in itertools.product((-1, 0, 1), repeat=len(free)):
        if sum(1 for s in shift if s) > budget:
            continue
        sa = [slice(None)] * 3
        sb = [slice(None)] * 3
        for ax, s in zip(free, shift, strict=True):
            n = la.shape[ax]
            sa[ax] = slice(max(0, -s), n - max(0, s))
            sb[ax] = slice(max(0, s), n - max(0, -s))
        x, y = la[tuple(sa)], lb[tuple(sb)]
        touch = (x != 0) & (y != 0)
        if va is not None and vb is not None:
            touch &= va[tuple(sa)] == vb[tuple(sb)]
        if touch.any():
            keys.append((x[touch].astype(np.uint64) << np.uint64(32)) | y[touch].astype(np.uint64))
    if not keys:
        return np.zeros((0, 2), np.uint64)
    k = np.unique(np.concatenate(keys))
    return np.stack([k >> np.uint64(32), k & np.uint64(0xFFFFFFFF)], axis=1)


# -- union-find over boundary labels ---------------------------------------------------------------
@dataclass
class Resolution:
    """The merged objects among boundary labels: ``keys`` (sorted provisional ids of every label that
    touches another block's label) and ``rep`` (the smallest provisional id of its object)."""

    keys: np.ndarray
    rep: np.ndarray

    @property
    def is_rep(self) -> np.ndarray:
        return self.keys == self.rep


def resolve(pairs: np.ndarray) -> Resolution:
    """Union-find over the pairs (provisional ids): each id's representative, the smallest id of its
    connected set."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if pairs.size == 0:
        empty = np.zeros(0, np.uint64)
        return Resolution(empty, empty.copy())
    keys, inv = np.unique(pairs.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    n = keys.size
    graph = coo_matrix((np.ones(len(inv), np.int8), (inv[:, 0], inv[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # keys are sorted, so the first key seen of each component is its smallest
    _, first = np.unique(comp, return_index=True)
    rep = keys[first][comp]
    return Resolution(keys, rep.astype(np.uint64))


# -- consecutive ids ------------------------------------------------------------------------------
def owned_mask(n: int, local_bnd: np.ndarray, bnd_owned: np.ndarray, counts: np.ndarray | None, min_size: int) -> np.ndarray:
    """Which local labels ``1..n`` of a block get a final id of their own (index 0 is background):
    labels touching no other block unless smaller than ``min_size`` (``counts`` needed then), and
    boundary labels ``local_bnd`` where ``bnd_owned`` (representatives of objects that are kept)."""
    mask = np.ones(n + 1, bool)
    mask[0] = False
    if min_size > 1:
        assert counts is not None and counts.size == n + 1
        mask &= counts >= min_size
    mask[local_bnd] = bnd_owned
    return mask


def block_lut(n: int, mask: np.ndarray, kept_offset: int, local_bnd: np.ndarray, bnd_final: np.ndarray) -> np.ndarray:
    """The lookup table local id -> final id of one block (uint64, 0 -> 0): owned labels numbered
    ``kept_offset + 1, …`` in local order, boundary labels from ``bnd_final``, the rest 0.

    >>> m = owned_mask(4, np.array([2, 3]), np.array([True, False]), None, 0)
    >>> block_lut(4, m, 10, np.array([2, 3]), np.array([12, 5], np.uint64)).tolist()
    [0, 11, 12, 5, 13]
    """
    lut = np.zeros(n + 1, np.uint64)
    idx = np.flatnonzero(mask)
    lut[idx] = kept_offset + np.arange(1, idx.size + 1, dtype=np.uint64)
    lut[local_bnd] = bnd_final
    return lut
