"""Blockwise blended sliding-window inference of a trained model over a whole volume.

Each block evaluates exactly the global windows (MONAI's layout, :class:`~engine.infer.WindowGrid`)
that overlap its write box, reads their union, and writes ``sum(w * p) / sum(w)`` for its write box
only. The result equals blended sliding-window inference over the whole volume in one process (and
MONAI's ``sliding_window_inference`` with the same model, window, overlap and Gaussian weights), while
memory stays bounded by the block: the float accumulators are ``channels x write box``.

Write boxes are aligned to the stride grid (:func:`~engine.infer.aligned_write_shape`): each cut
between blocks is crossed by one window per axis at overlap 0.5, the only windows computed twice
(:meth:`~engine.infer.WindowGrid.redundancy` says how many; it is logged and returned).

While a block computes, the input of the next block (by id) is already being read by TensorStore's
threads (a guess that is right for every block of a batch but the last; a wrong guess costs one read).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from engine.errors import ConfigError, StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.infer.options import ACTIVATIONS, Activation, Amp, BlendMode, TtaMode, TtaReduce
from engine.infer.windows import WindowGrid, aligned_write_shape
from engine.runtime.op import BlockOp
from engine.runtime.scheduler import BackendName, default_state_dir, run_blockwise
from engine.storage import Volume, check_write_alignment, create_volume, open_volume

log = logging.getLogger(__name__)

OutputDtype = Literal["uint8", "float16", "float32"]
#: Default window (z, y, x): 16 sections of 128 x 128 pixels.
DEFAULT_WINDOW: tuple[int, int, int] = (16, 128, 128)
#: Default write block target (rounded to the stride grid and the chunks).
DEFAULT_BLOCK: tuple[int, int, int] = (64, 256, 256)
#: Default output chunks (capped at the volume).
DEFAULT_CHUNKS: tuple[int, int, int] = (16, 128, 128)
_SCALE = {"uint8": 1.0 / 255.0, "uint16": 1.0 / 65535.0}


def checkpoint_digest(directory: str | os.PathLike[str]) -> str:
    """A short hash of a checkpoint's files, so that resuming onto output of other weights is refused."""
    h = hashlib.sha256()
    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        p = d / name
        if p.is_file():
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


