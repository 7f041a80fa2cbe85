"""A real two-node Ray cluster on this machine: a stage submitted through the Job Submission API runs
its blocks on workers of both nodes, and its output equals a single-process run.

The cluster is two ``ray start`` processes (a head with the dashboard on 127.0.0.1, and a worker
node), each with 1 CPU and a custom resource (``node_a``, ``node_b``), every port chosen free, in a
temporary folder of their own. They run in new process sessions, so teardown kills exactly their
process groups: other Ray clusters on the machine (other tests, other users) are never touched, and
no bare ``ray stop`` is run. The test process itself never connects to this cluster (the session
``ray_cluster`` fixture may be connected elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
#: never uploaded with the job's working_dir
EXCLUDES = [".venv", ".git", "runs", "*.zarr", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "*.egg-info", "benchmarks/results"]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class TwoNodeCluster:
    """Two ``ray start`` nodes in process groups of their own (see the module docstring)."""

    def __init__(self) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="cnmn", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
        self.groups: list[int] = []
        ports = _free_ports(16)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # A token in ~/.ray would switch the head to token auth, which `ray start --address` does not
        # pick up: this throwaway loopback cluster runs without it.
        self.env.update(RAY_AUTH_MODE="disabled", PATH=f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}", PYTHONWARNINGS="ignore::DeprecationWarning")
        common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(150 * 2**20), "--temp-dir", str(self.temp)]
        self.head = [
            "--head", "--port", str(self.gcs_port), "--resources", '{"node_a": 1}', "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(ports[2]),
            *self._node_ports(ports[3:8]), *common,
        ]
        self.worker = ["--address", self.address, "--resources", '{"node_b": 1}', *self._node_ports(ports[8:13]), *common]

    @staticmethod
    def _node_ports(p: list[int]) -> list[str]:
        return [
            "--dashboard-agent-listen-port", str(p[0]), "--dashboard-agent-grpc-port", str(p[1]), "--metrics-export-port", str(p[2]),
            "--runtime-env-agent-port", str(p[3]), "--node-manager-port", str(p[4]),
        ]

    def _ray_start(self, args: list[str]) -> None:
        proc = subprocess.Popen([str(VENV_BIN / "ray"), "start", *args], env=self.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.groups.append(proc.pid)  # the daemons it starts stay in this process group
        out, _ = proc.communicate(timeout=90)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args[:2])} failed:\n{out[-3000:]}")

    def start(self) -> None:
        self._ray_start(self.head)
        self._ray_start(self.worker)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
            deadline = time.monotonic() + 3
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(_group_alive(g) for g in self.groups):
                time.sleep(0.2)
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)

    def submit(self, entrypoint: str, timeout: float = 150) -> tuple[str, str]:
        """Submit through the Job Submission API (retrying while the job agent starts), wait for the
        end and return (status, logs)."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.dashboard)
        runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES}
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
                break
            except RuntimeError as err:  # "No available agent to submit job" while the node's agent starts
                if "agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1)
        final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        while (status := client.get_job_status(job)) not in final:
            if time.monotonic() > deadline:
                client.stop_job(job)
                break
            time.sleep(0.5)
        return str(status), client.get_job_logs(job)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodeCluster]:
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _mask_volume(path: Path) -> str:
    """A (16, 64, 128) binary volume of seeded blobs, 8 blocks of (16, 32, 32) chunks... of 4 x 2."""
    from scipy.ndimage import gaussian_filter

    from engine.storage import create_volume

    rng = np.random.default_rng(7)
    mask = (gaussian_filter(rng.random((16, 64, 128)), 2.0) > 0.52).astype(np.uint8)
    vol = create_volume(f"{path}/in.zarr/mask", mask.shape, "uint8", (16, 32, 32))
    vol.write(vol.box, mask)
    return vol.url


