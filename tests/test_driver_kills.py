"""The driver SIGKILLed anywhere in a multi-pass operation or a pipeline loses nothing (issue 16, point 7).

Each command runs as a real ``python -m engine.cli`` child process. ``CONNECTILE_TEST_KILL_AT`` (see
:mod:`engine.faults`) makes it SIGKILL itself at a named point: inside a pass (after the
scheduler recorded a batch of blocks), between passes, just before, inside (the folder half deleted)
and just after its scratch clean-up, between pyramid levels and between pipeline stages. The points of one command are hit one
after the other on the same output (each rerun resumes what the last kill left, then dies at the next
point); a last rerun without a kill point must finish, and its outputs must equal, array for array and
dtype for dtype, those of an uninterrupted run into another folder.

The chaos test runs a small pipeline on its own local Ray cluster while a thread SIGKILLs a random
Ray worker of that run every 2-3 s; its outputs must equal the serial run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from engine.geometry import Box
from engine.pipeline.stages.affinities import label_affinities
from engine.storage import create_volume, open_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 64, 64)
BLOCK = "8,32,32"  # 8 blocks per pass: a kill after the first batch is inside the pass


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CONNECTILE_TEST_KILL_AT")}
    env["PYTHONUNBUFFERED"] = "1"
    if kill_at is not None:
        env["CONNECTILE_TEST_KILL_AT"] = kill_at
    return env


def cli(args: Sequence[str], kill_at: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=_env(kill_at), capture_output=True, text=True, timeout=timeout)


def killed_then_finished(args_for: Sequence[str], points: Sequence[str], after: Callable[[str], None] | None = None) -> None:
    """Run the command, SIGKILLed at each point in turn (every rerun resumes), then once to the end;
    ``after(point)`` checks what each kill left."""
    for point in points:
        res = cli(args_for, kill_at=point)
        assert res.returncode == -signal.SIGKILL, f"kill point {point!r} was not reached (rc {res.returncode}):\n{res.stderr[-3000:]}"
        if after is not None:
            after(point)
    res = cli(args_for)
    assert res.returncode == 0, f"the rerun after kills at {list(points)} failed:\n{res.stderr[-3000:]}"


def assert_same_array(got_url: str, want_url: str) -> None:
    got, want = open_volume(got_url), open_volume(want_url)
    assert got.dtype == want.dtype and got.shape == want.shape, (got_url, got.dtype, got.shape, want.dtype, want.shape)
    a, b = got.read(got.box), want.read(want.box)
    assert a.tobytes() == b.tobytes(), f"{got_url} differs from the uninterrupted run's {want_url} in {int(np.count_nonzero(a != b))} voxels"


def assert_same_table(got: Path, want: Path, paths: dict[str, str]) -> None:
    """Same rows, columns, types and metadata (the run's own paths, which differ, mapped to the reference's)."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(got), pq.read_table(want)
    assert a.equals(b), f"{got} differs from {want}"
    meta_a = {k: v.decode() for k, v in (a.schema.metadata or {}).items()}
    for old, new in paths.items():
        meta_a = {k: v.replace(old, new) for k, v in meta_a.items()}
    assert meta_a == {k: v.decode() for k, v in (b.schema.metadata or {}).items()}


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: relative path -> digest of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def cut_short_clean_up(scratch: Path) -> Callable[[str], None]:
    """After a kill inside the scratch clean-up (``remove-scratch:partly``): the folder is (partly) emptied
    but still there, and the run ids that tied the passes' done-markers to it went first (else the rerun would skip the passes
    and miss their files)."""

    def check(point: str) -> None:
        if point.startswith("remove-scratch:"):
            assert scratch.is_dir(), f"{scratch} was deleted whole: the kill was not inside the clean-up"
            assert ".connectile-runs" not in {p.name for p in scratch.iterdir()}

    return check


