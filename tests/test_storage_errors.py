"""Storage errors are classified with real failures: a corrupt chunk file fails at once naming the
chunk, a full file system (a small tmpfs, mounted in a private mount namespace of a child process)
names its mount point for block writes and for the done-markers, a busy markers database is retried.
(Transient errors from a real S3 server: tests/test_s3.py.)"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BlocksFailed, StorageError
from engine.geometry import Box
from engine.ops.label import label_volume
from engine.runtime.markers import DONE, DoneStore
from engine.storage import create_volume, open_volume
from engine.storage.errors import StorageUnavailable, classify, retry_count

REPO = Path(__file__).resolve().parents[1]


def _volume(tmp: Path, fmt: str = "zarr", **kw: object) -> str:
    url = str(tmp / "in.zarr/mask")
    vol = create_volume(url, (16, 32, 32), "uint8", (8, 16, 16), format=fmt, **kw)  # type: ignore[arg-type]
    vol.write(vol.box, (np.arange(16 * 32 * 32).reshape(16, 32, 32) % 3 == 0).astype(np.uint8))
    return url


def _corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"garbage")


@pytest.mark.parametrize(("fmt", "kw", "chunk"), [("zarr", {}, "mask/1/0/1"), ("zarr3", {}, "mask/c/1/0/1"), ("zarr3", {"shards": (16, 32, 32)}, "mask/c/0/0/0")])
def test_a_corrupt_chunk_fails_at_once_naming_it(tmp_path: Path, fmt: str, kw: dict[str, object], chunk: str) -> None:
    url = _volume(tmp_path, fmt, **kw)
    _corrupt(tmp_path / "in.zarr" / chunk)
    before = retry_count()
    with pytest.raises(StorageError) as err:
        open_volume(url).read(Box((0, 0, 0), (16, 32, 32)))
    with pytest.raises(StorageError) as early:  # a read started early (overlapping I/O and compute)
        open_volume(url).read_async(Box((0, 0, 0), (16, 32, 32))).result()
    assert not isinstance(err.value, StorageUnavailable) and retry_count() == before  # not retried
    for msg in (str(err.value), str(early.value)):
        assert f"in.zarr/{chunk}" in msg and "is corrupt" in msg and "\n" not in msg and "restore" in msg


def test_a_corrupt_input_chunk_fails_its_block_once_with_one_line(tmp_path: Path) -> None:
    url = _volume(tmp_path)
    _corrupt(tmp_path / "in.zarr/mask/0/0/0")
    with pytest.raises(BlocksFailed) as err:
        label_volume(url, str(tmp_path / "out.zarr/cc"), block=(8, 16, 16), chunks=(8, 16, 16), backend="serial", progress=False, state_dir=tmp_path / "state")
    assert "in.zarr/mask/0/0/0 is corrupt" in str(err.value)
    failures = [f for p in (tmp_path / "state").rglob("summary.json") for f in json.loads(p.read_text())["failures"]]
    assert [f["attempts"] for f in failures] == [1]  # failed at once, not retried
    assert "Traceback" not in failures[0]["error"] and "\n" not in failures[0]["error"]


_FULL_DISK = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from engine.errors import StorageError
    from engine.runtime.markers import DONE, DoneStore
    from engine.storage import create_volume
    disk = sys.argv[1]
    vol = create_volume(disk + "/a/out.zarr/x", (64, 64, 64), "float32", (32, 32, 32), compression="none")
    try:
        vol.write(vol.box, np.random.default_rng(0).random((64, 64, 64), dtype=np.float32))
        print("WRITE ok")
    except StorageError as err:
        print("WRITE", type(err).__name__, err)
    markers = DoneStore.open(disk + "/b/state", {"x": 1})
    try:  # fill what is left of the disk
        with open(disk + "/b/filler", "wb") as f:
            while True:
                f.write(b"\\0" * 4096)
                f.flush()
    except OSError:
        pass
    try:
        markers.record((i, DONE, 0.1, 1, "w", "x" * 2000) for i in range(2000))
        markers.flush(force=True)
        print("MARKERS ok")
    except StorageError as err:
        print("MARKERS", type(err).__name__, err)
    """
)


