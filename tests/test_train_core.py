"""The training core (engine/learn/core.py) under every method: the same numbers as the hand-written loops
it replaced (losses and weights of a few steps, recorded in tests/data/train_core_reference.json before
they were deleted), a run interrupted and resumed == an uninterrupted one, and a time budget stops each
method with a checkpoint that the next run continues from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_methods as tm

REFERENCE = json.loads(tm.REFERENCE.read_text())


def _close(new: dict[str, Any], old: dict[str, Any], rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(new["losses"], old["losses"], rtol=rtol, atol=1e-7)
    assert new["weights"].keys() == old["weights"].keys()
    for k, v in old["weights"].items():
        np.testing.assert_allclose(new["weights"][k], v, rtol=rtol, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("method", tm.METHODS)
def test_same_numbers_as_the_old_loop(method: str, tmp_path: Path) -> None:
    _close(tm.run(method, tmp_path), REFERENCE[method])


# -- resume after an interruption ------------------------------------------------------------------------

class _Crash(Exception):
    pass


def _crash_at(monkeypatch: pytest.MonkeyPatch, name: str, at: int) -> None:
    """Make the training core die in step ``at`` (0-based) of the method called ``name``."""
    from engine.learn import core

    real = core.run_step

    def dying(method: core.Method, batch: Any, step: int) -> dict[str, float]:
        if method.name == name and step == at:
            raise _Crash
        return real(method, batch, step)

    monkeypatch.setattr(core, "run_step", dying)


# method -> (name of the core method that crashes, step it dies in, run_<method> arguments)
INTERRUPTIONS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "segmentation": ("train", 3, {}),
    "semi": ("train", 3, {}),
    "simsiam": ("simsiam", 3, {}),
    "simclr": ("simclr", 3, {"checkpoint_every": 2}),
    "contrastive": ("contrastive", 2, {"checkpoint_every": 2}),
    "vae": ("vae", 7, {}),
    "triplet": ("triplet", 3, {}),
}


def _kw(method: str, root: Path, extra: dict[str, Any]) -> dict[str, Any]:
    if method == "simclr":
        return {"output": root / "simclr-run", **extra}
    if method in ("vae", "triplet"):
        return {"output": root / f"{method}-run", **extra}
    return extra


@pytest.mark.parametrize("method", tm.METHODS)
def test_resumed_run_equals_uninterrupted_run(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.active.triplet as triplet

    monkeypatch.setattr(triplet, "CHECKPOINT_EVERY", 2)
    name, at, extra = INTERRUPTIONS[method]
    kw = _kw(method, tmp_path, extra)
    with monkeypatch.context() as m:
        _crash_at(m, name, at)
        with pytest.raises(_Crash):
            tm.run(method, tmp_path, **kw)
    from engine.learn.checkpoints import list_checkpoints

    folders = [p.parent for p in tmp_path.rglob("checkpoints")]
    assert folders and all(list_checkpoints(f) for f in folders)  # it died after a checkpoint
    result = tm.run(method, tmp_path, **kw)  # the same call again: resumes and finishes
    _close(result, REFERENCE[method])


# -- time budgets ---------------------------------------------------------------------------------------------

def _budget_kw(method: str, root: Path, budget: Any) -> dict[str, Any]:
    if method == "simclr":
        return {"output": root / "simclr-run", "checkpoint_every": 2, "clock": budget.start()}
    if method == "contrastive":
        return {"budget": budget, "checkpoint_every": 2}
    if method in ("vae", "triplet"):
        return {"output": root / f"{method}-run", "budget": budget}
    return {"budget": budget}


def _run_to_budget(method: str, root: Path, budget: Any) -> dict[str, Any] | None:
    """Run ``method`` with ``budget``; its result (None for contrastive pretraining, which raises)."""
    from engine.learn.budget import BudgetSpent

    kw = _budget_kw(method, root, budget)
    if method == "contrastive":
        with pytest.raises(BudgetSpent, match="stopped at its time budget"):
            tm.run(method, root, **kw)
        return None
    return tm.run(method, root, **kw)


class _CountingTime:
    """A CPU clock that advances one second each time it is read (one read at start, one per step)."""

    def __init__(self) -> None:
        self.now = 0.0

    def process_time(self) -> float:
        self.now += 1.0
        return self.now

    def perf_counter(self) -> float:
        return self.process_time()


@pytest.mark.parametrize("method", tm.METHODS)
def test_time_budget_stops_with_a_checkpoint_the_next_run_continues(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.active.triplet as triplet
    from engine.learn import budget as budget_module
    from engine.learn.budget import TimeBudget
    from engine.learn.checkpoints import list_checkpoints

    monkeypatch.setattr(triplet, "CHECKPOINT_EVERY", 100)
    with monkeypatch.context() as m:
        m.setattr(budget_module, "time", _CountingTime())
        _run_to_budget(method, tmp_path, TimeBudget(seconds=2.5))  # spent before the third step of its (last) stage
    steps = sorted({s for f in tmp_path.rglob("checkpoints") for s, _ in list_checkpoints(f.parent)})
    assert 2 in steps and 4 not in steps and 5 not in steps, steps  # stopped at step 2, with a checkpoint of it
    _close(tm.run(method, tmp_path, **_kw(method, tmp_path, INTERRUPTIONS[method][2])), REFERENCE[method])


@pytest.mark.parametrize("method", tm.METHODS)
def test_a_real_cpu_budget_stops_before_any_step(method: str, tmp_path: Path) -> None:
    from engine.learn.budget import TimeBudget

    result = _run_to_budget(method, tmp_path, TimeBudget(seconds=1e-9, clock="cpu"))
    assert result is None or result["losses"] == []
    assert not list(tmp_path.rglob("step-*"))  # nothing trained, nothing to checkpoint


# -- data-parallel on Ray Train ---------------------------------------------------------------------------

@pytest.mark.slow  # Ray Train's start (about 25 s)
def test_simsiam_on_ray_train_one_worker_equals_in_process(tmp_path: Path, ray_cluster: str) -> None:
    """SimSiam through the generic Ray Train runner (engine.learn.distributed.run_workers): one worker
    (a process group, DDP) gives the in-process numbers; the segmentation trainer's own test is in
    tests/test_train.py."""
    result = tm.run("simsiam", tmp_path, ray={"num_workers": 1, "address": ray_cluster})
    _close(result, REFERENCE["simsiam"])
    assert (tmp_path / "simsiam" / "ray").is_dir()


def test_cli_train_stops_at_its_budget_then_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``connectile train`` with a CPU budget: a real, tiny budget stops it before its first step (exit 0,
    says how to continue); the same command without the budget trains all steps to the same weights."""
    from engine.cli import main

    cfg = tm.seg_cfg(tmp_path)
    path = tmp_path / "train.yaml"
    path.write_text(cfg.to_yaml())
    assert main(["train", str(path), "--no-progress", "--set", "budget={seconds: 1.0e-9, clock: cpu}"]) == 0
    out = capsys.readouterr().out
    assert "trained 0 steps" in out and "stopped at its time budget before step 4" in out, out
    assert main(["train", str(path), "--no-progress"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    weights = tm.summary(tm._safetensors(Path(cfg.output) / "checkpoints/step-000004/model.safetensors"))
    _close({"losses": tm._history_losses(Path(cfg.output)), "weights": weights}, REFERENCE["segmentation"])


# -- the entry points of active learning: a budget stop marks nothing done, the next call resumes ------------

def _roi_run(root: Path) -> Path:
    from engine.ops.label import label_volume
    from engine.ops.rois import extract_rois
    from engine.synth import synthesize

    synthesize(root / "s.zarr", (8, 256, 256), seed=4, chunks=(8, 128, 128), progress=False, mito_probability=1.0)
    label_volume(f"{root}/s.zarr/mito", f"{root}/s.zarr/cc", table=root / "t.parquet", block=(8, 256, 256), chunks=(8, 128, 128), progress=False)
    run = root / "run"
    extract_rois(run, f"{root}/s.zarr/cc", f"{root}/s.zarr/raw", root / "t.parquet", size=32, progress=False)
    return run


def test_features_stop_at_their_budget_then_resume_to_the_uninterrupted_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from engine.active.features import FeatureConfig, VaeConfig, compute_features
    from engine.learn import budget as budget_module
    from engine.learn.budget import BudgetSpent, TimeBudget

    torch_threads(1)
    run = _roi_run(tmp_path)
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    tiny = VaeConfig(latent_dim=4, hidden_dims=(8, 16), input_size=32, epochs=2, batch_size=8)
    cfg = FeatureConfig(image_patches=64, mask=tiny, image=tiny.model_copy(update={"latent_dim": 8}), device="cpu")
    ref = compute_features(run, cfg, progress=False)
    limited = cfg.model_copy(update={"image": cfg.image.model_copy(update={"budget": TimeBudget(seconds=2.5)})})
    with monkeypatch.context() as m:
        m.setattr(budget_module, "time", _CountingTime())
        with pytest.raises(BudgetSpent, match="stopped at its time budget after 2 steps"):
            compute_features(other, limited, progress=False)
    assert not (other / "features" / "features.json").exists()  # nothing marked done
    [training] = (other / "features").glob("train-image-*")
    assert [p.name for p in (training / "checkpoints").iterdir()] == ["step-000002"]
    again = compute_features(other, cfg, progress=False)  # without the budget: the same training folder, resumed
    for k in ("mask", "image"):
        np.testing.assert_allclose(again[k], ref[k], rtol=1e-5, atol=1e-6)
    assert not (training / "checkpoints").exists() and (training / "history.jsonl").is_file()  # checkpoints go once done


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


@pytest.mark.slow  # two Ray Train runs (pretraining, then training)
def test_contrastive_pretraining_and_training_on_ray_train_one_worker_equal_in_process(tmp_path: Path, ray_cluster: str) -> None:
    """``connectile train`` with a contrastive section and ``ray.num_workers: 1``: SimCLR, local contrastive
    pretraining and segmentation training all run on the Ray Train workers and give the in-process
    numbers (the recorded reference of the pretraining, and an in-process training run)."""
    from engine.learn import train

    in_process = tm.contrastive_cfg(tmp_path / "a")
    train(in_process)
    on_ray = tm.contrastive_cfg(tmp_path / "b", ray={"num_workers": 1, "address": ray_cluster})
    summary = train(on_ray)
    assert summary["step"] == 4 and (Path(on_ray.output) / "pretrain" / "ray").is_dir()
    record = json.loads((Path(on_ray.output) / "pretrain" / "loss.json").read_text())
    pre = tm.summary(tm._safetensors(Path(on_ray.output) / "pretrain" / "model.safetensors"))
    _close({"losses": record["simclr"] + record["contrastive"], "weights": pre}, REFERENCE["contrastive"])
    final = {"losses": tm._history_losses(Path(on_ray.output)), "weights": tm.summary(tm._safetensors(tm._newest(Path(on_ray.output)) / "model.safetensors"))}
    ref = {"losses": tm._history_losses(Path(in_process.output)), "weights": tm.summary(tm._safetensors(tm._newest(Path(in_process.output)) / "model.safetensors"))}
    _close(final, ref)
