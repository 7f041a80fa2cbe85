"""The blockwise runtime, on the serial backend and on a real local Ray cluster."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import PrivateAttr
from scipy.ndimage import gaussian_filter

from engine.errors import BlocksFailed, ConfigError, ResumeMismatch
from engine.geometry import FITS, Block, BlockGrid, Box
from engine.ops import FaultyGaussian, GaussianFilter, NoOp
from engine.runtime import BlockMask, WorkerSetupError, run_blockwise
from engine.runtime.execute import BlockRunner
from engine.runtime.markers import DONE, FAILED
from engine.runtime.op import BlockOp, PendingWrites
from engine.storage import create_volume, open_volume

BACKENDS = ["serial", "ray"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


def make_input(path: Path, shape: tuple[int, int, int] = (29, 45, 38), seed: int = 0) -> tuple[str, np.ndarray]:
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    url = str(path / "in.zarr" / "raw")
    vol = create_volume(url, shape, "float32", (4, 8, 8))
    vol.write(vol.box, data)
    return url, data


def states(state_dir: Path) -> dict[int, int]:
    with sqlite3.connect(state_dir / "markers.sqlite") as db:
        return dict(db.execute("SELECT id, status FROM blocks").fetchall())


# -- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize(("write_shape", "sigma"), [((8, 16, 16), (1.0, 1.5, 2.0)), ((4, 24, 8), (0.7, 1.0, 1.0))])
def test_gaussian_blockwise_equals_scipy(tmp_path: Path, backend: str, fit: str, write_shape: tuple[int, int, int], sigma: tuple[float, float, float]) -> None:
    url, data = make_input(tmp_path)
    op = GaussianFilter(input=url, output=str(tmp_path / "out.zarr" / "g"), sigma=sigma, chunks=(4, 8, 8))
    grid = BlockGrid(Box.from_shape(data.shape), write_shape, context=op.halo(), fit=fit)  # type: ignore[arg-type]
    summary = run_blockwise(op, grid, state_dir=tmp_path / "state", backend=backend, workers=2, progress=False)
    assert summary.ok and summary.done == grid.num_blocks
    got = open_volume(op.output).read(Box.from_shape(data.shape))
    want = gaussian_filter(data, sigma, mode="reflect")
    covered = grid.covered.to_slices()
    np.testing.assert_allclose(got[covered], want[covered], atol=1e-5, rtol=0)
    if fit == "valid":  # the uncovered remainder was never written
        rest = np.ones(data.shape, bool)
        rest[covered] = False
        assert rest.any() and np.all(got[rest] == 0)


def test_gaussian_on_roi_reads_context_outside_total(tmp_path: Path) -> None:
    url, data = make_input(tmp_path)
    op = GaussianFilter(input=url, output=str(tmp_path / "out.zarr" / "g"), sigma=(1.0, 1.0, 1.0), chunks=(4, 8, 8))
    roi = Box((4, 8, 8), (24, 40, 32))
    grid = BlockGrid(roi, (8, 8, 8), context=op.halo(), volume=Box.from_shape(data.shape))
    run_blockwise(op, grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    got = open_volume(op.output).read(roi)
    want = gaussian_filter(data, 1.0, mode="reflect")[roi.to_slices()]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# -- failures, retries, resume --------------------------------------------------------------


def test_block_that_always_raises_fails_the_run(tmp_path: Path, backend: str) -> None:
    url, data = make_input(tmp_path)
    armed = tmp_path / "armed"
    armed.touch()
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[5], armed_file=str(armed))
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=op.halo())
    with pytest.raises(BlocksFailed) as info:
        run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, max_retries=2, progress=False)
    assert f"1 of {grid.num_blocks} blocks failed" in str(info.value) and "injected fault in block 5" in str(info.value)
    marks = states(tmp_path / "s")
    assert marks[5] == 3 and sum(1 for s in marks.values() if s == 1) == grid.num_blocks - 1
    import json

    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["ok"] is False and summary["failed"] == 1 and summary["retried"] == 2
    assert summary["failures"][0]["id"] == 5 and summary["failures"][0]["attempts"] == 3
    assert "RuntimeError: injected fault in block 5" in summary["failures"][0]["error"]

    armed.unlink()  # "fix the bug": the same op now succeeds; only block 5 runs again
    again = run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, progress=False)
    assert (again.done, again.already_done, again.failed) == (1, grid.num_blocks - 1, 0)
    np.testing.assert_allclose(open_volume(op.output).read(Box.from_shape(data.shape)), gaussian_filter(data, 1.0, mode="reflect"), atol=1e-5)


def test_transient_failures_are_retried(tmp_path: Path, backend: str) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[0, 3, 17], once_dir=str(tmp_path / "once"))
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, max_retries=1, progress=False)
    assert s.ok and s.done == grid.num_blocks and s.retried == 3


def test_retries_zero_fails_at_once(tmp_path: Path) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[2], once_dir=str(tmp_path / "once"))
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="serial", max_retries=0, progress=False, raise_on_failure=False)
    assert not s.ok and s.failed == 1 and s.retried == 0 and s.failures[0]["id"] == 2


def test_changed_parameters_refuse_to_resume(tmp_path: Path) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)
    out = str(tmp_path / "o.zarr/g")
    run_blockwise(GaussianFilter(input=url, output=out, sigma=(1, 1, 1), chunks=(4, 8, 8)), grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    changed = GaussianFilter(input=url, output=out, sigma=(1, 1, 0.5), chunks=(4, 8, 8))
    with pytest.raises(ResumeMismatch) as info:
        run_blockwise(changed, grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    assert "op.sigma: [1.0, 1.0, 1.0] -> [1.0, 1.0, 0.5]" in str(info.value) and "--overwrite" in str(info.value)
    other_grid = BlockGrid(Box.from_shape(data.shape), (8, 8, 8), context=4)
    with pytest.raises(ResumeMismatch, match=r"layout.write_shape: \[8, 16, 16\] -> \[8, 8, 8\]"):
        run_blockwise(GaussianFilter(input=url, output=out, chunks=(4, 8, 8)), other_grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    s = run_blockwise(changed, grid, state_dir=tmp_path / "s", backend="serial", progress=False, overwrite=True)
    assert s.done == grid.num_blocks and s.already_done == 0
    np.testing.assert_allclose(open_volume(out).read(Box.from_shape(data.shape)), gaussian_filter(data, (1, 1, 0.5), mode="reflect"), atol=1e-5)
    # the output deleted (a fresh bucket at the same address, for state kept in ~/.cache): markers of other settings protect
    # nothing left and are forgotten; an output recreated by someone else is still refused
    shutil.rmtree(out)
    s = run_blockwise(GaussianFilter(input=url, output=out, sigma=(1, 1, 1), chunks=(4, 8, 8)), grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    assert s.done == grid.num_blocks and s.already_done == 0
    np.testing.assert_allclose(open_volume(out).read(Box.from_shape(data.shape)), gaussian_filter(data, 1.0, mode="reflect"), atol=1e-5)
    shutil.rmtree(out)
    create_volume(out, data.shape, "float32", (4, 8, 8))
    with pytest.raises(ResumeMismatch, match="--overwrite"):
        run_blockwise(changed, grid, state_dir=tmp_path / "s", backend="serial", progress=False)


def test_finished_run_recomputes_nothing(tmp_path: Path, backend: str) -> None:
    grid = BlockGrid(Box.from_shape((10, 100, 100)), (1, 10, 10))
    first = run_blockwise(NoOp(), grid, state_dir=tmp_path, backend=backend, workers=2, progress=False)
    second = run_blockwise(NoOp(), grid, state_dir=tmp_path, backend=backend, workers=2, progress=False)
    assert (first.done, second.done, second.already_done) == (1000, 0, 1000)
    assert second.workers == []  # no workers were even started


def test_mask_skips_blocks_and_a_changed_mask_is_honoured(tmp_path: Path, backend: str) -> None:
    url, data = make_input(tmp_path, shape=(16, 32, 32))
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)  # 2x2x2 blocks
    mask = create_volume(str(tmp_path / "mask.zarr/m"), (4, 4, 4), "uint8", (4, 4, 4), voxel_size=(4, 8, 8))
    m = np.zeros((4, 4, 4), np.uint8)
    m[0:2, 0:2, 0:2] = 1  # covers block (0, 0, 0) only: mask voxel = 4x8x8 data voxels
    mask.write(mask.box, m)
    data_vol = open_volume(url)
    bm = BlockMask.for_volume(mask.url, data_vol)
    assert bm.factor == (4, 8, 8)
    op = GaussianFilter(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8))
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, mask=bm, progress=False)
    assert (s.done, s.skipped) == (1, 7)
    assert sorted(k for k, v in states(tmp_path / "s").items() if v == 2) == list(range(1, 8))
    out = open_volume(op.output).read(Box.from_shape(data.shape))
    assert np.all(out[8:, :, :] == 0) and np.all(out[:8, :16, :16] != 0)
    m[2:, 2:, 2:] = 1  # now also block (1, 1, 1) = id 7
    mask.write(mask.box, m)
    s2 = run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, mask=bm, progress=False)
    assert (s2.done, s2.skipped, s2.already_done) == (1, 6, 1)


def test_setup_failure_is_one_clear_error(tmp_path: Path, backend: str) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_setup=True)
    with pytest.raises(WorkerSetupError, match="injected setup failure"):
        run_blockwise(op, grid, state_dir=tmp_path / "s", backend=backend, workers=2, progress=False)
    assert states(tmp_path / "s") == {}


def test_memory_volumes_are_refused_on_ray(tmp_path: Path) -> None:
    op = GaussianFilter(input="memory://x/in", output="memory://x/out")
    with pytest.raises(ConfigError, match="memory://"):
        run_blockwise(op, BlockGrid(Box.from_shape((8, 8, 8)), (8, 8, 8)), state_dir=tmp_path, backend="ray", progress=False)


def test_unreadable_markers_are_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "markers.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match=r"done-markers .* are unreadable"):
        run_blockwise(NoOp(), BlockGrid(Box.from_shape((8, 8, 8)), (8, 8, 8)), state_dir=tmp_path, backend="serial", progress=False)


# -- processes really killed --------------------------------------------------------------


def _reference(tmp_path: Path, url: str, grid: BlockGrid) -> np.ndarray:
    op = GaussianFilter(input=url, output=str(tmp_path / "ref.zarr/g"), chunks=(4, 8, 8))
    run_blockwise(op, grid, state_dir=tmp_path / "ref-state", backend="serial", progress=False)
    return open_volume(op.output).read(grid.total)


def _chunk_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".z")}


def test_worker_killed_mid_run_is_replaced(tmp_path: Path, ray_cluster: str) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (4, 16, 16), context=4)  # 8x3x3 = 72 blocks
    op = FaultyGaussian(
        input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[30], how="kill", once_dir=str(tmp_path / "once")
    )
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, progress=False)
    assert (tmp_path / "once" / "fired-30").exists()  # the worker really ran block 30 and SIGKILLed itself
    assert s.ok and s.done == grid.num_blocks and s.workers_replaced == 1 and s.retried >= 1
    assert np.array_equal(open_volume(op.output).read(grid.total), _reference(tmp_path, url, grid))
    assert _chunk_bytes(tmp_path / "o.zarr" / "g") == _chunk_bytes(tmp_path / "ref.zarr" / "g")


def test_block_that_kills_every_worker_fails_without_looping(tmp_path: Path, ray_cluster: str) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (8, 16, 16), context=4)
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[4], how="kill")
    with pytest.raises(BlocksFailed, match="its worker died 2 times"):
        run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, max_retries=1, progress=False)
    marks = states(tmp_path / "s")
    assert marks[4] == 3 and sum(1 for v in marks.values() if v == 1) == grid.num_blocks - 1


def test_when_every_worker_is_dead_each_pending_block_is_marked_failed(tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.runtime import scheduler

    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (4, 16, 16), context=4)  # 72 blocks
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=list(range(grid.num_blocks)), how="kill")
    chunks: list[int] = []
    record = scheduler.DoneStore.record

    def spy(self: object, rows: list[tuple[object, ...]]) -> None:
        chunks.append(len(rows))
        record(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(scheduler.DoneStore, "record", spy)
    monkeypatch.setattr(scheduler._Dispatcher, "FAIL_CHUNK", 5)  # 5 marker rows per write
    with pytest.raises(BlocksFailed, match="no workers left"):
        run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, max_retries=5, max_worker_restarts=0, progress=False)
    marks = states(tmp_path / "s")
    assert len(marks) == grid.num_blocks and set(marks.values()) == {3}  # every block recorded, each as failed
    assert max(chunks) <= 5 and sum(chunks) == grid.num_blocks


DRIVER = textwrap.dedent(
    """
    import sys
    from engine.geometry import BlockGrid, Box
    from engine.ops import FaultyGaussian
    from engine.runtime import run_blockwise
    url, out, state = sys.argv[1:4]
    op = FaultyGaussian(input=url, output=out, chunks=(4, 8, 8), sleep=0.05)
    grid = BlockGrid(Box((0, 0, 0), (29, 45, 38)), (4, 16, 16), context=4)
    run_blockwise(op, grid, state_dir=state, backend="ray", workers=2, progress=False)
    """
)


def test_driver_killed_mid_run_resumes_only_missing_blocks(tmp_path: Path, ray_cluster: str) -> None:
    url, data = make_input(tmp_path)
    grid = BlockGrid(Box.from_shape(data.shape), (4, 16, 16), context=4)  # 72 blocks, 0.05 s each
    out, state = str(tmp_path / "o.zarr/g"), tmp_path / "s"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, url, out, str(state)], env=env)
    deadline = time.monotonic() + 90
    done_at_kill = 0
    while time.monotonic() < deadline:
        if (state / "markers.sqlite").exists():
            try:
                done_at_kill = sum(1 for v in states(state).values() if v == 1)
            except sqlite3.OperationalError:
                done_at_kill = 0
            if done_at_kill >= 12:
                break
        assert proc.poll() is None, "the driver ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    marked = {k for k, v in states(state).items() if v == 1}
    assert 12 <= len(marked) < grid.num_blocks, "kill the driver mid-run"

    op = FaultyGaussian(input=url, output=out, chunks=(4, 8, 8), sleep=0.05)
    s = run_blockwise(op, grid, state_dir=state, backend="ray", workers=2, progress=False)
    assert s.already_done == len(marked) and s.done == grid.num_blocks - len(marked)
    assert np.array_equal(open_volume(out).read(grid.total), _reference(tmp_path, url, grid))
    assert _chunk_bytes(tmp_path / "o.zarr" / "g") == _chunk_bytes(tmp_path / "ref.zarr" / "g")


# -- what travels to workers pickles ------------------------------------------------------


def test_pickle_round_trips(tmp_path: Path) -> None:
    url, data = make_input(tmp_path, shape=(8, 16, 16))
    grid = BlockGrid(Box.from_shape(data.shape), (4, 8, 8), context=4, fit="overhang")
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[1])
    mask = BlockMask(url, (1, 2, 2))
    for obj in (grid, grid.block(3), op, NoOp(sleep=0.5), mask, open_volume(url)):
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj)
        if hasattr(obj, "model_dump"):
            assert back.model_dump() == obj.model_dump()
    assert pickle.loads(pickle.dumps(grid)) == grid and pickle.loads(pickle.dumps(grid.block(3))) == grid.block(3)
    assert pickle.loads(pickle.dumps(mask)).describe() == mask.describe()
    op.prepare(grid)
    runner = BlockRunner(op, grid)
    result = runner.run([0, 1])
    back = pickle.loads(pickle.dumps(result))
    assert back.status.tolist() == [1, 3] and 1 in back.errors and back.worker == result.worker


# -- one driver per output (issue 16 point 4) ---------------------------------------------------

HANGING_DRIVER = textwrap.dedent(
    """
    import sys
    from engine.errors import ConnectileError
    from engine.geometry import BlockGrid, Box
    from engine.ops import FaultyGaussian
    from engine.runtime import run_blockwise
    url, out, state, armed = sys.argv[1:5]
    op = FaultyGaussian(input=url, output=out, chunks=(4, 8, 8), fail_blocks=[5], how="hang", armed_file=armed)
    grid = BlockGrid(Box((0, 0, 0), (8, 16, 24)), (4, 8, 8), context=4)
    try:
        run_blockwise(op, grid, state_dir=state, backend="serial", progress=False)
    except ConnectileError as err:
        print(err)
        sys.exit(2)
    """
)


def test_a_second_driver_refuses_and_a_dead_drivers_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    url, data = make_input(tmp_path, shape=(8, 16, 24))
    grid = BlockGrid(Box.from_shape(data.shape), (4, 8, 8), context=4)  # 12 blocks; block 5 hangs while armed
    out, state, armed = str(tmp_path / "o.zarr/g"), tmp_path / "s", tmp_path / "armed"
    armed.touch()
    args = [sys.executable, "-c", HANGING_DRIVER, url, out, str(state), str(armed)]
    first = subprocess.Popen(args)
    try:
        deadline = time.monotonic() + 120
        lock = state / "driver.lock"
        while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()):  # the first driver holds the lock (and hangs in block 5)
            assert first.poll() is None, "the first driver ended early"
            assert time.monotonic() < deadline, "the first driver never took the lock"
            time.sleep(0.1)
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        line = second.stdout.strip()
        assert "another driver is running" in line and f"pid {first.pid}" in line and socket.gethostname() in line, line
        assert len(line.splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    done_before = {k for k, v in states(state).items() if v == 1}
    assert 5 not in done_before
    armed.unlink()  # "fix the bug"; the dead driver's lock file is still there, naming it
    assert f'"pid": {first.pid}' in (state / "driver.lock").read_text()
    op = FaultyGaussian(input=url, output=out, chunks=(4, 8, 8), fail_blocks=[5], how="hang", armed_file=str(armed))
    with caplog.at_level("WARNING", logger="engine.runtime.lock"):
        s = run_blockwise(op, grid, state_dir=state, backend="serial", progress=False)
    assert any("taking over the lock" in r.getMessage() and f"pid {first.pid}" in r.getMessage() for r in caplog.records)
    assert s.ok and s.already_done == len(done_before) and s.done == grid.num_blocks - len(done_before)
    assert np.array_equal(open_volume(out).read(grid.total), _reference(tmp_path, url, grid))
    assert (state / "driver.lock").read_text() == ""  # released


def test_lock_is_reentrant_below_the_folder_a_driver_holds(tmp_path: Path) -> None:
    from engine.runtime.lock import DriverBusy, driver_lock

    with driver_lock(tmp_path / "run"):
        s = run_blockwise(NoOp(), BlockGrid(Box.from_shape((4, 4, 4)), (2, 2, 2)), state_dir=tmp_path / "run" / "pass", backend="serial", progress=False)
        assert s.ok
    code = f"from engine.runtime.lock import driver_lock\nwith driver_lock({str(tmp_path / 'run')!r}):\n    print('held')"
    with driver_lock(tmp_path / "run"):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "DriverBusy" in other.stderr and f"pid {os.getpid()}" in other.stderr
    assert DriverBusy.__name__ == "DriverBusy"


# -- a block that hangs does not hang the run (issue 16 point 6) ------------------------------------


def test_block_that_hangs_is_killed_retried_then_failed(tmp_path: Path, ray_cluster: str) -> None:
    from engine.runtime.deadline import Deadline

    url, data = make_input(tmp_path, shape=(16, 32, 32))
    grid = BlockGrid(Box.from_shape(data.shape), (4, 8, 16), context=4)  # 4x4x2 = 32 blocks
    hang = grid.num_blocks - 1  # last: the deadline is derived from the blocks seen before it
    op = FaultyGaussian(input=url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), fail_blocks=[hang], how="hang")
    t0 = time.monotonic()
    with pytest.raises(BlocksFailed, match=rf"block {hang}: timed out 2 times: it ran past its deadline of [0-9.]+ s"):
        run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, max_retries=1, progress=False, deadline=Deadline(floor=2.0, first=120.0))
    assert time.monotonic() - t0 < 100
    marks = states(tmp_path / "s")
    assert marks[hang] == 3 and sum(1 for v in marks.values() if v == 1) == grid.num_blocks - 1
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["workers_replaced"] >= 2  # each attempt killed its worker and a new one took its place
    want = _reference(tmp_path, url, grid)
    got = open_volume(op.output).read(grid.total)
    hung = grid.block(hang).write.to_slices()
    want[hung] = got[hung] = 0
    assert np.array_equal(got, want)  # every other block is right


def test_an_address_of_another_cluster_is_not_ignored_once_connected(ray_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process already connected to Ray (here: the tests' cluster) given another address, or a stale
    RAY_ADDRESS, fails in one line naming it; the connected cluster's own address, or none, reuses it."""
    from engine.errors import ConfigError
    from engine.runtime import connect

    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:1\b"):
        connect("127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:2\b.*RAY_ADDRESS"):
        connect()
    monkeypatch.delenv("RAY_ADDRESS")
    assert connect(ray_cluster).address and connect().address


