"""Blockwise sliding-window inference: MONAI's windows and weights, known answers, blockwise == whole
volume == MONAI, serial and Ray, TTA, bounded memory, errors, CLI."""

from __future__ import annotations

import argparse
import copy
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from engine.cli import main
from engine.errors import ConfigError
from engine.geometry import BlockGrid, Box
from engine.infer import SlidingWindow, TorchPredictor, WindowGrid, aligned_write_shape, importance_map, transforms
from engine.infer.predictor import PointwiseMatmul, fold_batchnorm, pointwise_as_matmul
from engine.infer.windows import WindowOwnership
from engine.models import ModelConfig, build_model, load_checkpoint, save_checkpoint
from engine.ops.predict import PredictOp, checkpoint_digest, predict_grid, predict_volume
from engine.runtime import run_blockwise
from engine.storage import create_volume, open_volume

torch.set_num_threads(1)

# A volume that no window, stride or block divides evenly.
SHAPE = (13, 30, 37)


def _volume(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, *shape), dtype=np.float32)


def _net(seed: int = 0, out: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, out, 3, padding=1)).eval()


def _monai(vol: np.ndarray, net: torch.nn.Module, roi: tuple[int, ...], overlap: float, batch: int, mode: str = "gaussian") -> np.ndarray:
    with torch.inference_mode():
        out = sliding_window_inference(torch.from_numpy(vol)[None], roi, batch, net, overlap=overlap, mode=mode)
    assert isinstance(out, torch.Tensor)
    return out.numpy()[0]


# -- windows and weights are MONAI's ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [((13, 30, 37), (4, 8, 8), 0.5), ((13, 30, 37), (8, 16, 16), 0.25), ((64, 512, 500), (16, 128, 128), 0.5),
     ((5, 30, 37), (8, 30, 40), 0.6), ((13, 30, 37), (3, 7, 9), 0.75), ((9, 9, 9), (4, 4, 4), 0.0)],
)
def test_windows_are_monais(shape: tuple[int, int, int], roi: tuple[int, int, int], overlap: float) -> None:
    grid = WindowGrid(shape, roi, (overlap,))
    padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
    assert grid.stride == tuple(interval)
    expected = [tuple((sl.start, sl.stop) for sl in w) for w in dense_patch_slices(padded, roi, interval)]
    pad = grid.pad_before  # window boxes are in volume coordinates; MONAI's in the padded image
    mine = [tuple((s + p, e + p) for s, e, p in zip(b.start, b.stop, pad, strict=True)) for b in grid.window_boxes(Box.from_shape(shape))]
    assert mine == expected and grid.num_windows == len(expected)