def test_kill_point_fires_only_where_and_when_it_is_named() -> None:
    code = "from engine.faults import kill_point\nfor i in range(3):\n    kill_point('b')\n    kill_point('a', lambda: print('before', flush=True))\n    print(i, flush=True)\n"
    run = lambda env: subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    unset = run(_env())
    assert unset.returncode == 0 and unset.stdout.split() == ["0", "1", "2"]
    second = run(_env("a@2"))
    assert second.returncode == -signal.SIGKILL and second.stdout.split() == ["0", "before"]
    assert run(_env("c")).returncode == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic volume (raw, mito, neurons) and the ground-truth affinities of its neurons."""
    d = tmp_path_factory.mktemp("kills")
    res = cli(["synth", str(d / "in.zarr"), "--shape", ",".join(map(str, SHAPE)), "--seed", "1", "--chunks", BLOCK])
    assert res.returncode == 0, res.stderr
    neurons = open_volume(str(d / "in.zarr" / "neurons")).read(Box.from_shape(SHAPE))
    affs = label_affinities(neurons, Box.from_shape(SHAPE), Box.from_shape(SHAPE))
    v = create_volume(str(d / "in.zarr" / "affs"), affs.shape, "uint8", (3, 8, 32, 32))
    v.write(v.box, affs)
    return d


def test_label_survives_driver_kills(data: Path, tmp_path: Path) -> None:
    def args(out: Path) -> list[str]:
        return ["label", str(data / "in.zarr" / "mito"), str(out / "cc"), "--min-size", "5", "--table", str(out / "cc.parquet"),
                "--block", BLOCK, "--chunks", BLOCK, "--backend", "serial", "--no-progress"]

    ref = tmp_path / "ref.zarr"
    assert cli(args(ref)).returncode == 0
    out = tmp_path / "out.zarr"
    inputs = tree(data)
    points = ["label-local:batch", "label:after-pairs", "label-relabel:batch", "label:before-scratch-removal", "remove-scratch:partly@3", "label:after-scratch-removal"]
    killed_then_finished(args(out), points, cut_short_clean_up(out / ".connectile" / "cc.label-scratch"))
    assert_same_array(str(out / "cc"), str(ref / "cc"))
    assert_same_table(out / "cc.parquet", ref / "cc.parquet", {str(out): str(ref)})
    assert tree(data) == inputs  # nothing deleted or changed that the runs did not create
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir()) and not (out / ".connectile" / "cc.label-scratch").exists()


def test_segment_survives_driver_kills(data: Path, tmp_path: Path) -> None:
    def args(out: Path) -> list[str]:
        return ["segment", str(data / "in.zarr" / "affs"), str(out / "seg"), "--block", BLOCK, "--chunks", BLOCK, "--backend", "serial", "--no-progress"]

    ref = tmp_path / "ref.zarr"
    assert cli(args(ref)).returncode == 0
    out = tmp_path / "out.zarr"
    inputs = tree(data)
    points = ["segment-fragments:batch", "segment:after-edges", "segment-relabel:batch", "remove-scratch:partly@2", "segment:after-scratch-removal"]
    killed_then_finished(args(out), points, cut_short_clean_up(out / ".connectile" / "seg.segment-scratch"))
    assert_same_array(str(out / "seg"), str(ref / "seg"))
    assert tree(data) == inputs
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir()) and not (out / ".connectile" / "seg.segment-scratch").exists()


def test_predict_survives_driver_kills(data: Path, tmp_path: Path) -> None:
    import torch

    from engine.models import ModelConfig, build_model, save_checkpoint

    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=1, norm="none", se=False)
    torch.manual_seed(1)
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(ckpt, build_model(cfg), cfg, {"step": 1})

    def args(out: Path) -> list[str]:
        return ["predict", ckpt, str(data / "in.zarr" / "raw"), str(out / "prob"), "--window", "4,16,16", "--block", BLOCK, "--chunks", BLOCK,
                "--device", "cpu", "--threads", "1", "--backend", "serial", "--no-progress"]

    ref = tmp_path / "ref.zarr"
    assert cli(args(ref)).returncode == 0
    out = tmp_path / "out.zarr"
    inputs = tree(data)
    points = ["predict:batch", "predict:after-windows", "predict-borders:batch", "predict:before-scratch-removal", "remove-scratch:partly@1"]
    killed_then_finished(args(out), points, cut_short_clean_up(out / ".connectile" / "prob.predict-scratch"))
    assert_same_array(str(out / "prob"), str(ref / "prob"))
    assert tree(data) == inputs
    assert not (out / ".connectile" / "prob.predict-scratch").exists()  # the rerun cleaned up what the killed run left


def test_downsample_survives_driver_kills(data: Path, tmp_path: Path) -> None:
    def args(out: Path) -> list[str]:
        return ["downsample", str(data / "in.zarr" / "raw"), "--out", str(out), "--min-size", "16", "--block", BLOCK, "--backend", "serial", "--no-progress"]

    ref = tmp_path / "ref.zarr"
    assert cli(args(ref)).returncode == 0
    out = tmp_path / "out.zarr"
    killed_then_finished(args(out), ["downsample-s1:batch", "downsample:after-level-s1"])
    levels = sorted(p.name for p in ref.iterdir() if p.name.startswith("s"))
    assert levels == ["s0", "s1", "s2"]
    for level in levels:
        assert_same_array(str(out / level), str(ref / level))
    assert json.loads((out / ".zattrs").read_text()) == json.loads((ref / ".zattrs").read_text())


PIPELINE = {
    "runtime": {"backend": "serial", "progress": False},
    "synth": {"shape": list(SHAPE), "chunks": [8, 32, 32], "params": {"seed": 1}},
    "label": {"input": "synth.mito", "min_size": 5, "block": [8, 32, 32], "chunks": [8, 32, 32]},
    "affinities": {"input": "synth.neurons", "chunks": [8, 32, 32]},
    "segment": {"input": "affinities.affinities", "threshold": 0.5, "block": [8, 32, 32], "chunks": [8, 32, 32]},
}


def run_config(tmp_path: Path, name: str, **runtime: object) -> tuple[Path, list[str]]:
    cfg = {**PIPELINE, "run_dir": str(tmp_path / name), "runtime": {**PIPELINE["runtime"], **runtime}}
    path = tmp_path / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return tmp_path / name, ["run", str(path)]


def pipeline_outputs(run_dir: Path) -> dict[str, str]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in stages.values()), {k: s["status"] for k, s in stages.items()}
    return {f"{k}.{o}": v for k, s in stages.items() for o, v in s["outputs"].items()}


def assert_same_pipeline(run_dir: Path, ref_dir: Path) -> None:
    """Every array and table of every stage equals the reference run's."""
    got, want = pipeline_outputs(run_dir), pipeline_outputs(ref_dir)
    assert got.keys() == want.keys()
    assert {"synth.raw", "label.labels", "label.table", "affinities.affinities", "segment.segmentation"} <= got.keys()
    for key in want:
        if got[key].endswith(".parquet"):
            assert_same_table(Path(got[key]), Path(want[key]), {str(run_dir): str(ref_dir)})
        else:
            assert_same_array(got[key], want[key])