def test_a_full_disk_is_named_for_block_writes_and_markers(tmp_path: Path) -> None:
    """Real full file systems: 1 MiB tmpfs mounts in a child's own mount namespace (``unshare``: root,
    or user namespaces), one for a block write, one, filled up, for the markers' commit."""
    disk = tmp_path / "disk"
    disk.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unshare or no user/mount namespaces here: cannot mount a small file system")
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    (disk / "a").mkdir()
    (disk / "b").mkdir()
    mounts = " && ".join(f"mount -t tmpfs -o size=1m tmpfs {disk / d}" for d in "ab")
    cmd = f"{mounts} && exec {sys.executable} {script} {disk}"
    proc = subprocess.run([unshare, "-rm", "sh", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = {ln.split(" ", 1)[0]: ln for ln in proc.stdout.splitlines()}
    assert proc.returncode == 0, proc.stderr[-2000:]
    for what, mount in (("WRITE", disk / "a"), ("MARKERS", disk / "b")):
        line = lines[what]
        assert line.startswith(f"{what} StorageError ") and "is full" in line, line  # one line, not retried as transient
        assert f"the disk mounted at {mount} (" in line and "free space there" in line, line


def test_a_busy_markers_database_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's write lock outlasts SQLite's 5 s busy wait once: the commit is retried."""
    monkeypatch.setenv("CONNECTILE_STORAGE_RETRY_DELAY", "0.5")
    markers = DoneStore.open(tmp_path / "state", {"x": 1})
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        other = sqlite3.connect(tmp_path / "state" / "markers.sqlite", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait(10)
    threading.Timer(5.3, release.set).start()  # past the first commit's 5 s wait
    before, t0 = retry_count(), time.monotonic()
    markers.record([(7, DONE, 0.1, 1, "w", "")])
    markers.flush(force=True)
    holder.join()
    assert retry_count() - before == 1 and time.monotonic() - t0 >= 5.3
    assert markers.done_ids().tolist() == [7]
    markers.close()


def test_classify_real_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as notadb:
        sqlite3.connect(tmp_path / "bad.sqlite").execute("SELECT * FROM sqlite_master")
    assert classify(notadb.value) == "corrupt"
    with pytest.raises(OSError) as missing:
        open(tmp_path / "none", "rb")  # noqa: SIM115
    assert classify(missing.value) == "not-found"
    with pytest.raises(StorageError) as corrupt_markers:
        DoneStore.open(tmp_path / "s", {}) if (tmp_path / "s").mkdir() or (tmp_path / "s" / "markers.sqlite").write_bytes(b"x" * 4096) else None
    assert "delete that file" in str(corrupt_markers.value)


_READ_ONLY = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from engine.errors import StorageError
    from engine.runtime.markers import DONE, DoneStore
    from engine.storage import create_volume
    root = sys.argv[1]
    vol = create_volume(root + "/out.zarr/x", (8, 16, 16), "uint8", (8, 16, 16))
    os.chmod(root + "/out.zarr/x", 0o555)
    try:
        vol.write(vol.box, np.ones((8, 16, 16), np.uint8))
        print("WRITE ok")
    except StorageError as err:
        print("WRITE", type(err).__name__, err)
    DoneStore.open(root + "/state", {"x": 1}).close()
    os.chmod(root + "/state", 0o555)
    for name in os.listdir(root + "/state"):
        os.chmod(root + "/state/" + name, 0o444)
    try:
        markers = DoneStore.open(root + "/state", {"x": 1})
        markers.record([(1, DONE, 0.1, 1, "w", "")])
        markers.flush(force=True)
        print("MARKERS ok")
    except StorageError as err:
        print("MARKERS", type(err).__name__, err)
    """
)


def test_a_read_only_output_is_access_denied_at_once(tmp_path: Path) -> None:
    """Real permission errors (a process without the right to write anywhere: as root, util-linux
    setpriv drops CAP_DAC_OVERRIDE): a block write and a markers commit say access denied, one line."""
    from conftest import unprivileged_prefix

    prefix = unprivileged_prefix()
    script = tmp_path / "ro.py"
    script.write_text(_READ_ONLY)
    root = tmp_path / "out"
    root.mkdir()
    proc = subprocess.run([*prefix, sys.executable, str(script), str(root)], cwd=REPO, capture_output=True, text=True, timeout=120)
    for p in [root, *root.rglob("*")]:  # let pytest clean up
        p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {ln.split(" ", 1)[0]: ln for ln in proc.stdout.splitlines()}
    assert lines["WRITE"].startswith("WRITE StorageError access denied writing") and "fix the permissions" in lines["WRITE"], lines
    assert lines["MARKERS"].startswith("MARKERS StorageError access denied "), lines