@pytest.mark.parametrize("roi", [(4, 8, 8), (16, 128, 128), (5, 7, 9)])
def test_gaussian_map_is_monais_and_bump_is_smooth(roi: tuple[int, int, int]) -> None:
    assert torch.equal(importance_map(roi, "gaussian"), compute_importance_map(roi, mode="gaussian", sigma_scale=0.125))
    bump = importance_map(roi, "bump")
    assert bump.min() >= 1e-3 and torch.equal(bump, bump.flip(0, 1, 2))
    centre = tuple(r // 2 for r in roi)
    assert bump[centre] == bump.max() and bump[0, 0, 0] < bump[centre]


def test_block_windows_and_read_boxes() -> None:
    # z: 64 voxels, window 16, stride 8 -> starts 0, 8, ..., 48 (7 windows)
    w = WindowGrid((64, 512, 512), (16, 128, 128), (0.5,))
    assert w.counts == (7, 7, 7)
    # a stride-aligned write box [16, 32) is crossed by windows starting at 8, 16, 24 (one per cut beyond its own)
    assert list(w.starts_overlapping(0, 16, 32)) == [8, 16, 24]
    assert w.read_box(Box((16, 0, 0), (32, 64, 64))) == Box((8, 0, 0), (40, 128, 128))
    grid = BlockGrid(Box.from_shape((64, 512, 512)), (64, 256, 512))
    # one cut in y: one more window row there: 7 * 8 * 7 windows
    assert w.windows_computed(grid) == 7 * 8 * 7
    assert w.context_for(grid) == (0, 64, 0)
    assert aligned_write_shape(w, (64, 250, 600), (16, 128, 128)) == (64, 256, 512)


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "write"),
    [
        ((13, 30, 37), (4, 8, 8), 0.5, (4, 8, 16)),  # cuts on every axis, clamped last windows
        ((13, 30, 37), (4, 8, 8), 0.75, (2, 8, 8)),  # blocks thinner than window - stride: spill past the next block
        ((13, 30, 37), (5, 7, 11), 0.25, (6, 10, 9)),  # blocks not on the stride grid
        ((13, 30, 37), (4, 8, 8), 0.0, (4, 8, 8)),  # no overlap: only the clamped last windows cross cuts
        ((5, 30, 37), (8, 16, 40), 0.5, (2, 8, 16)),  # z and x shorter than the window (padded, one window)
        ((64, 384, 384), (16, 128, 128), 0.5, (32, 192, 192)),  # the benchmark's layout
    ],
)
def test_window_ownership_counts_each_window_once(shape: tuple[int, int, int], roi: tuple[int, int, int], overlap: float, write: tuple[int, int, int]) -> None:
    """Each window has one owner; final parts are covered by the owner's windows only; the pieces of a
    shared voxel come from exactly the blocks owning windows over it (checked by counting windows)."""
    w = WindowGrid(shape, roi, (overlap,))
    grid = BlockGrid(Box.from_shape(shape), write)
    o = WindowOwnership(w, grid)
    vol = Box.from_shape(shape)
    owned = sorted(b.start for blk in grid.blocks() for b in o.own_windows(blk.index))
    assert owned == sorted(b.start for b in w.window_boxes(vol)) and o.windows_computed == w.num_windows
    small = max(shape) <= 64
    total = np.zeros(shape, np.int32)  # windows over each voxel
    own: dict[tuple[int, ...], np.ndarray] = {}
    for blk in grid.blocks():
        acc_box = o.accumulator_box(blk.index)
        counts = np.zeros(acc_box.shape, np.int32)
        for b in o.own_windows(blk.index):
            part = b.intersect(vol)
            total[part.to_slices()] += 1
            counts[part.intersect(acc_box).to_slices(acc_box)] += 1
        own[blk.index] = counts
        assert acc_box.contains(blk.write) and (o.footprint(blk.index) is None or acc_box.contains(o.footprint(blk.index)))
    assert total.min() >= 1
    if not small:
        return
    for blk in grid.blocks():
        k, write = blk.index, blk.write
        parts = o.shared_parts(k)
        final = o.final_part(k)
        assert sum(p.size for p in parts) + final.size == write.size and all(write.contains(p) for p in [*parts, final])
        got = np.zeros(write.shape, np.int32)
        acc_box = o.accumulator_box(k)
        got[final.to_slices(write)] = own[k][final.to_slices(acc_box)]
        for j, pieces in o.sources(k):
            assert (k, pieces) in [(t, p) for t, p in o.targets(j)]  # both sides agree on the pieces
            jb = o.accumulator_box(j)
            for piece in pieces:
                assert any(p.contains(piece) for p in parts)
                got[piece.to_slices(write)] += own[j][piece.to_slices(jb)]
        np.testing.assert_array_equal(got, total[write.to_slices()], err_msg=f"block {k}")
    # one block: nothing shared
    assert not WindowOwnership(w, BlockGrid(vol, shape)).any_shared


# -- known answers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["gaussian", "bump", "constant"])
@pytest.mark.parametrize(("roi", "overlap"), [((4, 8, 8), 0.5), ((5, 7, 11), 0.25), ((3, 16, 6), 0.75), ((4, 8, 8), 0.0), ((20, 8, 40), 0.5)])
def test_known_answer_predictors(mode: str, roi: tuple[int, int, int], overlap: float) -> None:
    vol = _volume()
    for batch, (name, f) in itertools.product((1, 3, 8), [("identity", lambda x: x), ("2x", lambda x: 2 * x)]):
        sw = SlidingWindow(f, roi, overlap, mode=mode, batch_size=batch)  # type: ignore[arg-type]
        out = sw(vol)
        expected = vol if name == "identity" else 2 * vol
        assert out.shape == vol.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5, err_msg=f"{name} batch {batch}")


@pytest.mark.parametrize("reduce", ["mean", "min", "max"])
def test_tta_inverts_every_transform(reduce: str) -> None:
    vol = _volume()
    # a pointwise predictor commutes with flips and transposes: a wrong inverse would show up
    sw = SlidingWindow(lambda x: x**2, (4, 8, 8), 0.5, tta="flips-transpose", tta_reduce=reduce, batch_size=3)  # type: ignore[arg-type]
    np.testing.assert_allclose(sw(vol), vol**2, rtol=0, atol=1e-5)
    # a conv net does not: over one window the result is the reduction of the inverted outputs
    net = _net()
    roi = SHAPE
    got = SlidingWindow(net, roi, 0.5, tta="flips", tta_reduce=reduce)(vol)
    x = torch.from_numpy(vol)[None]
    with torch.no_grad():
        outs = torch.stack([tf.invert(net(tf.apply(x)))[0] for tf in transforms("flips", roi)])
    ref = {"mean": outs.mean(0), "min": outs.min(0).values, "max": outs.max(0).values}[reduce].numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert not np.allclose(got, SlidingWindow(net, roi, 0.5)(vol), atol=1e-3)


