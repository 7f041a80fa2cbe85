"""Blockwise blended sliding-window inference of a trained model over a whole volume.

The global windows are MONAI's (:class:`~engine.infer.WindowGrid`); the output is ``sum(w * p) / sum(w)``
over the windows covering each voxel. It equals blended sliding-window inference over the whole volume
in one process (and MONAI's ``sliding_window_inference`` with the same model, window, overlap and
Gaussian weights) up to float rounding, while memory stays bounded by the block.

**Each window computed once** (``share_borders=True``, the default). Every window belongs to one block,
the block whose write box holds its start (:class:`~engine.infer.WindowOwnership`; the clamped last
window of an axis to the block holding its clamped start). Two passes over the grid:

1. ``predict`` (:class:`PredictOp`): a block reads the union of its own windows, runs them, and
   accumulates ``sum(w * p)`` and ``sum(w)`` over its write box plus the upper spill (``window -
   stride`` voxels past its upper faces). Voxels that no lower block's window reaches are final: it
   normalises and writes them. For the rest of its write box (the lower slabs and their edges, where
   lower neighbours' windows spill in) and for its own spill into the blocks above, it writes the
   partial sums as small float32 files to scratch beside the output (``.connectile/<out>.predict-
   scratch``), one per (target, source) block pair: scratch I/O scales with the block surface, not its
   volume.
2. ``predict-borders`` (:class:`PredictBordersOp`): after every block of pass 1 is done, each block sums
   its own and its lower neighbours' partial sums over its shared parts, normalises and writes them.
   Pass 1 and pass 2 write disjoint voxels of the same block, never at the same time. The scratch is
   removed after pass 2.

Why this design: the alternative (each block evaluates every window that overlaps its write box, kept
as ``share_borders=False``) needs no second pass, but the windows straddling each cut are computed by
both blocks (20% more windows at 32 x 384 x 384 with one cut; more with cuts on several axes). Here the
second pass reads and writes only the border slabs, which costs far less than a window's forward pass.
Windows reaching past the next block (blocks thinner than ``window - stride``) are handled the same way
(more block pairs), so no block size is refused. A grid where no window crosses a cut (one block)
skips pass 2 and the scratch. Both passes keep done-markers (``<state>/windows``, ``<state>/borders``):
a crash in pass 1 resumes pass 1, a finished pass 1 is not redone.

Accumulators are ``(channels + 1) x (write box + spill)`` floats in pass 1, ``(channels + 1) x write
box`` in pass 2.

While a block computes, the input of the next block (by id) is already being read by TensorStore's
threads (a guess that is right for every block of a batch but the last; a wrong guess costs one read).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr, model_validator

from engine.errors import ConfigError, StorageError
from engine.faults import kill_point
from engine.geometry import Block, BlockGrid, Box
from engine.infer.merge import add_pieces, normalise, pack_pieces, pad_source, piece_key, scale_input, to_output
from engine.infer.model_input import checkpoint_window, halo, replicate_axes
from engine.infer.windows import WindowGrid, WindowOwnership, aligned_write_shape
from engine.models.checkpoint import checkpoint_digest
from engine.ops.scratch import Scratch
from engine.params import DEFAULT_WINDOW, PREDICT_BLOCK, PREDICT_CHUNKS, PredictDtype, PredictParams, Triple
from engine.runtime.lock import one_driver
from engine.runtime.op import BlockOp
from engine.runtime.options import pop_runtime
from engine.runtime.session import Session
from engine.storage import Volume, check_write_alignment, create_volume, open_volume

log = logging.getLogger(__name__)

OutputDtype = PredictDtype
#: Default write block target (rounded to the stride grid and the chunks), and output chunks (capped at the volume): engine.params
DEFAULT_BLOCK, DEFAULT_CHUNKS = PREDICT_BLOCK, PREDICT_CHUNKS
__all__ = ["DEFAULT_BLOCK", "DEFAULT_CHUNKS", "DEFAULT_WINDOW", "PredictOp", "PredictParams", "PredictResult", "piece_key", "predict_volume", "to_output"]


class PredictOp(BlockOp, PredictParams):
    """Model probabilities of ``input`` into ``output`` (uint8 ``round(255 p)``, or float16/float32).

    ``checkpoint`` is a directory written by :func:`engine.models.save_checkpoint`. The input is read as
    uint8 / 255 (uint16 / 65535; floats as they are). A model with one output channel writes a (z, y, x)
    volume, else (channels, z, y, x). Needs a grid context of at least :meth:`context` (the windows of a
    write box reach that far). ``window`` None (the default): the checkpoint's own
    (:func:`~engine.infer.model_input.checkpoint_window`: its training crop). A 2.5D model's windows
    are read with their context sections (the edge section repeated beyond the volume).
    """

    kind: ClassVar[str] = "predict"
    wants_gpu: ClassVar[bool] = True

    checkpoint: str
    input: str
    output: str
    chunks: Triple = DEFAULT_CHUNKS  # type: ignore[assignment]  # the driver fills in the default (capped at the volume)
    checkpoint_digest: str = ""
    # -- settings that do not change the output (beyond float rounding): not hashed ---------------
    # (besides PredictParams.unhashed: batch_size -- 1 on CPU, where larger batches were slower per window on the
    # 2-core test machine as activations fall out of cache -- device, threads, share_borders, block)
    #: NDHWC activations (None: on; with the folded norms ~10% less CPU time per window on the test machine)
    channels_last: bool | None = Field(default=None, exclude=True)
    #: fold batch norms into their convolutions (same output up to float rounding, ~1e-7)
    fold_norms: bool = Field(default=True, exclude=True)
    prefetch: bool = Field(default=True, exclude=True)
    overwrite: bool = Field(default=False, exclude=True)

    _grid: BlockGrid | None = PrivateAttr(default=None)
    _in: Volume | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)
    _sw: Any = PrivateAttr(default=None)
    _windows: WindowGrid | None = PrivateAttr(default=None)
    _channels: int = PrivateAttr(default=1)
    _pending: tuple[Box, Any] | None = PrivateAttr(default=None)
    _hits: int = PrivateAttr(default=0)
    _plan: WindowOwnership | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)
    _halo: tuple[int, int, int] = PrivateAttr(default=(0, 0, 0))
    _replicate: tuple[bool, bool, bool] = PrivateAttr(default=(False, False, False))

    @model_validator(mode="after")
    def _model_input(self) -> PredictOp:
        """The checkpoint's window where none is given, and its halo (2.5D context sections)."""
        from engine.models import read_checkpoint_config

        cfg, meta = read_checkpoint_config(self.checkpoint)
        if self.window is None:
            self.window = checkpoint_window(cfg, meta)
            log.info("predict: window %s from the checkpoint", self.window)
        self._halo, self._replicate = halo(cfg), replicate_axes(cfg)
        return self

    def params(self) -> dict[str, Any]:
        """The parameters that decide the output (hashed into done-markers): not those of ``unhashed``."""
        return {"kind": self.kind, **self.model_dump(mode="json", exclude=set(self.unhashed))}

    # -- driver side -------------------------------------------------------------------------------
    @property
    def roi(self) -> tuple[int, int, int]:
        assert self.window is not None  # set from the checkpoint at construction
        return self.window

    def windows(self, shape: tuple[int, ...]) -> WindowGrid:
        return WindowGrid(tuple(shape), self.roi, (self.overlap,))

    def _check(self) -> tuple[Volume, Any]:
        from engine.models import read_checkpoint_config

        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        cfg, _ = read_checkpoint_config(self.checkpoint)
        src = open_volume(self.input)
        channels = src.shape[0] if len(src.shape) == 4 else 1
        if len(src.shape) not in (3, 4):
            raise StorageError(f"input {src.url} has {len(src.shape)} axes {src.shape}", "give a (z, y, x) or (channels, z, y, x) volume")
        if channels != cfg.in_channels:
            raise ConfigError(
                f"checkpoint {self.checkpoint} does not match the input: its model takes {cfg.in_channels} input channel(s) but {src.url} has {channels}",
                f"give a checkpoint trained on {channels}-channel data (connectile train), or an input with {cfg.in_channels} channel(s)",
            )
        if src.dtype.kind not in "uif" or src.dtype.kind == "i":
            raise StorageError(f"input {src.url} has dtype {src.dtype}", "give uint8, uint16 or float volumes (scaled to [0, 1])")
        div = cfg.divisor()
        if any(w % d for w, d in zip(self.roi, div, strict=True)):
            fixed = tuple(max(d, w // d * d) for w, d in zip(self.roi, div, strict=True))
            raise ConfigError(f"the window {self.roi} is not divisible by the model's downsampling {div}", f"use e.g. --window {','.join(map(str, fixed))}")
        if self.tta != "none" and cfg.head == "affinity":
            raise ConfigError(
                "test-time augmentation flips and transposes change what affinity channels mean",
                "use --tta none with affinity models (TTA suits mask and polarity heads)",
            )
        return src, cfg

    def scratch(self) -> Scratch:
        """Where pass 1 leaves the partial sums of the block borders."""
        return Scratch.beside(self.output, "predict-scratch")

    def context(self, grid: BlockGrid) -> tuple[int, ...]:
        """The grid context the windows of every block (and their halo) need."""
        need = self.windows(grid.volume.shape).context_for(grid)
        return tuple(n + h for n, h in zip(need, self._halo, strict=True))

    def prepare(self, grid: BlockGrid) -> None:
        src, cfg = self._check()
        if grid.volume.shape != src.spatial_shape:
            raise ConfigError(f"the grid covers {grid.volume.shape} but {src.url} is {src.spatial_shape}", "build the grid over the input volume")
        need = self.context(grid)
        if any(c < n for c, n in zip(grid.context, need, strict=True)):
            raise ConfigError(f"grid context {grid.context} is smaller than the windows need {need}", f"use context >= {need}")
        k = int(cfg.out_channels or 1)
        shape = src.spatial_shape if k == 1 else (k, *src.spatial_shape)
        out = create_volume(
            self.output, shape, self.dtype, self.chunks, voxel_size=src.voxel_size, offset=src.offset, overwrite=self.overwrite,
            attrs={"connectile": {"predict": {"checkpoint": str(self.checkpoint), "window": list(self.roi), "overlap": self.overlap,
                                              "blend": self.blend, "tta": self.tta, "scale": 1 / 255 if self.dtype == "uint8" else 1.0}}},
        )
        check_write_alignment(out, grid.write_shape, grid.total.start)

    # -- worker side -------------------------------------------------------------------------------
    def setup(self, grid: BlockGrid | None = None) -> None:
        import torch

        from engine.infer.blend import model_window
        from engine.infer.predictor import pick_device
        from engine.models import load_checkpoint

        self._grid = grid
        if self.threads:
            torch.set_num_threads(self.threads)
        dev = pick_device(self.device)
        model, cfg, _ = load_checkpoint(self.checkpoint, device="cpu")
        self._channels = int(cfg.out_channels or 1)
        channels_last = True if self.channels_last is None else self.channels_last
        self._in = open_volume(self.input)
        self._out = open_volume(self.output, mode="r+")
        self._windows = self.windows(self._in.spatial_shape)
        if self.share_borders and self._grid is not None:
            self._plan = WindowOwnership(self._windows, self._grid)
            self._scratch = self.scratch()
        batch = self.batch_size or (8 if dev.type == "cuda" else 1)
        self._sw = model_window(
            model, self.roi, self.overlap, device=dev, predictor={"amp": self.amp, "channels_last": channels_last, "fold_norms": self.fold_norms},
            mode=self.blend, sigma_scale=self.sigma_scale, batch_size=batch, tta=self.tta, tta_reduce=self.tta_reduce,
        )
        log.info("predict worker: %s on %s, %d thread(s), batch %d", type(model).__name__, dev, torch.get_num_threads(), batch)

    def teardown(self) -> None:
        self._pending = None

    def _start_read(self, box: Box) -> Any:
        assert self._in is not None
        return self._in.read_async(box.intersect(self._in.box))

    def _input(self, box: Box) -> np.ndarray:
        """The raw input of ``box`` (zero outside the volume): from the prefetch if it guessed right."""
        assert self._in is not None
        pending, self._pending = self._pending, None
        hit = pending is not None and pending[0] == box
        self._hits = int(hit)
        future = pending[1] if pending is not None and hit else self._start_read(box)
        data = np.asarray(future.result())
        return pad_source(data, box.intersect(self._in.box), box, self._replicate)

    def _prefetch_after(self, block: Block) -> None:
        if not self.prefetch or self._grid is None:
            return
        assert self._windows is not None
        box: Box | None = None
        for bid in range(block.id + 1, self._grid.num_blocks):
            if self._plan is None:
                box = self._windows.read_box(self._grid.block(bid).write)
            else:  # the next block that owns windows (the others read nothing)
                box = self._plan.read_box(self._grid.index_of(bid))
            if box is not None:
                break
        if box is not None:
            box = box.grow(self._halo)
            self._pending = (box, self._start_read(box))

    def process(self, block: Block) -> dict[str, float] | None:
        if self._plan is not None:
            return self._process_own(block)
        return self._process_overlapping(block)

    def _process_own(self, block: Block) -> dict[str, float]:
        """Pass 1: the block's own windows; final voxels to the output, partial sums to scratch."""
        import torch

        assert self._plan is not None and self._scratch is not None and self._out is not None and self._sw is not None and self._grid is not None
        t0 = time.perf_counter()
        plan, index = self._plan, block.index
        read = plan.read_box(index)
        if read is None:  # owns no window: its write box is all border, finished in pass 2
            self._hits = 0
            return {"windows": 0.0, "prefetched": 0.0, "read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "scratch_bytes": 0.0}
        read = read.grow(self._halo)
        x = scale_input(self._input(read), read)
        self._prefetch_after(block)
        t1 = time.perf_counter()
        target = plan.accumulator_box(index)
        own = plan.own_windows(index)
        acc, wsum = self._sw.accumulate(x, read, own, target)
        t2 = time.perf_counter()
        with torch.inference_mode():
            final = plan.final_part(index)
            if not final.empty:
                sl = (slice(None), *final.to_slices(target))
                prob = normalise(acc[sl], wsum[sl]).cpu().numpy()
                self._out.write(final, to_output(prob, self.dtype, self._channels))
            pieces = {piece_key(self._grid.id_of(k), block.id): pack_pieces(acc, wsum, boxes, target) for k, boxes in plan.targets(index)}
            nbytes = sum(len(d) for d in pieces.values())
            self._scratch.put_many(pieces)
        t3 = time.perf_counter()
        return {
            "windows": float(len(own)), "prefetched": float(self._hits),
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2, "scratch_bytes": float(nbytes),
        }

    def _process_overlapping(self, block: Block) -> dict[str, float]:
        """``share_borders=False``: every window over the write box; the whole write box to the output."""
        assert self._in is not None and self._out is not None and self._windows is not None and self._sw is not None
        t0 = time.perf_counter()
        read = self._windows.read_box(block.write).grow(self._halo)
        raw = self._input(read)
        self._prefetch_after(block)
        x = scale_input(raw, read)
        t1 = time.perf_counter()
        before = self._sw.windows_run
        prob = self._sw.infer_block(x, read, block.write, self._windows)
        t2 = time.perf_counter()
        self._out.write(block.write, to_output(prob.cpu().numpy(), self.dtype, self._channels))
        t3 = time.perf_counter()
        return {
            "windows": float(self._sw.windows_run - before), "prefetched": float(self._hits),
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
        }


class PredictBordersOp(BlockOp):
    """Pass 2 of :class:`PredictOp` with ``share_borders``: sum the partial sums that pass 1 left for a
    block's shared parts (its own and its lower neighbours'), normalise, and write them."""

    kind: ClassVar[str] = "predict-borders"
    #: the same workers as pass 1 (kept Ray actors are reused only for the same resources)
    wants_gpu: ClassVar[bool] = True

    predict: PredictOp

    _grid: BlockGrid | None = PrivateAttr(default=None)
    _plan: WindowOwnership | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)
    _channels: int = PrivateAttr(default=1)

    def params(self) -> dict[str, Any]:
        return {"kind": self.kind, "predict": self.predict.params()}

    def prepare(self, grid: BlockGrid) -> None:
        out = open_volume(self.predict.output)
        if out.spatial_shape != grid.volume.shape:
            raise ConfigError(f"{out.url} is {out.spatial_shape} but the grid covers {grid.volume.shape}", "run predict again with --overwrite")

    def setup(self, grid: BlockGrid | None = None) -> None:
        assert grid is not None, "the borders pass needs the run's grid"
        self._grid = grid
        self._out = open_volume(self.predict.output, mode="r+")
        self._channels = self._out.shape[0] if len(self._out.shape) == 4 else 1
        self._plan = WindowOwnership(self.predict.windows(self._out.spatial_shape), self._grid)
        self._scratch = self.predict.scratch()

    def process(self, block: Block) -> dict[str, float]:
        assert self._plan is not None and self._scratch is not None and self._out is not None and self._grid is not None
        t0 = time.perf_counter()
        plan, index, write = self._plan, block.index, block.write
        parts = plan.shared_parts(index)
        if not parts:
            return {"border_voxels": 0.0, "border_s": 0.0}
        k = self._channels
        acc = np.zeros((k + 1, *write.shape), dtype=np.float32)
        sources = plan.sources(index)
        blobs = self._scratch.get_many([piece_key(block.id, self._grid.id_of(j)) for j, _ in sources])
        for (j, boxes), blob in zip(sources, blobs, strict=True):
            add_pieces(acc, blob, boxes, write, k, name=f"{self._scratch.url}/{piece_key(block.id, self._grid.id_of(j))}")
        voxels = 0
        for part in parts:
            sl = part.to_slices(write)
            prob = normalise(acc[(slice(0, k), *sl)], acc[(slice(k, k + 1), *sl)])
            self._out.write(part, to_output(prob, self.predict.dtype, k))
            voxels += part.size
        return {"border_voxels": float(voxels), "border_s": time.perf_counter() - t0}


@dataclass
class PredictResult:
    """What :func:`predict_volume` did."""

    output: str
    blocks: int
    block_shape: tuple[int, ...]
    windows: int
    windows_computed: int
    seconds: float
    voxels: int
    stats: dict[str, float]
    #: wall seconds of each pass run ("windows", and "borders" where a second pass ran)
    pass_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def redundancy(self) -> float:
        """Windows computed blockwise over windows in one pass."""
        return self.windows_computed / max(1, self.windows)

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else 0.0


def predict_grid(op: PredictOp, shape: tuple[int, ...], block: tuple[int, ...] = DEFAULT_BLOCK) -> BlockGrid:
    """The grid of ``op`` over a volume of ``shape``: write boxes near ``block`` aligned to the stride
    grid and the output chunks, with the context the windows need."""
    windows = op.windows(shape)
    chunks = tuple(min(c, s) for c, s in zip(op.chunks, shape, strict=True))
    write = aligned_write_shape(windows, block, chunks)
    grid = BlockGrid(Box.from_shape(shape), write)
    return BlockGrid(Box.from_shape(shape), write, context=op.context(grid))


@one_driver("predict")  # its passes (owned windows, border sums) and scratch belong to one driver
def predict_volume(
    checkpoint: str | os.PathLike[str],
    input: str | os.PathLike[str],  # noqa: A002 - the natural name for users
    output: str | os.PathLike[str],
    *,
    block: tuple[int, int, int] = DEFAULT_BLOCK,
    **settings: Any,
) -> PredictResult:
    """Run :class:`PredictOp` over the whole input and return what it did. ``settings`` are its fields
    (window, overlap, blend, tta, dtype, chunks, batch_size, amp, device, threads, overwrite, ...) and
    the runtime options (:class:`~engine.runtime.options.RuntimeOptions`: ``backend``, ``ray`` by
    default, workers, address, max_retries, progress, state_dir).

    ``backend`` may be a :class:`~engine.runtime.backends.Backend` the caller holds, e.g.
    ``RayBackend(keep_workers=True)``: both passes run on it and it is left running, so a second call
    finds its workers started (torch imported; only the op is set up again); the caller ends it."""
    t0 = time.perf_counter()
    runtime = pop_runtime(settings, keep=("overwrite",))  # overwrite is the op's field too
    src = open_volume(os.fspath(input))
    # the chunks (given or the default) capped at the volume
    chunks = tuple(min(c, s) for c, s in zip(settings.pop("chunks", None) or DEFAULT_CHUNKS, src.spatial_shape, strict=True))
    op = PredictOp(
        checkpoint=os.fspath(checkpoint), input=src.url, output=os.fspath(output), chunks=chunks, block=block,
        checkpoint_digest=checkpoint_digest(checkpoint), **settings,
    )
    op._check()
    grid = predict_grid(op, src.spatial_shape, block)
    windows = op.windows(src.spatial_shape)
    plan = WindowOwnership(windows, grid) if op.share_borders else None
    computed = plan.windows_computed if plan is not None else windows.windows_computed(grid)
    log.info(
        "predict: %d blocks of %s, %d windows (%d computed blockwise, %.1f%% twice)%s",
        grid.num_blocks, grid.write_shape, windows.num_windows, computed, 100 * (computed / windows.num_windows - 1),
        ", borders in a second pass" if plan is not None and plan.any_shared else "",
    )
    two_pass = plan is not None and plan.any_shared
    # one set of Ray workers for both passes (started once)
    with Session({**runtime, "overwrite": op.overwrite}, backend="ray", share_workers=two_pass) as session:
        stats = _predict_passes(session, op, grid, session.state(op.output, "predict"), plan)
    if two_pass:
        kill_point("predict:before-scratch-removal")
        op.scratch().remove()
        kill_point("predict:after-scratch-removal")
    return PredictResult(
        output=op.output, blocks=grid.num_blocks, block_shape=grid.write_shape, windows=windows.num_windows, windows_computed=computed,
        seconds=time.perf_counter() - t0, voxels=int(np.prod(src.spatial_shape)), stats=stats, pass_seconds=dict(session.seconds),
    )


def _predict_passes(session: Session, op: PredictOp, grid: BlockGrid, state: Path, plan: WindowOwnership | None) -> dict[str, float]:
    """The windows pass, and the borders pass where windows cross block cuts; their statistics. Blocks
    take seconds to minutes: one in flight per worker (``window=1``), so that the first blocks spread
    over all workers (with two in flight, worker 0 takes blocks 0 and 1 while worker 1 waits)."""
    if plan is None:
        return dict(session.run(op, grid, "predict", state_dir=state, key="windows", window=1).stats)
    if op.overwrite:
        op.scratch().remove()
    stats = dict(session.run(op, grid, "predict", state_dir=state / "windows", key="windows", window=1).stats)
    kill_point("predict:after-windows")
    if plan.any_shared:
        stats.update(session.run(PredictBordersOp(predict=op), grid, "predict-borders", state_dir=state / "borders", key="borders", window=1).stats)
    return stats
