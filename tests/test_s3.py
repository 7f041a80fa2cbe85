"""s3:// volumes against a real S3-compatible server (moto's server mode, started here on a loopback
port) through TensorStore's s3 driver and the endpoint setting users give (``CONNECTILE_S3_ENDPOINT``):
a blockwise operation and a small pipeline give the same outputs as on local files, also when the
server answers 503 to a share of the requests (a fault-injecting proxy in front of it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("moto")

from s3_server import FaultyProxy, MotoServer

from engine.errors import StorageError
from engine.geometry import Box
from engine.ops.label import label_volume
from engine.storage import create_volume, open_volume

BUCKET = "connectile-test"
SHAPE = (16, 64, 64)
CHUNKS = (8, 32, 32)
_CHUNK_KEY = re.compile(r"^\d+/\d+/\d+$")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The server, with the settings a user gives: the endpoint and credentials in the environment."""
    monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", moto.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for name in ("CONNECTILE_S3_RETRIES", "CONNECTILE_S3_RETRY_DELAY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return moto


def _mask() -> np.ndarray:
    """Blobs that cross block borders (so labelling needs all three passes)."""
    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    out = np.zeros(SHAPE, np.uint8)
    for cz, cy, cx, r in zip(rng.uniform(0, 16, 12), rng.uniform(0, 64, 12), rng.uniform(0, 64, 12), rng.uniform(3, 9, 12), strict=True):
        out[(z - cz) ** 2 + ((y - cy) / 2) ** 2 + ((x - cx) / 2) ** 2 < r**2] = 1
    return out


def _put(url: str, data: np.ndarray) -> str:
    vol = create_volume(url, data.shape, data.dtype, CHUNKS, voxel_size=(40, 8, 8))
    vol.write(vol.box, data)
    return url


def _read(url: str) -> np.ndarray:
    vol = open_volume(url)
    return vol.read(vol.box)


def _local_chunks(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and _CHUNK_KEY.match(p.relative_to(folder).as_posix())}


def _s3_chunks(server: MotoServer, prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in server.objects(BUCKET, prefix + "/").items() if _CHUNK_KEY.match(k)}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _summaries(state: Path) -> list[dict[str, Any]]:
    """The saved run summaries of every pass under ``state``."""
    return [json.loads(p.read_text()) for p in sorted(state.rglob("summary.json"))]


def _label(inp: str, out: str, state: Path) -> Any:
    return label_volume(inp, out, block=(8, 32, 32), chunks=CHUNKS, backend="serial", progress=False, state_dir=state)


