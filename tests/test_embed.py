"""SimSiam training of the patch encoder and blockwise embedding (serial and Ray, equal to embedding
each patch alone), then selection on the result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.learn.simsiam import (
    PERTURBATIONS,
    SimSiam,
    SimSiamConfig,
    load_encoder,
    perturb,
    simsiam_distance,
    train_simsiam,
)
from engine.models.config import ModelConfig
from engine.models.encoder import PatchEncoder
from engine.select.embeddings import load_embeddings
from engine.storage import create_volume

TINY = {"filters": [4, 8], "anisotropic_stages": 1}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small blobby volume (uint8, 8 x 64 x 64) with stripes in one corner."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(rng.normal(size=(8, 64, 64)), (1, 2, 2))
    yy, xx = np.mgrid[:32, :32]
    vol[:, -32:, -32:] = np.sin((yy + xx) * 0.9)[None] * vol.std() * 2
    vol = np.clip((vol - vol.min()) / (vol.max() - vol.min()) * 255, 0, 255).astype(np.uint8)
    url = str(tmp_path_factory.mktemp("embed") / "d.zarr" / "raw")
    v = create_volume(url, vol.shape, "uint8", (8, 32, 32), voxel_size=(40, 4, 4))
    v.write(v.box, vol)
    return url


@pytest.fixture(scope="module")
def encoder(raw: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simsiam")
    cfg = SimSiamConfig(volume=raw, out=str(out), patch=(4, 16, 16), steps=4, batch=4, model=ModelConfig(**TINY), checkpoint_every=2,
                        projector_hidden=16, predictor_hidden=8, projector_out=8, threads=1)
    result = train_simsiam(cfg, progress=False)
    assert result["steps"] == 4 and np.isfinite(result["last_loss"])
    return out / "encoder"


def test_simsiam_loss_symmetric_with_stop_gradient() -> None:
    torch.manual_seed(0)
    p, z = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    d = simsiam_distance(p, z)
    d.backward()
    assert z.grad is None and p.grad is not None  # no gradient into the target branch
    cos = torch.nn.functional.cosine_similarity(p, z, dim=-1)
    assert torch.allclose(d, (2 - 2 * cos).mean())
    model = SimSiam(PatchEncoder(ModelConfig(**TINY)), 16, 8, 8).eval()
    x1, x2 = torch.rand(3, 1, 4, 16, 16), torch.rand(3, 1, 4, 16, 16)
    assert torch.allclose(model(x1, x2), model(x2, x1), atol=1e-6)
    with torch.no_grad():
        assert 0.0 <= float(model(x1, x2)) <= 4.0


def test_perturbations_keep_shape_and_range() -> None:
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((4, 16, 16), dtype=np.float32)
    for name in PERTURBATIONS:
        out = perturb(img, rng, [name])
        assert out.shape == img.shape and out.dtype == np.float32, name
        assert out.min() >= 0.0 and out.max() <= 1.0, name
        assert not np.array_equal(out, img) or name == "flip", name


def test_embed_train_outputs(encoder: Path) -> None:
    run = encoder.parent
    losses = json.loads((run / "loss.json").read_text())["loss"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert (run / "loss.png").stat().st_size > 0
    enc, cfg, extra = load_encoder(encoder)
    assert extra["kind"] == "patch_encoder" and extra["step"] == 4 and enc.out_dim == 8 and cfg.filters == [4, 8]


def _reference(raw: str, enc_dir: Path, patch: tuple[int, int, int], stride: tuple[int, int, int]) -> np.ndarray:
    """Every patch embedded on its own."""
    from engine.learn.sampler import to_unit
    from engine.select.patches import PatchGrid
    from engine.storage import open_volume

    vol = open_volume(raw)
    grid = PatchGrid(vol.spatial_shape, patch, stride)
    enc, _, _ = load_encoder(enc_dir)
    data = to_unit(vol.read(vol.box))
    out = []
    with torch.inference_mode():
        for pid in range(grid.size):
            box = grid.patch_box(np.unravel_index(pid, grid.shape))
            out.append(enc(torch.from_numpy(data[box.to_slices()][None, None].copy()))[0].numpy())
    return np.asarray(out)


@pytest.mark.parametrize("backend", ["serial", pytest.param("ray", marks=pytest.mark.slow)])
def test_blockwise_embedding_equals_per_patch(raw: str, encoder: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    out = tmp_path / "emb.zarr"
    args = ["embed", raw, str(out), "--encoder", str(encoder), "--patch", "4,16,16", "--stride", "2,8,8", "--block", "2,4,3",
            "--batch", "5", "--backend", backend, "--workers", "2", "--no-progress"]
    assert main(args) == 0
    grid, emb, attrs = load_embeddings(out)
    assert grid.shape == (3, 7, 7) and attrs["voxel_size"] == [40.0, 4.0, 4.0] and attrs["volume"].endswith("raw")
    ref = _reference(raw, encoder, (4, 16, 16), (2, 8, 8))
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)
    # resume: nothing left to do
    assert main(args) == 0
    if backend == "serial":  # then select on it
        assert main(["select", str(out), str(tmp_path / "sel"), "--budget", "2", "--k", "10", "--window", "1,3,3", "--no-progress"]) == 0
        doc = json.loads((tmp_path / "sel" / "selection.json").read_text())
        assert len(doc["boxes"]) == 2 and doc["boxes"][0]["stop"][1] - doc["boxes"][0]["start"][1] == 32


def test_embed_bad_input(raw: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", raw, str(tmp_path / "e.zarr"), "--encoder", str(tmp_path / "nothing"), "--patch", "4,16,16", "--stride", "2,8,8",
                 "--backend", "serial", "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["embed-train", raw, str(tmp_path / "t"), "--patch", "4,200,16", "--steps", "1", "--no-progress"]) == 2
    assert "larger than the volume" in capsys.readouterr().err


def test_encoder_training_reads_a_small_region_once_with_the_same_losses(raw: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embed stage's encoder training draws its crops from memory when the training region is small,
    from the store crop by crop when it is not: the same crops, the same losses (below ``z_stop`` either way)."""
    from engine.pipeline.stages import embed as stage
    from engine.storage import Volume

    cfg = stage.EmbedSection(input=raw, patch=(4, 16, 16), stride=(4, 16, 16), steps=3, batch_size=2, crop=(1, 32, 32),
                             model=ModelConfig(dims=2, filters=[4, 8]))
    reads: list[int] = []
    real_read = Volume.read
    monkeypatch.setattr(Volume, "read", lambda self, box, *a, **k: reads.append(1) or real_read(self, box, *a, **k))
    cached = stage.train_encoder(raw, str(tmp_path / "a"), cfg, z_stop=6)
    n_cached = len(reads)
    monkeypatch.setattr(stage, "CACHE_BYTES", 0)
    per_crop = stage.train_encoder(raw, str(tmp_path / "b"), cfg, z_stop=6)
    assert cached == per_crop and len(cached) == 3
    assert n_cached == 1 and len(reads) - n_cached == 3 * 2 * 1  # one read of the region vs one per crop (steps x batch)