def test_local_cluster_workers_run_at_the_drivers_priority() -> None:
    """Ray's default starts workers 15 levels nicer than the driver; a local cluster of ``connect`` does not."""
    import subprocess
    import sys

    code = ("import os, ray\nfrom engine.runtime import connect\nconnect(num_cpus=1, dashboard=False)\n"
            "@ray.remote\ndef f():\n    return os.nice(0)\nprint(os.nice(0), ray.get(f.remote()))\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(["nice", "-n", "3", sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    driver, worker = (int(v) for v in out.stdout.split()[-2:])
    assert worker == driver and driver >= 3


def test_local_cluster_actors_start_on_the_workers_ray_prestarted() -> None:
    """A local cluster sets no job runtime_env (which keeps Ray from reusing its prestarted workers for
    actors: about 1 s more per start): the first actor runs in a worker that was idle before it, and the
    workers still get ``WORKER_ENV`` and the driver's storage settings through the environment."""
    import subprocess
    import sys

    code = (
        "import os, subprocess, time, ray\nfrom engine.runtime import connect\nconnect(num_cpus=1, dashboard=False)\n"
        "idle = []\nfor _ in range(100):\n"
        "    idle = subprocess.run(['pgrep', '-f', 'ray::IDLE'], capture_output=True, text=True).stdout.split()\n"
        "    if idle: break\n    time.sleep(0.1)\n"
        "class A:\n    def info(self):\n        return os.getpid(), os.environ.get('PYTHONWARNINGS'), os.environ.get('CONNECTILE_S3_ENDPOINT')\n"
        "pid, warn, s3 = ray.get(ray.remote(num_cpus=1)(A).remote().info.remote())\n"
        "print(str(pid) in idle, warn, s3, os.environ.get('PYTHONWARNINGS'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONWARNINGS")} | {"CONNECTILE_S3_ENDPOINT": "http://minio:9000"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["True", "ignore::DeprecationWarning", "http://minio:9000", "None"], out.stdout


# -- scale: the driver's memory does not grow with the grid (issue 17 pt 6) ---------------------


def test_pending_blocks_behave_like_a_deque_of_every_id() -> None:
    """The range-based queue of the dispatch loop against a plain deque, under random dispatch,
    retries at either end and suspects that end a batch."""
    from collections import deque

    from engine.runtime.pending import PendingBlocks, runs, todo_ranges

    rng = np.random.default_rng(3)
    done = np.flatnonzero(rng.random(5000) < 0.6)
    todo = np.setdiff1d(np.arange(5000), done)
    q, ref = PendingBlocks(todo_ranges(runs(done), 5000)), deque(int(i) for i in todo)
    assert len(q) == len(ref) and list(q) == list(ref)
    suspects: set[int] = set()
    while ref:
        op = rng.integers(0, 5)
        if op == 0 and len(ref) > 3:  # a batch handed back to the front, its blocks suspects
            back = [ref.popleft() for _ in range(3)]
            assert [q.popleft() for _ in range(3)] == back
            q.extendleft(reversed(back))
            ref.extendleft(reversed(back))
            suspects.update(back)
        elif op == 1:
            bid = ref.popleft()
            assert q.popleft() == bid
            q.append(bid)
            ref.append(bid)
        else:
            n = int(rng.integers(1, 300))
            want: list[int] = []
            while ref and len(want) < n:
                if ref[0] in suspects:
                    if not want:
                        want.append(ref.popleft())
                    break
                want.append(ref.popleft())
            assert q.take(n, suspects) == want
        assert len(q) == len(ref) and (not ref or q[0] == ref[0])
    assert not q and list(q) == []


def test_done_ranges_are_read_in_chunks(tmp_path: Path) -> None:
    """The resume check reads the done-markers as ranges; chunk borders inside a range join it."""
    from engine.runtime.markers import DONE, FAILED, DoneStore
    from engine.runtime.pending import runs

    rng = np.random.default_rng(5)
    status = rng.choice([0, DONE, FAILED], size=3000, p=[0.2, 0.7, 0.1])
    store = DoneStore.open(tmp_path, {"x": 1})
    store.record((int(i), int(s), 0.0, 1, "w", "") for i, s in enumerate(status) if s)
    done = np.flatnonzero(status == DONE)
    for chunk in (1, 7, 64, 1 << 16):
        assert np.array_equal(store.done_ranges(chunk=chunk), runs(done))
    assert np.array_equal(store.done_ids(), done)
    store.close()
    whole = DoneStore.open(tmp_path / "whole", {"x": 1})  # no gap: the one-count path
    whole.record((i, DONE, 0.0, 1, "w", "") for i in range(5, 5000))
    assert whole.done_ranges(chunk=64).tolist() == [[5, 5000]]
    whole.record([(77, FAILED, 0.0, 3, "w", "boom")])
    assert whole.done_ranges(chunk=64).tolist() == [[5, 77], [78, 5000]]
    whole.close()


def test_markers_keep_workers_by_number(tmp_path: Path) -> None:
    """A block's row names its worker by a small number (a worker's "host:pid" once, in the workers
    table); the summary's counts and failures still give names, those of older stores too."""
    from engine.runtime.markers import DONE, FAILED, DoneStore

    store = DoneStore.open(tmp_path, {"x": 1})
    a, b = "ray-worker-node-17.cluster.internal:4242", "ray-worker-node-18.cluster.internal:77"
    store.record([(0, DONE, 0.1, 1, a, ""), (1, DONE, 0.1, 1, b, ""), (2, FAILED, 0.1, 3, a, "boom"), (3, DONE, 0.1, 1, a, "")])
    store.flush(force=True)
    store.record([(4, DONE, 0.1, 1, b, ""), (5, FAILED, 0.0, 1, "", "no workers left")])
    assert store.done_by_worker() == {a: 2, b: 2}
    assert store.failures() == [{"id": 2, "attempts": 3, "worker": a, "error": "boom"},
                                {"id": 5, "attempts": 1, "worker": "", "error": "no workers left"}]
    store.close()
    with sqlite3.connect(tmp_path / "markers.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM blocks WHERE worker LIKE '%cluster%'").fetchone()[0] == 0
        db.execute("INSERT INTO blocks VALUES (6, 1, 0.1, 1, 'old-host:9', '')")  # a row as older stores wrote it
    store = DoneStore.open(tmp_path, {"x": 1})
    assert store.done_by_worker() == {a: 2, b: 2, "old-host:9": 1}
    store.close()


def _driver_memory_at_first_submit(tmp_path: Path, num_blocks: int, done_below: int) -> int:
    """Peak Python/numpy memory (tracemalloc) of run_blockwise from its start to its first batch,
    over a grid of ``num_blocks`` no-op blocks whose first ``done_below`` are marked done already."""
    import tracemalloc

    from engine.runtime import DoneStore, SerialBackend
    from engine.runtime.markers import DONE
    from engine.runtime.ownership import claim_outputs

    class Stop(Exception):
        pass

    class Probe(SerialBackend):
        peak = 0

        def submit(self, worker: int, ids: list[int]) -> None:
            Probe.peak = tracemalloc.get_traced_memory()[1]
            raise Stop

    grid = BlockGrid(Box.from_shape((num_blocks, 1, 1)), (1, 1, 1))
    op = NoOp()
    store = DoneStore.open(tmp_path, {"layout": grid.layout(), "op": op.params()})
    claim_outputs(store, op.outputs())
    store.record((i, DONE, 0.0, 1, "w", "") for i in range(done_below))
    store.close()
    with pytest.raises(Stop):  # a first run on a small grid: the modules it imports are not counted
        run_blockwise(op, BlockGrid(Box.from_shape((9, 1, 1)), (1, 1, 1)), state_dir=tmp_path / "warm", backend=Probe(), progress=False)
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            run_blockwise(op, grid, state_dir=tmp_path, backend=Probe(), progress=False)
    finally:
        tracemalloc.stop()
    return Probe.peak


def test_the_driver_holds_no_object_per_block(tmp_path: Path) -> None:
    """A run over 10^6 blocks, 3 x 10^5 of them done, reaches its first dispatch holding a few MB:
    the blocks to run are ranges, the done-markers are read in chunks (a deque of every id and the
    markers fetched at once took about 50 MiB here; 10^7 blocks, 500 MiB)."""
    peak = _driver_memory_at_first_submit(tmp_path, 1_000_000, 300_000)
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB"


def test_block_timings_are_kept_in_bounded_memory() -> None:
    """The run summary's per-block seconds: exact for runs up to the sample size; beyond it count,
    sum, mean, min and max exact and the median and p95 from a uniform sample of fixed size."""
    from engine.runtime.progress import TimingSample, timing_stats

    values = np.random.default_rng(7).exponential(0.01, size=200_000).astype(np.float32)
    small, big = TimingSample(keep=1 << 18), TimingSample(keep=20_000)
    for part in np.array_split(values, 300):
        small.add(part)
        big.add(part)
    exact = timing_stats(values)
    assert small.stats() == pytest.approx(exact, rel=1e-6)
    got = big.stats()
    assert big.sample.size == 20_000
    for key in ("count", "sum", "mean", "min", "max"):
        assert got[key] == pytest.approx(exact[key], rel=1e-6), key
    for key in ("median", "p95"):
        assert got[key] == pytest.approx(exact[key], rel=0.05), key


class DeferredCopy(BlockOp):
    """Copies each block, leaving the write in flight until the batch's flush (as label's pass C does)."""

    kind: ClassVar[str] = "test-deferred-copy"
    input: str
    output: str

    _writes: PendingWrites = PrivateAttr(default_factory=PendingWrites)

    def process(self, block: Block) -> dict[str, float]:
        data = open_volume(self.input).read(block.write)
        self._writes.add(block.id, open_volume(self.output, "r+").write_async(block.write, data))
        return {"copied": 1.0}

    def flush(self) -> dict[int, BaseException]:
        return self._writes.wait()


def test_a_block_is_done_only_once_its_deferred_write_is_stored(tmp_path: Path) -> None:
    """Writes an op leaves in flight are waited for at the end of each batch; a block whose write fails
    is failed (not marked done), the others are done, and a rerun computes only the failed one."""
    url, data = make_input(tmp_path, shape=(12, 8, 8))
    out = tmp_path / "out.zarr" / "copy"
    create_volume(str(out), data.shape, "float32", (4, 8, 8))
    (out / "1").write_text("a file where the chunks of z 4-7 would go")  # a real write failure: 'not a directory'
    grid = BlockGrid(Box.from_shape(data.shape), (4, 8, 8))
    op = DeferredCopy(input=url, output=str(out))
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="serial", max_retries=0, progress=False, raise_on_failure=False)
    assert (s.done, s.failed) == (2, 1) and [f["id"] for f in s.failures] == [1], s.failures
    assert states(tmp_path / "s") == {0: DONE, 1: FAILED, 2: DONE}
    got = open_volume(str(out)).read(Box.from_shape(data.shape))
    assert np.array_equal(got[:4], data[:4]) and np.array_equal(got[8:], data[8:])
    (out / "1").unlink()
    again = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="serial", progress=False)
    assert (again.done, again.already_done) == (1, 2)
    assert np.array_equal(open_volume(str(out)).read(Box.from_shape(data.shape)), data)


def test_the_last_blocks_go_to_whichever_worker_frees_first(tmp_path: Path, ray_cluster: str) -> None:
    """In the tail a worker holds one batch at a time: with 4 blocks on 2 workers, block 1 does not
    queue behind the slow block 0 on the same worker (it did: each worker took 2 blocks up front, so
    4 expensive blocks of unequal cost went 2 and 2 whatever their costs)."""
    grid = BlockGrid(Box.from_shape((4, 4, 4)), (1, 4, 4))
    op = NoOp(sleeps={0: 1.5, 1: 0.2, 2: 0.2, 3: 0.2})
    s = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, progress=False)
    assert s.done == 4
    with sqlite3.connect(tmp_path / "s" / "markers.sqlite") as db:
        worker = dict(db.execute("SELECT id, worker FROM blocks").fetchall())
    assert worker[0] != worker[1]
    assert [worker[b] for b in (1, 2, 3)].count(worker[0]) == 0  # the fast worker ran the rest while block 0 slept
