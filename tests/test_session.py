"""The runtime session of multi-pass drivers and a job's completion record (``result.json``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import ResumeMismatch
from engine.geometry import BlockGrid, Box
from engine.ops.noop import NoOp
from engine.runtime import SerialBackend, default_state_dir
from engine.runtime.ownership import add_run_id
from engine.runtime.session import CompletionRecord, Session
from engine.storage import create_volume


def test_completion_record_finds_a_finished_run_only_with_its_parameters_and_outputs(tmp_path: Path) -> None:
    out = create_volume(f"{tmp_path}/a.zarr/out", (2, 4, 4), "uint8", (2, 4, 4)).url
    add_run_id(out, "run-1")
    path = tmp_path / "state" / "result.json"
    record = CompletionRecord(path, {"threshold": 0.5, "block": (2, 4, 4)})
    assert record.finished(False, "job", "x was made with other parameters", "fix") is None  # nothing recorded yet
    record.save({"objects": 3}, {out: "run-1"})
    assert record.finished(False, "job", "x was made with other parameters", "fix") == {"objects": 3}  # tuples read back as lists
    with pytest.raises(ResumeMismatch, match=r"x was made with other parameters \(.*result.json\)"):
        CompletionRecord(path, {"threshold": 0.6, "block": (2, 4, 4)}).finished(False, "job", "x was made with other parameters", "fix")
    shutil.rmtree(f"{tmp_path}/a.zarr/out")
    create_volume(f"{tmp_path}/a.zarr/out", (2, 4, 4), "uint8", (2, 4, 4))  # recreated: not the run's output any more
    assert record.finished(False, "job", "x was made with other parameters", "fix") is None
    assert path.exists()
    other = CompletionRecord(path, {"threshold": 0.6, "block": (2, 4, 4)})
    with pytest.raises(ResumeMismatch):  # other parameters and an output someone recreated: still protected
        other.finished(False, "job", "x was made with other parameters", "fix")
    shutil.rmtree(f"{tmp_path}/a.zarr/out")  # deleted: the record protects nothing left and is forgotten
    assert other.finished(False, "job", "x was made with other parameters", "fix") is None and other.forgotten
    assert not path.exists()
    record.save({"objects": 3}, {out: "run-1"})
    assert CompletionRecord(path, {"other": 1}).finished(True, "job", "m", "f") is None  # overwrite: no mismatch, the record goes
    assert not path.exists()


def test_session_runs_passes_on_one_backend_and_times_them(tmp_path: Path) -> None:
    grid = BlockGrid(Box.from_shape((4, 8, 8)), write_shape=(2, 4, 4))
    be = SerialBackend()
    with Session({"backend": be, "progress": False}) as s:
        a = s.run(NoOp(), grid, "first", state_dir=tmp_path / "a", key="one")
        b = s.run(NoOp(), grid, "second", state_dir=tmp_path / "b", serial=True)
        with s.timed("driver-step"):
            pass
    assert [r.name for r in s.runs] == ["first", "second"] and a.done == b.done == grid.num_blocks
    assert set(s.seconds) == {"one", "second", "driver-step"} and all(v >= 0 for v in s.seconds.values())
    assert not s.owns_workers  # a Backend object passed in is the caller's: the session starts none
    assert s.state(f"{tmp_path}/o.zarr/y", "label") == default_state_dir(f"{tmp_path}/o.zarr/y", "label")
    assert Session({"state_dir": tmp_path}).state("memory://x/y", "label") == tmp_path
    again = Session({"backend": "serial", "progress": False})
    assert again.run(NoOp(), grid, "first", state_dir=tmp_path / "a").already_done == grid.num_blocks  # resumes


def test_a_misspelt_option_is_a_type_error_not_ignored(tmp_path: Path) -> None:
    """Options taken as ``**options: Unpack[...]`` refuse unknown keys as Python refuses unknown keywords."""
    from engine.infer.blend import SlidingWindow
    from engine.ops.downsample import build_pyramid
    from engine.ops.label import label_volume
    from engine.runtime import run_blockwise

    grid = BlockGrid(Box.from_shape((4, 8, 8)), write_shape=(2, 4, 4))
    with pytest.raises(TypeError, match="unexpected keyword argument 'windw'"):
        run_blockwise(NoOp(), grid, state_dir=tmp_path / "s", backend="serial", windw=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'voxelsize'"):
        create_volume(f"{tmp_path}/a.zarr/x", (2, 4, 4), "uint8", (2, 4, 4), voxelsize=(1, 1, 1))  # type: ignore[call-arg]
    assert not (tmp_path / "a.zarr" / "x").exists()
    url = create_volume(f"{tmp_path}/a.zarr/x", (2, 4, 4), "uint8", (2, 4, 4)).url
    with pytest.raises(TypeError, match="'kernl'"):
        build_pyramid(url, kernl="numpy", progress=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'keep_locals'"):
        label_volume(url, f"{tmp_path}/a.zarr/cc", keep_locals=True)  # type: ignore[call-arg]
    assert not (tmp_path / "a.zarr" / "cc").exists()
    with pytest.raises(TypeError, match="'batchsize'"):
        SlidingWindow(lambda x: x, (2, 4, 4), batchsize=2)  # type: ignore[call-arg]