def test_command_and_pipeline_stage_share_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """Issue 15: ``connectile embed``, the pipeline's ``embed`` stage and :func:`embed_volume` take one
    declaration of the embedding's settings (:class:`~engine.params.EmbedParams`): the same defaults (the
    stage had a fixed 8,64,64 patch every 8,16,16; now both take the paper's by voxel size), the same bytes."""
    import argparse
    import inspect

    from engine.commands import embed as command
    from engine.commands._flags import flag
    from engine.ops.embed import embed_volume
    from engine.params import EmbedParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.embed import EmbedSection, EmbedStage

    defaults = EmbedParams().settings()
    assert EmbedSection(input="x").settings() == defaults
    sig = inspect.signature(embed_volume).parameters
    assert {k: sig[k].default for k in defaults if k in sig} == {k: defaults[k] for k in defaults if k in sig} and len(sig) > 4
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["embed"].format_help() for name in defaults)
    rng = np.random.default_rng(5)
    url = str(tmp_path / "d.zarr" / "raw")
    v = create_volume(url, (18, 200, 200), "uint8", (18, 100, 100), voxel_size=(40, 4, 4))  # anisotropic: 18,160,160 every 8,40,40
    v.write(v.box, rng.integers(0, 255, v.spatial_shape, dtype=np.uint8))
    ctx = StageContext(run_dir=tmp_path / "run", stage="embed", runtime=RuntimeSection(backend="serial", progress=False))
    section = EmbedSection(input=url, steps=0, model=ModelConfig(dims=2, **TINY))
    out = EmbedStage().run(ctx, section)["embeddings"]
    cli = tmp_path / "cli.zarr"
    assert main(["embed", url, str(cli), "--encoder", str(ctx.dir / "encoder"), "--backend", "serial", "--no-progress"]) == 0
    (grid_a, a, _), (grid_b, b, _) = load_embeddings(cli), load_embeddings(out)
    assert grid_a == grid_b and grid_a.patch == (18, 160, 160) and grid_a.stride == (8, 40, 40) and grid_a.shape == (1, 2, 2)
    assert a.dtype == b.dtype == np.float32 and float(np.abs(a).sum()) > 0
    np.testing.assert_array_equal(a, b)


