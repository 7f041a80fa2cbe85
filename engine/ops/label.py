"""Connected components of a whole volume, blockwise and exact: ``label_volume``.

Two blockwise passes on the workers and small steps on the driver::

    A  cc-local     threshold + label each block (cc3d, or CuPy on a GPU) -> local ids 1..n_b; per block
                    its count, six faces and (if needed) object statistics; with ``keep_local`` the
                    local ids also go to a uint32 scratch volume
       (driver)     provisional ids: offsets = prefix sum of the counts
    B  cc-pairs     pairs of touching labels across each block's faces, edges and corners (forward
                    neighbours only, so each contact is seen once); in the driver for small grids
       (driver)     union-find over boundary labels only; global sizes; consecutive final ids;
                    removal of small objects; object table (Parquet)
    C  cc-relabel-input  label the block again (deterministic: the same local ids as in A) -> final
                    ids (uint64, or uint32) with one lookup table per block; ``cc-relabel`` instead
                    reads the scratch volume of ``keep_local``

With the Ray backend the same workers run every pass (started once per run). A worker holds one block
(and a few faces); the driver holds the labels that touch block faces and one block's statistics at a
time. See :mod:`engine.segment.stitch` for the id scheme.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from engine.errors import ConfigError, ResumeMismatch, StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.ops.scratch import Scratch
from engine.runtime import Backend, BackendName, BlockOp, RunSummary, default_state_dir, run_blockwise
from engine.runtime.faults import kill_point
from engine.runtime.lock import one_driver
from engine.runtime.ownership import outputs_intact
from engine.segment.kernels import Device, check_connectivity, foreground, label_block
from engine.segment.objects import ObjectStats, block_stats
from engine.segment.stitch import Faces, block_faces, block_lut, face_pairs, owned_mask
from engine.storage import Volume, check_write_alignment, create_volume, open_volume
from engine.storage.safety import write_json_atomic

log = logging.getLogger(__name__)

Connectivity = Literal[6, 18, 26]
OutDtype = Literal["uint64", "uint32"]
DEFAULT_CHUNKS: tuple[int, int, int] = (64, 64, 64)
DEFAULT_BLOCK: tuple[int, int, int] = (128, 128, 128)
#: Up to this many blocks, pass B (cheap: faces only) runs in the driver process when the backend was
#: passed in (its workers would start again for the pass).
PAIRS_IN_DRIVER_MAX_BLOCKS = 256


# -- pass A --------------------------------------------------------------------------------------
class LocalLabelOp(BlockOp):
    """Pass A: label one block on its own; write local ids, the count, faces and statistics."""

    kind: ClassVar[str] = "cc-local"
    input: str
    scratch: str
    threshold: float | None = None
    connectivity: Connectivity = 26
    table: bool = False
    #: measure each label's voxel count (needed for ``min_size`` and the table); without it the
    #: statistics hold only the number of labels (counts of -1)
    sizes: bool = True
    #: keep the local ids in a uint32 scratch volume (pass C can instead label the block again:
    #: cheaper than compressing, writing and reading back four bytes per voxel)
    write_local: bool = False
    device: Device = "cpu"
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS
    overwrite: bool = Field(default=False, exclude=True)

    _in: Volume | None = PrivateAttr(default=None)
    _tmp: Volume | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)

    @property
    def local_url(self) -> str:
        return Scratch(self.scratch).volume_url("local")

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.input)
        if self.write_local:
            tmp = create_volume(self.local_url, src.spatial_shape, "uint32", self.chunks, overwrite=self.overwrite, inputs=(self.input,))
            check_write_alignment(tmp, grid.write_shape, grid.total.start)

    def setup(self) -> None:
        self._in = open_volume(self.input)
        if self.write_local:
            self._tmp = open_volume(self.local_url, "r+")
        self._scratch = Scratch(self.scratch)

    def process(self, block: Block) -> dict[str, float]:
        assert self._in is not None and self._scratch is not None
        data = self._in.read(block.write)
        labels, n = local_labels(data, self.threshold, self.connectivity, self.device, f"the input {self._in.url}", block)
        if n:
            if self._tmp is not None:
                self._tmp.write(block.write, labels)
            values = data if self.threshold is None and data.dtype != bool else None
            self._scratch.put(f"faces/{block.id}", block_faces(labels, values).to_bytes())
        prob = None
        if self.table and self.threshold is not None:
            prob = data.astype(np.float32) / 255.0 if data.dtype == np.uint8 else data
        if self.sizes or self.table:
            stats = block_stats(labels, n, block.write.start, prob, full=self.table)
        else:
            stats = ObjectStats(np.full(n + 1, -1, np.int64))
        self._scratch.put(f"stats/{block.id}", stats.to_bytes())  # its length gives the count
        out = {"local_objects": float(n)}
        if self.sizes or self.table:
            out["foreground_voxels"] = float(stats.counts[1:].sum())
        return out


def local_labels(data: np.ndarray, threshold: float | None, connectivity: int, device: Device, what: str, block: Block) -> tuple[np.ndarray, int]:
    """The local ids of one block (passes A and C compute the same, deterministically)."""
    if data.dtype.kind == "f" and np.isnan(data).any():
        raise StorageError(f"{what} holds NaN values in {block.write}", "fill or mask them before labelling")
    return label_block(foreground(data, threshold), connectivity, device)


class GpuLocalLabelOp(LocalLabelOp):
    """Pass A with one GPU per worker (``device='gpu'``). UNTESTED here: no GPU on the dev machines."""

    kind: ClassVar[str] = "cc-local-gpu"
    wants_gpu: ClassVar[bool] = True


# -- pass B --------------------------------------------------------------------------------------
class FacePairsOp(BlockOp):
    """Pass B: the pairs of provisional ids that touch across a block's contacts with its forward
    neighbours (higher ids), written to ``pairs/<id>``."""

    kind: ClassVar[str] = "cc-pairs"
    scratch: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    connectivity: Connectivity = 26
    cache_blocks: int = Field(default=32, exclude=True)

    _scratch: Scratch | None = PrivateAttr(default=None)
    _offsets: np.ndarray | None = PrivateAttr(default=None)
    _counts: np.ndarray | None = PrivateAttr(default=None)
    _grid: BlockGrid | None = PrivateAttr(default=None)
    _cache: OrderedDict[int, Faces] = PrivateAttr(default_factory=OrderedDict)

    def setup(self) -> None:
        self._scratch = Scratch(self.scratch)
        offsets = np.load(_io(self._scratch.need("offsets.npy")))
        self._offsets, self._counts = offsets[:-1], np.diff(offsets)

    def is_empty(self, block: Block) -> bool:
        assert self._counts is not None
        return bool(self._counts[block.id] == 0)

    def _faces(self, bid: int) -> Faces:
        assert self._scratch is not None
        got = self._cache.get(bid)
        if got is None:
            got = Faces.from_bytes(self._scratch.need(f"faces/{bid}"))
            self._cache[bid] = got
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(bid)
        return got

    def process(self, block: Block) -> dict[str, float]:
        assert self._scratch is not None and self._offsets is not None and self._counts is not None
        grid = self._grid_of(block)
        a = block.id
        out = []
        for b in grid.neighbours(a, self.connectivity):
            if b < a or self._counts[b] == 0:
                continue
            local = face_pairs(grid, a, self._faces(a), b, self._faces(b), self.connectivity)
            if local.size:
                local[:, 0] += np.uint64(self._offsets[a])
                local[:, 1] += np.uint64(self._offsets[b])
                out.append(local)
        pairs = np.concatenate(out) if out else np.zeros((0, 2), np.uint64)
        buf = _io()
        np.save(buf, pairs)
        self._scratch.put(f"pairs/{a}", buf.getvalue())
        return {"pairs": float(len(pairs))}

    def _grid_of(self, block: Block) -> BlockGrid:
        if self._grid is None:
            self._grid = BlockGrid(Box.from_shape(self.shape), write_shape=self.block)
        return self._grid


# -- pass C --------------------------------------------------------------------------------------
class RelabelOp(BlockOp):
    """Pass C: write final ids (``dtype``, uint64 by default) for one block through its lookup
    table, from the local ids kept in the scratch volume ``local``."""

    kind: ClassVar[str] = "cc-relabel"
    scratch: str
    output: str
    like: str
    min_size: int = 0
    dtype: OutDtype = "uint64"
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS
    overwrite: bool = Field(default=False, exclude=True)

    _scratch: Scratch | None = PrivateAttr(default=None)
    _map: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)
    _tmp: Volume | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.like)  # shape, voxel size and offset of the input
        out = create_volume(
            self.output, src.spatial_shape, self.dtype, self.chunks, voxel_size=src.voxel_size, offset=src.offset,
            overwrite=self.overwrite, layer_type="segmentation", inputs=(self.like,),
        )
        check_write_alignment(out, grid.write_shape, grid.total.start)

    def setup(self) -> None:
        self._scratch = Scratch(self.scratch)
        with np.load(_io(self._scratch.need("mapping.npz"))) as z:
            self._map = {k: z[k] for k in z.files}
        self._open_local()
        self._out = open_volume(self.output, "r+")

    def _open_local(self) -> None:
        assert self._scratch is not None
        self._tmp = open_volume(self._scratch.volume_url("local"))

    def _local(self, block: Block) -> np.ndarray:
        """The block's local ids (as pass A numbered them)."""
        assert self._tmp is not None
        return self._tmp.read(block.write)

    def process(self, block: Block) -> dict[str, float]:
        assert self._scratch is not None and self._out is not None
        m = self._map
        b = block.id
        n = int(m["offsets"][b + 1] - m["offsets"][b])
        if n == 0:  # nothing here: write zeros (cheap: chunks equal to the fill value are not stored)
            self._out.write(block.write, np.zeros(block.write.shape, self.dtype))
            return {"objects_owned": 0.0}
        lo, hi = np.searchsorted(m["keys"], [m["offsets"][b] + 1, m["offsets"][b] + n + 1])
        local_bnd = (m["keys"][lo:hi] - np.uint64(m["offsets"][b])).astype(np.int64)
        counts = None
        if self.min_size > 1:
            from engine.segment.objects import ObjectStats

            counts = ObjectStats.from_bytes(self._scratch.need(f"stats/{b}")).counts
        mask = owned_mask(n, local_bnd, m["owned"][lo:hi], counts, self.min_size)
        lut = block_lut(n, mask, int(m["kept_offsets"][b]), local_bnd, m["final"][lo:hi]).astype(self.dtype, copy=False)
        local = self._local(block)
        self._out.write(block.write, lut[local])
        return {"objects_owned": float(mask.sum())}