@pytest.mark.parametrize(("roi", "overlap", "batch"), [((4, 8, 8), 0.5, 3), ((8, 16, 16), 0.25, 1), ((16, 16, 16), 0.5, 2), ((4, 40, 8), 0.6, 4)])
def test_whole_volume_equals_monai(roi: tuple[int, int, int], overlap: float, batch: int) -> None:
    vol = _volume()
    net = _net()
    got = SlidingWindow(net, roi, overlap, batch_size=batch)(vol)
    np.testing.assert_allclose(got, _monai(vol, net, roi, overlap, batch), rtol=0, atol=1e-4)


def test_blocks_equal_whole_volume() -> None:
    """Any tiling (stride-aligned or not) gives the whole-volume result; accumulators are block-sized."""
    vol = _volume()
    net = _net()
    sw = SlidingWindow(net, (4, 8, 8), 0.25, batch_size=5)
    whole = sw(vol)
    grid = sw.windows(SHAPE)
    for write in [(5, 9, 13), (13, 16, 37), (2, 30, 19)]:
        out = np.full_like(whole, np.nan)
        for block in BlockGrid(Box.from_shape(SHAPE), write).blocks():
            read = grid.read_box(block.write)
            assert Box.from_shape(SHAPE).contains(read)  # no padding here: every axis is >= the window
            src = vol[(slice(None), *read.to_slices())]
            out[(slice(None), *block.write.to_slices())] = sw.infer_block(src, read, block.write, grid).numpy()
            assert sw.last_sizes["accumulator"] == (whole.shape[0] + 1) * block.write.size
            assert sw.last_sizes["source"] == read.size
        np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5, err_msg=f"blocks of {write}")


def test_predictor_paths_channels_last_and_autocast() -> None:
    """The GPU options (channels-last, bf16 autocast) on CPU: same result, and close to it in bf16."""
    vol = _volume((6, 12, 12))
    net = _net()
    base = SlidingWindow(TorchPredictor(net, activation="sigmoid"), (4, 8, 8), 0.5, batch_size=4)(vol)
    cl = SlidingWindow(TorchPredictor(net, activation="sigmoid", channels_last=True), (4, 8, 8), 0.5, batch_size=4)(vol)
    bf16 = SlidingWindow(TorchPredictor(net, activation="sigmoid", amp="bf16"), (4, 8, 8), 0.5, batch_size=4)(vol)
    np.testing.assert_allclose(cl, base, rtol=0, atol=1e-5)
    assert np.abs(bf16 - base).max() < 2e-2 and bf16.dtype == np.float32


def test_folded_batch_norms_give_the_same_probabilities() -> None:
    """The default CPU path (batch norms folded into the convolutions, channels-last) equals the plain
    eval-mode U-Net with trained-looking norm statistics, whole volume and vs MONAI on the plain model."""
    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=1, norm="batch")
    torch.manual_seed(2)
    net = build_model(cfg).eval()
    gen = torch.Generator().manual_seed(5)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for bn in norms:  # a fresh norm is the identity: give it statistics so that the fold has work to do
        c = bn.num_features
        bn.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)  # type: ignore[union-attr]
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)  # type: ignore[union-attr]
        bn.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)
    folded, n = fold_batchnorm(net)
    assert n == len(norms) > 0 and not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # the caller's model is not changed
    vol = _volume((6, 20, 20))
    plain = SlidingWindow(TorchPredictor(net, fold_norms=False), WINDOW, 0.5, batch_size=2)(vol)
    fast_predictor = TorchPredictor(net, channels_last=True)
    # the 1x1x1 convolutions (projection, head) run as matrix products on the CPU path
    assert sum(isinstance(m, PointwiseMatmul) for m in fast_predictor.model.modules()) == 3
    assert not any(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (1, 1, 1) for m in fast_predictor.model.modules())
    assert any(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (1, 1, 1) for m in net.modules())  # caller's unchanged
    fast = SlidingWindow(fast_predictor, WINDOW, 0.5, batch_size=2)(vol)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5)
    monai = _monai(vol, TorchPredictor(net, fold_norms=False), WINDOW, 0.5, 2)  # type: ignore[arg-type]
    np.testing.assert_allclose(fast, monai, rtol=0, atol=1e-4)


