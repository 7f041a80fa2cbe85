"""Multiscale pyramids: kernels against TensorStore's downsample driver, blockwise levels against a
whole-volume reference (serial and Ray), OME-Zarr metadata, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from engine.errors import BlocksFailed, ConfigError, StorageError
from engine.geometry import Box
from engine.ops.downsample import build_pyramid, default_method, downsample_mean, downsample_mode, level_factors
from engine.storage import create_volume, open_volume
from engine.storage.ome import find_pyramid, multiscale_levels

FACTORS = [(2, 2, 2), (1, 2, 2), (3, 2, 1), (1, 1, 1)]


def _ts(data: np.ndarray, factor: tuple[int, ...], method: str) -> np.ndarray:
    """The reference: TensorStore's own downsample driver on the whole array."""
    lead = (1,) * (data.ndim - 3)
    return np.asarray(ts.downsample(ts.array(data), [*lead, *factor], method).read().result())


@pytest.mark.parametrize("factor", FACTORS)
def test_mean_matches_tensorstore(factor: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (7, 13, 10), dtype=np.uint8)  # odd shapes: partial edge bins
    np.testing.assert_array_equal(downsample_mean(img, factor), _ts(img, factor, "mean"))
    wide = rng.integers(0, 65536, (5, 9, 6), dtype=np.uint16)
    np.testing.assert_array_equal(downsample_mean(wide, factor), _ts(wide, factor, "mean"))
    prob = rng.random((7, 13, 10), dtype=np.float32)
    np.testing.assert_allclose(downsample_mean(prob, factor), _ts(prob, factor, "mean"), rtol=1e-6)
    signed = rng.integers(-300, 300, (7, 13, 10), dtype=np.int16)  # negative sums round half to even too
    np.testing.assert_array_equal(downsample_mean(signed, factor), _ts(signed, factor, "mean"))
    aff = rng.integers(0, 256, (3, 7, 13, 10), dtype=np.uint8)  # channels first: never averaged together
    np.testing.assert_array_equal(downsample_mean(aff, factor), _ts(aff, factor, "mean"))


@pytest.mark.parametrize("factor", FACTORS)
def test_mode_matches_tensorstore(factor: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (7, 13, 10)).astype(np.uint64) * np.uint64(2**40)  # few labels: many ties
    labels[labels == 0] = 0
    np.testing.assert_array_equal(downsample_mode(labels, factor), _ts(labels, factor, "mode"))
    small = rng.integers(0, 3, (6, 7, 9)).astype(np.uint32)
    np.testing.assert_array_equal(downsample_mode(small, factor), _ts(small, factor, "mode"))
    chans = rng.integers(0, 3, (2, 5, 8, 7)).astype(np.uint64)
    np.testing.assert_array_equal(downsample_mode(chans, factor), _ts(chans, factor, "mode"))
    tiny = rng.integers(0, 3, (1, 1, 9)).astype(np.uint64)  # smaller than a bin on two axes
    np.testing.assert_array_equal(downsample_mode(tiny, factor), _ts(tiny, factor, "mode"))


def test_method_and_factors() -> None:
    assert default_method(np.dtype("uint64")) == "mode" and default_method(np.dtype("uint32")) == "mode"
    assert default_method(np.dtype("uint8")) == "mean" and default_method(np.dtype("float32")) == "mean"
    # anisotropic 40x4x4 nm: 1x2x2 until near isotropic, then 2x2x2; an axis of one voxel stays
    assert level_factors((40, 4, 4), (16, 512, 512), min_size=32) == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert level_factors((8, 8, 8), (1, 64, 64), min_size=16) == [(1, 2, 2), (1, 2, 2)]


def _reference(data: np.ndarray, steps: list[tuple[int, int, int]], method: str) -> list[np.ndarray]:
    out = [data]
    for f in steps:
        out.append(_ts(out[-1], f, method))
    return out


def _volume(path: Path, data: np.ndarray, chunks: tuple[int, int, int], voxel: tuple[float, float, float], fmt: str = "zarr") -> str:
    vol = create_volume(path, data.shape, data.dtype, chunks, voxel_size=voxel, offset=(100.0, 20.0, 10.0), format=fmt)  # type: ignore[arg-type]
    vol.write(Box.from_shape(data.shape[-3:]), data)
    return vol.url