class RelabelFromInputOp(RelabelOp):
    """Pass C of :func:`label_volume`: labels each block again from the input (the same kernel on the
    same data gives the same local ids as pass A) instead of reading them from a scratch volume."""

    kind: ClassVar[str] = "cc-relabel-input"
    input: str
    threshold: float | None = None
    connectivity: Connectivity = 26
    device: Device = "cpu"

    _in: Volume | None = PrivateAttr(default=None)

    def _open_local(self) -> None:
        self._in = open_volume(self.input)

    def _local(self, block: Block) -> np.ndarray:
        assert self._in is not None
        labels, n = local_labels(self._in.read(block.write), self.threshold, self.connectivity, self.device, f"the input {self._in.url}", block)
        expected = int(self._map["offsets"][block.id + 1] - self._map["offsets"][block.id])
        if n != expected:
            raise StorageError(
                f"block {block.id} of {self._in.url} now has {n} objects, {expected} when it was first labelled: the input changed during the run",
                "label it again with --overwrite",
            )
        return labels


class GpuRelabelFromInputOp(RelabelFromInputOp):
    """Pass C with one GPU per worker (``device='gpu'``). UNTESTED here: no GPU on the dev machines."""

    kind: ClassVar[str] = "cc-relabel-input-gpu"
    wants_gpu: ClassVar[bool] = True