def test_pointwise_matmul_equals_the_convolution_with_either_layout() -> None:
    """A 1x1x1 convolution as a matrix product: same values (bias or not, NCDHW or NDHWC input), the
    output keeps the channels-last layout, and only pointwise stride-1 convolutions are replaced."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv3d(5, 7, 1), torch.nn.Conv3d(7, 3, 1, bias=False), torch.nn.Conv3d(3, 3, 1, stride=2)]
    model = torch.nn.Sequential(*layers, torch.nn.Conv3d(3, 2, 3)).eval()
    fast, n = pointwise_as_matmul(copy.deepcopy(model))
    assert n == 2 and isinstance(fast[2], torch.nn.Conv3d) and isinstance(fast[3], torch.nn.Conv3d)
    x = torch.randn(2, 5, 5, 9, 11)
    with torch.inference_mode():
        want = model(x)
        np.testing.assert_allclose(fast(x).numpy(), want.numpy(), rtol=0, atol=1e-5)
        xl = x.contiguous(memory_format=torch.channels_last_3d)
        np.testing.assert_allclose(fast(xl).numpy(), want.numpy(), rtol=0, atol=1e-5)
        assert fast[1](fast[0](xl)).is_contiguous(memory_format=torch.channels_last_3d)


def test_decoder_projects_before_upsampling_as_if_after() -> None:
    """The U-Net's decoder projects (1x1) on the coarse grid, then interpolates: equal to the textbook
    order (interpolate, then project), also on odd sizes (non-integer scales), 3D and 2D."""
    from torch.nn import functional

    for cfg, shape in [
        (ModelConfig(filters=[4, 6, 8], anisotropic_stages=1, norm="batch"), (1, 1, 5, 19, 23)),
        (ModelConfig(dims=2, filters=[4, 6, 8]), (2, 1, 21, 17)),
    ]:
        torch.manual_seed(1)
        net = build_model(cfg).eval()
        x = torch.randn(*shape)
        with torch.inference_mode():
            feats = net.encoder(x)
            dec = net.decoder
            y = feats[-1]
            mode = "trilinear" if x.dim() == 5 else "bilinear"
            for i in reversed(range(len(feats) - 1)):
                up = functional.interpolate(y, size=feats[i].shape[2:], mode=mode, align_corners=False)
                y = dec.blocks[i](dec.project[i](up) + feats[i])
            torch.testing.assert_close(dec(feats), y, rtol=0, atol=1e-5)


# -- the op on real stores: blockwise == whole == MONAI, serial and Ray --------------------------------
RAW_SHAPE = (10, 40, 50)
WINDOW = (4, 16, 16)


@pytest.fixture(scope="module")
def setup_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    """A tiny U-Net checkpoint and a uint8 input volume on disk."""
    d = tmp_path_factory.mktemp("predict")
    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=1, norm="none", se=False)
    torch.manual_seed(1)
    ckpt = str(d / "ckpt")
    save_checkpoint(ckpt, build_model(cfg), cfg, {"step": 1})
    raw = np.random.default_rng(3).integers(0, 256, RAW_SHAPE, dtype=np.uint8)
    v = create_volume(f"{d}/data.zarr/raw", RAW_SHAPE, "uint8", (5, 20, 25))
    v.write(v.box, raw)
    return ckpt, v.url, raw


_REFERENCES: dict[float, tuple[np.ndarray, np.ndarray]] = {}


def _reference(setup_data: tuple[str, str, np.ndarray], overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume inference in this process, and MONAI's, with the checkpoint's model (cached)."""
    if overlap not in _REFERENCES:
        ckpt, _, raw = setup_data
        batch = 4
        model, _, _ = load_checkpoint(ckpt)
        pred = TorchPredictor(model, activation="sigmoid")
        vol = (raw.astype(np.float32) / 255)[None]
        whole = SlidingWindow(pred, WINDOW, overlap, batch_size=batch)(vol)[0]
        monai = _monai(vol, pred, WINDOW, overlap, batch)[0]  # type: ignore[arg-type]
        np.testing.assert_allclose(whole, monai, rtol=0, atol=1e-4)
        _REFERENCES[overlap] = (whole, monai)
    return _REFERENCES[overlap]


