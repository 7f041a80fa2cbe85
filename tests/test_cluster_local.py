"""Without ``--address`` (and no ``RAY_ADDRESS``) a command starts a local Ray cluster of its own, even where
``ray start`` left a cluster's address on this machine (``$RAY_TMPDIR/ray/ray_current_cluster``): Ray's own
``ray.init()`` would attach to that cluster (or fail connecting to a dead one, or refuse ``num_cpus``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.storage import create_volume, open_volume

REPO = Path(__file__).resolve().parents[1]


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_address_starts_a_cluster_of_its_own_despite_a_stale_ray_start_address(tmp_path: Path) -> None:
    mask = np.zeros((8, 32, 32), np.uint8)
    mask[1:4, 2:10, 2:10] = 1
    mask[5:7, 20:30, 5:25] = 1
    vol = create_volume(str(tmp_path / "in.zarr" / "mask"), mask.shape, "uint8", (8, 16, 16), overwrite=True)
    vol.write(vol.box, mask)
    # a short folder (Ray's socket paths must stay under 108 characters) holding the address `ray start` leaves
    ray_tmp = Path(tempfile.mkdtemp(prefix="cnrt", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_unused_port()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env |= {"RAY_TMPDIR": str(ray_tmp), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        out = tmp_path / "out.zarr" / "cc"
        cmd = [sys.executable, "-m", "engine.cli", "label", str(tmp_path / "in.zarr" / "mask"), str(out), "--backend", "ray",
               "--workers", "1", "--no-progress"]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = open_volume(str(out)).read(open_volume(str(out)).box)
    assert int(labels.max()) == 2 and ((labels > 0) == (mask > 0)).all()