def _io(data: bytes = b"") -> Any:
    import io

    return io.BytesIO(data)


# -- the whole job -------------------------------------------------------------------------------
@dataclass
class LabelResult:
    """What :func:`label_volume` did."""

    output: str
    objects: int
    removed: int = 0
    local_objects: int = 0
    boundary_labels: int = 0
    pairs: int = 0
    blocks: int = 0
    table: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_input(vol: Volume, threshold: float | None) -> None:
    if len(vol.shape) != 3:
        raise StorageError(f"{vol.url} has {len(vol.shape)} axes {vol.shape}; labelling needs a (z, y, x) volume", "pick one channel first")
    dt = vol.dtype
    if threshold is not None:
        if not np.isfinite(threshold):
            raise ConfigError(f"--threshold must be a finite number, got {threshold}")
        if dt == np.uint8:
            if not 0.0 <= threshold <= 1.0:
                raise ConfigError(f"--threshold {threshold} is outside [0, 1]; uint8 probabilities are read as value/255", "e.g. --threshold 0.5")
        elif dt.kind != "f":
            raise ConfigError(
                f"--threshold applies to probability volumes (uint8 0-255 or float), but {vol.url} is {dt}",
                "leave out --threshold to label a binary or label volume",
            )
    elif dt.kind not in "biu":
        raise ConfigError(
            f"{vol.url} is {dt} (a probability volume?) and no --threshold was given",
            "give --threshold T (e.g. 0.5), or label a binary or integer label volume",
        )


