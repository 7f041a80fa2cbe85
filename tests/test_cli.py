"""The ``connectile`` command as a user runs it: real processes, real local Ray clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "engine.cli"]


def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})})


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("demo", "ingest", "synth"):
        assert command in out.stdout


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    args = ("demo", "--out", str(tmp_path / "demo"), "--shape", "16,64,96", "--chunks", "8,32,32", "--workers", "2", "--no-progress")
    first = run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "blockwise Gaussian vs whole-volume scipy: max |diff| = 0.00e+00" in first.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["synth", "gaussian"]
    assert all(r["ok"] and r["done"] == r["total_blocks"] and r["backend"] == "ray" for r in summary["runs"])
    assert summary["ground_truth"]["neurons"] > 5
    assert (tmp_path / "demo" / "preview.png").stat().st_size > 10_000

    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert all(r["done"] == 0 and r["already_done"] == r["total_blocks"] for r in summary["runs"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--shape", "16,64"), "--shape must be three comma-separated numbers"),
        (("demo", "--shape", "4,8,8"), "smaller than one chunk"),
        (("demo", "--workers", "0"), "--workers must be at least 1"),
        (("ingest", "/nonexistent/slices", "x.zarr/raw"), "/nonexistent/slices"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = run(*args, "--no-progress")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith(f"connectile {args[0]}: error:")


def test_local_cluster_dashboard_binds_to_loopback() -> None:
    code = textwrap.dedent(
        """
        import ray
        from engine.runtime import connect
        info = connect(num_cpus=1)
        print("URL", ray._private.worker.global_worker.node.address_info["webui_url"])
        print("STARTED", info.started_here)
        """
    )
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "STARTED True" in out.stdout
    url = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("URL"))
    assert url.startswith("127.0.0.1:")