@pytest.fixture(scope="module")
def reference(setup_data: tuple[str, str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return _reference(setup_data, 0.5)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize(
    ("block", "overlap"),
    # cuts on all three axes (diagonal neighbours' spill), blocks off the window grid, one block;
    # at 0.75 the spill (3/4 window) reaches past the next block in z (block 2, spill 3)
    [((6, 16, 32), 0.5), ((8, 24, 24), 0.5), ((64, 256, 256), 0.5), ((4, 16, 24), 0.25), ((2, 16, 16), 0.75)],
)
def test_op_blockwise_equals_whole_and_monai(
    tmp_path: Path, setup_data: tuple[str, str, np.ndarray], block: tuple[int, int, int], overlap: float, share: bool
) -> None:
    ckpt, url, _ = setup_data
    whole, monai = _reference(setup_data, overlap)
    out = f"{tmp_path}/out.zarr/prob"
    res = predict_volume(ckpt, url, out, window=WINDOW, overlap=overlap, block=block, chunks=(2, 8, 8), dtype="float32", backend="serial",
                         progress=False, batch_size=3, share_borders=share)
    got = open_volume(out).read(Box.from_shape(RAW_SHAPE))
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, monai, rtol=0, atol=1e-4)
    windows = WindowGrid(RAW_SHAPE, WINDOW, (overlap,))
    assert res.windows == windows.num_windows and res.stats["windows"] == res.windows_computed
    grid = predict_grid(PredictOp(checkpoint=ckpt, input=url, output=out, window=WINDOW, overlap=overlap, chunks=(2, 8, 8)), RAW_SHAPE, block)
    assert res.blocks == grid.num_blocks
    if share:  # every window computed exactly once
        assert res.windows_computed == res.windows
        plan = WindowOwnership(windows, grid)
        reading = sum(plan.read_box(b.index) is not None for b in grid.blocks())
        # serial: blocks run in id order, so every block that reads (owns windows) but the first was read
        # while the one before computed
        assert res.stats["prefetched"] == reading - 1
        assert ("borders" in res.pass_seconds) == (res.blocks > 1) == plan.any_shared
        assert not (tmp_path / "out.zarr" / ".connectile" / "prob.predict-scratch").exists()  # the scratch is gone
    else:
        assert res.windows_computed == windows.windows_computed(grid) >= res.windows
        assert res.stats["prefetched"] == res.blocks - 1
    if res.blocks == 1:
        assert res.windows_computed == res.windows


def test_shared_borders_equal_the_overlapping_path(tmp_path: Path, setup_data: tuple[str, str, np.ndarray]) -> None:
    """The new path (each window once, borders in pass 2) and the old one (windows at cuts twice) agree
    to float rounding, with TTA and two output channels."""
    ckpt2 = str(tmp_path / "ckpt2")
    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=1, norm="none", se=False, head="polarity")
    torch.manual_seed(4)
    save_checkpoint(ckpt2, build_model(cfg), cfg)
    _, url, _ = setup_data
    got = {}
    for share in (True, False):
        out = f"{tmp_path}/s{int(share)}.zarr/prob"
        res = predict_volume(ckpt2, url, out, window=WINDOW, block=(4, 16, 24), chunks=(2, 8, 8), dtype="float32", tta="flips", backend="serial",
                             progress=False, share_borders=share)
        got[share] = open_volume(out).read(Box.from_shape(RAW_SHAPE))
        assert got[share].shape == (3, *RAW_SHAPE)
        assert (res.windows_computed == res.windows) == share
    np.testing.assert_allclose(got[True], got[False], rtol=0, atol=1e-6)


