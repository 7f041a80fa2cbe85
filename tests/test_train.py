"""Training: targets, augmentation invariants, crops from labelled boxes, empty-crop rejection, the loop's
outputs, resume == uninterrupted, Ray Train (1 worker) == in-process, and the CLI's errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from engine.config import load_config, parse_config
from engine.errors import ConfigError
from engine.geometry import Box
from engine.learn import (
    CropSampler,
    TrainConfig,
    Trainer,
    affinity_target,
    augment,
    list_checkpoints,
    polarity_target,
    train,
)
from engine.learn.config import AugmentConfig
from engine.learn.history import read_history
from engine.storage import create_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (12, 48, 48)
NO_AUG = {"flip": False, "transpose": False, "rot90": False, "intensity": 0, "noise": 0, "blur": 0, "missing_section": 0, "misalign": 0, "elastic": 0}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: faster than two on this shared 2-core machine (no spinning against other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _volumes(root: Path, labels: np.ndarray | None = None, raw: np.ndarray | None = None) -> tuple[str, str]:
    """A uint8 raw volume and a uint8 label volume (0/255, like Lucchi++) on disk as zarr."""
    rng = np.random.default_rng(0)
    if labels is None:
        field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (1, 3, 3))
        labels = ((field > 0.15) * 255).astype(np.uint8)
    if raw is None:
        raw = (np.clip(0.3 + 0.4 * (labels > 0) + 0.1 * rng.standard_normal(labels.shape), 0, 1) * 255).astype(np.uint8)
    urls = []
    for name, arr in (("raw", raw), ("labels", labels)):
        v = create_volume(f"{root}/data.zarr/{name}", shape=arr.shape, dtype=arr.dtype, chunks=(4, 16, 16))
        v.write(Box((0, 0, 0), arr.shape), arr)
        urls.append(v.url)
    return urls[0], urls[1]


def _cfg(root: Path, **over: Any) -> TrainConfig:
    raw, labels = _volumes(root)
    data: dict[str, Any] = {
        "model": {"filters": [4, 8, 8], "anisotropic_stages": 1},
        "data": {"raw": raw, "labels": labels, "roi": {"start": [0, 0, 0], "stop": [8, 48, 48]}},
        "crop": [4, 32, 32],
        "batch_size": 2,
        "steps": 6,
        "checkpoint_every": 3,
        "log_every": 1,
        "output": str(root / "run"),
        "progress": False,
        "augment": {"elastic": 0.5, "misalign": 0.5, "blur": 0.5},
        "optimizer": {"schedule": "cosine"},
    }
    data.update(over)
    return parse_config(TrainConfig, data)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- targets ---------------------------------------------------------------------------------------------


def test_affinity_and_polarity_targets() -> None:
    lab = np.array([[[1, 1, 2, 2, 0]], [[1, 1, 1, 2, 0]]])
    known = np.ones(lab.shape, bool)
    t, w = affinity_target(lab, known, [[1, 0, 0], [0, 0, 1]], widen=False)
    # z: voxel (1, 0, x) against (0, 0, x); nothing before z = 0
    assert t[0, 1, 0].tolist() == [1, 1, 0, 1, 0] and w[0, 0].sum() == 0 and w[0, 1].sum() == 5
    # x: voxel x against x - 1
    assert t[1, 0, 0].tolist() == [0, 1, 0, 1, 0] and w[1, :, 0, 0].sum() == 0
    # unknown voxels weigh 0 on both sides of a pair
    known[0, 0, 2] = False
    _, w2 = affinity_target(lab, known, [[0, 0, 1]], widen=False)
    assert w2[0, 0, 0].tolist() == [0, 1, 0, 0, 1]
    pol, pw = polarity_target(np.array([[[0, 1, 2, 3]]]), np.ones((1, 1, 4), bool), [1], [2, 3])
    assert pol[:, 0, 0].tolist() == [[0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1]] and pw.shape == (3, 1, 1, 4)


# -- augmentation ------------------------------------------------------------------------------------------


def _aug_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.random.default_rng(3).integers(0, 50, (6, 16, 16)).astype(np.uint16)
    return (labels / 50.0).astype(np.float32), labels, np.ones(labels.shape, bool)


@pytest.mark.parametrize("seed", range(8))
def test_geometric_augmentations_move_image_and_labels_alike(seed: int) -> None:
    image, labels, known = _aug_inputs()
    cfg = AugmentConfig.model_validate({**NO_AUG, "flip": True, "transpose": True, "rot90": True, "misalign": 1.0, "misalign_max": 3})
    a, b, k = augment(image, labels, known, cfg, np.random.default_rng(seed))
    assert a.shape == b.shape == k.shape == labels.shape
    # wherever the labels are known, the image still encodes the same label value
    np.testing.assert_array_equal(np.round(a[k] * 50).astype(np.uint16), b[k])
    assert k.sum() > 0.5 * k.size
    # and something did move
    assert not np.array_equal(b, labels) or not np.array_equal(a, image)


def test_elastic_warps_image_and_labels_together() -> None:
    labels = np.zeros((2, 64, 64), np.uint8)
    labels[:, 20:44, 20:44] = 1
    image = labels.astype(np.float32)
    cfg = AugmentConfig.model_validate({**NO_AUG, "elastic": 1.0, "elastic_alpha": 10.0, "elastic_sigma": 6.0})
    a, b, k = augment(image, labels, np.ones(labels.shape, bool), cfg, np.random.default_rng(0))
    assert not np.array_equal(b, labels)  # it did warp
    # the linearly interpolated image agrees with the nearest-neighbour labels up to a voxel at borders
    assert np.mean((a[k] > 0.5) == (b[k] > 0)) > 0.98
    assert set(np.unique(b)) <= {0, 1}


def test_photometric_augmentations_touch_only_the_image() -> None:
    image, labels, known = _aug_inputs()
    cfg = AugmentConfig.model_validate({**NO_AUG, "missing_section": 1.0})
    a, b, k = augment(image, labels, known, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(b, labels)
    assert k.all()
    changed = [z for z in range(6) if not np.array_equal(a[z], image[z])]
    assert len(changed) == 1 and np.ptp(a[changed[0]]) == 0  # one section, blanked to a constant
    for name in ("intensity", "noise", "blur"):
        cfg = AugmentConfig.model_validate({**NO_AUG, name: 1.0})
        a, b, k = augment(image, labels, known, cfg, np.random.default_rng(2))
        np.testing.assert_array_equal(b, labels)
        assert k.all() and not np.array_equal(a, image), name
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_augment_and_the_semi_perturbation_share_one_photometric_chain() -> None:
    from engine.learn.augment import blur, intensity, noise
    from engine.learn.config import SemiConfig
    from engine.learn.semi import perturb

    image = _aug_inputs()[0]

    def reference(rng: np.random.Generator, p: float) -> np.ndarray:  # intensity, blur, noise: a uniform draw each, then the step's own
        out = image
        if rng.random() < p:
            out = intensity(out, rng)
        if rng.random() < p:
            out = blur(out, rng, 1.5)
        if rng.random() < p:
            out = noise(out, rng, 0.05)
        return out

    for p in (0.0, 0.5, 1.0):
        cfg = AugmentConfig.model_validate({**NO_AUG, "intensity": p, "blur": p, "noise": p, "blur_sigma": 1.5, "noise_sigma": 0.05})
        rng = np.random.default_rng(7)
        rng.random(2)  # augment draws for elastic and misalign first
        np.testing.assert_array_equal(augment(image, image, image > 0, cfg, np.random.default_rng(7))[0], reference(rng, p))
        semi = SemiConfig(perturb_intensity=p, perturb_blur=p, perturb_noise=p, blur_sigma=1.5, noise_sigma=0.05)
        np.testing.assert_array_equal(perturb(image, semi, np.random.default_rng(7)), reference(np.random.default_rng(7), p))


# -- sampling ----------------------------------------------------------------------------------------------


def test_crops_come_only_from_labelled_boxes(tmp_path: Path) -> None:
    inside = np.zeros(SHAPE, np.uint8)
    boxes = [Box((0, 0, 0), (6, 24, 24)), Box((4, 30, 10), (12, 48, 48)), Box((10, 0, 30), (12, 20, 48))]  # the last is thinner than the crop in z
    for b in boxes:
        inside[b.to_slices()] = 1
    raw, labels = _volumes(tmp_path, labels=inside * 255, raw=inside * 200)
    (tmp_path / "boxes.json").write_text(json.dumps([b.to_dict() for b in boxes]))
    cfg = parse_config(TrainConfig, {"data": {"raw": raw, "labels": labels, "boxes": str(tmp_path / "boxes.json")}, "crop": [4, 16, 16], "output": str(tmp_path / "o")})
    sampler = CropSampler(cfg)
    rng = np.random.default_rng(0)
    seen_thin = False
    for _ in range(60):
        image, lab, known = sampler.draw(rng)
        assert image.shape == (4, 16, 16) and known.any()
        # known voxels are exactly those inside a labelled box ...
        np.testing.assert_array_equal(known, lab > 0)
        # ... and the raw there is inside a box too
        assert np.all(image[known] > 0.7)
        seen_thin |= not known.all()
    assert seen_thin  # crops around the thin box reach beyond it, with those voxels unknown


def test_empty_crops_are_rejected(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:7, 30:34, 30:34] = 255  # one small object
    raw, lab = _volumes(tmp_path, labels=labels)
    base = {"data": {"raw": raw, "labels": lab}, "crop": [4, 16, 16], "output": str(tmp_path / "o"), "augment": NO_AUG, "sampling": {"max_tries": 200}}

    def empty_share(reject: float) -> float:
        cfg = parse_config(TrainConfig, {**base, "sampling": {"max_tries": 200, "reject_empty": reject}})
        batch = CropSampler(cfg).batch(seed=0, step=0, size=20)
        return float(np.mean([not bool((t * w).any()) for t, w in zip(batch["target"], batch["weight"], strict=True)]))

    assert empty_share(1.0) == 0.0
    assert empty_share(0.0) > 0.5
    # foreground rebalancing: the BCE weight of foreground voxels from their (low) share, clamped
    cfg = parse_config(TrainConfig, {**base, "sampling": {"max_pos_weight": 7.5}})
    assert CropSampler(cfg).pos_weight() == 7.5


def test_batches_are_a_function_of_seed_step_and_rank(tmp_path: Path) -> None:
    sampler = CropSampler(_cfg(tmp_path))
    a, b = sampler.batch(0, 5), sampler.batch(0, 5)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["raw"], sampler.batch(0, 5, rank=1)["raw"])
    assert a["raw"].shape == (2, 1, 4, 32, 32) and a["target"].shape == a["weight"].shape == (2, 1, 4, 32, 32)


# -- the loop ------------------------------------------------------------------------------------------------


def test_training_writes_checkpoints_logs_and_plots(tmp_path: Path) -> None:
    raw_url = f"{tmp_path}/data.zarr/raw"
    cfg = _cfg(tmp_path, validation={"raw": raw_url, "labels": f"{tmp_path}/data.zarr/labels", "roi": {"start": [8, 0, 0], "stop": [12, 48, 48]}, "every": 3})
    summary = train(cfg)
    assert summary["step"] == 6
    out = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(out)] == [3, 6]
    meta = json.loads((out / "checkpoints/step-000006/config.json").read_text())
    assert meta["step"] == 6 and meta["train"]["crop"] == [4, 32, 32] and meta["model"]["filters"] == [4, 8, 8]
    opt = torch.load(out / "checkpoints/step-000006/optimizer.pt", weights_only=True)
    assert opt["step"] == 6 and "state" in opt["optimizer"]
    hist = read_history(out / "history.jsonl")
    assert [r["step"] for r in hist if "loss" in r] == [1, 2, 3, 4, 5, 6]
    val = [r for r in hist if "iou" in r]
    assert [r["step"] for r in val] == [3, 6] and all(0 <= r["iou"] <= 1 and 0 <= r["voc"] <= 1 for r in val)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(TrainConfig, out / "train.yaml") == cfg
    from engine.models import load_checkpoint

    model, mcfg, _ = load_checkpoint(out / "checkpoints/step-000006")
    assert mcfg == cfg.model and model(torch.rand(1, 1, 4, 32, 32)).shape == (1, 1, 4, 32, 32)


class _Crash(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    whole = _cfg(tmp_path, model={"filters": [4, 8, 8], "anisotropic_stages": 1, "dropout": 0.2})
    Trainer(whole).fit()
    cut = whole.model_copy(update={"output": str(tmp_path / "cut")})
    first = Trainer(cut)
    batch = first.batch_fn

    def crash_at_5(step: int, rank: int) -> dict[str, torch.Tensor]:
        if step == 4:
            raise _Crash
        return batch(step, rank)

    first.batch_fn = crash_at_5
    with pytest.raises(_Crash):
        first.fit()  # dies after the checkpoint of step 3
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [3]
    second = Trainer(cut)
    second.fit(resume=True)
    assert second.step_count == 6
    _assert_same_weights(_weights(tmp_path / "run/checkpoints/step-000006"), _weights(tmp_path / "cut/checkpoints/step-000006"))
    a = torch.load(tmp_path / "run/checkpoints/step-000006/optimizer.pt", weights_only=True)["optimizer"]["state"]
    b = torch.load(tmp_path / "cut/checkpoints/step-000006/optimizer.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # the history has each step once
    assert [r["step"] for r in read_history(tmp_path / "cut/history.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_run_started_from_another_runs_weights_starts_there_and_refuses_another_model(tmp_path: Path) -> None:
    first = _cfg(tmp_path)
    Trainer(first).fit()
    done = tmp_path / "run/checkpoints/step-000006"
    # a finished training's output folder and its checkpoint folder name the same starting weights
    for init in (tmp_path / "run", done):
        started = Trainer(_cfg(tmp_path, output=str(tmp_path / f"from-{init.name}"), init=str(init), seed=7))
        _assert_same_weights({k: v.detach() for k, v in started.model.state_dict().items()}, _weights(done))
    fresh = Trainer(_cfg(tmp_path, output=str(tmp_path / "fresh"), seed=7))
    assert any(not torch.equal(v, _weights(done)[k]) for k, v in fresh.model.state_dict().items())
    # it trains on from there: the same steps from the start weights, not from random ones
    tuned = _cfg(tmp_path, output=str(tmp_path / "tuned"), init=str(tmp_path / "run"), steps=1)
    Trainer(tuned).fit()
    after = _weights(tmp_path / "tuned/checkpoints/step-000001")
    start = _weights(done)

    def distance(w: dict[str, torch.Tensor]) -> float:
        return sum(float((w[k] - v).abs().sum()) for k, v in start.items() if v.is_floating_point())

    # one step away from the start weights: a small fraction of the distance between them and random ones
    assert 0 < distance(after) < distance(dict(fresh.model.state_dict())) / 20
    with pytest.raises(ConfigError, match=r"cannot start from .* another model .*filters"):
        Trainer(_cfg(tmp_path, output=str(tmp_path / "other"), init=str(done), model={"filters": [4, 8, 16], "anisotropic_stages": 1}))
    with pytest.raises(ConfigError, match=r"neither a checkpoint .* nor a training output"):
        Trainer(_cfg(tmp_path, output=str(tmp_path / "none"), init=str(tmp_path / "missing")))


def test_ray_train_one_worker_equals_in_process(tmp_path: Path, ray_cluster: str) -> None:
    cfg = _cfg(tmp_path)
    train(cfg)
    on_ray = cfg.model_copy(update={"output": str(tmp_path / "ray"), "ray": cfg.ray.model_copy(update={"num_workers": 1})})
    summary = train(on_ray)
    assert summary["step"] == 6
    _assert_same_weights(_weights(tmp_path / "run/checkpoints/step-000006"), _weights(tmp_path / "ray/checkpoints/step-000006"))


def test_train_config_pickles() -> None:
    cfg = parse_config(TrainConfig, {"data": {"raw": "a.zarr/raw", "labels": "a.zarr/l"}, "output": "o"})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_bad_train_configs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not match model\.head"):
        parse_config(TrainConfig, {"data": {"raw": "r", "labels": "l"}, "output": "o", "target": {"kind": "affinity"}})
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer\.learning_rate'"):
        parse_config(TrainConfig, {"data": {"raw": "r", "labels": "l"}, "output": "o", "optimizer": {"learning_rate": 1}})
    cfg = _cfg(tmp_path, crop=[4, 64, 64])
    with pytest.raises(ConfigError, match=r"crop \[4, 64, 64\] is larger than the data"):
        CropSampler(cfg)


def test_cli_bad_config_is_one_line_and_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {raw: x.zarr/raw, labels: x.zarr/l}\noutput: o\nsteps: -3\n")
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "train", str(bad)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad value for 'steps'" in lines[0], proc.stderr
    from engine.cli import main

    assert main(["train", str(bad), "--set", "steps=3", "--set", f"output={tmp_path / 'o'}"]) == 2
    # (a Ray session of earlier tests may stream its own log lines to stderr too)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("connectile")]
    assert len(err) == 1 and "no volume at" in err[0] and "x.zarr/raw" in err[0], err
    assert not (tmp_path / "o" / "checkpoints").exists()


def _old_validation_prediction(model: torch.nn.Module, raw: np.ndarray, window: tuple[int, int, int], overlap: float) -> np.ndarray:
    """What validation predicted with its own sliding window before it went through engine/infer (kept
    here as the reference): whole sections for a 2D / 2.5D model (the model's own folding, edge sections
    repeated), else Gaussian-blended windows (sigma window / 8, weights floored at 1e-4), the last
    window flush with the end."""
    x = torch.from_numpy(raw)[None, None]
    with torch.no_grad():
        if model.config.dims == 2:  # type: ignore[union-attr]
            return torch.sigmoid(model(x))[0].numpy()
        win = tuple(min(w, n) for w, n in zip(window, raw.shape, strict=True))
        axes = [torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - (n - 1) / 2) / (n / 8)) ** 2) for n in win]
        weight = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).clamp_min(1e-4)

        def starts(size: int, w: int) -> list[int]:
            s = list(range(0, max(1, size - w + 1), max(1, int(w * (1 - overlap)))))
            return [*s, size - w] if s[-1] + w < size else s

        acc, norm = None, torch.zeros(raw.shape)
        for z in starts(raw.shape[0], win[0]):
            for y in starts(raw.shape[1], win[1]):
                for xx in starts(raw.shape[2], win[2]):
                    sl = (slice(z, z + win[0]), slice(y, y + win[1]), slice(xx, xx + win[2]))
                    prob = torch.sigmoid(model(x[(0, 0, *sl)][None, None]))[0]
                    acc = torch.zeros((prob.shape[0], *raw.shape)) if acc is None else acc
                    acc[(slice(None), *sl)] += prob * weight
                    norm[sl] += weight
        assert acc is not None
        return (acc / norm).numpy()


@pytest.mark.parametrize(
    ("model", "shape", "window", "overlap"),
    [
        ({"dims": 2, "filters": [4, 8, 8]}, (5, 32, 48), (1, 32, 32), 0.25),
        ({"dims": 2, "filters": [4, 8, 8], "input_stride": 2}, (5, 32, 64), (1, 32, 32), 0.25),
        ({"dims": 2, "context_slices": 1, "filters": [4, 8, 8]}, (6, 32, 48), (3, 32, 32), 0.25),
        ({"dims": 2, "context_slices": 2, "filters": [4, 8], "head": "polarity"}, (7, 30, 38), (5, 16, 16), 0.5),
        ({"filters": [4, 8, 8], "anisotropic_stages": 1}, (12, 40, 44), (4, 16, 16), 0.25),
        ({"filters": [4, 8, 8], "anisotropic_stages": 1}, (12, 40, 44), (4, 16, 16), 0.5),
        ({"filters": [4, 8], "anisotropic_stages": 1, "head": "affinity", "affinity_offsets": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, (9, 33, 35), (4, 16, 16), 0.25),
        ({"filters": [4, 8], "anisotropic_stages": 1}, (6, 20, 20), (8, 32, 32), 0.25),  # window larger than the volume
    ],
)
def test_validation_prediction_through_engine_infer_equals_the_old_sliding_window(
    model: dict[str, Any], shape: tuple[int, int, int], window: tuple[int, int, int], overlap: float
) -> None:
    """Validation predicts through engine/infer (the code `connectile predict` runs); its probabilities
    are those of the sliding window it had before, to float rounding, for 2D, 2.5D and 3D models."""
    from engine.learn.validate import predict_volume
    from engine.models import ModelConfig, build_model

    torch.manual_seed(1)
    net = build_model(ModelConfig(**model))
    for m in net.modules():  # non-trivial batch-norm statistics (the infer path folds them)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net.train()
    raw = np.random.default_rng(2).random(shape, dtype=np.float32)
    got = predict_volume(net, raw, window=window, overlap=overlap)
    assert net.training  # left as it was
    want = _old_validation_prediction(net.eval(), raw, window, overlap)
    assert got.shape == want.shape == (net.config.out_channels, *shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