@pytest.fixture(scope="module")
def local_label(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The reference: the same labelling on local files."""
    tmp = tmp_path_factory.mktemp("local")
    _put(str(tmp / "in.zarr/mask"), _mask())
    _label(str(tmp / "in.zarr/mask"), str(tmp / "out.zarr/cc"), tmp / "state")
    return tmp / "out.zarr/cc", _read(str(tmp / "out.zarr/cc"))


def test_blockwise_label_on_s3_equals_the_local_run(s3: MotoServer, local_label: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    inp = _put(f"s3://{BUCKET}/plain/in.zarr/mask", _mask())
    result = _label(inp, f"s3://{BUCKET}/plain/out.zarr/cc", tmp_path / "state")
    folder, expected = local_label
    got = _read(f"s3://{BUCKET}/plain/out.zarr/cc")
    assert result.objects == int(expected.max()) > 3
    np.testing.assert_array_equal(got, expected)
    stored, local = _s3_chunks(s3, "plain/out.zarr/cc"), _local_chunks(folder)
    assert stored == local and len(stored) == 8  # byte for byte, every chunk
    # a rerun finds every block done (the markers know the s3 output)
    again = _label(inp, f"s3://{BUCKET}/plain/out.zarr/cc", tmp_path / "state")
    assert all(r.get("already_done") == r.get("total_blocks") for r in again.runs if "total_blocks" in r)


def test_503s_are_retried_and_outputs_stay_identical(s3: MotoServer, local_label: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 5th request gets a 503; TensorStore's own retries (fast here) carry the run, and count."""
    proxy = FaultyProxy(s3.port, every=5)
    try:
        monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("CONNECTILE_S3_RETRY_DELAY", "10ms")
        inp = _put(f"s3://{BUCKET}/flaky/in.zarr/mask", _mask())
        result = _label(inp, f"s3://{BUCKET}/flaky/out.zarr/cc", tmp_path / "state")
        got = _read(f"s3://{BUCKET}/flaky/out.zarr/cc")
    finally:
        proxy.stop()
    folder, expected = local_label
    np.testing.assert_array_equal(got, expected)
    assert _s3_chunks(s3, "flaky/out.zarr/cc") == _local_chunks(folder)
    assert proxy.failed >= 10, proxy.failed  # the faults happened...
    summaries = _summaries(tmp_path / "state")
    retried = sum(r["stats"].get("storage_retries", 0) for r in summaries)
    assert len(summaries) >= 2 and result.objects == int(expected.max())
    assert 0 < retried <= proxy.failed  # ...and the blocks' retries were counted in the run summaries


def test_a_503_past_tensorstores_retries_is_retried_by_the_volume_io(s3: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorStore told to retry once (``CONNECTILE_S3_RETRIES=1``): two 503s in a row reach the engine, whose
    reads and writes classify it transient and retry it (bounded backoff, logged, counted)."""
    from engine.storage.errors import retry_count

    data = _mask()
    url = _put(f"s3://{BUCKET}/once/in.zarr/mask", data)
    chunk = Box((0, 0, 0), CHUNKS)
    gets = iter(range(1, 100))  # TensorStore tries a request at least twice: fail the 3rd and 4th GET of the chunk, and the 6th and 7th
    proxy = FaultyProxy(s3.port, every=1, which=lambda method, path: path.endswith("/once/in.zarr/mask/0/0/0") and next(gets) in (3, 4, 6, 7))
    handler, logger = _Records(), logging.getLogger("engine.storage.errors")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING
    try:
        monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("CONNECTILE_S3_RETRIES", "1")
        monkeypatch.setenv("CONNECTILE_STORAGE_RETRY_DELAY", "0.01")
        before = retry_count()
        vol = open_volume(url, "r+")
        reads = [vol.read(chunk), vol.read(chunk), vol.read(chunk)]  # the 3rd read fails twice inside TensorStore, then is retried here
        reads.append(vol.read_async(chunk).result())  # (the 6th and 7th GET fail: the same for a read started early)
        vol.write(chunk, data[chunk.to_slices()])  # the write's requests pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        proxy.stop()
    for got in reads:
        np.testing.assert_array_equal(got, data[chunk.to_slices()])
    warned = [r.getMessage() for r in handler.records if "transient storage error" in r.getMessage()]
    assert proxy.failed == 4 and len(warned) == 2 and retry_count() - before == 4  # TensorStore's retries and ours
    assert "ServiceUnavailable" in warned[0] and "once/in.zarr/mask/0/0/0" in warned[0]


def test_a_store_down_past_the_retries_is_one_line(s3: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request of a chunk fails: the read gives up after the bounded retries with one line, an
    error the scheduler may retry later (transient), not a traceback."""
    from engine.storage.errors import StorageUnavailable

    url = _put(f"s3://{BUCKET}/down/in.zarr/mask", _mask())
    proxy = FaultyProxy(s3.port, every=1, which=lambda method, path: "/down/in.zarr/mask/0/" in path)
    try:
        monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("CONNECTILE_S3_RETRIES", "1")
        monkeypatch.setenv("CONNECTILE_STORAGE_RETRIES", "2")
        monkeypatch.setenv("CONNECTILE_S3_RETRY_DELAY", "10ms")
        monkeypatch.setenv("CONNECTILE_STORAGE_RETRY_DELAY", "0.01")
        with pytest.raises(StorageUnavailable) as err:
            open_volume(url).read(Box((0, 0, 0), CHUNKS))
    finally:
        proxy.stop()
    assert proxy.failed == 6  # the first try and 2 retries here, each tried twice by TensorStore
    assert "\n" not in str(err.value) and "unavailable" in str(err.value) and url in str(err.value)
    assert getattr(err.value, "transient", False)



def test_a_block_whose_store_stays_down_past_the_retries_is_run_again(
    s3: MotoServer, local_label: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first block's input chunk fails past every retry once: the block fails as transient, the
    scheduler runs it again later (not a permanent failure), and the output is the local run's."""
    inp = _put(f"s3://{BUCKET}/later/in.zarr/mask", _mask())
    gets = iter(range(1, 1000))
    proxy = FaultyProxy(s3.port, every=1, which=lambda method, path: path.endswith("/later/in.zarr/mask/0/0/0") and next(gets) <= 2)
    try:
        monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("CONNECTILE_S3_RETRIES", "1")
        monkeypatch.setenv("CONNECTILE_S3_RETRY_DELAY", "10ms")
        monkeypatch.setenv("CONNECTILE_STORAGE_RETRIES", "0")  # no retry here: the block fails
        _label(inp, f"s3://{BUCKET}/later/out.zarr/cc", tmp_path / "state")
    finally:
        proxy.stop()
    assert proxy.failed == 2
    local = json.loads((tmp_path / "state" / "local" / "summary.json").read_text())
    assert local["retried"] == 1 and local["ok"] and local["done"] == 8
    assert _s3_chunks(s3, "later/out.zarr/cc") == _local_chunks(local_label[0])

def _pipeline(run_dir: Path, mito: str, neurons: str) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "runtime": {"backend": "serial", "progress": False},
        "label": {"input": mito, "min_size": 5, "block": [8, 32, 32], "chunks": list(CHUNKS)},
        "affinities": {"input": neurons, "chunks": list(CHUNKS)},
        "segment": {"input": "affinities.affinities", "threshold": 0.5, "block": [8, 32, 32], "chunks": list(CHUNKS)},
    }


def test_pipeline_reading_s3_equals_the_local_run(s3: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """label, affinities and segment stages with their inputs in the bucket (every 5th request a 503)
    give the stage outputs of the same pipeline on local inputs."""
    from engine.pipeline.run import pipeline_config, run_pipeline
    from engine.synth.op import synthesize

    synthesize(str(tmp_path / "syn.zarr"), shape=SHAPE, chunks=CHUNKS, seed=2, progress=False)
    local = {name: str(tmp_path / f"syn.zarr/{name}") for name in ("mito", "neurons")}
    remote = {name: _put(f"s3://{BUCKET}/pipe/syn.zarr/{name}", _read(url)) for name, url in local.items()}
    ref = run_pipeline(pipeline_config(_pipeline(tmp_path / "local-run", local["mito"], local["neurons"])))
    proxy = FaultyProxy(s3.port, every=5)
    try:
        monkeypatch.setenv("CONNECTILE_S3_ENDPOINT", proxy.endpoint)
        monkeypatch.setenv("CONNECTILE_S3_RETRY_DELAY", "10ms")
        got = run_pipeline(pipeline_config(_pipeline(tmp_path / "s3-run", remote["mito"], remote["neurons"])))
    finally:
        proxy.stop()
    assert proxy.failed > 0
    assert [r.stage for r in got] == [r.stage for r in ref] and {r.action for r in got} == {"ran"}
    compared = 0
    for a, b in zip(ref, got, strict=True):
        for name, url in a.outputs.items():
            if url.endswith((".parquet", ".json")) or ("://" in url and not url.startswith("file://")):
                continue
            try:
                expected = _read(url)
            except StorageError:
                continue  # not a volume (a table, a folder)
            np.testing.assert_array_equal(_read(b.outputs[name]), expected, err_msg=f"{a.stage}.{name}")
            compared += 1
    assert compared >= 3


def test_missing_credentials_give_one_line(moto: MotoServer, tmp_path: Path) -> None:
    """No credentials anywhere: TensorStore asks anonymously and the private bucket answers 403 (moto
    does, as S3 does): one line naming the problem and the fix, exit 2, nothing written."""
    moto_env = {"CONNECTILE_S3_ENDPOINT": moto.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, 'tests'); from test_s3 import _put, _mask; _put('s3://{BUCKET}/private/in.zarr/mask', _mask())"],
                   cwd=REPO, env={**os.environ, **moto_env}, check=True, timeout=120)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONNECTILE_S3"))}
    env.update(CONNECTILE_S3_ENDPOINT=moto.endpoint, HOME=str(tmp_path), CONNECTILE_S3_RETRY_DELAY="10ms")
    argv = ["label", f"s3://{BUCKET}/private/in.zarr/mask", f"s3://{BUCKET}/private/out.zarr/cc", "--backend", "serial", "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not re.match(r"^[EWI]\d{4} ", ln)]  # minus the AWS SDK's own log
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, lines
    assert "access denied" in lines[0] and f"s3://{BUCKET}/private/in.zarr/mask" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]
    assert not any(k.startswith("private/out.zarr") for k in moto.objects(BUCKET, "private/"))


@pytest.mark.slow  # starts its own local Ray cluster (20-40 s)
def test_label_with_ray_workers_on_s3_equals_the_local_run(moto: MotoServer, local_label: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """`connectile label --backend ray` in a fresh process: the Ray workers it starts read and write
    the bucket with the endpoint and credentials of the environment, as a user's would."""
    env = {**os.environ, "CONNECTILE_S3_ENDPOINT": moto.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    # a home of its own: an S3 output's run state lives in ~/.cache/connectile, and an earlier run of
    # this test (with an older version's settings) must not be found there
    env["HOME"] = str(tmp_path / "home")
    env.pop("RAY_ADDRESS", None)
    inp, out = f"s3://{BUCKET}/ray/in.zarr/mask", f"s3://{BUCKET}/ray/out.zarr/cc"
    code = f"import sys; sys.path.insert(0, 'tests'); from test_s3 import _put, _mask; _put({inp!r}, _mask())"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
    argv = ["label", inp, out, "--backend", "ray", "--workers", "2", "--block", "8,32,32", "--chunks", "8,32,32", "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stored = _s3_chunks(moto, "ray/out.zarr/cc")
    assert stored == _local_chunks(local_label[0]) and len(stored) == 8  # byte for byte, every chunk


@pytest.mark.slow  # starts a Ray cluster of its own with `ray start` (30-60 s)
def test_workers_of_a_running_cluster_get_the_drivers_s3_settings(moto: MotoServer, local_label: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """A cluster started beforehand (`ray start --head`) whose nodes have credentials but no endpoint
    setting: the driver's CONNECTILE_S3_ENDPOINT reaches the workers (the job's runtime_env), so they
    read and write the bucket, not AWS."""
    import signal

    from s3_server import free_port

    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    # (a home of its own: `ray start` turns token authentication on where ~/.ray/auth_token exists)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONNECTILE_S3", "RAY_"))} | {"HOME": str(tmp_path)}
    port, client, agent = free_port(), free_port(), free_port()
    # its own temp folder (short: socket paths): `ray start` writes the address of "the current cluster" there,
    # which every later ray.init() on this machine without an address would try to join
    temp = tempfile.mkdtemp(prefix="ray-s3-", dir="/tmp")
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats", f"--temp-dir={temp}"],
        env={**base, **creds}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        inp, out = f"s3://{BUCKET}/cluster/in.zarr/mask", f"s3://{BUCKET}/cluster/out.zarr/cc"
        env = {**base, **creds, "CONNECTILE_S3_ENDPOINT": moto.endpoint}
        code = f"import sys; sys.path.insert(0, 'tests'); from test_s3 import _put, _mask; _put({inp!r}, _mask())"
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
        argv = ["label", inp, out, "--backend", "ray", "--address", f"127.0.0.1:{port}", "--workers", "2", "--block", "8,32,32",
                "--chunks", "8,32,32", "--no-progress"]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # the head node takes a while to answer
            proc = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0 or "cannot reach the Ray cluster" not in proc.stderr or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stored = _s3_chunks(moto, "cluster/out.zarr/cc")
        assert stored == _local_chunks(local_label[0]) and len(stored) == 8
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # the cluster this test started (its own session), no other
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(temp, ignore_errors=True)
        assert not Path("/tmp/ray/ray_current_cluster").exists() or f":{port}" not in Path("/tmp/ray/ray_current_cluster").read_text()