class PredictOp(BlockOp):
    """Model probabilities of ``input`` into ``output`` (uint8 ``round(255 p)``, or float16/float32).

    ``checkpoint`` is a directory written by :func:`engine.models.save_checkpoint`. The input is read as
    uint8 / 255 (uint16 / 65535; floats as they are). A model with one output channel writes a (z, y, x)
    volume, else (channels, z, y, x). Needs a grid context of at least :meth:`context` (the windows of a
    write box reach that far).
    """

    kind: ClassVar[str] = "predict"
    wants_gpu: ClassVar[bool] = True

    checkpoint: str
    input: str
    output: str
    window: tuple[int, int, int] = DEFAULT_WINDOW
    overlap: float = 0.5
    blend: BlendMode = "gaussian"
    sigma_scale: float = 0.125
    tta: TtaMode = "none"
    tta_reduce: TtaReduce = "mean"
    dtype: OutputDtype = "uint8"
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS
    amp: Amp = "none"
    checkpoint_digest: str = ""
    # -- settings that do not change the output (beyond float rounding): not hashed ---------------
    #: windows per forward pass; None: 1 on CPU (larger batches were slower per window on the 2-core
    #: test machine: activations fall out of cache), 8 on a GPU
    batch_size: int | None = Field(default=None, exclude=True)
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", exclude=True)
    #: NDHWC activations (None: on; with the folded norms ~10% less CPU time per window on the test machine)
    channels_last: bool | None = Field(default=None, exclude=True)
    #: fold batch norms into their convolutions (same output up to float rounding, ~1e-7)
    fold_norms: bool = Field(default=True, exclude=True)
    threads: int | None = Field(default=None, exclude=True)
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

    # -- driver side -------------------------------------------------------------------------------
    def windows(self, shape: tuple[int, ...]) -> WindowGrid:
        return WindowGrid(tuple(shape), self.window, (self.overlap,))

    def _check(self) -> tuple[Volume, Any]:
        from engine.models import read_checkpoint_config

        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        cfg, _ = read_checkpoint_config(self.checkpoint)
        src = open_volume(self.input)
        channels = src.shape[0] if len(src.shape) == 4 else 1
        if len(src.shape) not in (3, 4):
            raise StorageError(f"input {src.url} has {len(src.shape)} axes {src.shape}", "give a (z, y, x) or (channels, z, y, x) volume")
        if channels != cfg.network_in_channels:
            raise ConfigError(
                f"checkpoint {self.checkpoint} does not match the input: its model takes {cfg.network_in_channels} input channel(s) but {src.url} has {channels}",
                f"give a checkpoint trained on {channels}-channel data (connectile train), or an input with {cfg.network_in_channels} channel(s)",
            )
        if src.dtype.kind not in "uif" or src.dtype.kind == "i":
            raise StorageError(f"input {src.url} has dtype {src.dtype}", "give uint8, uint16 or float volumes (scaled to [0, 1])")
        div = cfg.divisor()
        if any(w % d for w, d in zip(self.window, div, strict=True)):
            fixed = tuple(max(d, w // d * d) for w, d in zip(self.window, div, strict=True))
            raise ConfigError(f"the window {self.window} is not divisible by the model's downsampling {div}", f"use e.g. --window {','.join(map(str, fixed))}")
        if self.tta != "none" and cfg.head == "affinity":
            raise ConfigError(
                "test-time augmentation flips and transposes change what affinity channels mean",
                "use --tta none with affinity models (TTA suits mask and polarity heads)",
            )
        return src, cfg

    def context(self, grid: BlockGrid) -> tuple[int, ...]:
        """The grid context the windows of every block need."""
        return self.windows(grid.volume.shape).context_for(grid)

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
            attrs={"connectile": {"predict": {"checkpoint": str(self.checkpoint), "window": list(self.window), "overlap": self.overlap,
                                              "blend": self.blend, "tta": self.tta, "scale": 1 / 255 if self.dtype == "uint8" else 1.0}}},
        )
        check_write_alignment(out, grid.write_shape, grid.total.start)
        self._grid = grid

    # -- worker side -------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from engine.infer.blend import SlidingWindow
        from engine.infer.predictor import TorchPredictor, pick_device
        from engine.models import load_checkpoint

        if self.threads:
            torch.set_num_threads(self.threads)
        dev = pick_device(self.device)
        model, cfg, _ = load_checkpoint(self.checkpoint, device="cpu")
        self._channels = int(cfg.out_channels or 1)
        activation: Activation = getattr(model, "output_activation", "sigmoid")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"the model's output activation {activation!r} is not supported", f"use one of {', '.join(ACTIVATIONS)}")
        channels_last = True if self.channels_last is None else self.channels_last
        predictor = TorchPredictor(model, activation=activation, device=dev, amp=self.amp, channels_last=channels_last, fold_norms=self.fold_norms)
        self._in = open_volume(self.input)
        self._out = open_volume(self.output, mode="r+")
        self._windows = self.windows(self._in.spatial_shape)
        batch = self.batch_size or (8 if dev.type == "cuda" else 1)
        self._sw = SlidingWindow(
            predictor, self.window, self.overlap, mode=self.blend, sigma_scale=self.sigma_scale, batch_size=batch,
            tta=self.tta, tta_reduce=self.tta_reduce, device=dev,
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
        inside = box.intersect(self._in.box)
        if inside == box:
            return data
        out = np.zeros(data.shape[: data.ndim - 3] + box.shape, dtype=data.dtype)
        where: tuple[Any, ...] = (Ellipsis, *inside.to_slices(box))
        out[where] = data
        return out

    def _prefetch_after(self, block: Block) -> None:
        if not self.prefetch or self._grid is None or block.id + 1 >= self._grid.num_blocks:
            return
        assert self._windows is not None
        box = self._windows.read_box(self._grid.block(block.id + 1).write)
        self._pending = (box, self._start_read(box))

    def process(self, block: Block) -> dict[str, float] | None:
        import torch

        assert self._in is not None and self._out is not None and self._windows is not None and self._sw is not None
        t0 = time.perf_counter()
        read = self._windows.read_box(block.write)
        raw = self._input(read)
        self._prefetch_after(block)
        scale = _SCALE.get(raw.dtype.name, 1.0)
        x = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.float32)
        if scale != 1.0:
            x *= scale
        if not torch.isfinite(x).all():
            raise StorageError(f"the input holds NaN or infinite values in {read}", "clean the input volume")
        t1 = time.perf_counter()
        before = self._sw.windows_run
        prob = self._sw.infer_block(x, read, block.write, self._windows)
        t2 = time.perf_counter()
        with torch.inference_mode():
            if self.dtype == "uint8":
                out = torch.round(prob.clamp_(0.0, 1.0) * 255.0).to(torch.uint8)
            else:
                out = prob.to(torch.float16 if self.dtype == "float16" else torch.float32)
            arr = out.cpu().numpy()
        self._out.write(block.write, arr[0] if self._channels == 1 else arr)
        t3 = time.perf_counter()
        return {
            "windows": float(self._sw.windows_run - before), "prefetched": float(self._hits),
            "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
        }


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
    return BlockGrid(Box.from_shape(shape), write, context=windows.context_for(grid))


