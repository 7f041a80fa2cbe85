"""Connected components across blocks: exact against cc3d on the whole volume, on both backends;
small-object removal and object tables measured whole; bad input."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from engine.cli import main
from engine.errors import BlocksFailed, ConfigError, ConnectileError, ResumeMismatch, StorageError
from engine.geometry import BlockGrid, Box
from engine.kernels import gpu_available
from engine.kernels.stitch import block_faces, face_pairs
from engine.ops.label import FacePairsOp, LocalLabelOp, RelabelOp, label_volume
from engine.storage import create_volume, open_volume
from engine.storage.object_table import read_object_table

SHAPE = (20, 40, 40)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same labelling up to renumbering (0 stays 0)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    m = a != 0
    pairs = np.unique(np.stack([a[m].astype(np.uint64), b[m].astype(np.uint64)], axis=1), axis=0)
    return len(pairs) == len(np.unique(a[m])) == len(np.unique(b[m]))


def spiral(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A one-voxel-thick helix winding through every block, plus long thin lines along each axis and
    the main diagonal (connected only through corners: one object under 26, many under 6)."""
    out = np.zeros(shape, np.uint8)
    z, y, x = shape
    t = np.linspace(0, 6 * np.pi, 4000)
    r = 0.4 * min(y, x) * (0.5 + 0.5 * t / t[-1])
    zz = np.clip((t / t[-1] * (z - 1)).round().astype(int), 0, z - 1)
    yy = np.clip((y / 2 + r * np.sin(t)).round().astype(int), 0, y - 1)
    xx = np.clip((x / 2 + r * np.cos(t)).round().astype(int), 0, x - 1)
    out[zz, yy, xx] = 1
    out[:, 1, 1] = out[z // 2, :, x - 2] = out[z - 2, y - 3, :] = 1
    k = np.arange(min(shape))
    out[k, k, (k + seed) % x] = 1
    return out


def touching(shape: tuple[int, int, int], block: tuple[int, int, int]) -> np.ndarray:
    """Pairs of voxels that meet across block boundaries only at a face-diagonal, an edge or a corner."""
    out = np.zeros(shape, np.uint8)
    bz, by, bx = block
    for k, (dz, dy, dx) in enumerate([(1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0)]):
        z, y, x = bz - 1, by - 1, min(bx - 1 + 3 * k, shape[2] - 2)
        if z + dz < shape[0] and y + dy < shape[1]:
            out[z, y, x] = 1
            out[z + dz, y + dy, x + dx] = 1
    out[bz - 1, 5, 5] = out[bz, 6, 6] = 1  # across a face, diagonal in the plane (26 only)
    out[bz - 1, 9, 5] = out[bz, 10, 5] = 1  # across a face, one step aside (18 and 26)
    return out


def make(kind: str, seed: int, block: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return (rng.random(SHAPE) > 0.55).astype(np.uint8)
    if kind == "blobby":
        return (gaussian_filter(rng.random(SHAPE), 1.5) > 0.52).astype(np.uint8)
    if kind == "spiral":
        return spiral(SHAPE, seed)
    if kind == "touching":
        return touching(SHAPE, block)
    if kind == "labels":  # a label volume: touching voxels of different labels stay apart
        return (gaussian_filter(rng.random(SHAPE), 1.0) * 40).astype(np.uint16) % 4
    raise AssertionError(kind)


def write(tmp_path: Path, data: np.ndarray, chunks: tuple[int, int, int] = (10, 20, 20), name: str = "in") -> str:
    vol = create_volume(str(tmp_path / "v.zarr" / name), data.shape, data.dtype, chunks)
    vol.write(vol.box, data)
    return vol.url


GRIDS = [(7, 13, 11), (20, 40, 40), (1, 40, 40), (6, 9, 40), (20, 5, 7)]
KINDS = ["random", "blobby", "spiral", "touching", "labels"]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_equals_cc3d(tmp_path: Path, kind: str, connectivity: int) -> None:
    block = GRIDS[(KINDS.index(kind) + connectivity) % len(GRIDS)]
    if kind == "touching":
        block = (7, 13, 11)
    data = make(kind, KINDS.index(kind) + connectivity, block)
    url = write(tmp_path, data, chunks=block)
    out = str(tmp_path / "v.zarr" / "cc")
    dtype = "uint32" if connectivity == 6 else "uint64"
    r = label_volume(url, out, connectivity=connectivity, block=block, chunks=block, dtype=dtype, progress=False)  # type: ignore[arg-type]
    got = open_volume(out).read(Box.from_shape(SHAPE))
    want, n = cc3d.connected_components(data, connectivity=connectivity, return_N=True)
    assert got.dtype == np.dtype(dtype)
    assert same_partition(got, want)
    assert r.objects == n and int(got.max()) == n and np.unique(got).size == n + 1  # consecutive ids
    if kind == "touching":  # the adversarial pairs did cross blocks: the stitching did the work
        assert r.boundary_labels > 0


def test_touching_counts_by_connectivity(tmp_path: Path) -> None:
    """Worked out: 7 voxel pairs, each pair one object when its offset is allowed."""
    block = (7, 13, 11)
    data = touching(SHAPE, block)
    url = write(tmp_path, data, chunks=block)
    # offsets (1,1,1) (1,1,0) (1,0,1) (0,1,1) (1,0,0), then face-diagonal (1,1,1), one step aside (1,1,0)
    expected = {6: 13, 18: 9, 26: 7}  # 7 pairs; 6 joins 1 of them, 18 joins 5, 26 all 7
    for conn, n in expected.items():
        r = label_volume(url, str(tmp_path / "v.zarr" / f"cc{conn}"), connectivity=conn, block=block, chunks=block, progress=False)
        assert r.objects == n == cc3d.connected_components(data, connectivity=conn, return_N=True)[1], conn


def test_pairs_pass_is_the_same_whatever_faces_it_keeps(tmp_path: Path) -> None:
    """Pass B keeps the faces of one plane of blocks and a row by default (each forward neighbour read
    once per worker; capped at CACHE_BYTES); with a cache of one block every face is read again, and
    the pairs are the same."""
    from engine.ops.label import label_grid
    from engine.ops.label_passes import CACHE_BYTES
    from engine.ops.scratch import Scratch

    block = (7, 13, 11)
    data = make("blobby", 3, block)
    url = write(tmp_path, data, chunks=block)
    out = str(tmp_path / "v.zarr" / "cc")
    label_volume(url, out, connectivity=26, block=block, chunks=block, keep_scratch=True, progress=False)
    scratch = Scratch.beside(out, "label-scratch")
    grid, _ = label_grid(SHAPE, block, block)
    pairs = {}
    for cache in (None, 1):
        op = FacePairsOp(scratch=scratch.url, shape=SHAPE, block=block, connectivity=26, cache_blocks=cache)
        op.setup(grid)
        for b in grid.blocks():
            op.process(b)
        pairs[cache] = [scratch.need_arrays(f"pairs/{b.id}")["pairs"] for b in grid.blocks()]
    assert sum(len(p) for p in pairs[None]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(pairs[None], pairs[1], strict=True))
    _, gy, gx = grid.grid_shape
    assert FacePairsOp(scratch=scratch.url, shape=SHAPE, block=block)._capacity() == gy * gx + gx + 2
    huge = FacePairsOp(scratch=scratch.url, shape=(10**6, 10**6, 10**6), block=(128, 128, 128))
    assert huge._capacity() == CACHE_BYTES // (8 * 3 * 128 * 128)  # a petascale plane of blocks: the memory cap


def test_uint8_threshold_equals_the_float_comparison() -> None:
    """The mask of a uint8 probability is compared as integers (fast); it must equal ``v / 255 > t``
    computed in float64 for every value and thresholds on, between and beyond the steps."""
    from engine.kernels.components import foreground

    v = np.arange(256, dtype=np.uint8)
    steps = np.arange(256) / 255
    ts = np.concatenate([np.linspace(-0.1, 1.1, 1201), steps, np.nextafter(steps, 2), np.nextafter(steps, -1)])
    for t in ts:
        assert np.array_equal(foreground(v, float(t)), v > np.float64(t) * 255.0), t


def test_face_pairs_of_an_edge_contact() -> None:
    grid = BlockGrid(Box.from_shape((4, 4, 4)), write_shape=(2, 2, 2))
    a, b = grid.id_of((0, 0, 0)), grid.id_of((1, 1, 0))  # edge neighbours along x
    la = np.zeros((2, 2, 2), np.uint32)
    lb = np.zeros((2, 2, 2), np.uint32)
    la[1, 1, 0] = 1  # touches lb[0, 0, 0] face-to-face along the edge, lb[0, 0, 1] diagonally
    lb[0, 0, 1] = 2
    fa, fb = block_faces(la), block_faces(lb)
    assert face_pairs(grid, a, fa, b, fb, 18).tolist() == []
    assert face_pairs(grid, a, fa, b, fb, 26).tolist() == [[1, 2]]
    lb[0, 0, 0] = 3
    assert face_pairs(grid, a, fa, b, block_faces(lb), 18).tolist() == [[1, 3]]
    assert face_pairs(grid, a, fa, b, block_faces(lb), 6).tolist() == []


def test_ray_backend_equals_cc3d(tmp_path: Path, ray_cluster: str) -> None:
    data = make("blobby", 3, (7, 13, 11))
    url = write(tmp_path, data, chunks=(7, 13, 11))
    out = str(tmp_path / "v.zarr" / "cc")
    r = label_volume(url, out, connectivity=26, block=(7, 13, 11), chunks=(7, 13, 11), backend="ray", workers=2, pairs_in_driver=False, progress=False)
    got = open_volume(out).read(Box.from_shape(SHAPE))
    want, n = cc3d.connected_components(data, connectivity=26, return_N=True)
    assert same_partition(got, want) and r.objects == n
    assert all(run["done"] + run["skipped"] == r.blocks for run in r.runs)
    # one set of workers served every pass: the same two processes ran passes A, B and C
    names = [run["workers"] for run in r.runs]
    assert len(names[0]) == 2 and names[0] == names[1] == names[2]


# -- objects ---------------------------------------------------------------------------------------
def reference_table(prob: np.ndarray, threshold: float, connectivity: int, min_size: int) -> dict[int, tuple]:
    """Per object of the whole-volume labelling: (voxels, bbox, centroid, mean probability)."""
    labels = cc3d.connected_components(prob > threshold * 255, connectivity=connectivity)
    out = {}
    for i in range(1, int(labels.max()) + 1):
        idx = np.nonzero(labels == i)
        if len(idx[0]) < min_size:
            continue
        zyx = np.stack(idx, axis=1)
        box = (*zyx.min(axis=0).tolist(), *(zyx.max(axis=0) + 1).tolist())
        out[i] = (len(zyx), tuple(box), tuple(zyx.mean(axis=0)), float(prob[idx].mean() / 255))
    return out


@pytest.mark.parametrize("backend", ["serial", "ray"])
def test_min_size_and_object_table(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    rng = np.random.default_rng(7)
    prob = (gaussian_filter(rng.random(SHAPE), 1.2) * 255).clip(0, 255).astype(np.uint8)
    prob = np.where(prob > 132, prob, 0).astype(np.uint8)
    # blocks of (5, 9, 9): y faces at 9, 18, 27, 36. In a cleared corner: an object of 9 voxels cut
    # 4 + 5 by the face y = 36 (kept with min_size 8 though each piece is smaller), one of 7 (removed)
    prob[0:3, 28:40, 32:40] = 0
    prob[0, 32:40, 37] = 200
    prob[1, 39, 37] = 220
    prob[0, 32:39, 34] = 210
    url = write(tmp_path, prob, chunks=(5, 9, 9))
    out, table = str(tmp_path / "v.zarr" / "cc"), tmp_path / "objects.parquet"
    r = label_volume(
        url, out, threshold=0.5, connectivity=26, min_size=8, table=table, block=(5, 9, 9), chunks=(5, 9, 9), backend=backend, workers=2, progress=False
    )
    want = reference_table(prob, 0.5, 26, 8)
    got_labels = open_volume(out).read(Box.from_shape(SHAPE))
    ref_labels = cc3d.connected_components(prob > 127.5, connectivity=26)
    ref_labels[~np.isin(ref_labels, list(want))] = 0
    assert same_partition(got_labels, ref_labels)
    assert r.objects == len(want) and int(got_labels.max()) == len(want) and r.removed > 0
    t = read_object_table(table)
    assert t["id"].tolist() == list(range(1, len(want) + 1))
    got = {}
    for k in range(len(t["id"])):
        key = (int(t["voxels"][k]), tuple(int(t[c][k]) for c in ("z0", "y0", "x0", "z1", "y1", "x1")))
        got[key] = (t["cz"][k], t["cy"][k], t["cx"][k], t["mean_probability"][k])
    ref = {(v, box): (*c, p) for v, box, c, p in want.values()}
    assert got.keys() == ref.keys()
    for key, values in ref.items():
        np.testing.assert_allclose(got[key], values, atol=1e-5)
    # the split object: measured whole, kept; its id in the table matches the label volume
    sizes = {int(i): int(v) for i, v in zip(t["id"], t["voxels"], strict=True)}
    split_id = int(got_labels[0, 32, 37])
    assert split_id and int(got_labels[1, 39, 37]) == split_id and sizes[split_id] == 9
    assert got_labels[0, 32:39, 34].max() == 0


def test_resume_and_changed_parameters(tmp_path: Path) -> None:
    data = make("blobby", 1, (10, 20, 20))
    url = write(tmp_path, data)
    out = str(tmp_path / "v.zarr" / "cc")
    first = label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), progress=False)
    assert not (tmp_path / "v.zarr" / ".connectile" / "cc.label-scratch").exists()  # scratch removed
    again = label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), progress=False)
    assert again.objects == first.objects
    with pytest.raises(ResumeMismatch, match="--overwrite"):
        label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), min_size=5, progress=False)
    third = label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), min_size=5, overwrite=True, progress=False)
    assert third.objects <= first.objects
    # the output deleted (as a fresh bucket at the same address is, for an S3 output whose run state is in ~/.cache): the
    # markers and record of other parameters protect nothing left, so the run goes ahead instead of asking for --overwrite
    shutil.rmtree(out)
    fourth = label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), min_size=0, progress=False)
    assert fourth.objects == first.objects
    want, n = cc3d.connected_components(data, connectivity=26, return_N=True)
    assert n == first.objects and same_partition(open_volume(out).read(Box.from_shape(data.shape)), want)
    with pytest.raises(ResumeMismatch, match="--overwrite"):  # an output that is there is still protected
        label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), min_size=5, progress=False)
    shutil.rmtree(out)
    theirs = create_volume(out, data.shape, "uint64", (10, 20, 20))  # recreated by someone else: not written over either
    theirs.write(theirs.box, np.full(data.shape, 7, np.uint64))
    with pytest.raises(ResumeMismatch, match="--overwrite"):
        label_volume(url, out, block=(10, 20, 20), chunks=(10, 20, 20), min_size=5, progress=False)
    assert (open_volume(out).read(Box.from_shape(data.shape)) == 7).all()


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input(tmp_path: Path) -> None:
    prob = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    url = write(tmp_path, prob, name="prob")
    out = str(tmp_path / "v.zarr" / "cc")
    with pytest.raises(ConfigError, match="no --threshold"):
        label_volume(url, out, progress=False)
    with pytest.raises(ConfigError, match="connectivity must be 6, 18 or 26"):
        label_volume(url, out, threshold=0.5, connectivity=8, progress=False)
    with pytest.raises(StorageError, match="does not exist"):
        label_volume(str(tmp_path / "nowhere.zarr" / "x"), out, progress=False)
    labels_u16 = write(tmp_path, np.zeros(SHAPE, np.uint16), name="u16")
    with pytest.raises(ConfigError, match="--threshold applies to probability volumes"):
        label_volume(labels_u16, out, threshold=0.5, progress=False)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="is a file"):
        label_volume(url, str(tmp_path / "file" / "cc"), threshold=0.5, progress=False)
    prob[3, 4, 5] = np.nan
    nan_url = write(tmp_path, prob, name="nan")
    with pytest.raises(BlocksFailed, match="holds NaN values") as info:
        label_volume(nan_url, str(tmp_path / "v.zarr" / "cc2"), threshold=0.5, block=(10, 20, 20), chunks=(10, 20, 20), progress=False)
    assert "\n" not in str(info.value) and isinstance(info.value, ConnectileError)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make("blobby", 2, (10, 20, 20))
    url = write(tmp_path, (data * 200).astype(np.uint8))
    out, table = str(tmp_path / "v.zarr" / "cc"), str(tmp_path / "t.parquet")
    code = main(["label", url, out, "--threshold", "0.5", "--connectivity", "6", "--min-size", "3", "--table", table,
                 "--block", "10,20,20", "--chunks", "10,20,20", "--backend", "serial", "--no-progress"])
    assert code == 0
    line = capsys.readouterr().out
    assert "objects" in line and "object table" in line
    want = cc3d.connected_components(data, connectivity=6)
    sizes = np.bincount(want.ravel())
    assert len(read_object_table(table)["id"]) == int((sizes[1:] >= 3).sum())
    assert main(["label", str(tmp_path / "missing.zarr/x"), out, "--backend", "serial"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ops_pickle() -> None:
    ops = [
        LocalLabelOp(input="/a.zarr/p", scratch="/s", threshold=0.5, connectivity=6, table=True),
        FacePairsOp(scratch="/s", shape=(4, 5, 6), block=(2, 2, 2), connectivity=18),
        RelabelOp(scratch="/s", output="/a.zarr/cc", like="/a.zarr/p", min_size=4),
    ]
    for op in ops:
        assert pickle.loads(pickle.dumps(op)) == op


@pytest.mark.skipif(not gpu_available(), reason="no GPU (CuPy with a CUDA device) on this machine")
def test_gpu_equals_cpu(tmp_path: Path) -> None:  # pragma: no cover - runs only where a GPU is
    data = make("blobby", 5, (7, 13, 11))
    url = write(tmp_path, data, chunks=(7, 13, 11))
    for conn in (6, 18, 26):
        cpu = label_volume(url, str(tmp_path / "v.zarr" / f"cpu{conn}"), threshold=None, connectivity=conn, block=(7, 13, 11), chunks=(7, 13, 11), progress=False)
        gpu = label_volume(url, str(tmp_path / "v.zarr" / f"gpu{conn}"), connectivity=conn, device="gpu", block=(7, 13, 11), chunks=(7, 13, 11), progress=False)
        a = open_volume(cpu.output).read(Box.from_shape(SHAPE))
        b = open_volume(gpu.output).read(Box.from_shape(SHAPE))
        assert cpu.objects == gpu.objects and same_partition(a, b)


def test_command_and_pipeline_stage_share_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """Issue 15: ``connectile label``, the pipeline's ``label`` stage and :func:`label_volume` take one
    declaration of the settings (:class:`LabelParams`): the same defaults, the same output bytes."""
    import argparse
    import inspect

    from engine.commands import label as command
    from engine.commands._flags import flag
    from engine.params import LabelParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.label import LabelSection, LabelStage

    defaults = LabelParams().settings()
    assert LabelSection(input="x").settings() == defaults
    sig = inspect.signature(label_volume).parameters
    assert {k: sig[k].default for k in defaults} == defaults  # the library call's defaults are the model's
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["label"].format_help() for name in defaults)
    rng = np.random.default_rng(4)
    prob = (gaussian_filter(rng.random((12, 80, 96)), 2.0) * 255).astype(np.uint8)
    src = create_volume(str(tmp_path / "in.zarr" / "prob"), prob.shape, "uint8", (6, 40, 48))
    src.write(src.box, prob)
    threshold = float(np.quantile(prob, 0.7)) / 255
    cli = tmp_path / "cli.zarr" / "cc"
    assert main(["label", src.url, str(cli), "--threshold", str(threshold), "--backend", "serial", "--no-progress"]) == 0
    ctx = StageContext(run_dir=tmp_path / "run", stage="label", runtime=RuntimeSection(backend="serial", progress=False))
    out = LabelStage().run(ctx, LabelSection(input=src.url, threshold=threshold, table=False))["labels"]
    a, b = open_volume(str(cli)), open_volume(out)
    assert a.chunk_shape == b.chunk_shape and a.dtype == b.dtype and int(a.read(a.box).max()) > 3
    np.testing.assert_array_equal(a.read(a.box), b.read(b.box))
