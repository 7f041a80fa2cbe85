"""Models: shapes, anisotropy and receptive field, SE, 2D/2.5D on volumes, heads, checkpoints, encoder."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError, StorageError
from engine.models import ModelConfig, PatchEncoder, build_model, load_checkpoint, save_checkpoint
from engine.models.blocks import SqueezeExcitation
from engine.models.unet import fold_sections

TINY = [4, 8, 8]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: faster than two on this shared 2-core machine (no spinning against other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _z_dependence(model: torch.nn.Module, shape: tuple[int, ...], z: int) -> list[int]:
    """The input sections that the output at (z, centre) depends on (non-zero gradient)."""
    x = torch.rand(1, 1, *shape, requires_grad=True)
    out = model(x)
    out[0, 0, z, shape[1] // 2, shape[2] // 2].backward()
    assert x.grad is not None
    per_z = x.grad.abs().sum(dim=(0, 1, 3, 4))
    return [i for i in range(shape[0]) if per_z[i] > 0]


def test_default_config_is_the_papers_base_model() -> None:
    cfg = ModelConfig()
    assert cfg.filters == [28, 36, 48, 64, 80] and cfg.out_channels == 1
    # three anisotropic levels: (1,2,2) pooling after each of them, then (2,2,2)
    assert cfg.pooling() == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert build_model(cfg).divisor == (2, 16, 16)
    assert ModelConfig(anisotropic_stages=0).divisor() == (16, 16, 16)
    assert ModelConfig(dims=2).divisor() == (1, 16, 16)


@pytest.mark.parametrize(
    ("head", "offsets", "channels"),
    [("mask", None, 1), ("polarity", None, 3), ("affinity", None, 3), ("affinity", [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 4], [0, 4, 0]], 5)],
)
def test_heads_channel_counts(head: str, offsets: list[list[int]] | None, channels: int) -> None:
    kw = {"affinity_offsets": offsets} if offsets else {}
    cfg = ModelConfig(filters=TINY, head=head, **kw)  # type: ignore[arg-type]
    assert cfg.out_channels == channels
    out = build_model(cfg)(torch.rand(2, 1, 8, 32, 32))
    assert out.shape == (2, channels, 8, 32, 32) and out.dtype == torch.float32


def test_bad_model_configs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="out_channels 2 does not match head 'mask'"):
        ModelConfig(out_channels=2)
    with pytest.raises(ValueError, match="affinity_offsets"):
        ModelConfig(head="affinity", affinity_offsets=[[0, 0, 0]])
    with pytest.raises(ValueError, match="needs dims: 2"):
        ModelConfig(context_slices=1)


@pytest.mark.parametrize(("aniso", "shape", "pooled"), [(3, (8, 32, 32), (8, 8, 8)), (1, (8, 32, 32), (4, 8, 8)), (0, (8, 32, 32), (2, 8, 8))])
def test_anisotropic_pooling_shapes(aniso: int, shape: tuple[int, int, int], pooled: tuple[int, int, int]) -> None:
    cfg = ModelConfig(filters=TINY, anisotropic_stages=aniso)
    feats = build_model(cfg).encoder(torch.rand(1, 1, *shape))
    assert [tuple(f.shape[1:2]) for f in feats] == [(4,), (8,), (8,)]
    assert tuple(feats[-1].shape[2:]) == pooled
    assert tuple(feats[0].shape[2:]) == shape


def test_output_size_equals_input_size_also_when_not_divisible() -> None:
    model = build_model(ModelConfig(filters=TINY, anisotropic_stages=0)).eval()
    for shape in [(8, 32, 32), (5, 21, 30), (1, 4, 4)]:
        assert model(torch.rand(1, 1, *shape)).shape[2:] == shape


def test_receptive_field_in_z_follows_anisotropy() -> None:
    torch.manual_seed(0)
    # all levels anisotropic: every convolution and pooling is in-plane, z never mixes (squeeze-excitation
    # pools globally, over z too, so it is switched off here)
    flat = build_model(ModelConfig(filters=TINY, anisotropic_stages=3, se=False)).eval()
    assert _z_dependence(flat, (8, 32, 32), 4) == [4]
    with_se = build_model(ModelConfig(filters=TINY, anisotropic_stages=3)).eval()
    assert _z_dependence(with_se, (8, 32, 32), 4) == list(range(8))
    # isotropic: the output sees neighbouring sections (3 levels of 3x3x3 convolutions see beyond +-2)
    iso = build_model(ModelConfig(filters=TINY, anisotropic_stages=0, se=False)).eval()
    dep = _z_dependence(iso, (8, 32, 32), 4)
    assert dep[0] <= 2 and dep[-1] >= 6
    # 2.5D with 1 context section on each side sees exactly z-1..z+1
    ctx = build_model(ModelConfig(dims=2, filters=TINY, context_slices=1)).eval()
    assert _z_dependence(ctx, (8, 32, 32), 4) == [3, 4, 5]
    assert _z_dependence(ctx, (8, 32, 32), 0) == [0, 1]  # the end section is repeated


def test_squeeze_excitation_gates_channels() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=4)
    x = torch.rand(2, 8, 3, 4, 4)
    y = se(x)
    ratio = y / x  # one gate in (0, 1) per sample and channel, constant over space
    assert torch.allclose(ratio, ratio[..., :1, :1, :1].expand_as(ratio), atol=1e-6)
    assert bool((ratio > 0).all() and (ratio < 1).all())
    assert se.fc1.out_features == 2


def test_2d_model_on_volume_equals_per_section_application() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(dims=2, filters=TINY)).eval()
    vol = torch.rand(2, 1, 5, 32, 32)
    with torch.no_grad():
        whole = model(vol)
        per = torch.stack([model(vol[:, :, z]) for z in range(5)], dim=2)
    assert whole.shape == (2, 1, 5, 32, 32)
    torch.testing.assert_close(whole, per, rtol=0, atol=1e-6)


def test_25d_stacks_neighbours_as_channels() -> None:
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2)
    folded = fold_sections(x, 1)
    assert folded.shape == (4, 3, 2, 2)
    assert folded[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    torch.manual_seed(0)
    model = build_model(ModelConfig(dims=2, filters=TINY, context_slices=1)).eval()
    vol = torch.rand(1, 1, 4, 16, 16)
    with torch.no_grad():
        centre = model(torch.cat([vol[:, :, 1], vol[:, :, 2], vol[:, :, 3]], dim=1))
        torch.testing.assert_close(model(vol)[:, :, 2], centre, rtol=0, atol=1e-6)


def test_checkpoint_round_trip_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(filters=TINY, head="polarity", norm="batch")
    model = build_model(cfg)
    model.train()
    model(torch.rand(2, 1, 4, 16, 16))  # move the BatchNorm running statistics off their defaults
    save_checkpoint(tmp_path / "ck", model, cfg, {"step": 7, "note": "x"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded, cfg2, extra = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and extra == {"step": 7, "note": "x"}
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    x = torch.rand(1, 1, 4, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent")
    cfg = ModelConfig(filters=TINY)
    save_checkpoint(tmp_path / "ck", build_model(cfg), cfg)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["model"]["filters"] = [4, 8, 16]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="do not match the model config") as err:
        load_checkpoint(tmp_path / "ck")
    assert "\n" not in str(err.value)
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(StorageError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(StorageError, match="corrupt"):
        load_checkpoint(tmp_path / "ck")


def test_average_checkpoints_mixes_every_float_and_keeps_the_tuned_counters(tmp_path: Path) -> None:
    from engine.models.checkpoint import average_checkpoints

    torch.manual_seed(0)
    cfg = ModelConfig(filters=TINY, norm="batch")
    old, new = build_model(cfg), build_model(cfg)
    new.train()
    new(torch.rand(2, 1, 4, 16, 16))  # running statistics and batch counters of the tuned model move
    save_checkpoint(tmp_path / "old", old, cfg, {"step": 1})
    save_checkpoint(tmp_path / "new", new, cfg, {"step": 9})
    (tmp_path / "new" / "optimizer.pt").write_bytes(b"state")
    out = average_checkpoints(tmp_path / "old", tmp_path / "new", 0.25, tmp_path / "avg" / "step-000009")
    got, cfg2, extra = load_checkpoint(out)
    assert cfg2 == cfg and extra == {"step": 9} and (Path(out) / "optimizer.pt").read_bytes() == b"state"
    a, b, g = old.state_dict(), new.state_dict(), got.state_dict()
    ints = [k for k in b if not b[k].is_floating_point()]
    assert ints and all(torch.equal(g[k], b[k]) and not torch.equal(a[k], b[k]) for k in ints)
    moved = 0
    for k in b:
        if b[k].is_floating_point():
            torch.testing.assert_close(g[k], 0.25 * b[k] + 0.75 * a[k], rtol=0, atol=1e-6)
            moved += int(not torch.equal(a[k], b[k]))
    assert moved > 0
    # share 1 is the tuned model itself
    same = load_checkpoint(average_checkpoints(tmp_path / "old", tmp_path / "new", 1.0, tmp_path / "one"))[0].state_dict()
    assert all(torch.equal(same[k], b[k]) for k in b)
    other = ModelConfig(filters=[4, 8, 16])
    save_checkpoint(tmp_path / "other", build_model(other), other)
    with pytest.raises(ConfigError, match="other models") as err:
        average_checkpoints(tmp_path / "old", tmp_path / "other", 0.5, tmp_path / "bad")
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="outside"):
        average_checkpoints(tmp_path / "old", tmp_path / "new", 0.0, tmp_path / "bad")


def test_patch_encoder_shares_the_unets_encoder() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(filters=TINY)
    enc = PatchEncoder(cfg).eval()
    assert enc.out_dim == 8
    x = torch.rand(3, 1, 8, 32, 32)
    assert enc(x).shape == (3, 8)
    unet = build_model(cfg).eval()
    unet.encoder.load_state_dict(enc.encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(enc(x), unet.encoder(x)[-1].mean(dim=(2, 3, 4)))
    enc2d = PatchEncoder(ModelConfig(dims=2, filters=TINY)).eval()
    assert enc2d(x).shape == (3, 8)


def test_model_and_config_pickle_round_trip() -> None:
    cfg = ModelConfig(filters=TINY, head="affinity")
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    model = build_model(cfg)
    again = pickle.loads(pickle.dumps(model))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_strided_input_convolution_keeps_the_output_size() -> None:
    for dims, shape in ((2, (2, 1, 32, 32)), (3, (1, 1, 4, 32, 32))):
        cfg = ModelConfig(dims=dims, filters=TINY, input_stride=2)  # type: ignore[arg-type]
        model = build_model(cfg).eval()
        assert model.divisor == (1, 8, 8)  # anisotropic by default: no z pooling in 3 levels
        feats = model.encoder(torch.rand(*shape))
        assert tuple(feats[0].shape[-2:]) == (16, 16)  # the first level runs at half resolution in-plane
        assert model(torch.rand(*shape)).shape == (shape[0], 1, *shape[2:])
    with pytest.raises(ValueError, match="input_stride"):
        ModelConfig(input_stride=3)