def predict_volume(
    checkpoint: str | os.PathLike[str],
    input: str | os.PathLike[str],  # noqa: A002 - the natural name for users
    output: str | os.PathLike[str],
    *,
    block: tuple[int, int, int] = DEFAULT_BLOCK,
    backend: BackendName = "ray",
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 2,
    progress: bool = True,
    state_dir: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> PredictResult:
    """Run :class:`PredictOp` (``settings`` are its fields: window, overlap, blend, tta, dtype, chunks,
    batch_size, amp, device, threads, overwrite, ...) over the whole input and return what it did."""
    t0 = time.perf_counter()
    src = open_volume(os.fspath(input))
    chunks = settings.pop("chunks", None) or tuple(min(c, s) for c, s in zip(DEFAULT_CHUNKS, src.spatial_shape, strict=True))
    op = PredictOp(
        checkpoint=os.fspath(checkpoint), input=src.url, output=os.fspath(output), chunks=chunks,
        checkpoint_digest=checkpoint_digest(checkpoint), **settings,
    )
    op._check()
    grid = predict_grid(op, src.spatial_shape, block)
    windows = op.windows(src.spatial_shape)
    computed = windows.windows_computed(grid)
    log.info(
        "predict: %d blocks of %s, %d windows (%d computed blockwise, %.1f%% twice)",
        grid.num_blocks, grid.write_shape, windows.num_windows, computed, 100 * (computed / windows.num_windows - 1),
    )
    state = Path(state_dir) if state_dir is not None else default_state_dir(op.output, "predict")
    summary = run_blockwise(
        op, grid, state_dir=state, backend=backend, workers=workers, address=address, max_retries=max_retries,
        overwrite=op.overwrite, progress=progress, name="predict",
        # blocks take seconds to minutes: one in flight per worker, so that the first blocks spread over
        # all workers (with two in flight, worker 0 takes blocks 0 and 1 while worker 1 waits)
        window=1,
    )
    return PredictResult(
        output=op.output, blocks=grid.num_blocks, block_shape=grid.write_shape, windows=windows.num_windows, windows_computed=computed,
        seconds=time.perf_counter() - t0, voxels=int(np.prod(src.spatial_shape)), stats=dict(summary.stats),
    )
