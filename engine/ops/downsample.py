"""Multiscale pyramids (OME-Zarr): each level computed blockwise from the one before.

``build_pyramid("data.zarr/raw")`` writes the group ``data.zarr/raw_pyramid`` with arrays ``s0`` (a copy
of the input), ``s1``, ``s2``, ... and one OME-Zarr ``multiscales`` entry listing them with their scale
and translation, which neuroglancer, napari and the other OME-Zarr viewers open as one layer. Where the
input already is level ``s0`` of a group (``data.zarr/raw/s0``), the levels go beside it and nothing
is copied.

Methods: ``mean`` for images and probabilities (integers rounded to nearest, halves to even, as
TensorStore's ``downsample`` driver does), ``mode`` for labels (the most frequent value; ties go to the
smallest). Edge bins that the volume does not fill use only the voxels that exist. Factors are 2 per
axis, except that an axis much finer than the coarsest one is halved alone first (anisotropic EM:
40x4x4 nm gives 1x2x2 steps until the voxels are near isotropic).

The voxel centre convention of OME-Zarr holds: level ``k`` with cumulative factor ``f`` has
``scale = f * voxel_size`` and ``translation = offset + (f - 1) / 2 * voxel_size``.

>>> x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
>>> downsample_mean(x, (1, 2, 2))
array([[[ 2,  4],
        [10, 12]]], dtype=uint8)
>>> downsample_mode(np.array([[[1, 2, 2, 7, 9]]], np.uint64), (1, 1, 2))
array([[[1, 2, 9]]], dtype=uint64)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from typing_extensions import Unpack

from engine.errors import ConfigError, StorageError
from engine.faults import kill_point
from engine.geometry import Block, BlockGrid, Box
from engine.ops.volume_op import VolumeOp
from engine.options import check_keys
from engine.params import DOWNSAMPLE_BLOCK, DownsampleKernel, DownsampleMethod, DownsampleParams
from engine.runtime import default_state_dir
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import Session
from engine.storage import Volume, check_write_alignment, create_volume, detect_format, open_volume, parse_url
from engine.storage.ome import pyramid_layout, write_pyramid

log = logging.getLogger(__name__)

Method = DownsampleMethod
Kernel = DownsampleKernel
DEFAULT_BLOCK = DOWNSAMPLE_BLOCK
#: the defaults of :func:`build_pyramid`'s settings (declared once, in :class:`~engine.params.DownsampleParams`)
_D = DownsampleParams()
LABEL_DTYPES = (np.uint32, np.uint64, np.int32, np.int64)


# -- kernels ---------------------------------------------------------------------------------------
def _bins(data: np.ndarray, factor: Sequence[int], fill: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Pad the spatial axes to whole bins with ``fill`` and reshape to (..., nz, fz, ny, fy, nx, fx)."""
    spatial = data.shape[-3:]
    out = tuple(-(-s // f) for s, f in zip(spatial, factor, strict=True))
    pad = [(0, 0)] * (data.ndim - 3) + [(0, o * f - s) for o, f, s in zip(out, factor, spatial, strict=True)]
    if any(p[1] for p in pad):
        data = np.pad(data, pad, constant_values=fill)
    lead = data.shape[:-3]
    shape = (*lead, out[0], factor[0], out[1], factor[1], out[2], factor[2])
    return data.reshape(shape), out


def _counts(spatial: Sequence[int], factor: Sequence[int]) -> np.ndarray:
    """How many input voxels fall into each output voxel (fewer in edge bins)."""
    per_axis = []
    for s, f in zip(spatial, factor, strict=True):
        n = -(-s // f)
        c = np.full(n, f, np.int64)
        c[-1] = s - (n - 1) * f
        per_axis.append(c)
    return per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]


def _sum_bins(data: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Sums over ``factor`` bins of the last three axes (data already padded to whole bins): one
    strided add per axis and offset, which is several times faster than a 6-D reshape and sum."""
    out = data
    for axis, f in zip((-3, -2, -1), factor, strict=True):
        if f == 1:
            continue
        index: list[Any] = [slice(None)] * out.ndim
        index[axis] = slice(0, None, f)
        acc = out[tuple(index)].copy()
        for k in range(1, f):
            index[axis] = slice(k, None, f)
            acc += out[tuple(index)]
        out = acc
    return out


def _round_half_even(sums: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
    """``rint(sums / counts)`` in integers (exact for any size, no float temporaries)."""
    q = sums // counts
    twice = 2 * (sums - q * counts)
    return q + (twice > counts) + ((twice == counts) & (q % 2 == 1))


def downsample_mean(data: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over ``factor`` bins of the last three axes, in the input dtype (factor 1: the input itself)."""
    f = tuple(int(v) for v in factor)
    if f == (1, 1, 1):
        return data
    if data.dtype.kind not in "biuf":
        raise ConfigError(f"cannot average {data.dtype} data", "give an integer or float volume")
    n = int(np.prod(f))
    if data.dtype.kind == "f":
        acc_dtype: Any = np.float64
    elif data.dtype == np.uint8 and n <= 256:
        acc_dtype = np.uint16  # 255 * 256 < 2**16: half the memory traffic of int32
    elif data.dtype.itemsize <= 2 and n <= 2**15:
        acc_dtype = np.int32  # 65535 * 32768 < 2**31
    else:
        acc_dtype = np.int64
    spatial = data.shape[-3:]
    out = tuple(-(-s // v) for s, v in zip(spatial, f, strict=True))
    pad = [(0, 0)] * (data.ndim - 3) + [(0, o * v - s) for o, v, s in zip(out, f, spatial, strict=True)]
    work = data.astype(acc_dtype)
    if any(p[1] for p in pad):
        work = np.pad(work, pad)
    sums = _sum_bins(work, f)
    whole = all(s % v == 0 for s, v in zip(spatial, f, strict=True))
    counts: np.ndarray | int = n if whole else _counts(spatial, f).astype(acc_dtype)
    if data.dtype.kind == "f":
        return (sums / counts).astype(data.dtype)
    return _round_half_even(sums, counts).astype(data.dtype)  # nearest integer, halves to even


def _bin_rows(binned: np.ndarray, lead: int) -> np.ndarray:
    """(..., nz, fz, ny, fy, nx, fx) -> (bins, fz * fy * fx), bins in C order of (..., nz, ny, nx)."""
    order = (*range(lead), lead, lead + 2, lead + 4, lead + 1, lead + 3, lead + 5)
    t = binned.transpose(order)
    return t.reshape(-1, int(np.prod(t.shape[-3:])))


# Batcher's odd-even merge sort networks: vectorised compare-and-swap over whole columns beats
# sorting millions of tiny rows one by one
_NETWORKS: dict[int, list[tuple[int, int]]] = {
    2: [(0, 1)],
    4: [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)],
    8: [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (1, 2), (5, 6), (0, 4), (1, 5), (2, 6), (3, 7),
        (2, 4), (3, 5), (1, 2), (3, 4), (5, 6)],
}


def _mode_whole(data: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mode over bins that the data fills completely: sort the members of every bin (a sorting
    network over whole columns), then take the longest run; among equal runs the first, which is the
    smallest value."""
    members = [
        np.ascontiguousarray(data[..., i::f[0], j::f[1], k::f[2]]).ravel()
        for i in range(f[0]) for j in range(f[1]) for k in range(f[2])
    ]
    out_shape = (*data.shape[:-3], *(s // v for s, v in zip(data.shape[-3:], f, strict=True)))
    result = members[0].copy()
    uniform = np.ones(result.shape, bool)  # most bins of a label volume hold one label: done already
    for m in members[1:]:
        uniform &= m == members[0]
    mixed = np.flatnonzero(~uniform)
    if mixed.size:
        result[mixed] = _mode_columns([m[mixed] for m in members])
    return result.reshape(out_shape)


def _mode_columns(members: list[np.ndarray]) -> np.ndarray:
    """The mode of each row of the columns ``members`` (ties: the smallest value)."""
    network = _NETWORKS.get(len(members))
    if network is not None:
        cols = members
        for a, b in network:
            lo = np.minimum(cols[a], cols[b])
            np.maximum(cols[a], cols[b], out=cols[b])
            cols[a] = lo
    else:
        stacked = np.sort(np.stack(members, axis=1), axis=1)
        cols = [stacked[:, j] for j in range(stacked.shape[1])]
    best_value = cols[0].copy()
    best_run = np.ones(best_value.shape, np.int32)
    run = np.ones(best_value.shape, np.int32)
    for j in range(1, len(cols)):
        same = cols[j] == cols[j - 1]
        run = np.where(same, run + 1, 1)
        better = run > best_run
        best_run = np.where(better, run, best_run)
        best_value = np.where(better, cols[j], best_value)
    return best_value


def _mode_partial(data: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mode where bins may reach past the data (edge slabs): pairwise counts of the voxels that exist."""
    lead = data.ndim - 3
    valid, _ = _bins(np.ones(data.shape, bool), f, False)
    binned, out = _bins(data, f, 0)
    values, ok = _bin_rows(binned, lead), _bin_rows(valid, lead)
    counts = np.zeros(values.shape, np.int32)
    for j in range(values.shape[1]):
        counts += (values == values[:, j : j + 1]) & ok[:, j : j + 1]
    counts[~ok] = -1
    best = counts.max(axis=1, keepdims=True)
    top = np.iinfo(data.dtype).max if data.dtype.kind in "iu" else np.inf
    chosen = np.where(counts == best, values, top).min(axis=1)
    return chosen.astype(data.dtype).reshape(*data.shape[:-3], *out)


def downsample_mode(data: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Most frequent value over ``factor`` bins of the last three axes (ties: the smallest value;
    factor 1: the input itself). Whole bins are sorted; the edge slabs that the data does not fill
    count only the voxels that exist."""
    f3 = tuple(int(v) for v in factor)
    f = (f3[0], f3[1], f3[2])
    if f == (1, 1, 1):
        return data
    spatial = data.shape[-3:]
    full = tuple(s // v for s, v in zip(spatial, f, strict=True))
    out = tuple(-(-s // v) for s, v in zip(spatial, f, strict=True))
    result = np.empty((*data.shape[:-3], *out), data.dtype)
    if all(full):
        core = data[..., : full[0] * f[0], : full[1] * f[1], : full[2] * f[2]]
        result[..., : full[0], : full[1], : full[2]] = _mode_whole(core, f)
    for axis in range(3):
        if spatial[axis] % f[axis]:
            lead: list[Any] = [slice(None)] * (data.ndim - 3)
            src: list[Any] = [*lead, slice(None), slice(None), slice(None)]
            dst: list[Any] = [*lead, slice(None), slice(None), slice(None)]
            src[data.ndim - 3 + axis] = slice(full[axis] * f[axis], None)
            dst[data.ndim - 3 + axis] = slice(full[axis], None)
            result[tuple(dst)] = _mode_partial(data[tuple(src)], f)
    return result


def downsample(data: np.ndarray, factor: Sequence[int], method: Method, kernel: Kernel = "numpy") -> np.ndarray:
    """:func:`downsample_mean` or :func:`downsample_mode` (``kernel="numpy"``), or TensorStore's
    downsample driver on the in-memory array (``kernel="tensorstore"``, C++ and several times faster
    for ``mode``); both give identical results (checked in the tests)."""
    f = tuple(int(v) for v in factor)
    if f == (1, 1, 1):
        return data
    if kernel == "tensorstore":
        import tensorstore as ts

        lead = [1] * (data.ndim - 3)
        return np.asarray(ts.downsample(ts.array(data), [*lead, *f], method).read().result())
    return downsample_mean(data, f) if method == "mean" else downsample_mode(data, f)


def default_method(dtype: np.dtype[Any]) -> Method:
    """``mode`` for label dtypes (uint32/uint64/int32/int64), else ``mean``."""
    return "mode" if np.dtype(dtype) in [np.dtype(d) for d in LABEL_DTYPES] else "mean"


def level_factors(voxel_size: Sequence[float], shape: Sequence[int], min_size: int = 64, levels: int | None = None) -> list[tuple[int, int, int]]:
    """The factor of each step s0->s1, s1->s2, ...: halve the axes at least 1.33x finer than the
    coarsest (all three when none is), never an axis already down to one voxel; stop when every axis
    is at most ``min_size`` voxels (or after ``levels`` steps).

    >>> level_factors((40, 4, 4), (100, 1000, 1000), min_size=64)
    [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    >>> level_factors((8, 8, 8), (64, 256, 256), levels=1)
    [(2, 2, 2)]
    """
    vs = [float(v) for v in voxel_size]
    sh = [int(s) for s in shape]
    out: list[tuple[int, int, int]] = []
    while (levels is None and max(sh) > min_size) or (levels is not None and len(out) < levels):
        live = [s > 1 for s in sh]  # an axis down to one voxel neither shrinks nor counts as coarsest
        if not any(live):
            break
        coarsest = max(v for v, ok in zip(vs, live, strict=True) if ok)
        fac = [2 if ok and v * 2 <= coarsest * 1.5 else 1 for v, ok in zip(vs, live, strict=True)]
        if fac == [1, 1, 1]:
            fac = [2 if ok else 1 for ok in live]
        out.append((fac[0], fac[1], fac[2]))
        vs = [v * f for v, f in zip(vs, fac, strict=True)]
        sh = [-(-s // f) for s, f in zip(sh, fac, strict=True)]
    return out


# -- the op ----------------------------------------------------------------------------------------
class DownsampleOp(VolumeOp):
    """One pyramid step: ``output`` = ``input`` downsampled by ``factor`` (``(1, 1, 1)`` copies).

    The grid is over the output; a block reads the input box its write box covers (``factor`` times
    larger, cut at the input's edge), so blocks need no context and every output voxel is computed
    from exactly the input voxels a whole-volume downsample uses.
    """

    kind: ClassVar[str] = "downsample"
    factor: tuple[int, int, int] = (2, 2, 2)
    method: Method = "mean"
    chunks: tuple[int, int, int] = (64, 64, 64)
    kernel: Kernel = _D.kernel

    def output_shape(self, src: Volume) -> tuple[int, ...]:
        spatial = tuple(-(-s // f) for s, f in zip(src.spatial_shape, self.factor, strict=True))
        return src.shape[:-3] + spatial

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.input)
        if any(f < 1 for f in self.factor):
            raise ConfigError(f"downsample factors must be positive, got {self.factor}")
        fmt = src.format if src.format in ("zarr", "zarr3") else "zarr"
        vs = tuple(v * f for v, f in zip(src.voxel_size, self.factor, strict=True))
        off = tuple(o + (f - 1) / 2 * v for o, f, v in zip(src.offset, self.factor, src.voxel_size, strict=True))
        out = create_volume(
            self.output, self.output_shape(src), src.dtype, self.chunks, format=fmt, voxel_size=vs, offset=off, overwrite=self.overwrite, inputs=(self.input,),
            attrs={"downsample": {"factor": list(self.factor), "method": self.method, "source": src.url}},
        )
        if out.spatial_shape != grid.total.shape:
            raise ConfigError(f"the grid covers {grid.total.shape} but the output {self.output} is {out.spatial_shape}", "build the grid over the output")
        check_write_alignment(out, grid.write_shape, grid.total.start)

    def process(self, block: Block) -> dict[str, float] | None:
        src, dst = self.volumes()
        w = block.write
        src_box = Box(tuple(s * f for s, f in zip(w.start, self.factor, strict=True)), tuple(e * f for e, f in zip(w.stop, self.factor, strict=True)))
        src_box = src_box.intersect(src.box)
        data = src.read(src_box)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise StorageError(f"{src.url} holds NaN or infinite values in {src_box}", "clean the input before building a pyramid")
        dst.write(w, downsample(data, self.factor, self.method, self.kernel))
        return {"voxels": float(w.size)}


# -- the pyramid ------------------------------------------------------------------------------------
@dataclass
class PyramidResult:
    """What :func:`build_pyramid` wrote."""

    group: str
    levels: list[dict[str, Any]]
    method: str
    copied_s0: bool
    seconds: float = 0.0
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grid(shape: Sequence[int], chunks: Sequence[int], block: Sequence[int]) -> tuple[BlockGrid, tuple[int, int, int]]:
    spatial = tuple(int(s) for s in shape[-3:])
    ch = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, spatial, strict=True))
    wb = tuple(max(1, -(-min(int(b), s) // c)) * c for b, s, c in zip(block, spatial, ch, strict=True))
    return BlockGrid(Box.from_shape(spatial), write_shape=wb), (ch[0], ch[1], ch[2])


class PyramidRun(RuntimeOptions, total=False):
    """How a pyramid is built (the levels are the same whatever these say): the runtime options (the
    done-markers of level ``sK`` go to ``state_dir/sK``, by default beside the level), ``block`` (the
    blocks of each level's grid, default 128, 256, 256) and ``kernel`` (``tensorstore``: TensorStore's
    downsample driver on the block in memory, the default; ``numpy``: this module's kernels)."""

    block: Sequence[int]
    kernel: Kernel


def build_pyramid(
    input: str | os.PathLike[str],  # noqa: A002 - the natural name for users
    output: str | os.PathLike[str] | None = None,
    *,
    method: Method | Literal["auto"] = _D.method,
    levels: int | None = _D.levels,
    min_size: int = _D.min_size,
    factors: Sequence[Sequence[int]] | None = None,
    chunks: Sequence[int] | None = _D.chunks,
    **run: Unpack[PyramidRun],
) -> PyramidResult:
    """Build the OME-Zarr pyramid of ``input`` blockwise, one level after the other (resumable).
    ``run``: backend, workers, block, kernel, ... (:class:`PyramidRun`).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> v = create_volume(f"{d}/a.zarr/raw", (4, 16, 16), "uint8", (4, 8, 8), voxel_size=(40, 4, 4))
    >>> v.write(v.box, np.full((4, 16, 16), 9, np.uint8))
    >>> r = build_pyramid(v.url, min_size=8, progress=False)
    >>> [(lv["path"], lv["shape"]) for lv in r.levels]
    [('s0', [4, 16, 16]), ('s1', [4, 8, 8])]
    """
    check_keys(run, PyramidRun, "build_pyramid")
    t0 = time.perf_counter()
    src = open_volume(input)
    if src.loc.process_local and run.get("backend") == "ray":
        raise ConfigError("memory:// volumes cannot be downsampled on Ray workers", "use --backend serial or a file volume")
    m = _check_method(src, method)
    if min_size < 1:
        raise ConfigError(f"min_size (--min-size) must be at least 1, got {min_size}", "e.g. 64")
    if levels is not None and levels < 0:
        raise ConfigError(f"levels (--levels) must be >= 0, got {levels}", "leave it out to stop at min_size")
    steps = _given_steps(src.spatial_shape, factors, levels, min_size) if factors is not None else [
        tuple(f) for f in level_factors(src.voxel_size, src.spatial_shape, min_size, levels)
    ]
    group, copy_s0 = pyramid_layout(input, output)
    fmt = src.format if src.format in ("zarr", "zarr3") else "zarr"
    if copy_s0 and parse_url(group).url() == src.loc.parent().url():
        raise ConfigError(f"the pyramid group {group} is the group of the input", "choose another output group")
    if detect_format(group) is not None:
        raise StorageError(f"{group} is an array, not a group that can hold pyramid levels", "choose another output")
    ch = tuple(int(c) for c in (chunks if chunks is not None else src.chunk_shape))
    if len(ch) != 3 or min(ch) < 1:
        raise ConfigError(f"chunks (--chunks) must be three positive numbers z,y,x, got {chunks}", "e.g. 64,64,64, or leave it out for the input's")
    # one set of Ray workers serves every level (starting actors costs more than a small level)
    with Session(run) as session:
        level_info = _Levels(session, src, group.rstrip("/"), m, ch, run).build(steps, copy_s0)
    name = src.loc.name if copy_s0 else parse_url(group).name
    write_pyramid(group, name, src, level_info, m, fmt)
    seconds = time.perf_counter() - t0
    log.info("pyramid %s: %d levels (%s) in %.1f s", group, len(level_info), m, seconds)
    return PyramidResult(group=group, levels=level_info, method=m, copied_s0=copy_s0, seconds=seconds, runs=[r.to_dict() for r in session.runs])


def _check_method(src: Volume, method: Method | Literal["auto"]) -> Method:
    m: Method = default_method(src.dtype) if method == "auto" else method
    if m not in ("mean", "mode"):
        raise ConfigError(f"unknown downsampling method {method!r}", "use mean (images, probabilities), mode (labels) or auto")
    if m == "mean" and src.dtype.kind not in "biuf":
        raise ConfigError(f"cannot average {src.dtype} data", "use --method mode")
    return m


def _given_steps(shape: Sequence[int], factors: Sequence[Sequence[int]], levels: int | None, min_size: int) -> list[tuple[int, ...]]:
    """The level steps of given ``factors`` (used in turn; an axis of size 1 is not divided)."""
    given = [tuple(int(v) for v in f) for f in factors]
    if not given or any(len(f) != 3 or min(f) < 1 for f in given) or all(f == (1, 1, 1) for f in given):
        raise ConfigError(f"factor (--factor): downsampling factors must be z,y,x triples of positive integers, not all 1, got {factors}", "e.g. 1,2,2")
    steps: list[tuple[int, ...]] = []
    sh = list(shape)
    while (levels is None and max(sh) > min_size) or (levels is not None and len(steps) < levels):
        f = given[len(steps) % len(given)]
        f = tuple(v if s > 1 else 1 for v, s in zip(f, sh, strict=True))
        if f == (1, 1, 1):
            break
        steps.append(f)
        sh = [-(-s // v) for s, v in zip(sh, f, strict=True)]
    return steps


@dataclass
class _Levels:
    """The levels of one pyramid, computed one after the other on one session."""

    session: Session
    src: Volume
    base: str
    method: Method
    chunks: tuple[int, ...]
    run: PyramidRun

    def step(self, src_url: str, dst_url: str, factor: tuple[int, int, int], shape: Sequence[int], name: str) -> None:
        grid, level_chunks = _grid(shape, self.chunks, self.run.get("block", _D.block))
        op = DownsampleOp(input=src_url, output=dst_url, factor=factor, method=self.method, chunks=level_chunks, kernel=self.run.get("kernel", _D.kernel),
                          overwrite=self.session.overwrite)
        state_dir = self.run.get("state_dir")
        state = Path(state_dir) / name if state_dir is not None else default_state_dir(dst_url, "downsample")
        self.session.run(op, grid, f"downsample-{name}", state_dir=state)
        kill_point(f"downsample:after-level-{name}")  # tests: a driver killed between levels

    def build(self, steps: list[tuple[int, ...]], copy_s0: bool) -> list[dict[str, Any]]:
        """Copy ``s0`` where needed, compute ``s1``, ``s2``, ...; return every level's description."""
        src, base = self.src, self.base
        info: list[dict[str, Any]] = [
            {"path": "s0", "shape": list(src.spatial_shape), "factor": [1, 1, 1], "voxel_size": list(src.voxel_size), "offset": list(src.offset)}
        ]
        prev = src.url
        if copy_s0:
            self.step(src.url, f"{base}/s0", (1, 1, 1), src.spatial_shape, "s0")
            prev = f"{base}/s0"
        shape = list(src.spatial_shape)
        cum = [1, 1, 1]
        for i, fac in enumerate(steps, start=1):
            shape = [-(-s // f) for s, f in zip(shape, fac, strict=True)]
            cum = [c * f for c, f in zip(cum, fac, strict=True)]
            self.step(prev, f"{base}/s{i}", (fac[0], fac[1], fac[2]), shape, f"s{i}")
            info.append({
                "path": f"s{i}", "shape": shape, "factor": list(fac), "voxel_size": [v * c for v, c in zip(src.voxel_size, cum, strict=True)],
                "offset": [o + (c - 1) / 2 * v for o, c, v in zip(src.offset, cum, src.voxel_size, strict=True)],
            })
            prev = f"{base}/s{i}"
        return info
