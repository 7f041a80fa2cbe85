"""Supervised local contrastive learning: the loss against a direct implementation of the formula (with
stride and 3D tiles), one tile == the full loss, the decoder-feature hook, NT-Xent against its formula,
and pretraining -> fine-tuning through `train`."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import parse_config
from engine.errors import ConfigError
from engine.learn import TrainConfig, train
from engine.learn.contrastive import (
    EmbeddingNet,
    contrast_labels,
    decoder_features,
    load_pretrained,
    local_contrastive_loss,
)
from engine.learn.semi import build_trainer
from engine.learn.simclr import nt_xent
from engine.models import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _cfg, _weights

torch.set_num_threads(1)


def _direct(views: list[torch.Tensor], labels: torch.Tensor, tau: float, stride: tuple[int, int, int], block: tuple[int, int, int] | None, background: bool = False) -> float:
    """The formula written out with Python loops, in float64."""
    b, zs, ys, xs = labels.shape
    per_tile = []
    for s in range(b):
        tiles: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        for z, y, x in itertools.product(range(0, zs, stride[0]), range(0, ys, stride[1]), range(0, xs, stride[2])):
            key = (0, 0, 0) if block is None else (z // block[0], y // block[1], x // block[2])
            tiles.setdefault(key, []).append((z, y, x))
        for voxels in tiles.values():
            pts = [(v[s, :, z, y, x].double(), int(labels[s, z, y, x])) for v in views for z, y, x in voxels]
            pts = [p for p in pts if p[1] >= 0]
            losses = []
            for i, (zi, li) in enumerate(pts):
                if li == 0 and not background:
                    continue
                positives = [j for j, (_, lj) in enumerate(pts) if j != i and lj == li]
                if not positives:
                    continue
                denom = sum(math.exp(float(zi @ za) / tau) for a, (za, _) in enumerate(pts) if a != i)
                losses.append(-sum(math.log(math.exp(float(zi @ pts[p][0]) / tau) / denom) for p in positives) / len(positives))
            if losses:
                per_tile.append(sum(losses) / len(losses))
    return sum(per_tile) / len(per_tile)


def _inputs(seed: int, shape: tuple[int, int, int] = (3, 6, 6)) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [F.normalize(torch.randn(2, 5, *shape, generator=g, dtype=torch.float64), dim=1) for _ in range(2)]
    labels = torch.randint(-1, 3, (2, *shape), generator=g)
    labels[1, :, :3, :3] = 0  # a tile of background only: skipped (no anchors)
    return views, labels


@pytest.mark.parametrize(
    ("stride", "block", "tau", "background"),
    [((1, 1, 1), None, 0.1, False), ((1, 2, 2), None, 0.5, False), ((1, 1, 1), (2, 3, 3), 0.1, False), ((2, 2, 1), (2, 4, 3), 0.7, True)],
)
def test_local_contrastive_loss_equals_the_formula(stride: tuple[int, int, int], block: tuple[int, int, int] | None, tau: float, background: bool) -> None:
    views, labels = _inputs(1)
    got = local_contrastive_loss(views, labels, tau, stride, block, background)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_direct(views, labels, tau, stride, block, background), rel=1e-9)


@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2), (2, 3, 2)])
def test_one_block_covering_everything_is_the_full_loss(stride: tuple[int, int, int]) -> None:
    views, labels = _inputs(2)
    full = local_contrastive_loss(views, labels, 0.1, stride, None)
    for block in ((3, 6, 6), (8, 100, 7)):
        assert float(local_contrastive_loss(views, labels, 0.1, stride, block)) == pytest.approx(float(full), rel=1e-12)
    assert float(local_contrastive_loss(views, labels, 0.1, stride, (1, 3, 3))) != pytest.approx(float(full), rel=1e-3)  # tiles do change it


def test_contrastive_loss_pulls_same_labels_together() -> None:
    labels = torch.tensor([[[[1, 1, 2, 2]]]])
    apart = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).reshape(1, 2, 1, 1, 4)  # same label, same vector
    mixed = apart[..., [0, 2, 1, 3]]
    assert float(local_contrastive_loss([apart], labels, 0.1)) < float(local_contrastive_loss([mixed], labels, 0.1))
    nothing = torch.zeros(1, 1, 1, 4, dtype=torch.long)  # background only: no anchors, a zero with a graph
    emb = F.normalize(torch.randn(1, 3, 1, 1, 4, requires_grad=True), dim=1)
    zero = local_contrastive_loss([emb], nothing, 0.1)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_decoder_features_are_what_the_head_sees() -> None:
    for cfg in (ModelConfig(filters=[4, 8, 8], anisotropic_stages=1), ModelConfig(dims=2, filters=[4, 8], context_slices=1)):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        x = torch.rand(2, 1, 4, 16, 16)
        feats = decoder_features(model, x)
        assert feats.shape == (2, cfg.filters[0], 4, 16, 16)
        head = model.head(feats) if cfg.dims == 3 else model.head(feats.permute(0, 2, 1, 3, 4).reshape(8, 4, 16, 16)).reshape(2, 4, 1, 16, 16).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(head, model(x))
        emb = EmbeddingNet(model, 16)(x)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, 4, 16, 16))


def test_nt_xent_equals_its_formula() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, tau = 3, 0.5
    want = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        want += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denom)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(want / (2 * n), rel=1e-9)


def test_contrast_labels(tmp_path: Path) -> None:
    base = _cfg(tmp_path).model_dump(mode="json")
    labels = np.array([[[0, 255, 7]]], np.uint8)
    known = np.array([[[True, True, False]]])
    cfg = parse_config(TrainConfig, {**base, "contrastive": {}})
    assert contrast_labels(labels, known, cfg).tolist() == [[[0, 1, -1]]]
    cfg = parse_config(TrainConfig, {**base, "contrastive": {"labels": "instances"}, "target": {"ignore_ids": [255]}})
    assert contrast_labels(labels, np.ones_like(known), cfg).tolist() == [[[0, -1, 7]]]


def test_pretraining_then_fine_tuning(tmp_path: Path) -> None:
    base = _cfg(tmp_path).model_dump(mode="json")
    base["data"]["unlabelled"] = [{"raw": base["data"]["raw"]}]
    contrastive = {"steps": 3, "stride": [1, 2, 2], "block": [2, 16, 16], "simclr": {"steps": 2, "batch_size": 2, "hidden": 16, "dim": 8}}
    cfg = parse_config(TrainConfig, {**base, "steps": 2, "checkpoint_every": 2, "contrastive": contrastive})
    with pytest.raises(ConfigError, match="no contrastive pretraining weights"):
        build_trainer(cfg)
    summary = train(cfg)
    assert summary["step"] == 2
    pre = tmp_path / "run/pretrain"
    record = json.loads((pre / "loss.json").read_text())
    assert len(record["simclr"]) == 2 and len(record["contrastive"]) == 3 and all(math.isfinite(v) for v in record["contrastive"])
    assert (pre / "loss.png").read_bytes()[:4] == b"\x89PNG"
    start = _weights(pre)
    torch.manual_seed(cfg.seed)
    fresh = build_model(cfg.model).state_dict()
    assert not torch.equal(start["encoder.stem.0.weight"], fresh["encoder.stem.0.weight"])  # SimCLR moved the encoder
    assert not torch.equal(start["decoder.blocks.0.conv1.weight"], fresh["decoder.blocks.0.conv1.weight"])  # local contrastive the decoder
    trainer = build_trainer(cfg)  # fine-tuning starts from the pretrained weights
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, start[k]), k
    model = build_model(cfg.model)
    load_pretrained(model, cfg)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_contrastive_config_errors(tmp_path: Path) -> None:
    base = {"data": {"raw": "r", "labels": "l"}, "output": "o"}
    with pytest.raises(ConfigError, match=r"contrastive\.stride must be 3 positive"):
        parse_config(TrainConfig, {**base, "contrastive": {"stride": [0, 4, 4]}})
    with pytest.raises(ConfigError, match=r"contrastive\.block must be 3 positive"):
        parse_config(TrainConfig, {**base, "contrastive": {"block": [32, 32]}})