def test_resume_after_a_crash_between_the_passes(tmp_path: Path, setup_data: tuple[str, str, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Pass 1 done (its markers and scratch on disk), pass 2 never ran: the run resumes with pass 2 only."""
    ckpt, url, _ = setup_data
    whole, _ = reference
    out = f"{tmp_path}/out.zarr/prob"
    state = tmp_path / "state"
    block = (6, 16, 32)
    op = PredictOp(checkpoint=ckpt, input=open_volume(url).url, output=out, window=WINDOW, chunks=(2, 8, 8), dtype="float32",
                   checkpoint_digest=checkpoint_digest(ckpt))
    grid = predict_grid(op, RAW_SHAPE, block)
    first = run_blockwise(op, grid, state_dir=state / "windows", backend="serial", progress=False, name="predict", window=1)
    assert first.done == grid.num_blocks and first.stats["windows"] == op.windows(RAW_SHAPE).num_windows
    scratch = tmp_path / "out.zarr" / ".connectile" / "prob.predict-scratch"
    assert any(scratch.rglob("*"))
    half = open_volume(out).read(Box.from_shape(RAW_SHAPE))
    assert 0 < np.count_nonzero(half == 0) < half.size  # the borders are still missing
    res = predict_volume(ckpt, url, out, window=WINDOW, block=block, chunks=(2, 8, 8), dtype="float32", backend="serial", progress=False, state_dir=state)
    assert res.stats.get("windows", 0) == 0 and res.stats["border_voxels"] == np.count_nonzero(half == 0)
    np.testing.assert_allclose(open_volume(out).read(Box.from_shape(RAW_SHAPE)), whole, rtol=0, atol=1e-5)
    assert not scratch.exists()


def test_op_ray_uint8_and_resume(
    tmp_path: Path, setup_data: tuple[str, str, np.ndarray], reference: tuple[np.ndarray, np.ndarray], ray_cluster: str
) -> None:
    ckpt, url, _ = setup_data
    whole, _ = reference
    out = f"{tmp_path}/out.zarr/prob"
    res = predict_volume(ckpt, url, out, window=WINDOW, block=(8, 24, 32), chunks=(2, 8, 8), backend="ray", workers=2, address=ray_cluster, progress=False)
    assert res.blocks == 2 * 2 * 2 and res.windows_computed == res.windows == res.stats["windows"] and "borders" in res.pass_seconds
    got = open_volume(out).read(Box.from_shape(RAW_SHAPE))
    assert got.dtype == np.uint8
    expected = np.round(np.clip(whole, 0, 1) * 255).astype(np.uint8)
    # float32 rounding may move a value sitting on .5 by one step; nothing more
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got != expected).mean() < 1e-3
    again = predict_volume(ckpt, url, out, window=WINDOW, block=(8, 24, 32), chunks=(2, 8, 8), backend="serial", progress=False)
    assert again.stats.get("windows", 0) == 0 and again.stats.get("border_voxels", 0) == 0  # all blocks of both passes were done


def test_kept_ray_backend_serves_two_calls(
    tmp_path: Path, setup_data: tuple[str, str, np.ndarray], reference: tuple[np.ndarray, np.ndarray], ray_cluster: str
) -> None:
    """A caller's ``RayBackend(keep_workers=True)``: both passes of two predict calls run on the same two
    worker processes (started once), which outlive the calls; both outputs equal the whole-volume result."""
    import ray

    from engine.runtime.backends import RayBackend

    ckpt, url, _ = setup_data
    whole, _ = reference
    with RayBackend(2, address=ray_cluster, keep_workers=True) as be:
        pids = []
        for i in range(2):
            out = f"{tmp_path}/out{i}.zarr/prob"
            res = predict_volume(ckpt, url, out, window=WINDOW, block=(8, 24, 32), chunks=(2, 8, 8), dtype="float32", backend=be, progress=False)
            assert "borders" in res.pass_seconds and res.windows_computed == res.windows
            np.testing.assert_allclose(open_volume(out).read(Box.from_shape(RAW_SHAPE)), whole, rtol=0, atol=1e-5)
            pids.append(sorted(ray.get([a.__ray_call__.remote(lambda self: __import__("os").getpid()) for a in be._actors])))
        assert len(pids[0]) == 2 and pids[0] == pids[1]  # the same processes served both calls
    assert be._actors == []


@pytest.mark.parametrize("share", [True, False])
def test_memory_is_bounded_by_the_block(tmp_path: Path, setup_data: tuple[str, str, np.ndarray], share: bool) -> None:
    """The op's arrays (input, accumulators, one batch) are sized by the block, not the volume."""
    ckpt, _, _ = setup_data
    shape = (32, 128, 128)
    v = create_volume(f"{tmp_path}/big.zarr/raw", shape, "uint8", (8, 32, 32))
    op = PredictOp(checkpoint=ckpt, input=v.url, output=f"{tmp_path}/big.zarr/prob", window=WINDOW, chunks=(8, 32, 32), batch_size=2, share_borders=share)
    grid = predict_grid(op, shape, (8, 32, 32))
    assert grid.write_shape == (8, 32, 32) and grid.num_blocks == 64
    op.prepare(grid)
    op.setup(grid)
    peak = 0
    for bid in (0, grid.num_blocks - 1):
        op.process(grid.block(bid))
        peak = max(peak, sum(op._sw.last_sizes.values()))
    op.teardown()
    if share:
        # input: the own windows, write box + (window - stride) past the upper faces; accumulators: (1
        # channel + weights) x the same box; one batch: 2 windows in and out
        block_bound = (8 + 2) * (32 + 8) * (32 + 8) + 2 * (8 + 2) * (32 + 8) * (32 + 8) + 2 * 2 * 4 * 16 * 16
    else:
        # input: write box + (window - stride) on each side; accumulators: (1 channel + weights) x write box;
        # one batch: 2 windows in and out
        block_bound = (8 + 4) * (32 + 16) * (32 + 16) + 2 * 8 * 32 * 32 + 2 * 2 * 4 * 16 * 16
    assert peak <= block_bound < int(np.prod(shape)) // 8


# -- bad input, pickling, CLI ----------------------------------------------------------------------------
def test_bad_settings_name_the_fix(tmp_path: Path, setup_data: tuple[str, str, np.ndarray]) -> None:
    ckpt, url, _ = setup_data
    with pytest.raises(ConfigError, match=r"overlap must be in \[0, 1\) but 1.5 was given"):
        WindowGrid(SHAPE, (4, 8, 8), (1.5,))
    with pytest.raises(ConfigError, match="not divisible by the model's downsampling"):
        predict_volume(ckpt, url, f"{tmp_path}/o.zarr/p", window=(4, 15, 16), backend="serial", progress=False)
    with pytest.raises(ConfigError, match="square in y and x"):
        SlidingWindow(lambda x: x, (4, 8, 16), tta="flips-transpose")
    cfg = ModelConfig(filters=[4, 8], anisotropic_stages=1, head="affinity")
    aff = str(tmp_path / "aff")
    save_checkpoint(aff, build_model(cfg), cfg)
    with pytest.raises(ConfigError, match="affinity"):
        predict_volume(aff, url, f"{tmp_path}/o.zarr/p", window=WINDOW, tta="flips", backend="serial", progress=False)
    assert not Path(f"{tmp_path}/o.zarr/p").exists()


def test_op_pickles(setup_data: tuple[str, str, np.ndarray]) -> None:
    ckpt, url, _ = setup_data
    op = PredictOp(checkpoint=ckpt, input=url, output="/tmp/x.zarr/p", window=WINDOW, tta="flips", batch_size=7)
    back = pickle.loads(pickle.dumps(op))
    assert back == op and back.params() == op.params() and "batch_size" not in op.params()


def test_cli(tmp_path: Path, setup_data: tuple[str, str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, url, _ = setup_data
    out = f"{tmp_path}/cli.zarr/prob"
    code = main(["predict", ckpt, url, out, "--window", "4,16,16", "--overlap", "0", "--block", "8,24,32", "--chunks", "2,8,8", "--dtype", "float16",
                 "--tta", "flips", "--batch-size", "8", "--backend", "serial", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "predicted" in printed and "36 windows (36 computed, 0.0% twice" in printed
    v = open_volume(out)
    assert v.dtype == np.float16 and v.spatial_shape == RAW_SHAPE
    old = f"{tmp_path}/cli.zarr/prob_old"
    assert main(["predict", ckpt, url, old, "--window", "4,16,16", "--overlap", "0", "--block", "8,24,32", "--chunks", "2,8,8", "--dtype", "float16",
                 "--tta", "flips", "--no-share-borders", "--backend", "serial", "--no-progress"]) == 0
    np.testing.assert_allclose(open_volume(old).read(v.box).astype(np.float32), v.read(v.box).astype(np.float32), rtol=1e-3, atol=0)
    # the old path: the clamped last windows (overlap 0) cross the cuts and are computed twice or more
    assert "36 windows (64 computed" in capsys.readouterr().out and not (tmp_path / "cli.zarr" / ".connectile" / "prob.predict-scratch").exists()
    assert main(["predict", ckpt, str(tmp_path / "missing.zarr/x"), out, "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


# -- 2.5D context sections; every kind of checkpoint `connectile train` writes -------------------------
def _bn_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics (the folded path must carry them)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(("context", "roi", "overlap"), [(1, (1, 32, 40), 0.0), (1, (3, 32, 40), 0.5), (2, (2, 32, 40), 0.25), (1, (9, 32, 40), 0.5)])
def test_context_sections_are_training_and_validations(context: int, roi: tuple[int, int, int], overlap: float) -> None:
    """A 2.5D model's windows read their neighbour sections from the volume, the edge section repeated
    beyond it: with whole sections as windows this is the model's own forward pass over the volume
    (``fold_sections``, what training's validation ran), for any window depth, overlap or volume edge."""
    from engine.infer.blend import model_window

    torch.manual_seed(0)
    cfg = ModelConfig(dims=2, context_slices=context, filters=[4, 8, 8], head="polarity")
    model = _bn_stats(build_model(cfg))
    vol = np.random.default_rng(1).random((7, 32, 40), dtype=np.float32)
    with torch.inference_mode():
        want = torch.sigmoid(model(torch.from_numpy(vol)[None, None]))[0].numpy()
    sw = model_window(model, roi, overlap, batch_size=2)
    assert sw.halo == (context, 0, 0) and sw.replicate == (True, False, False)
    got = sw(vol)
    assert got.shape == (3, 7, 32, 40)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _training_data(root: Path) -> tuple[str, str]:
    """uint8 raw and labels 0 / 1 / 2 (blobs), with a z size no window or block divides."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    shape = (9, 36, 44)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), (1, 3, 3))
    labels = np.where(field > 0.2, 1, np.where(field < -0.2, 2, 0)).astype(np.uint8)
    raw = (np.clip(0.3 + 0.2 * labels + 0.1 * rng.standard_normal(shape), 0, 1) * 255).astype(np.uint8)
    urls = []
    for name, arr in (("raw", raw), ("labels", labels)):
        v = create_volume(f"{root}/data.zarr/{name}", arr.shape, "uint8", (4, 16, 16))
        v.write(v.box, arr)
        urls.append(v.url)
    return urls[0], urls[1]


_OFFSETS = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
_KINDS = {
    "2d-mask": ({"dims": 2, "filters": [4, 8]}, [2, 16, 16], "mask", (2, 16, 16)),
    "2.5d-mask": ({"dims": 2, "context_slices": 1, "filters": [4, 8, 8]}, [3, 16, 16], "mask", (1, 16, 16)),
    "2.5d-polarity": ({"dims": 2, "context_slices": 2, "filters": [4, 8]}, [5, 16, 20], "polarity", (1, 16, 20)),
    "2d-affinity": ({"dims": 2, "filters": [4, 8], "head": "affinity", "affinity_offsets": _OFFSETS}, [2, 16, 16], "affinity", (2, 16, 16)),
    "3d-mask": ({"filters": [4, 8], "anisotropic_stages": 1}, [4, 16, 16], "mask", (4, 16, 16)),
    "3d-polarity": ({"filters": [4, 8], "anisotropic_stages": 0, "head": "polarity"}, [5, 16, 16], "polarity", (4, 16, 16)),
    "3d-affinity": ({"filters": [4, 8], "anisotropic_stages": 1, "head": "affinity", "affinity_offsets": _OFFSETS}, [4, 16, 16], "affinity", (4, 16, 16)),
}


@pytest.mark.parametrize("kind", list(_KINDS))
def test_every_trained_checkpoint_predicts_with_its_own_window(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`connectile train` (a few steps) then `connectile predict` without --window: the window comes from
    the checkpoint's training crop (less a 2.5D model's context sections), and the blockwise output (cuts
    on every axis) equals whole-volume inference in this process."""
    import yaml

    from engine.infer.blend import model_window
    from engine.infer.merge import scale_input
    from engine.infer.model_input import checkpoint_window
    from engine.learn import list_checkpoints
    from engine.models import read_checkpoint_config

    model, crop, head, window = _KINDS[kind]
    raw_url, labels_url = _training_data(tmp_path)
    model = {"head": head, **model}
    target: dict[str, object] = {"kind": head}
    cfg = {"model": model, "target": target, "data": {"raw": raw_url, "labels": labels_url}, "crop": crop, "batch_size": 1, "steps": 2,
           "checkpoint_every": 2, "log_every": 1, "output": str(tmp_path / "run"), "augment": {"elastic": 0, "misalign": 0}, "sampling": {"reject_empty": 0}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "train.yaml"), "--no-progress"]) == 0
    ckpt = str(list_checkpoints(tmp_path / "run")[-1][1])
    mcfg, meta = read_checkpoint_config(ckpt)
    assert checkpoint_window(mcfg, meta) == window
    out = f"{tmp_path}/pred.zarr/prob"
    capsys.readouterr()
    tta = "flips" if head == "polarity" else "none"  # flips of z turn a 2.5D model's halo too
    code = main(["predict", ckpt, raw_url, out, "--overlap", "0.5", "--block", "4,16,16", "--chunks", "2,8,8", "--dtype", "float32",
                 "--tta", tta, "--backend", "serial", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    got = open_volume(out)
    assert got.attrs["connectile"]["predict"]["window"] == list(window)
    raw = open_volume(raw_url).read(open_volume(raw_url).box)
    net, _, _ = load_checkpoint(ckpt)
    whole = model_window(net, window, 0.5, tta=tta)(scale_input(raw).numpy())
    k = whole.shape[0]
    assert k == {"mask": 1, "polarity": 3, "affinity": 3}[head]
    np.testing.assert_allclose(got.read(got.box), whole[0] if k == 1 else whole, rtol=0, atol=1e-5)
    if kind == "2.5d-mask":  # the one-pass path (windows at cuts twice) reads the halo too
        old = f"{tmp_path}/pred.zarr/old"
        assert main(["predict", ckpt, raw_url, old, "--overlap", "0.5", "--block", "4,16,16", "--chunks", "2,8,8", "--dtype", "float32",
                     "--no-share-borders", "--backend", "serial", "--no-progress"]) == 0
        np.testing.assert_allclose(open_volume(old).read(got.box), whole[0], rtol=0, atol=1e-5)


def test_command_and_pipeline_stage_share_the_settings_and_their_defaults(tmp_path: Path, setup_data: tuple[str, str, np.ndarray]) -> None:
    """Issue 15: ``connectile predict`` and the pipeline's ``predict`` stage take one declaration of the
    settings (:class:`PredictParams`): the same defaults, the same flags/keys, byte-identical output."""
    from engine.commands._flags import flag
    from engine.params import PredictParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.predict import PredictSection, PredictStage

    ckpt, url, _ = setup_data
    section = PredictSection(raw="raw", checkpoint="ckpt")
    assert section.settings() == PredictParams().settings()  # every default once
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    from engine.commands import predict as command

    command.add_parser(sub)
    text = sub.choices["predict"].format_help()
    assert all(flag(name) in text for name in PredictParams.model_fields)
    window = ["--window", ",".join(map(str, WINDOW))]  # the tiny checkpoint has no training crop: the default would be 16,128,128
    assert main(["predict", ckpt, url, f"{tmp_path}/cli.zarr/prob", *window, "--backend", "serial", "--no-progress"]) == 0
    ctx = StageContext(run_dir=tmp_path / "run", stage="predict[1]", runtime=RuntimeSection(backend="serial", progress=False),
                       upstream={"in": {"raw": url, "checkpoint": ckpt}})
    cfg = PredictSection(raw="in.raw", checkpoint="in.checkpoint", window=WINDOW)
    out = PredictStage().run(ctx, cfg)["probability"]
    a, b = open_volume(f"{tmp_path}/cli.zarr/prob"), open_volume(out)
    assert a.chunk_shape == b.chunk_shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.read(a.box), b.read(b.box))
    # a setting only one side knew before (blend) reaches the stage, and changes the output
    cfg2 = PredictSection(raw="in.raw", checkpoint="in.checkpoint", window=WINDOW, blend="constant")
    ctx2 = StageContext(run_dir=tmp_path / "run2", stage="predict[1]", runtime=ctx.runtime, upstream=ctx.upstream)
    c = open_volume(PredictStage().run(ctx2, cfg2)["probability"])
    assert not np.array_equal(c.read(c.box), a.read(a.box))