def _triple(value: Sequence[int], what: str) -> tuple[int, int, int]:
    t = tuple(int(v) for v in value)
    if len(t) != 3 or any(v <= 0 for v in t):
        raise ConfigError(f"{what} must be three positive numbers z,y,x, got {tuple(value)}", f"e.g. {what} 64,64,64")
    return (t[0], t[1], t[2])


def label_grid(shape: Sequence[int], block: Sequence[int], chunks: Sequence[int]) -> tuple[BlockGrid, tuple[int, int, int]]:
    """The grid and storage chunks of a labelling: chunks clipped to the volume, blocks a whole
    number of chunks (rounded up), the last ones cut at the volume edge."""
    shape_t = _triple(shape, "shape")
    chunks_t = tuple(min(c, s) for c, s in zip(_triple(chunks, "--chunks"), shape_t, strict=True))
    block_t = tuple(max(1, -(-min(b, s) // c)) * c for b, s, c in zip(_triple(block, "--block"), shape_t, chunks_t, strict=True))
    return BlockGrid(Box.from_shape(shape_t), write_shape=block_t), (chunks_t[0], chunks_t[1], chunks_t[2])


@one_driver("label")  # its three passes, scratch and result.json belong to one driver
def label_volume(
    input: str | os.PathLike[str],  # noqa: A002 - the natural name for users
    output: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    connectivity: int = 26,
    min_size: int = 0,
    table: str | os.PathLike[str] | None = None,
    block: Sequence[int] = DEFAULT_BLOCK,
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    device: Device = "cpu",
    dtype: OutDtype = "uint64",
    backend: BackendName | Backend = "serial",
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 2,
    overwrite: bool = False,
    keep_scratch: bool = False,
    keep_local: bool = False,
    pairs_in_driver: bool | None = None,
    progress: bool = True,
    state_dir: str | os.PathLike[str] | None = None,
) -> LabelResult:
    """Label the connected components of ``input`` into ``output`` (``dtype``: uint64, or uint32
    where the objects fit; ids ``1..objects``).

    ``threshold`` turns a probability volume into a mask (uint8 read as ``v/255``; foreground where
    ``p > threshold``); without it the input is a binary or label volume (0 is background; touching
    voxels of different labels stay apart). ``min_size`` removes objects smaller than that many voxels,
    measured whole across blocks. ``table`` writes the object table (Parquet). ``pairs_in_driver``
    runs pass B in this process (default: with a ``Backend`` object passed in, for grids of up to
    ``PAIRS_IN_DRIVER_MAX_BLOCKS`` blocks, where starting workers would cost more than the pass; with
    ``backend='ray'`` the run's workers, already started, do it). ``keep_local`` stores pass A's local ids in
    a uint32 scratch volume for pass C (each block labelled once); by default pass C labels each block
    again from the input, which measured cheaper on CPU than compressing, writing and reading back the
    local ids (see ``benchmarks/RESULTS.md``). With ``backend='ray'`` one set of workers serves
    every pass. The result equals
    ``cc3d.connected_components`` on the whole volume up to the numbering of the objects.

    >>> import tempfile, numpy as np
    >>> from engine.storage import create_volume
    >>> d = tempfile.mkdtemp()
    >>> v = create_volume(f"{d}/a.zarr/mask", (4, 8, 8), "uint8", (4, 4, 4))
    >>> m = np.zeros((4, 8, 8), np.uint8); m[1, 1:7, 3] = 1; m[3, 0, 0] = 1
    >>> v.write(v.box, m)
    >>> r = label_volume(v.url, f"{d}/a.zarr/cc", block=(4, 4, 4), chunks=(4, 4, 4), progress=False)
    >>> r.objects, r.local_objects, r.boundary_labels
    (2, 3, 2)
    """
    t0 = time.perf_counter()
    in_url, out_url = os.fspath(input), os.fspath(output)
    connectivity = check_connectivity(int(connectivity))
    if min_size < 0:
        raise ConfigError(f"--min-size must be >= 0, got {min_size}")
    if dtype not in ("uint64", "uint32"):
        raise ConfigError(f"--dtype must be uint64 or uint32, got {dtype!r}")
    src = open_volume(in_url)
    if Scratch(out_url).url == src.url:
        raise ConfigError("the output is the input", "choose another output")
    _check_input(src, threshold)
    grid, chunks_t = label_grid(src.spatial_shape, block, chunks)
    state = Path(state_dir) if state_dir is not None else default_state_dir(out_url, "label")
    scratch = Scratch.beside(out_url, "label-scratch")
    conn: Connectivity = connectivity  # type: ignore[assignment]
    a_cls = GpuLocalLabelOp if device == "gpu" else LocalLabelOp
    op_a = a_cls(
        input=src.url, scratch=scratch.url, threshold=threshold, connectivity=conn, table=table is not None, sizes=min_size > 1,
        write_local=keep_local, device=device, chunks=chunks_t, overwrite=overwrite,
    )
    op_b = FacePairsOp(scratch=scratch.url, shape=src.spatial_shape, block=grid.write_shape, connectivity=conn)  # type: ignore[arg-type]
    op_c: RelabelOp
    if keep_local:
        op_c = RelabelOp(scratch=scratch.url, output=out_url, like=src.url, min_size=min_size, dtype=dtype, chunks=chunks_t, overwrite=overwrite)
    else:
        c_cls = GpuRelabelFromInputOp if device == "gpu" else RelabelFromInputOp
        op_c = c_cls(
            scratch=scratch.url, output=out_url, like=src.url, min_size=min_size, dtype=dtype, chunks=chunks_t, overwrite=overwrite,
            input=src.url, threshold=threshold, connectivity=conn, device=device,
        )
    params = {"grid": grid.layout(), "a": op_a.params(), "c": op_c.params(), "table": None if table is None else os.fspath(table)}
    finished = state / "result.json"
    if finished.exists() and not overwrite:
        saved = json.loads(finished.read_text())
        if saved.get("params") == json.loads(json.dumps(params)):
            if outputs_intact(saved):
                log.info("label: %s is complete already (%s)", out_url, finished)
                return LabelResult(**saved["result"])
            log.warning("label: %s was deleted or recreated since %s was written: labelling it again", out_url, finished)
        else:
            raise ResumeMismatch(f"{out_url} was labelled with other parameters ({finished})", "pass --overwrite (--overwrite) to label it again")
    if overwrite:
        scratch.remove()
        finished.unlink(missing_ok=True)
    op_c.prepare(grid)  # create the output now: an unwritable one fails before any work

    from engine.ops.label_resolve import load_offsets, resolve_labels
    from engine.runtime import RayBackend

    # One set of Ray workers for every pass of this run (started once; ended below).
    own = RayBackend(workers, address=address, keep_workers=True) if backend == "ray" else None
    be: BackendName | Backend = own if own is not None else backend
    common: dict[str, Any] = {
        "backend": be, "workers": workers, "address": address, "max_retries": max_retries, "overwrite": overwrite, "progress": progress,
    }
    times: dict[str, float] = {}
    try:
        t = time.perf_counter()
        run_a = run_blockwise(op_a, grid, state_dir=state / "local", name="label-local", **common)
        times["local"] = time.perf_counter() - t
        kill_point("label:after-local")
        t = time.perf_counter()
        offsets = load_offsets(scratch, grid.num_blocks)
        times["offsets"] = time.perf_counter() - t
        t = time.perf_counter()
        if pairs_in_driver is None:  # kept Ray workers cost nothing to start: they share the work
            in_driver = own is None and grid.num_blocks <= PAIRS_IN_DRIVER_MAX_BLOCKS
        else:
            in_driver = pairs_in_driver
        run_b = run_blockwise(op_b, grid, state_dir=state / "pairs", name="label-pairs", **{**common, **({"backend": "serial"} if in_driver else {})})
        times["pairs"] = time.perf_counter() - t
        kill_point("label:after-pairs")
        t = time.perf_counter()
        meta = {"input": src.url, "output": out_url, "threshold": str(threshold), "connectivity": str(connectivity), "min_size": str(min_size),
                "voxel_size": json.dumps(list(src.voxel_size))}
        res = resolve_labels(scratch, grid, offsets, min_size=min_size, table=table, table_metadata=meta)
        if np.dtype(dtype).itemsize < 8 and res.objects > np.iinfo(dtype).max:
            raise ConfigError(f"{res.objects} objects do not fit in {dtype}", "label with --dtype uint64")
        times["resolve"] = time.perf_counter() - t
        t = time.perf_counter()
        run_c = run_blockwise(op_c, grid, state_dir=state / "relabel", name="label-relabel", **common)
        times["relabel"] = time.perf_counter() - t
    finally:
        if own is not None:
            own.shutdown()
    times["total"] = time.perf_counter() - t0
    runs: list[RunSummary] = [run_a, run_b, run_c]
    result = LabelResult(
        output=open_volume(out_url).url,
        objects=res.objects,
        removed=res.removed,
        local_objects=int(offsets[-1]),
        boundary_labels=res.boundary_labels,
        pairs=res.pairs,
        blocks=grid.num_blocks,
        table=None if table is None else os.fspath(table),
        seconds=times,
        runs=[
            {"name": r.name, "done": r.done, "already_done": r.already_done, "skipped": r.skipped, "wall_seconds": r.wall_seconds,
             "workers": sorted(str(w.get("name")) for w in r.workers)}
            for r in runs
        ],
    )
    if not keep_scratch:
        kill_point("label:before-scratch-removal")
        scratch.remove()
        kill_point("label:after-scratch-removal")
        write_json_atomic(finished, {"params": params, "result": result.to_dict(), "outputs": {out_url: run_c.run_id}})
    log.info("label: %d objects (%d removed as smaller than %d voxels) in %s, %.1f s", res.objects, res.removed, min_size, out_url, times["total"])
    return result