@pytest.mark.slow
def test_label_stage_job_runs_on_both_nodes_and_equals_single_node(two_nodes: TwoNodeCluster, tmp_path: Path) -> None:
    from engine.ops.label import label_volume
    from engine.storage import open_volume

    src = _mask_volume(tmp_path)
    config = tmp_path / "label.yaml"
    run_dir = tmp_path / "run"
    config.write_text(yaml.safe_dump({
        "run_dir": str(run_dir),
        "runtime": {"backend": "ray", "progress": False},
        "label": {"input": src, "block": [16, 32, 32], "chunks": [16, 32, 32], "table": False},
    }))
    status, logs = two_nodes.submit(f"python jobs/stage.py --config {config} --stage label")
    assert status == "SUCCEEDED", logs[-4000:]

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["label"]["status"] == "done"
    out = manifest["stages"]["label"]["outputs"]["labels"]
    # blocks ran on workers of both nodes: the pass that labels blocks, and the pass that relabels them
    for part in ("local", "relabel"):
        summary = json.loads((run_dir / ".state" / "label" / part / "summary.json").read_text())
        assert summary["done"] == 8 and summary["backend"] == "ray"
        nodes = {w["node"] for w in summary["workers"] if w["blocks"] > 0}
        assert len(nodes) == 2, summary["workers"]
        assert sum(w["blocks"] for w in summary["workers"]) == 8

    ref = label_volume(src, tmp_path / "ref.zarr" / "labels", block=(16, 32, 32), chunks=(16, 32, 32), backend="serial", progress=False)
    got, want = open_volume(out), open_volume(ref.output)
    assert ref.objects > 3
    np.testing.assert_array_equal(got.read(got.box), want.read(want.box))


BENCH_ON_CLUSTER = """
import json, os
from engine.runtime import connect
info = connect()  # RAY_ADDRESS, set by connectile bench --address
print(json.dumps({"bench": "cluster_probe", "nodes": info.nodes, "cpus": info.cpus, "address": os.environ.get("RAY_ADDRESS")}))
"""


@pytest.mark.slow
def test_connectile_bench_runs_on_the_cluster_it_is_pointed_at(two_nodes: TwoNodeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_probe.py").write_text(BENCH_ON_CLUSTER)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "bench.json"
    assert main(["bench", "--address", two_nodes.address, "--benchmarks", str(bench), "--out", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    probe = next(ln for ln in data["lines"] if ln["bench"] == "cluster_probe")
    assert probe["nodes"] == 2 and probe["cpus"] == 2 and probe["address"] == two_nodes.address
    assert data["hardware"]["cluster"]["nodes"] == 2 and data["hardware"]["cluster"]["resources"]["node_b"] == 1


def test_label_stage_on_ray_records_workers_and_equals_serial(ray_cluster: str, tmp_path: Path) -> None:
    """The fast variant (one node, the session cluster): the same stage and config through
    ``run_pipeline`` on Ray; the summary names each worker's node and block count, which is what the
    two-node test reads, and the output equals the serial run."""
    from engine.pipeline.run import pipeline_config, run_pipeline
    from engine.storage import open_volume

    src = _mask_volume(tmp_path)
    outs = {}
    for backend in ("ray", "serial"):
        run_dir = tmp_path / backend
        cfg = pipeline_config({
            "run_dir": str(run_dir), "runtime": {"backend": backend, "progress": False, "workers": 2},
            "label": {"input": src, "block": [16, 32, 32], "chunks": [16, 32, 32], "table": False},
        })
        outs[backend] = run_pipeline(cfg)[0].outputs["labels"]
        summary = json.loads((run_dir / ".state" / "label" / "local" / "summary.json").read_text())
        assert summary["backend"] == backend and summary["done"] == 8
        assert sum(w["blocks"] for w in summary["workers"]) == 8
        if backend == "ray":
            assert len(summary["workers"]) == 2 and all(len(w["node"]) == 56 for w in summary["workers"])  # Ray node ids (hex)
    got, want = open_volume(outs["ray"]), open_volume(outs["serial"])
    np.testing.assert_array_equal(got.read(got.box), want.read(want.box))
