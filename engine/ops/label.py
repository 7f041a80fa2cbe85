"""Connected components of a whole volume, blockwise and exact: ``label_volume``.

Three blockwise passes on the workers and small steps on the driver::

    A  cc-local     threshold + label each block (cc3d, or CuPy on a GPU) -> local ids 1..n_b, kept in the
                    scratch (lz4, the narrowest type); per block its count, six faces and (if needed)
                    object statistics
       (driver)     provisional ids: offsets = prefix sum of the counts
    B  cc-pairs     pairs of touching labels across each block's faces, edges and corners (forward
                    neighbours only, so each contact is seen once); in the driver for small grids
       (driver)     union-find over boundary labels only; global sizes; consecutive final ids;
                    removal of small objects; object table (Parquet)
    C  cc-relabel   final ids (uint64, or uint32) from the kept local ids through one lookup table per
                    block, the block's write left in flight while the next is read

Each block is labelled once: keeping its local ids costs about 4 ms a 128^3 block (compressed there
and back), labelling it again about 11 ms (read, threshold, cc3d); see ``benchmarks/RESULTS.md``.

With the Ray backend the same workers run every pass (started once per run). A worker holds one block
(and a few faces); the driver holds the labels that touch block faces and one block's statistics at a
time. See :mod:`engine.kernels.stitch` for the id scheme.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Unpack

from engine.errors import ConfigError, StorageError
from engine.faults import kill_point
from engine.geometry import BlockGrid, Box
from engine.kernels.components import Device, check_connectivity
from engine.ops.label_passes import (
    Connectivity,
    FacePairsOp,
    GpuLocalLabelOp,
    LocalLabelOp,
    OutDtype,
    RelabelOp,
)
from engine.ops.scratch import Scratch
from engine.options import check_keys
from engine.params import LABEL_BLOCK, LabelParams
from engine.runtime import RunSummary, default_state_dir
from engine.runtime.lock import one_driver
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import CompletionRecord, Session
from engine.storage import Volume, open_volume

log = logging.getLogger(__name__)

DEFAULT_BLOCK = LABEL_BLOCK


#: the defaults of :func:`label_volume`'s keywords (declared once, in :class:`LabelParams`)
_D = LabelParams()
#: Up to this many blocks, pass B (cheap: faces only) runs in the driver process when the backend was
#: passed in (its workers would start again for the pass).
PAIRS_IN_DRIVER_MAX_BLOCKS = 256


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


class LabelRun(RuntimeOptions, total=False):
    """How a labelling runs (the labels are the same whatever these say): the runtime options, and

    ``device``: ``cpu`` or ``gpu`` (CuPy, for pass A); ``keep_scratch``: leave the scratch (and no
    ``result.json``);
    ``pairs_in_driver``: run pass B in this process (default: with a ``Backend`` object passed in,
    for grids of up to ``PAIRS_IN_DRIVER_MAX_BLOCKS`` blocks, where starting workers would cost more
    than the pass; with ``backend='ray'`` the run's workers, already started, do it).
    """

    device: Device
    keep_scratch: bool
    pairs_in_driver: bool | None


@one_driver("label")  # its three passes, scratch and result.json belong to one driver
def label_volume(
    input: str | os.PathLike[str],  # noqa: A002 - the natural name for users
    output: str | os.PathLike[str],
    *,
    threshold: float | None = _D.threshold,
    connectivity: int = _D.connectivity,
    min_size: int = _D.min_size,
    table: str | os.PathLike[str] | None = None,
    block: Sequence[int] = _D.block,
    chunks: Sequence[int] = _D.chunks,
    dtype: OutDtype = _D.dtype,
    **run: Unpack[LabelRun],
) -> LabelResult:
    """Label the connected components of ``input`` into ``output`` (``dtype``: uint64, or uint32
    where the objects fit; ids ``1..objects``).

    ``threshold`` turns a probability volume into a mask (uint8 read as ``v/255``; foreground where
    ``p > threshold``); without it the input is a binary or label volume (0 is background; touching
    voxels of different labels stay apart). ``min_size`` removes objects smaller than that many voxels,
    measured whole across blocks. ``table`` writes the object table (Parquet). ``run``: how it runs
    (:class:`LabelRun`: backend, workers, device, ...). With ``backend='ray'`` one set of workers
    serves every pass. The result equals ``cc3d.connected_components`` on the whole volume up to the
    numbering of the objects.

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
    check_keys(run, LabelRun, "label_volume")
    t0 = time.perf_counter()
    job = _LabelJob.plan(os.fspath(input), os.fspath(output), threshold, check_connectivity(int(connectivity)), min_size, table, dtype, run)
    job.grid, chunks_t = label_grid(job.src.spatial_shape, block, chunks)
    ops = job.ops(chunks_t)
    record = CompletionRecord(job.state / "result.json", {"grid": job.grid.layout(), "a": ops[0].params(), "c": ops[2].params(), "table": job.table})
    saved = record.finished(job.overwrite, f"label: {job.out_url}", f"{job.out_url} was labelled with other parameters", "pass --overwrite (--overwrite) to label it again")
    if saved is not None:
        return LabelResult(**saved)
    if job.overwrite:
        job.scratch.remove()
    ops[2].prepare(job.grid)  # create the output now: an unwritable one fails before any work
    with Session(run, backend="serial") as session:
        session.overwrite = session.overwrite or record.forgotten  # the passes' markers of a run of which nothing is left
        result = job.passes(session, *ops)
    result.seconds["total"] = time.perf_counter() - t0
    if not run.get("keep_scratch", False):
        kill_point("label:before-scratch-removal")
        job.scratch.remove()
        kill_point("label:after-scratch-removal")
        record.save(result.to_dict(), {job.out_url: session.runs[-1].run_id})
    log.info("label: %d objects (%d removed as smaller than %d voxels) in %s, %.1f s", result.objects, result.removed, min_size, job.out_url,
             result.seconds["total"])
    return result


@dataclass
class _LabelJob:
    """One labelling: its checked settings and the passes that :func:`label_volume` runs."""

    src: Volume
    out_url: str
    threshold: float | None
    connectivity: Connectivity
    min_size: int
    table: str | None
    dtype: OutDtype
    options: LabelRun
    state: Path
    scratch: Scratch
    grid: BlockGrid = field(init=False)

    @classmethod
    def plan(cls, in_url: str, out_url: str, threshold: float | None, connectivity: int, min_size: int,
             table: str | os.PathLike[str] | None, dtype: OutDtype, run: LabelRun) -> _LabelJob:
        if min_size < 0:
            raise ConfigError(f"--min-size must be >= 0, got {min_size}")
        if dtype not in ("uint64", "uint32"):
            raise ConfigError(f"--dtype must be uint64 or uint32, got {dtype!r}")
        src = open_volume(in_url)
        if Scratch(out_url).url == src.url:
            raise ConfigError("the output is the input", "choose another output")
        _check_input(src, threshold)
        state_dir = run.get("state_dir")
        state = Path(state_dir) if state_dir is not None else default_state_dir(out_url, "label")
        conn: Connectivity = connectivity  # type: ignore[assignment]
        return cls(src, out_url, threshold, conn, min_size, None if table is None else os.fspath(table), dtype, run, state,
                   Scratch.beside(out_url, "label-scratch"))

    @property
    def overwrite(self) -> bool:
        return self.options.get("overwrite", False)

    def ops(self, chunks: tuple[int, int, int]) -> tuple[LocalLabelOp, FacePairsOp, RelabelOp]:
        """The three passes' operations."""
        device, src = self.options.get("device", "cpu"), self.src
        a_cls = GpuLocalLabelOp if device == "gpu" else LocalLabelOp
        op_a = a_cls(
            input=src.url, scratch=self.scratch.url, threshold=self.threshold, connectivity=self.connectivity, table=self.table is not None,
            sizes=self.min_size > 1, device=device, overwrite=self.overwrite,
        )
        op_b = FacePairsOp(scratch=self.scratch.url, shape=src.spatial_shape, block=self.grid.write_shape, connectivity=self.connectivity)  # type: ignore[arg-type]
        op_c = RelabelOp(scratch=self.scratch.url, output=self.out_url, like=src.url, min_size=self.min_size, dtype=self.dtype, chunks=chunks,
                         overwrite=self.overwrite)
        return op_a, op_b, op_c

    def passes(self, session: Session, op_a: LocalLabelOp, op_b: FacePairsOp, op_c: RelabelOp) -> LabelResult:
        """Pass A, the offsets, pass B, the resolution on the driver, pass C."""
        from engine.ops.label_resolve import load_offsets, resolve_labels

        grid, state = self.grid, self.state
        # the resolution's graph library, imported while the workers run pass A (not in the workers'
        # start: they import the stitch kernels, and the driver is idle here); ~0.1 s of a cold run
        threading.Thread(target=importlib.import_module, args=("scipy.sparse.csgraph",), name="import-csgraph", daemon=True).start()
        session.run(op_a, grid, "label-local", state_dir=state / "local", key="local")
        kill_point("label:after-local")
        with session.timed("offsets"):
            offsets = load_offsets(self.scratch, grid.num_blocks)
        in_driver = self.options.get("pairs_in_driver")
        if in_driver is None:  # kept Ray workers cost nothing to start: they share the work
            in_driver = not session.owns_workers and grid.num_blocks <= PAIRS_IN_DRIVER_MAX_BLOCKS
        session.run(op_b, grid, "label-pairs", state_dir=state / "pairs", key="pairs", serial=in_driver)
        kill_point("label:after-pairs")
        with session.timed("resolve"):
            meta = {"input": self.src.url, "output": self.out_url, "threshold": str(self.threshold), "connectivity": str(self.connectivity),
                    "min_size": str(self.min_size), "voxel_size": json.dumps(list(self.src.voxel_size))}
            res = resolve_labels(self.scratch, grid, offsets, min_size=self.min_size, table=self.table, table_metadata=meta)
            if np.dtype(self.dtype).itemsize < 8 and res.objects > np.iinfo(self.dtype).max:
                raise ConfigError(f"{res.objects} objects do not fit in {self.dtype}", "label with --dtype uint64")
        session.run(op_c, grid, "label-relabel", state_dir=state / "relabel", key="relabel")
        return LabelResult(
            output=open_volume(self.out_url).url, objects=res.objects, removed=res.removed, local_objects=int(offsets[-1]),
            boundary_labels=res.boundary_labels, pairs=res.pairs, blocks=grid.num_blocks, table=self.table, seconds=dict(session.seconds),
            runs=[{**run_record(r), "workers": sorted(str(w.get("name")) for w in r.workers)} for r in session.runs],
        )


def run_record(r: RunSummary) -> dict[str, Any]:
    """The short record of one pass that a multi-pass result lists."""
    return {"name": r.name, "done": r.done, "already_done": r.already_done, "skipped": r.skipped, "wall_seconds": r.wall_seconds}