@pytest.mark.parametrize(("fmt", "kernel"), [("zarr", "numpy"), ("zarr3", "tensorstore")])
def test_pyramid_blockwise_equals_whole_volume(tmp_path: Path, fmt: str, kernel: str) -> None:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (10, 37, 45), dtype=np.uint8)
    url = _volume(tmp_path / "data.zarr" / "raw", raw, (4, 8, 8), (40.0, 4.0, 4.0), fmt)
    # tiny chunks and blocks: many blocks per level, blocks not aligned with the input's bins at the edge
    result = build_pyramid(url, min_size=6, chunks=(2, 4, 4), block=(2, 8, 4), kernel=kernel, progress=False)  # type: ignore[arg-type]
    steps = [tuple(lv["factor"]) for lv in result.levels[1:]]
    assert steps == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    ref = _reference(raw, steps, "mean")  # type: ignore[arg-type]
    group = tmp_path / "data.zarr" / "raw_pyramid"
    assert result.group.endswith("data.zarr/raw_pyramid") and result.copied_s0
    assert all(r["failed"] == 0 for r in result.runs) and sum(r["done"] for r in result.runs) > 20
    for i, expected in enumerate(ref):
        level = open_volume(group / f"s{i}")
        np.testing.assert_array_equal(level.read(level.box), expected)
        assert level.chunk_shape == tuple(min(c, s) for c, s in zip((2, 4, 4), expected.shape, strict=True))
    # OME-Zarr metadata: one entry, levels in order, scale = cumulative factor * voxel size, centre convention
    if fmt == "zarr":
        entry = json.loads((group / ".zattrs").read_text())["multiscales"]
        assert entry[0]["version"] == "0.4"
    else:
        ome = json.loads((group / "zarr.json").read_text())["attributes"]["ome"]
        entry = ome["multiscales"]
        assert ome["version"] == "0.5"
    assert len(entry) == 1 and [a["name"] for a in entry[0]["axes"]] == ["z", "y", "x"]
    datasets = entry[0]["datasets"]
    assert [d["path"] for d in datasets] == ["s0", "s1", "s2", "s3", "s4"]
    assert datasets[4]["coordinateTransformations"][0] == {"type": "scale", "scale": [80.0, 64.0, 64.0]}
    assert datasets[4]["coordinateTransformations"][1] == {"type": "translation", "translation": [120.0, 50.0, 40.0]}
    assert open_volume(group / "s2").voxel_size == (40.0, 16.0, 16.0)
    assert multiscale_levels(group) == ["s0", "s1", "s2", "s3", "s4"] and find_pyramid(url) == result.group
    # run again: every block already done, nothing recomputed
    again = build_pyramid(url, min_size=6, chunks=(2, 4, 4), block=(2, 8, 4), kernel=kernel, progress=False)  # type: ignore[arg-type]
    assert all(r["done"] == 0 and r["already_done"] > 0 for r in again.runs)


def test_label_pyramid_on_ray_equals_serial(tmp_path: Path, ray_cluster: str) -> None:
    rng = np.random.default_rng(4)
    seg = np.repeat(rng.integers(0, 5, (12, 10, 10)).astype(np.uint64) * np.uint64(1 << 33), 3, axis=2)[:, :, :29]
    url = _volume(tmp_path / "d.zarr" / "seg", seg, (4, 8, 8), (8.0, 8.0, 8.0))
    result = build_pyramid(url, levels=2, chunks=(4, 4, 4), block=(4, 8, 8), kernel="numpy", backend="ray", workers=2, address=ray_cluster, progress=False)
    assert result.method == "mode"
    assert [tuple(lv["factor"]) for lv in result.levels[1:]] == [(2, 2, 2), (2, 2, 2)]
    for i, expected in enumerate(_reference(seg, [(2, 2, 2), (2, 2, 2)], "mode")):
        level = open_volume(tmp_path / "d.zarr" / "seg_pyramid" / f"s{i}")
        np.testing.assert_array_equal(level.read(level.box), expected)
    # s0 12x10x29 in blocks of 4x8x8: 3*2*4; s1 6x5x15 (blocks 4x8x8, y clipped to 5): 2*1*2; s2 3x3x8: 1
    assert [r["done"] for r in result.runs] == [24, 4, 1]


def test_levels_beside_s0_without_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    prob = rng.random((8, 16, 16), dtype=np.float32)
    url = _volume(tmp_path / "p.zarr" / "prob" / "s0", prob, (4, 8, 8), (4.0, 4.0, 4.0))
    result = build_pyramid(url, levels=2, progress=False)
    assert not result.copied_s0 and result.group.endswith("p.zarr/prob")
    assert sorted(p.name for p in (tmp_path / "p.zarr" / "prob").iterdir() if not p.name.startswith(".")) == ["s0", "s1", "s2"]
    np.testing.assert_allclose(open_volume(tmp_path / "p.zarr" / "prob" / "s2").read(Box.from_shape((2, 4, 4))), _reference(prob, [(2, 2, 2)] * 2, "mean")[2], rtol=1e-6)
    assert find_pyramid(url) == result.group