@pytest.fixture(scope="module")
def serial_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ref_dir, args = run_config(tmp_path_factory.mktemp("pipeline"), "ref")
    res = cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    return ref_dir


def test_pipeline_survives_driver_kills(serial_pipeline: Path, tmp_path: Path) -> None:
    run_dir, args = run_config(tmp_path, "run")
    killed_then_finished(args, ["label-local:batch", "pipeline:after-label", "segment-edges:batch", "pipeline:after-segment"])
    assert_same_pipeline(run_dir, serial_pipeline)


def ray_workers_of(pid: int) -> list[int]:
    """The Ray worker processes started under the driver ``pid`` (its own local cluster, no one else's)."""
    import psutil

    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in children:
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        # workers are titled ray::IDLE, ray::_Actor, ray::_Actor.run...; ray::DashboardAgent and
        # ray::RuntimeEnvAgent are the node's own services (killing them ends the node, not a worker)
        if cmd and cmd[0].startswith("ray::") and not cmd[0].endswith("Agent"):
            found.append(p.pid)
    return found


@pytest.mark.slow
def test_pipeline_on_ray_survives_random_worker_kills(serial_pipeline: Path, tmp_path: Path) -> None:
    """A thread SIGKILLs a random busy Ray worker of the run (the first as soon as one is busy, then every
    2-3 s); the run finishes with the serial run's outputs."""
    run_dir, args = run_config(tmp_path, "chaos", backend="ray", workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed: list[str] = []
    stop = threading.Event()
    rng = random.Random(16)

    def busy_workers() -> list[tuple[int, str]]:
        import psutil

        out = []
        for pid in ray_workers_of(proc.pid):
            try:
                name = psutil.Process(pid).cmdline()[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
                continue
            if name != "ray::IDLE":
                out.append((pid, name))
        return out

    def chaos() -> None:
        # the first kill as soon as a worker is busy (a quiet machine finishes the run in seconds), then
        # a random busy worker every 2-3 s
        delay = 0.0
        while not stop.wait(delay):
            busy = busy_workers()
            if not busy:
                delay = 0.05
                continue
            victim, name = rng.choice(busy)
            try:
                os.kill(victim, signal.SIGKILL)
                killed.append(name)
            except ProcessLookupError:
                pass
            delay = rng.uniform(2.0, 3.0)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    try:
        _, err = proc.communicate(timeout=420)
    finally:
        stop.set()
        thread.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"the run failed after killing {killed}:\n{err[-3000:]}"
    assert any(k != "ray::IDLE" for k in killed), f"no busy worker was killed ({killed}): the test proved nothing"
    assert_same_pipeline(run_dir, serial_pipeline)
    print(f"killed {len(killed)} workers: {killed}")


def test_a_ray_worker_killed_while_starting_is_started_again(ray_cluster: str, tmp_path: Path) -> None:
    """A worker process that dies while setting the op up (SIGKILL, not an error of the op) is started
    again instead of failing the run as a setup error; the output equals the serial run's."""
    from engine.geometry import BlockGrid
    from engine.ops.faults import FaultyGaussian
    from engine.ops.filters import GaussianFilter
    from engine.runtime import run_blockwise

    raw = np.random.default_rng(7).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    v = create_volume(str(tmp_path / "in.zarr" / "raw"), raw.shape, "uint8", (4, 8, 8))
    v.write(v.box, raw)
    grid = BlockGrid(Box.from_shape(raw.shape), (8, 16, 16), context=4)
    ref = GaussianFilter(input=v.url, output=str(tmp_path / "ref.zarr/g"), chunks=(4, 8, 8))
    run_blockwise(ref, grid, state_dir=tmp_path / "ref-state", backend="serial", progress=False)
    flag = tmp_path / "killed-in-setup"
    op = FaultyGaussian(input=v.url, output=str(tmp_path / "o.zarr/g"), chunks=(4, 8, 8), kill_setup_once=str(flag))
    summary = run_blockwise(op, grid, state_dir=tmp_path / "s", backend="ray", workers=2, address=ray_cluster, progress=False)
    assert flag.exists() and summary.ok and summary.done == grid.num_blocks
    assert_same_array(op.output, ref.output)


@pytest.mark.slow
def test_label_on_ray_survives_driver_kills(data: Path, tmp_path: Path) -> None:
    """The driver of a Ray run (its own local cluster) killed inside a pass and between passes; the
    rerun on Ray equals the serial run, and no process of the killed runs' clusters is left behind."""
    import psutil

    def args(out: Path, backend: str) -> list[str]:
        return ["label", str(data / "in.zarr" / "mito"), str(out / "cc"), "--min-size", "5", "--block", BLOCK, "--chunks", BLOCK,
                "--backend", backend, "--workers", "2", "--no-progress"]

    before = {p.pid for p in psutil.process_iter()}
    ref = tmp_path / "ref.zarr"
    assert cli(args(ref, "serial")).returncode == 0
    out = tmp_path / "out.zarr"
    killed_then_finished(args(out, "ray"), ["label-local:batch", "label:after-pairs"])
    assert_same_array(str(out / "cc"), str(ref / "cc"))
    time.sleep(2)  # the killed drivers' gcs_server and raylet end with them (Ray's fate sharing)
    left = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] not in before and p.info["ppid"] == 1 and ("raylet" in cmd or "gcs_server" in cmd):
            left.append(cmd[:120])
    # (their ray::DashboardAgent and ray::RuntimeEnvAgent notice the raylet is gone and exit within a minute)
    assert not left, f"a killed driver's Ray cluster outlived it: {left}"