def test_embed_train_command_and_train_simsiam_share_the_settings(raw: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15: ``connectile embed-train``'s flags are generated from :class:`~engine.params.SimSiamParams`,
    the settings of :class:`SimSiamConfig` (the same defaults, every setting a flag); flags given win over
    ``--config`` and ``--set``; the command trains what :func:`train_simsiam` trains from the same settings."""
    import argparse

    from engine.commands import embed_train as command
    from engine.commands._flags import flag
    from engine.params import SimSiamParams

    defaults = SimSiamParams().settings()
    assert SimSiamConfig(volume="v", out="o").settings() == defaults and defaults["steps"] == 2000 and defaults["batch"] == 8
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["embed-train"].format_help() for name in defaults)
    (tmp_path / "c.yaml").write_text("steps: 7\nbatch: 2\nprojector_hidden: 16\nthreads: 1\n")
    cli = tmp_path / "cli"
    args = ["embed-train", raw, str(cli), "--config", str(tmp_path / "c.yaml"), "--set", "model.filters=[4,8]", "--set", "model.anisotropic_stages=1",
            "--set", "steps=5", "--steps", "2", "--batch", "4", "--patch", "4,16,16", "--predictor-hidden", "8", "--projector-out", "8",
            "--perturbations", "noise,flip", "--optimizer", "adam", "--lr", "0.001", "--no-progress"]
    assert main(args) == 0
    cfg = SimSiamConfig(volume=raw, out=str(tmp_path / "api"), patch=(4, 16, 16), steps=2, batch=4, model=ModelConfig(**TINY), projector_hidden=16,
                        predictor_hidden=8, projector_out=8, threads=1, perturbations=["noise", "flip"], optimizer="adam", lr=0.001)
    train_simsiam(cfg, progress=False)
    loss = [json.loads((d / "loss.json").read_text())["loss"] for d in (cli, tmp_path / "api")]
    assert len(loss[0]) == 2 and loss[0] == loss[1]
    capsys.readouterr()
    assert main(["embed-train", raw, str(tmp_path / "bad"), "--patch", "4,16", "--no-progress"]) == 2
    assert "--patch must be three comma-separated numbers z,y,x, got '4,16'" in capsys.readouterr().err
    assert main(["embed-train", raw, str(tmp_path / "bad"), "--perturbations", "noise,wobble", "--no-progress"]) == 2
    assert "--perturbations" in capsys.readouterr().err and not (tmp_path / "bad").exists()
