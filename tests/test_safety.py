"""Safe by default (issue 16): guarded deletes, done-markers that belong to their output, one driver
per output, atomic bookkeeping, answers set aside rather than deleted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from engine.errors import StorageError
from engine.geometry import BlockGrid, Box
from engine.ops import GaussianFilter
from engine.ops.scratch import Scratch
from engine.runtime import run_blockwise
from engine.storage import create_volume, open_volume

CLI = [sys.executable, "-m", "engine.cli"]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


# -- point 1: --overwrite deletes only the array it replaces ----------------------------------------


def test_cli_label_overwrite_with_a_group_as_output_leaves_it_intact(tmp_path: Path) -> None:
    """The repro of issue 16: the output given as the group instead of d.zarr/cc."""
    made = _cli(tmp_path, "synth", "d.zarr", "--shape", "16,64,64", "--seed", "1", "--no-progress")
    assert made.returncode == 0, made.stderr
    before = _tree_digest(tmp_path / "d.zarr")
    assert {"raw/.zarray", "mito/.zarray", "neurons/.zarray", "synapses/.zarray"} <= set(before)
    out = _cli(tmp_path, "label", "d.zarr/mito", "d.zarr", "--overwrite", "--no-progress")
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "refusing to delete" in lines[0] and "d.zarr" in lines[0] and "group" in lines[0], out.stderr
    assert "mito" in lines[0] and "raw" in lines[0]  # names what it holds
    assert _tree_digest(tmp_path / "d.zarr") == before


def _group(tmp_path: Path) -> tuple[str, np.ndarray]:
    raw = create_volume(str(tmp_path / "d.zarr/raw"), (4, 8, 8), "uint8", (4, 8, 8))
    data = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    raw.write(raw.box, data)
    create_volume(str(tmp_path / "d.zarr/mito"), (4, 8, 8), "uint8", (4, 8, 8))
    return str(tmp_path / "d.zarr"), data


def test_overwrite_refuses_a_group_and_keeps_it(tmp_path: Path) -> None:
    group, data = _group(tmp_path)
    before = _tree_digest(Path(group))
    with pytest.raises(StorageError, match=r"refusing to delete .*d\.zarr.*zarr group holding mito, raw"):
        create_volume(group, (4, 8, 8), "uint64", (4, 8, 8), overwrite=True)
    with pytest.raises(StorageError, match=r"cannot create a volume at .*d\.zarr: it is a zarr group"):
        create_volume(group, (4, 8, 8), "uint64", (4, 8, 8))  # without overwrite it would write into the group
    assert _tree_digest(Path(group)) == before
    assert np.array_equal(open_volume(f"{group}/raw").read(Box.from_shape((4, 8, 8))), data)


def test_overwrite_replaces_an_array_but_not_an_input(tmp_path: Path) -> None:
    from engine.storage.safety import check_removable

    group, data = _group(tmp_path)
    out = create_volume(f"{group}/out", (4, 8, 8), "uint8", (4, 8, 8))
    out.write(out.box, data)
    again = create_volume(f"{group}/out", (4, 8, 8), "uint16", (2, 8, 8), overwrite=True)  # an array: replaced
    assert again.dtype == np.uint16 and int(again.read(again.box).sum()) == 0
    with pytest.raises(StorageError, match=r"refusing to delete .*raw.*: it is .*raw, an input of this run"):
        create_volume(f"{group}/raw", (4, 8, 8), "uint8", (4, 8, 8), overwrite=True, inputs=[f"{group}/raw"])
    with pytest.raises(StorageError, match=r"it holds .*raw, an input of this run"):
        check_removable(group, "run-files", inputs=[f"{group}/raw"])
    assert np.array_equal(open_volume(f"{group}/raw").read(Box.from_shape((4, 8, 8))), data)


def test_an_array_holding_another_array_is_not_deleted(tmp_path: Path) -> None:
    outer = create_volume(str(tmp_path / "a.zarr/x"), (4, 8, 8), "uint8", (4, 8, 8))
    inner = create_volume(str(tmp_path / "a.zarr/x/nested"), (4, 8, 8), "uint8", (4, 8, 8))
    inner.write(inner.box, np.ones((4, 8, 8), np.uint8))
    with pytest.raises(StorageError, match="also holds nested"):
        create_volume(outer.url, (4, 8, 8), "uint8", (4, 8, 8), overwrite=True)
    assert int(open_volume(inner.url).read(inner.box).sum()) == 256


@pytest.mark.parametrize(
    ("url", "what"),
    [("/", "root of the file system"), ("s3://bucket", "root of the bucket"), ("gs://bucket/", "root of the bucket"), ("memory://", "root of the memory store")],
)
def test_roots_are_refused_without_looking(url: str, what: str) -> None:
    from engine.storage.safety import check_removable

    with pytest.raises(StorageError, match=what):
        check_removable(url, "volume")


def test_home_and_the_folders_above_it_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.storage.safety import check_removable

    with pytest.raises(StorageError, match="home folder"):
        check_removable(os.path.expanduser("~"), "run-files")
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(StorageError, match="it is a home folder"):
        check_removable(home, "run-files")
    with pytest.raises(StorageError, match="holds the home folder"):
        check_removable(tmp_path / "home", "run-files")
    check_removable(home / "run", "run-files")  # inside it is fine


def test_scratch_remove_deletes_only_scratch_folders(tmp_path: Path) -> None:
    group, _ = _group(tmp_path)
    with pytest.raises(StorageError, match="not a scratch folder"):
        Scratch(group).remove()
    assert (Path(group) / "raw" / ".zarray").exists()
    s = Scratch.beside(f"{group}/raw", "label-scratch")
    s.put("stats/0", b"x")
    s.remove()
    assert not Path(s.url).exists()


def test_a_volume_in_a_cloud_like_store_is_checked_by_listing() -> None:
    from engine.storage.safety import remove

    create_volume("memory://safety-g/d.zarr/raw", (2, 4, 4), "uint8", (2, 4, 4))
    with pytest.raises(StorageError, match="zarr group holding raw"):
        remove("memory://safety-g/d.zarr", "volume")
    assert remove("memory://safety-g/d.zarr/raw", "volume")
    with pytest.raises(StorageError, match="no volume"):
        open_volume("memory://safety-g/d.zarr/raw")


# -- point 3: done-markers belong to their output ------------------------------------------------


def _gauss(tmp_path: Path) -> tuple[GaussianFilter, BlockGrid, np.ndarray]:
    data = np.random.default_rng(0).random((8, 24, 24), dtype=np.float32)
    src = create_volume(str(tmp_path / "in.zarr/raw"), data.shape, "float32", (4, 8, 8))
    src.write(src.box, data)
    op = GaussianFilter(input=src.url, output=str(tmp_path / "o.zarr/g"), sigma=(1.0, 1.0, 1.0), chunks=(4, 8, 8))
    grid = BlockGrid(Box.from_shape(data.shape), (4, 8, 8), context=4)
    ref = gaussian_filter(data, (1.0, 1.0, 1.0), mode="reflect", truncate=4.0)
    return op, grid, ref


@pytest.mark.parametrize("how", ["deleted", "recreated"])
def test_output_deleted_or_recreated_behind_the_markers_is_recomputed(tmp_path: Path, how: str) -> None:
    op, grid, ref = _gauss(tmp_path)
    state = tmp_path / "state"
    first = run_blockwise(op, grid, state_dir=state, backend="serial", progress=False)
    assert first.done == grid.num_blocks
    assert np.allclose(open_volume(op.output).read(grid.total), ref, atol=1e-5)
    if how == "deleted":
        shutil.rmtree(tmp_path / "o.zarr" / "g")
    else:
        create_volume(op.output, grid.total.shape, "float32", (4, 8, 8), overwrite=True)
    again = run_blockwise(op, grid, state_dir=state, backend="serial", progress=False)
    assert again.already_done == 0 and again.done == grid.num_blocks
    assert np.allclose(open_volume(op.output).read(grid.total), ref, atol=1e-5)
    third = run_blockwise(op, grid, state_dir=state, backend="serial", progress=False)
    assert third.already_done == grid.num_blocks and third.done == 0


def test_label_result_is_not_reused_once_its_output_is_gone(tmp_path: Path) -> None:
    from engine.ops.label import label_volume

    mask = np.zeros((8, 16, 16), np.uint8)
    mask[1:4, 2:9, 2:5] = 1
    mask[5:8, 10:15, 9:14] = 1
    src = create_volume(str(tmp_path / "a.zarr/mask"), mask.shape, "uint8", (4, 8, 8))
    src.write(src.box, mask)
    out = str(tmp_path / "a.zarr/cc")
    kw = {"block": (4, 8, 8), "chunks": (4, 8, 8), "progress": False}
    label_volume(src.url, out, **kw)  # type: ignore[arg-type]
    want = open_volume(out).read(src.box)
    shutil.rmtree(tmp_path / "a.zarr" / "cc")
    again = label_volume(src.url, out, **kw)  # type: ignore[arg-type]
    assert again.objects == 2
    assert np.array_equal(open_volume(out).read(src.box), want)


# -- point 5: atomic bookkeeping -------------------------------------------------------------------

_FSIZE = textwrap.dedent(
    """
    import resource, signal, sys
    from engine.runtime.progress import RunSummary
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    s = RunSummary("big", "serial", 10, failures=[{"id": i, "error": "x" * 100} for i in range(200)])
    try:
        s.save(sys.argv[1])
    except Exception as err:
        print(type(err).__name__, err)
        sys.exit(3)
    """
)


def test_a_summary_write_that_fails_midway_keeps_the_old_file(tmp_path: Path) -> None:
    from engine.runtime.progress import RunSummary

    path = tmp_path / "summary.json"
    RunSummary("small", "serial", 10, done=10).save(path)
    old = path.read_text()
    out = subprocess.run([sys.executable, "-c", _FSIZE, str(path), "2048"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert path.read_text() == old and json.loads(old)["done"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_write_json_atomic_replaces_whole_files(tmp_path: Path) -> None:
    from engine.storage.safety import write_json_atomic

    path = tmp_path / "sub" / "result.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2} and [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_a_checkpoint_is_not_deleted_before_its_replacement_is_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from engine.learn.checkpoints import list_checkpoints, write_training_checkpoint
    from engine.models import ModelConfig

    model = torch.nn.Linear(2, 2)
    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    write_training_checkpoint(tmp_path, 3, model, cfg, opt, {"elapsed": 1.0})
    first = (tmp_path / "checkpoints" / "step-000003" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)
    real_replace = os.replace

    def crash_when_publishing(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src).name.startswith(".tmp-step-"):
            raise KeyboardInterrupt("killed while renaming the new checkpoint into place")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_when_publishing)
    with pytest.raises(KeyboardInterrupt):
        write_training_checkpoint(tmp_path, 3, model, cfg, opt, {"elapsed": 2.0})
    monkeypatch.setattr(os, "replace", real_replace)
    found = list_checkpoints(tmp_path)  # the old checkpoint of step 3 is still there, complete
    assert [s for s, _ in found] == [3]
    assert (found[0][1] / "model.safetensors").read_bytes() == first
    write_training_checkpoint(tmp_path, 3, model, cfg, opt, {"elapsed": 2.0})
    assert (found[0][1] / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003"]


# -- point 2 (library part): a start-over sets a person's answers aside ------------------------------


def test_rounds_with_a_persons_answers_are_set_aside_before_a_start_over(tmp_path: Path) -> None:
    from engine.active.answers import AnswerStore, all_answers, answers_path, set_aside_answers

    run = tmp_path / "run"
    rounds = run / "rounds"
    with AnswerStore(answers_path(rounds / "round-01")) as a:
        a.set(3, True)
        a.set(7, False, source="oracle")
        a.finish()
    with AnswerStore(answers_path(rounds / "round-02")) as b:
        b.set(4, True, source="oracle")  # ground truth only: a rerun gives it again
    (rounds / "round-03").mkdir()
    (rounds / "round-01" / "queries.parquet").write_bytes(b"q")
    kept = set_aside_answers(run)
    assert kept is not None and kept.parent == tmp_path and kept.name.startswith("run.answers-")
    assert all_answers(kept) == {3: True, 7: False}  # the moved round reads as before
    assert (kept / "rounds" / "round-01" / "queries.parquet").read_bytes() == b"q"
    assert not (rounds / "round-01").exists() and (rounds / "round-02").exists() and (rounds / "round-03").exists()
    shutil.rmtree(run)  # the start-over the caller does next
    assert all_answers(kept) == {3: True, 7: False}
    assert set_aside_answers(run) is None  # nothing left to keep


def test_a_round_folder_itself_is_set_aside_whole(tmp_path: Path) -> None:
    from engine.active.answers import AnswerStore, answers_path, set_aside_answers

    round_dir = tmp_path / "q" / "rounds" / "round-01"
    with AnswerStore(answers_path(round_dir)) as a:
        a.set(1, True)
    assert set_aside_answers(tmp_path / "q" / "rounds" / "round-02") is None  # absent
    kept = set_aside_answers(round_dir)
    assert kept is not None and not round_dir.exists() and kept.parent == round_dir.parent
    with AnswerStore(answers_path(kept)) as again:
        assert again.answers() == {1: True}
    assert (tmp_path / "q" / "rounds").is_dir()  # nothing above the round was touched


def test_rois_are_extracted_again_once_their_crops_are_gone(tmp_path: Path) -> None:
    from engine.active.rois import read_crops
    from engine.ops.label import label_volume
    from engine.ops.rois import extract_rois

    mask = np.zeros((8, 48, 48), np.uint8)
    mask[2:6, 5:15, 5:12] = 1
    mask[1:7, 25:40, 28:36] = 1
    raw = create_volume(str(tmp_path / "d.zarr/raw"), mask.shape, "uint8", (8, 16, 16))
    raw.write(raw.box, (np.random.default_rng(1).random(mask.shape) * 255).astype(np.uint8))
    src = create_volume(str(tmp_path / "d.zarr/mask"), mask.shape, "uint8", (8, 16, 16))
    src.write(src.box, mask)
    labels = str(tmp_path / "d.zarr/cc")
    label_volume(src.url, labels, table=tmp_path / "t.parquet", block=(8, 16, 16), chunks=(8, 16, 16), progress=False)
    run = tmp_path / "run"
    kw = {"size": 16, "block": (8, 16, 16), "progress": False}
    first = extract_rois(run, labels, raw.url, tmp_path / "t.parquet", **kw)  # type: ignore[arg-type]
    assert first.rois == 2
    want = read_crops(run, "image")
    shutil.rmtree(run / "rois" / "rois.zarr" / "image")
    again = extract_rois(run, labels, raw.url, tmp_path / "t.parquet", **kw)  # type: ignore[arg-type]
    assert again.rois == 2
    np.testing.assert_array_equal(read_crops(run, "image"), want)