def test_bad_input(tmp_path: Path) -> None:
    bad = np.ones((4, 8, 8), np.float32)
    bad[2, 3, 3] = np.nan
    url = _volume(tmp_path / "b.zarr" / "prob", bad, (4, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(BlocksFailed, match="NaN"):
        build_pyramid(url, levels=1, progress=False, max_retries=0)
    assert find_pyramid(url) is None  # no multiscales of several levels: not taken for a built pyramid
    with pytest.raises(ConfigError, match="factors"):
        build_pyramid(url, factors=[(1, 1, 1)], progress=False)
    with pytest.raises(ConfigError, match="method"):
        build_pyramid(url, method="median", progress=False)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="no volume"):
        build_pyramid(tmp_path / "nothing.zarr" / "raw", progress=False)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    data = np.random.default_rng(6).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    url = _volume(tmp_path / "c.zarr" / "raw", data, (4, 16, 16), (40.0, 4.0, 4.0))
    assert main(["downsample", url, "--min-size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "s2: 4x8x8 voxels of 40x16x16 nm" in out and "3 levels, mean (s0 copied" in out
    assert main(["downsample", url, "--factor", "1,0,2"]) == 2
    assert "error" in capsys.readouterr().err


def test_command_flags_and_library_defaults_come_from_the_params_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15: ``connectile downsample``'s flags are generated from :class:`~engine.params.DownsampleParams`
    and :func:`build_pyramid` takes its defaults from it: the command with no settings writes the same
    pyramid as the library call with none."""
    import argparse
    import inspect

    from engine.cli import main
    from engine.commands import downsample as command
    from engine.commands._flags import flag
    from engine.params import DownsampleParams

    defaults = DownsampleParams().settings()
    sig = inspect.signature(build_pyramid).parameters
    assert {k: sig[k].default for k in defaults if k in sig} == {k: defaults[k] for k in defaults if k in sig} and len(sig) > 5
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["downsample"].format_help() for name in defaults)
    data = np.random.default_rng(8).integers(0, 256, (4, 48, 160), dtype=np.uint8)
    a = _volume(tmp_path / "a.zarr" / "raw", data, (4, 16, 32), (40.0, 4.0, 4.0))
    b = _volume(tmp_path / "b.zarr" / "raw", data, (4, 16, 32), (40.0, 4.0, 4.0))
    assert main(["downsample", a, "--backend", "serial", "--no-progress"]) == 0
    result = build_pyramid(b, backend="serial", progress=False)
    levels = [lv["path"] for lv in result.levels]
    assert len(levels) > 2 and result.method == "mean"
    for path in levels:
        va, vb = open_volume(f"{tmp_path}/a.zarr/raw_pyramid/{path}"), open_volume(f"{tmp_path}/b.zarr/raw_pyramid/{path}")
        assert va.chunk_shape == vb.chunk_shape and va.voxel_size == vb.voxel_size
        np.testing.assert_array_equal(va.read(va.box), vb.read(vb.box))
    assert main(["downsample", a, "--factor", "1,2"]) == 2
    assert "--factor must be three comma-separated numbers z,y,x" in capsys.readouterr().err


def test_downsample_and_gaussian_ops_share_the_volume_op(tmp_path: Path) -> None:
    """Both ops are :class:`~engine.ops.volume_op.VolumeOp`: the same fields (``overwrite`` never hashed into
    the done-markers, so an existing run resumes), and ``setup`` opens input and output for ``process``."""
    from engine.geometry import BlockGrid
    from engine.ops.downsample import DownsampleOp
    from engine.ops.filters import GaussianFilter
    from engine.ops.volume_op import VolumeOp

    data = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    src = create_volume(str(tmp_path / "in.zarr" / "raw"), data.shape, "float32", (4, 8, 8))
    src.write(src.box, data)
    down = DownsampleOp(input=src.url, output=str(tmp_path / "d.zarr" / "s1"), chunks=(2, 4, 4), overwrite=True)
    gauss = GaussianFilter(input=src.url, output=str(tmp_path / "g.zarr" / "g"), overwrite=True)
    assert isinstance(down, VolumeOp) and isinstance(gauss, VolumeOp)
    assert down.params() == {"kind": "downsample", "input": src.url, "output": down.output, "factor": [2, 2, 2], "method": "mean", "chunks": [2, 4, 4], "kernel": down.kernel}
    assert gauss.params() == {"kind": "gaussian", "input": src.url, "output": gauss.output, "sigma": [1.0, 1.0, 1.0], "truncate": 4.0, "chunks": [32, 64, 64]}
    grid = BlockGrid(Box.from_shape((2, 4, 4)), write_shape=(2, 4, 4))
    down.prepare(grid)
    down.setup(grid)
    assert [v.url for v in down.volumes()] == [src.url, open_volume(down.output).url]
    down.process(grid.block(0))
    np.testing.assert_allclose(open_volume(down.output).read(Box.from_shape((2, 4, 4))), data.reshape(2, 2, 4, 2, 4, 2).mean(axis=(1, 3, 5)), rtol=1e-6)
