"""Semi-supervised training by spatial mixing: axial-through masks, images and targets mixed alike, no
gradient through the stop-gradient branches (Siamese and EMA), the warm-up, shards == whole batch,
Ray Train 2 workers == 1 worker, and `connectile train` with unlabelled volumes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.config import parse_config
from engine.errors import ConfigError
from engine.learn import CropSampler, TrainConfig, train
from engine.learn.consistency import InterMixLoss, LabelledMixLoss, Teacher, UnlabelledMixLoss, ramp
from engine.learn.history import read_history
from engine.learn.losses import StepContext
from engine.learn.mixing import box_mask, inter_mask, quadrant_mask, seam_weight
from engine.learn.semi import SemiBatch, build_trainer, semi_terms
from engine.models import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _cfg, _weights

torch.set_num_threads(1)


def _semi_cfg(root: Path, semi: dict[str, Any] | None = None, **over: Any) -> TrainConfig:
    base = _cfg(root).model_dump(mode="json")
    base["data"]["unlabelled"] = [{"raw": base["data"]["raw"], "roi": {"start": [4, 0, 0], "stop": [12, 48, 48]}}]
    base["semi"] = {"box": [12, 20], **(semi or {})}
    base.update(over)
    return parse_config(TrainConfig, base)


# -- masks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_masks_are_axial_through_boxes_or_two_quadrants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = box_mask((5, 30, 40), (12, 20), rng)
    assert m.shape == (5, 30, 40) and m.dtype == np.float32
    assert (m == m[:1]).all()  # constant along z
    ys, xs = np.nonzero(m[0])
    assert ys.max() - ys.min() + 1 == 12 and xs.max() - xs.min() + 1 == 20 and m[0].sum() == 12 * 20  # one filled box
    assert (box_mask((2, 8, 8), (90, 90), rng) == 1).all()  # a box larger than the crop is clipped to it
    q = quadrant_mask((3, 10, 14), rng)
    assert (q == q[:1]).all()
    quads = [q[0, :5, :7], q[0, :5, 7:], q[0, 5:, :7], q[0, 5:, 7:]]
    assert sorted(float(a.mean()) for a in quads) == [0.0, 0.0, 1.0, 1.0]  # exactly 2 whole quadrants
    kinds = {float(inter_mask((1, 10, 10), (4, 4), 0.5, np.random.default_rng([seed, i])).sum()) for i in range(40)}
    assert kinds == {16.0, 50.0}  # boxes and quadrants both drawn at p_box 0.5


def test_images_and_targets_are_mixed_with_the_same_mask(tmp_path: Path) -> None:
    cfg = _semi_cfg(tmp_path, {"unlabelled_target": "mixed_predictions", "p_labelled_mix": 1.0})
    sampler = CropSampler(cfg)
    semi = SemiBatch(cfg, sampler)
    for index in range(3):
        it = semi.item(cfg.seed, 7, index)
        raw, target, weight = sampler.sample(np.random.default_rng([cfg.seed, 7, index, 1]))
        assert np.array_equal(it["raw"], raw) and np.array_equal(it["target"], target)
        raw2, target2, weight2 = sampler.sample(np.random.default_rng([cfg.seed, 7, index, 2]))  # the second labelled crop
        for key in ("lmix_mask", "umix_mask", "imix_mask"):
            m = it[key]
            assert m.shape == (1, 4, 32, 32) and (m == m[:, :1]).all() and 0 < m.sum() < m.size
        on = it["lmix_mask"][0] > 0
        assert not np.array_equal(raw, raw2)
        for mixed, a, b in ((it["lmix_raw"], raw, raw2), (it["lmix_target"], target, target2), (it["lmix_weight"], weight, weight2)):
            assert np.array_equal(mixed[:, on], a[:, on]) and np.array_equal(mixed[:, ~on], b[:, ~on])
        on = it["umix_mask"][0] > 0
        assert np.array_equal(it["umix_clean"][:, on], it["umix_a"][:, on]) and np.array_equal(it["umix_clean"][:, ~on], it["umix_b"][:, ~on])
        assert not np.array_equal(it["umix_pert"], it["umix_clean"])  # the perturbed view
        on = it["imix_mask"][0] > 0
        assert np.array_equal(it["imix_raw"][:, on], raw[:, on]) and np.array_equal(it["imix_raw"][:, ~on], it["imix_u"][:, ~on])
        assert np.array_equal(it["imix_target"], target) and it["lmix_on"] == 1.0


def test_affinity_mixes_drop_only_the_in_plane_pairs_split_by_the_mask(tmp_path: Path) -> None:
    base = _cfg(tmp_path).model_dump(mode="json")
    lab = np.zeros((12, 48, 48), np.uint8)
    lab[:, :, 10:30], lab[:, 30:, :] = 1, 2
    from test_train import _volumes

    raw_url, lab_url = _volumes(tmp_path / "aff", labels=lab)
    base["data"] |= {"raw": raw_url, "labels": lab_url, "unlabelled": [{"raw": raw_url}]}
    base |= {"model": {"filters": [4, 8], "anisotropic_stages": 1, "head": "affinity"}, "target": {"kind": "affinity"}, "semi": {"box": [12, 20], "p_box": 0.0}}
    cfg = parse_config(TrainConfig, base)
    sampler = CropSampler(cfg)
    it = SemiBatch(cfg, sampler).item(0, 3, 0)
    _, _, w1 = sampler.sample(np.random.default_rng([0, 3, 0, 1]))
    _, _, w2 = sampler.sample(np.random.default_rng([0, 3, 0, 2]))
    m = it["lmix_mask"][0]
    seams = seam_weight(m, cfg.model.affinity_offsets)
    assert (seams[0] == 1).all() and (seams[1:] == 0).any()  # z pairs are never split; y and x pairs at the edge are
    assert np.array_equal(it["lmix_weight"], np.where(m > 0, w1, w2) * seams)
    assert np.array_equal(it["imix_weight"], w1 * seam_weight(it["imix_mask"][0], cfg.model.affinity_offsets))


def test_warm_up_then_semi_supervised(tmp_path: Path) -> None:
    cfg = _semi_cfg(tmp_path, {"warmup_steps": 2, "rampup_steps": 2})
    semi = SemiBatch(cfg, CropSampler(cfg))
    assert set(semi(1)) == {"raw", "target", "weight"}
    assert {"lmix_raw", "umix_pert", "imix_raw"} <= set(semi(2))
    assert [ramp(s, 2, 2) for s in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    model = build_model(cfg.model)
    terms = semi_terms(cfg, None)
    assert [t.name for t in terms] == ["supervised", "labelled_mix", "unlabelled", "inter"]
    assert [t.weight for t in terms] == [1.0, 1.0, 0.2, 0.2]
    for step in (1, 3):
        batch = semi(step)
        ctx = StepContext(model=model, batch=batch, logits=model(batch["raw"]), step=step)
        values = [float(t(ctx).detach()) for t in terms[1:]]
        assert (all(v == 0 for v in values) if step == 1 else values[2] > 0)


# -- stop-gradient -------------------------------------------------------------------------------------


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("teacher", ["siamese", "ema"])
def test_no_gradient_flows_through_the_stop_gradient_branches(tmp_path: Path, teacher: str) -> None:
    cfg = _semi_cfg(tmp_path, {"teacher": teacher, "ema_decay": 0.5}, model={"filters": [4, 8], "anisotropic_stages": 1, "norm": "instance"})
    batch = SemiBatch(cfg, CropSampler(cfg))(3)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    t = Teacher(teacher, 0.5)
    ctx = StepContext(model=model, batch=batch, logits=model(batch["raw"]), step=3)
    t.update(model, 3)  # an EMA teacher: first a copy, then made different from the student
    if teacher == "ema":
        assert t.ema is not None
        with torch.no_grad():
            for p in t.ema.parameters():
                p.add_(0.05)
    net = model if teacher == "siamese" else t.ema
    assert net is not None
    with torch.no_grad():  # the targets, computed apart as constants
        target_u = torch.sigmoid(net(batch["umix_clean"]))
        target_i = torch.sigmoid(net(batch["imix_u"]))
    # unlabelled intra-mixing: gradient == that of MSE to a constant target
    got = _grads(model, UnlabelledMixLoss(1.0, t)(ctx))
    pred = torch.sigmoid(model(batch["umix_pert"]))
    want = _grads(model, (((pred - target_u) ** 2).flatten(1).mean(1) * batch["umix_on"]).mean())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    if teacher == "siamese":  # the control: the same loss *with* a gradient through the target differs
        leaky = torch.sigmoid(model(batch["umix_clean"]))
        other = _grads(model, (((torch.sigmoid(model(batch["umix_pert"])) - leaky) ** 2).flatten(1).mean(1) * batch["umix_on"]).mean())
        assert any(not torch.allclose(g, o, rtol=1e-3, atol=1e-6) for g, o in zip(got, other, strict=True))
    # inter-mixing: the unlabelled part's target is a constant too
    got = _grads(model, InterMixLoss(1.0, t)(ctx))
    m = batch["imix_mask"]
    logits = model(batch["imix_raw"])
    w_l = batch["imix_weight"] * m
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["imix_target"], reduction="none")
    sup = (bce * w_l).flatten(1).sum(1) / w_l.flatten(1).sum(1)
    cons = (((torch.sigmoid(logits) - target_i) ** 2) * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1)
    want = _grads(model, ((sup + cons) * batch["imix_on"]).mean())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    if teacher == "ema":
        assert t.ema is not None
        assert all(p.grad is None and not p.requires_grad for p in t.ema.parameters())


def test_ema_teacher_follows_the_student() -> None:
    model = build_model(ModelConfig(filters=[4, 8], anisotropic_stages=1))
    t = Teacher("ema", 0.9)
    t.update(model, 0)
    assert t.ema is not None and t.ema is not model
    first = [p.detach().clone() for p in t.ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    t.update(model, 0)  # once per step: nothing new
    assert all(torch.equal(a, b) for a, b in zip(first, t.ema.parameters(), strict=True))
    t.update(model, 1)
    for a, e, s in zip(first, t.ema.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * a + 0.1 * s)


def test_labelled_mix_loss_is_the_supervised_loss_of_the_mix(tmp_path: Path) -> None:
    cfg = _semi_cfg(tmp_path, {"p_labelled_mix": 1.0}, loss={"bce": 1.0, "dice": 0.0})
    batch = SemiBatch(cfg, CropSampler(cfg))(0)
    model = build_model(cfg.model)
    ctx = StepContext(model=model, batch=batch, logits=model(batch["raw"]), step=0)
    model.eval()  # deterministic batch norm for the comparison
    got = LabelledMixLoss(1.0, Teacher())(ctx)
    logits = model(batch["lmix_raw"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["lmix_target"], reduction="none")
    want = ((bce * batch["lmix_weight"]).flatten(1).sum(1) / batch["lmix_weight"].flatten(1).sum(1)).mean()
    torch.testing.assert_close(got, want)


class _Crash(Exception):
    pass


def test_resumed_run_with_an_ema_teacher_equals_uninterrupted(tmp_path: Path) -> None:
    whole = _semi_cfg(tmp_path, {"teacher": "ema", "ema_decay": 0.5, "warmup_steps": 1}, steps=4, checkpoint_every=2)
    build_trainer(whole).fit()
    cut = whole.model_copy(update={"output": str(tmp_path / "cut")})
    first = build_trainer(cut)
    batch = first.batch_fn

    def crash_at_3(step: int, rank: int) -> dict[str, torch.Tensor]:
        if step == 3:
            raise _Crash
        return batch(step, rank)

    first.batch_fn = crash_at_3
    with pytest.raises(_Crash):
        first.fit()  # dies after the checkpoint of step 2
    assert (tmp_path / "cut/checkpoints/step-000002/teacher.pt").is_file()
    build_trainer(cut).fit(resume=True)
    a, b = _weights(tmp_path / "run/checkpoints/step-000004"), _weights(tmp_path / "cut/checkpoints/step-000004")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = torch.load(tmp_path / "run/checkpoints/step-000004/teacher.pt", weights_only=True)
    tb = torch.load(tmp_path / "cut/checkpoints/step-000004/teacher.pt", weights_only=True)
    assert ta["step"] == tb["step"] == 3 and all(torch.equal(ta["ema"][k], tb["ema"][k]) for k in ta["ema"])


# -- data-parallel exactness ---------------------------------------------------------------------------


def _exact_cfg(root: Path, batch_size: int, **over: Any) -> TrainConfig:
    """Per-sample normalisation, a decomposable loss (BCE over fully known crops, no Dice), SGD."""
    return _semi_cfg(
        root,
        {"p_labelled_mix": 1.0},
        model={"filters": [4, 8, 8], "anisotropic_stages": 1, "norm": "instance"},
        loss={"bce": 1.0, "dice": 0.0},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0},
        batch_size=batch_size,
        **over,
    )


def test_two_shards_average_to_the_whole_batch(tmp_path: Path) -> None:
    whole, half = _exact_cfg(tmp_path / "a", 4), _exact_cfg(tmp_path / "b", 2)
    full = SemiBatch(whole, CropSampler(whole))(5)
    shards = [SemiBatch(half, CropSampler(half))(5, rank) for rank in (0, 1)]
    for k in full:  # the same samples and the same random masks on either layout
        assert torch.equal(full[k], torch.cat([s[k] for s in shards])), k
    torch.manual_seed(0)
    model = build_model(whole.model)
    terms = semi_terms(whole, CropSampler(whole).pos_weight())

    def grads(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        ctx = StepContext(model=model, batch=batch, logits=model(batch["raw"]), step=5)
        return _grads(model, sum((t.weight * t(ctx) for t in terms), torch.zeros(())))

    want = grads(full)
    got = [(a + b) / 2 for a, b in zip(grads(shards[0]), grads(shards[1]), strict=True)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_ray_train_two_workers_equal_one_worker(tmp_path: Path, ray_cluster: str) -> None:
    """One step on Ray Train with 2 CPU workers x batch 1 == one worker x batch 2 (about 60-120 s here)."""
    one = _exact_cfg(tmp_path, 2, steps=1, checkpoint_every=1)
    train(one)
    two = _exact_cfg(tmp_path, 1, steps=1, checkpoint_every=1, output=str(tmp_path / "two"), ray={"num_workers": 2})
    summary = train(two)
    assert summary["step"] == 1
    a, b = _weights(tmp_path / "run/checkpoints/step-000001"), _weights(tmp_path / "two/checkpoints/step-000001")
    torch.manual_seed(one.seed)
    start = build_model(one.model).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the step moved the weights
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a)
    assert worst[0] < 1e-6, f"largest weight difference {worst[0]:.3g} in {worst[1]}"


# -- the command and its errors -------------------------------------------------------------------------


def test_connectile_train_with_unlabelled_volumes(tmp_path: Path) -> None:
    from engine.cli import main

    cfg = _semi_cfg(tmp_path, {"warmup_steps": 2, "teacher": "ema"}, steps=4, checkpoint_every=4)
    path = tmp_path / "semi.yaml"
    path.write_text(cfg.to_yaml())
    assert main(["train", str(path), "--no-progress"]) == 0
    hist = [r for r in read_history(tmp_path / "run/history.jsonl") if "loss" in r]
    assert [r["step"] for r in hist] == [1, 2, 3, 4]
    assert all(r["unlabelled"] == r["inter"] == 0 for r in hist[:2]) and all(r["inter"] > 0 and r["unlabelled"] > 0 for r in hist[2:])
    assert (tmp_path / "run/checkpoints/step-000004/model.safetensors").is_file()


def test_semi_config_errors(tmp_path: Path) -> None:
    base = {"data": {"raw": "r", "labels": "l"}, "output": "o"}
    with pytest.raises(ConfigError, match=r"need unlabelled volumes: add data\.unlabelled"):
        parse_config(TrainConfig, {**base, "semi": {}})
    with pytest.raises(ConfigError, match=r"semi\.box must be 2 positive"):
        parse_config(TrainConfig, {**base, "semi": {"box": [3], "unlabelled": 0, "inter": 0}})
    assert parse_config(TrainConfig, {**base, "semi": {"unlabelled": 0, "inter": 0}}).semi is not None  # labelled mixing alone
    cfg = _semi_cfg(tmp_path)
    bad = cfg.model_dump(mode="json")
    bad["data"]["unlabelled"][0]["roi"] = {"start": [0, 0, 0], "stop": [99, 48, 48]}
    with pytest.raises(ConfigError, match="outside the volume"):
        SemiBatch(parse_config(TrainConfig, bad), CropSampler(cfg))
