"""Ingest of PNG/TIFF slices, multi-page TIFF and HDF5 (also .h5.gz) into zarr/zarr3/n5.

Synthetic files in tmp_path cover ordering, pixel modes, formats and every bad input; the five real
data sets of ../shared/data (``realdata``) are checked against the statistics of their README,
computed once from the original files with PIL/h5py/numpy.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.cli import main
from engine.errors import BlocksFailed, ConfigError, ConnectileError, StorageError
from engine.geometry import Box
from engine.ops.ingest import IngestOp, ingest, ingest_grid
from engine.storage import Volume, open_volume
from engine.storage.hdf5 import IdMap
from engine.storage.slices import natural_sorted
from engine.storage.sources import Hdf5Volume, SliceStack, open_source


def read_all(vol: Volume) -> np.ndarray:
    return vol.read(vol.box)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def numbered_slices(folder: Path, n: int, name: str = "{}.png", shape: tuple[int, int] = (6, 9)) -> np.ndarray:
    """Slices whose every pixel is 10 * (their number), so the order can be read off the values."""
    for k in range(n):
        save_png(folder / name.format(k), np.full(shape, 10 * k, np.uint8))
    return np.stack([np.full(shape, 10 * k, np.uint8) for k in range(n)])


def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name.replace("__", "/"), data=data)
    return path


def gzip_file(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return out


def one_line(err: pytest.ExceptionInfo[ConnectileError]) -> str:
    text = str(err.value)
    assert "\n" not in text and err.value.fix, text  # one line, naming the problem and the fix
    return text


# -- ordering --------------------------------------------------------------------------------------
def test_natural_sort() -> None:
    names = ["b10.png", "b2.png", "a11.png", "B3.png", "iso.2610.png", "iso.2609.png"]
    assert natural_sorted(names) == ["a11.png", "b2.png", "B3.png", "b10.png", "iso.2609.png", "iso.2610.png"]


@pytest.mark.parametrize("name", ["{}.png", "labels{:08d}.png", "mask{:04d}.png", "iso.2{:03d}.png"])
def test_slices_are_ordered_numerically(tmp_path: Path, name: str) -> None:
    expected = numbered_slices(tmp_path / "in", 12, name)
    vol = ingest(tmp_path / "in", tmp_path / "out.zarr" / "raw", chunks=(4, 8, 8), progress=False)
    assert vol.shape == (12, 6, 9) and vol.dtype == np.uint8
    np.testing.assert_array_equal(read_all(vol), expected)  # slice k holds 10 * k: 10.png is slice 10


def test_glob_picks_its_files_and_gaps_are_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    numbered_slices(tmp_path / "in", 3, "{}.png")
    (tmp_path / "in" / "2.png").unlink()
    (tmp_path / "in" / "notes.txt").write_text("not a slice")
    tifffile.imwrite(tmp_path / "in" / "other.tif", np.zeros((6, 9), np.uint8))
    with caplog.at_level(logging.WARNING):
        vol = ingest(str(tmp_path / "in" / "*.png"), tmp_path / "o.zarr" / "a", progress=False)
    assert vol.shape == (2, 6, 9)
    assert read_all(vol)[:, 0, 0].tolist() == [0, 10]
    numbered_slices(tmp_path / "gap", 4)
    (tmp_path / "gap" / "2.png").unlink()
    with caplog.at_level(logging.WARNING):
        ingest(tmp_path / "gap", tmp_path / "o.zarr" / "b", progress=False)
    assert "jump from 1 to 3" in caplog.text


def test_ingest_is_blockwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    numbered_slices(tmp_path / "in", 10)
    calls: list[tuple[int, int]] = []
    original = SliceStack.read

    def spy(self: SliceStack, z0: int, z1: int) -> np.ndarray:
        calls.append((z0, z1))
        return original(self, z0, z1)

    monkeypatch.setattr(SliceStack, "read", spy)
    ingest(tmp_path / "in", tmp_path / "o.zarr" / "a", chunks=(4, 4, 4), progress=False)
    assert calls == [(0, 4), (4, 8), (8, 10)]  # one z-chunk deep slab at a time, never the volume
    grid = ingest_grid((10, 6, 9), (4, 4, 4))
    assert grid.write_shape == (4, 8, 12) and grid.num_blocks == 3


# -- pixel modes -----------------------------------------------------------------------------------
def test_mixed_png_modes_are_handled_per_slice(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    save_png(tmp_path / "in" / "0.png", mask)  # mode '1'
    save_png(tmp_path / "in" / "1.png", mask.astype(np.uint8) * 255)  # mode 'L', 0/255
    save_png(tmp_path / "in" / "2.png", mask.astype(np.uint8) * 7)  # mode 'L', 0/7
    assert [Image.open(tmp_path / "in" / f"{k}.png").mode for k in range(3)] == ["1", "L", "L"]
    raw = read_all(ingest(tmp_path / "in", tmp_path / "o.zarr" / "raw", progress=False))
    assert [sorted(np.unique(s).tolist()) for s in raw] == [[0, 255], [0, 255], [0, 7]]
    binary = read_all(ingest(tmp_path / "in", tmp_path / "o.zarr" / "bin", binarize=True, progress=False))
    assert binary.dtype == np.uint8
    np.testing.assert_array_equal(binary, np.stack([mask] * 3).astype(np.uint8))


def test_colour_slices(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    save_png(tmp_path / "gray" / "0.png", np.stack([gray] * 3, axis=-1))
    assert Image.open(tmp_path / "gray" / "0.png").mode == "RGB"
    np.testing.assert_array_equal(read_all(ingest(tmp_path / "gray", tmp_path / "o.zarr" / "g", progress=False))[0], gray)

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, :3] = (1, 2, 3)
    rgba[3:, :4, :3] = (0, 0, 9)
    rgba[5, 7] = (200, 0, 0, 0)  # transparent: background whatever its colour
    save_png(tmp_path / "colour" / "0.png", rgba)
    with pytest.raises(StorageError, match="colour image whose channels differ") as err:
        ingest(tmp_path / "colour", tmp_path / "o.zarr" / "c", progress=False)
    assert "--rgb-to-label" in one_line(err)
    vol = ingest(tmp_path / "colour", tmp_path / "o.zarr" / "c", rgb_to_label=True, progress=False)
    assert vol.dtype == np.uint32
    labels = read_all(vol)[0]
    assert labels[0, 0] == (1 << 16) + (2 << 8) + 3 and labels[4, 0] == 9 and labels[4, 6] == 0 and labels[5, 7] == 0


# -- TIFF ------------------------------------------------------------------------------------------
def test_multipage_tiff_and_tiff_slices(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 60000, (7, 6, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    vol = ingest(tmp_path / "stack.tif", tmp_path / "o.zarr" / "t", chunks=(3, 4, 4), progress=False)
    assert vol.dtype == np.uint16 and vol.chunk_shape == (3, 4, 4)
    np.testing.assert_array_equal(read_all(vol), data)
    (tmp_path / "slices").mkdir()
    for k in range(3):
        tifffile.imwrite(tmp_path / "slices" / f"s{k}.tif", data[k])
    np.testing.assert_array_equal(read_all(ingest(tmp_path / "slices", tmp_path / "o.zarr" / "s", progress=False)), data[:3])


# -- HDF5 ------------------------------------------------------------------------------------------
def test_hdf5_datasets(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 1000, (5, 6, 7), dtype=np.int32)
    one = write_h5(tmp_path / "one.h5", group__vol=data, table=np.zeros((3, 2), np.int64))
    np.testing.assert_array_equal(read_all(ingest(one, tmp_path / "o.zarr" / "a", chunks=(2, 4, 4), progress=False)), data)
    two = write_h5(tmp_path / "two.hdf5", raw=data.astype(np.uint8), labels=data)
    with pytest.raises(StorageError, match="holds 2 3D datasets") as err:
        ingest(two, tmp_path / "o.zarr" / "b", progress=False)
    assert "raw (5, 6, 7) uint8" in one_line(err) and "labels (5, 6, 7) int32" in str(err.value)
    assert f"name one, e.g. {two}:" in str(err.value)
    vol = ingest(f"{two}:labels", tmp_path / "o.zarr" / "b", progress=False)
    assert vol.dtype == np.int32
    np.testing.assert_array_equal(read_all(vol), data)
    with pytest.raises(StorageError, match="has no dataset 'nope'") as err:
        ingest(f"{two}:nope", tmp_path / "o.zarr" / "c", progress=False)
    assert "labels (5, 6, 7) int32" in one_line(err)


def test_gzipped_hdf5_with_transforms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the decompressed copy goes
    stack = np.random.default_rng(2).integers(0, 6, (6, 5, 4), dtype=np.int32)
    transforms = np.array([[0, 0], [1, 100], [2, 100], [3, 7], [4, 8], [5, 8]], np.int64)
    gz = gzip_file(write_h5(tmp_path / "gt.h5", stack=stack, transforms=transforms, bodies=transforms))
    lut = np.zeros(6, np.uint64)
    lut[transforms[:, 0]] = transforms[:, 1]

    with caplog.at_level(logging.INFO):
        vol = ingest(gz, tmp_path / "o.zarr" / "gt", chunks=(4, 5, 4), progress=False)
    assert "found 'transforms'" in caplog.text and "--no-lut" in caplog.text
    assert vol.dtype == np.uint64
    np.testing.assert_array_equal(read_all(vol), lut[stack])
    assert os.listdir(scratch) == []  # the temporary copy is gone

    plain = ingest(f"{gz}:stack", tmp_path / "o.zarr" / "sv", lut=False, progress=False)
    assert plain.dtype == np.int32
    np.testing.assert_array_equal(read_all(plain), stack)
    named = ingest(f"{gz}:stack", tmp_path / "o.zarr" / "named", lut="bodies", progress=False)
    np.testing.assert_array_equal(read_all(named), lut[stack])
    with pytest.raises(StorageError, match="not an Nx2 integer table"):
        ingest(f"{gz}:stack", tmp_path / "o.zarr" / "bad", lut="stack", progress=False)
    assert os.listdir(scratch) == []


def test_id_map_dense_and_sparse() -> None:
    dense = IdMap(np.array([[1, 10], [3, 30], [1, 11]]))  # a repeated id: the last row wins
    assert dense.dense is not None
    assert dense(np.array([0, 1, 2, 3, 4, -1])).tolist() == [0, 11, 0, 30, 0, 0]
    big = 1 << 40
    sparse = IdMap(np.array([[big, 5], [7, 6]], np.uint64))
    assert sparse.dense is None
    assert sparse(np.array([big, 7, 8, big + 1], np.uint64)).tolist() == [5, 6, 0, 0]


# -- outputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["zarr", "zarr3", "n5"])
def test_formats_keep_voxel_size(tmp_path: Path, fmt: str) -> None:
    expected = numbered_slices(tmp_path / "in", 5)
    ingest(tmp_path / "in", tmp_path / f"o.{fmt}" / "raw", voxel_size=(40, 4, 4), chunks=(2, 4, 4), format=fmt, progress=False)  # type: ignore[arg-type]
    vol = open_volume(tmp_path / f"o.{fmt}" / "raw")
    assert vol.format == fmt and vol.voxel_size == (40.0, 4.0, 4.0) and vol.chunk_shape == (2, 4, 4)
    np.testing.assert_array_equal(read_all(vol), expected)


def test_existing_output_and_dtype(tmp_path: Path) -> None:
    numbered_slices(tmp_path / "in", 4)
    dst = tmp_path / "o.zarr" / "raw"
    ingest(tmp_path / "in", dst, progress=False)
    ingest(tmp_path / "in", dst, progress=False)  # the same layout: written again (resumable)
    with pytest.raises(StorageError, match="already holds") as err:
        ingest(tmp_path / "in", dst, dtype="uint16", progress=False)
    assert "--overwrite" in one_line(err)
    vol = ingest(tmp_path / "in", dst, dtype="uint16", overwrite=True, progress=False)
    assert vol.dtype == np.uint16 and read_all(vol)[3, 0, 0] == 30
    save_png(tmp_path / "wide" / "0.png", np.full((4, 4), 300, np.uint16))
    with pytest.raises(BlocksFailed, match="do not fit uint8") as err:
        ingest(tmp_path / "wide", tmp_path / "o.zarr" / "w", dtype="uint8", progress=False)
    assert "wider dtype (--dtype)" in one_line(err)


def test_source_and_op_pickle(tmp_path: Path) -> None:
    expected = numbered_slices(tmp_path / "in", 3)
    gz = gzip_file(write_h5(tmp_path / "v.h5", stack=expected))
    for src in (str(tmp_path / "in"), str(gz)):
        source = open_source(src)
        first = source.read(0, 3)  # opened in this process
        op = IngestOp(source=source, output="out.zarr/raw", dtype="uint8")
        clone = pickle.loads(pickle.dumps(op))
        assert clone.params() == op.params() and clone.source._handle is None  # files reopen lazily
        np.testing.assert_array_equal(clone.source.read(0, 3), first)
        clone.source.close()
        source.close()
    assert isinstance(open_source(str(gz)), Hdf5Volume)


# -- bad input -------------------------------------------------------------------------------------
def _different_shapes(tmp: Path) -> str:
    save_png(tmp / "s" / "0.png", np.zeros((4, 4), np.uint8))
    save_png(tmp / "s" / "1.png", np.zeros((4, 5), np.uint8))
    return str(tmp / "s")


def _garbage_png(tmp: Path) -> str:
    numbered_slices(tmp / "g", 2)
    (tmp / "g" / "1.png").write_bytes(b"this is no png")
    return str(tmp / "g")


def _truncated_png(tmp: Path) -> str:
    numbered_slices(tmp / "t", 1)
    path = save_png(tmp / "t" / "1.png", np.random.default_rng(0).integers(0, 255, (6, 9), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:60])  # the header survives, the pixels do not
    return str(tmp / "t")


def _mixed_kinds(tmp: Path) -> str:
    numbered_slices(tmp / "m", 1)
    tifffile.imwrite(tmp / "m" / "1.tif", np.zeros((6, 9), np.uint8))
    return str(tmp / "m")


def _empty(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    (tmp / "empty" / "README").write_text("nothing")
    return str(tmp / "empty")


def _corrupt_gz(tmp: Path) -> str:
    (tmp / "bad.h5.gz").write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000))[:1000])  # cut short
    return str(tmp / "bad.h5.gz")


def _not_hdf5(tmp: Path) -> str:
    (tmp / "bad.h5").write_bytes(b"not hdf5" * 100)
    return str(tmp / "bad.h5")


def _unknown_dataset(tmp: Path) -> str:
    return str(write_h5(tmp / "a.h5", raw=np.zeros((2, 2, 2), np.uint8))) + ":labels"


def _no_volume(tmp: Path) -> str:
    return str(write_h5(tmp / "a.h5", table=np.zeros((2, 2), np.uint8)))


def _hyperstack(tmp: Path) -> str:
    tifffile.imwrite(tmp / "h.tif", np.zeros((3, 2, 4, 5), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    return str(tmp / "h.tif")


BAD_SOURCES: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda tmp: str(tmp / "nowhere"), "does not exist"),
    "missing h5": (lambda tmp: str(tmp / "nowhere.h5:stack"), "does not exist"),
    "empty folder": (_empty, "holds no PNG or TIFF slices"),
    "empty glob": (lambda tmp: str(tmp / "*.png"), "no files match"),
    "different shapes": (_different_shapes, r"slice 1 \(.*1.png\) is 4x5 \(y, x\) but slice 0"),
    "corrupt image": (_garbage_png, "cannot read image .*1.png"),
    "truncated image": (_truncated_png, "cannot read image .*1.png"),
    "png and tiff": (_mixed_kinds, "both PNG and TIFF"),
    "tiff with channels": (_hyperstack, r"axes ZCYX\), not z, y, x"),
    "corrupt gzip": (_corrupt_gz, "cannot decompress"),
    "not hdf5": (_not_hdf5, "cannot open .* as HDF5"),
    "unknown dataset": (_unknown_dataset, "has no dataset 'labels' .*it holds: raw"),
    "no 3d dataset": (_no_volume, "holds no 3D dataset"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_sources(tmp_path: Path, case: str) -> None:
    make, message = BAD_SOURCES[case]
    src = make(tmp_path)
    with pytest.raises(ConnectileError, match=message) as err:
        ingest(src, tmp_path / "o.zarr" / "raw", progress=False)
    one_line(err)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"voxel_size": (40, 4)}, ConfigError, r"voxel_size \(--voxel-size\) must be three positive numbers"),
        ({"voxel_size": (40, -4, 4)}, ConfigError, r"voxel_size \(--voxel-size\) must be three positive numbers"),
        ({"chunks": (0, 4, 4)}, ConfigError, r"chunks \(--chunks\) must be three positive numbers"),
        ({"dtype": "uint7"}, ConfigError, "unknown dtype"),
        ({"format": "tiff"}, ConfigError, "unknown output format"),
        ({"lut": "transforms"}, ConfigError, "--lut transforms applies to HDF5 sources"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict[str, object], error: type[ConnectileError], message: str) -> None:
    numbered_slices(tmp_path / "in", 2)
    with pytest.raises(error, match=message) as err:
        ingest(tmp_path / "in", tmp_path / "o.zarr" / "raw", progress=False, **kwargs)  # type: ignore[arg-type]
    one_line(err)


def test_unwritable_destination(tmp_path: Path) -> None:
    numbered_slices(tmp_path / "in", 2)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(StorageError, match="is a file, not a folder") as err:
        ingest(tmp_path / "in", tmp_path / "file" / "o.zarr" / "raw", progress=False)
    one_line(err)


# -- command line ----------------------------------------------------------------------------------
def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = numbered_slices(tmp_path / "in", 3)
    dst = tmp_path / "o.zarr" / "raw"
    code = main(["ingest", str(tmp_path / "in"), str(dst), "--voxel-size", "40,4,4", "--chunks", "2,8,8", "--no-progress"])
    out = capsys.readouterr().out.strip()
    assert code == 0 and out.count("\n") == 0 and "3x6x9" in out and "uint8" in out and str(dst) in out
    vol = open_volume(dst)
    assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.chunk_shape == (2, 6, 8)
    np.testing.assert_array_equal(read_all(vol), expected)

    assert main(["ingest", str(tmp_path / "in"), str(dst), "--voxel-size", "40,x,4"]) == 2
    assert "--voxel-size must be three comma-separated numbers" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nowhere"), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


def test_command_and_pipeline_stage_share_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """Issue 15: ``connectile ingest``, the pipeline's ``ingest`` stage and :func:`ingest` take one
    declaration of the settings (:class:`~engine.params.IngestParams`: the stage's layout, its ``labels_*``
    conversion): the same defaults, the same output bytes for raw and for binarized labels."""
    import argparse
    import inspect

    from engine.commands import ingest as command
    from engine.commands._flags import flag
    from engine.params import IngestConversion, IngestLayout, IngestParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.ingest import IngestSection, IngestStage

    defaults = IngestParams().settings()
    section = IngestSection(raw="x")
    assert section.settings() == IngestLayout().settings() and section.labels_conversion() == IngestConversion().settings()
    assert {**section.settings(), **section.labels_conversion()} == defaults
    sig = inspect.signature(ingest).parameters
    assert {k: sig[k].default for k in defaults} == defaults  # the library call's defaults are the model's
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["ingest"].format_help() for name in defaults)
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 255, (5, 40, 300), dtype=np.uint8)
    mask = (rng.random((5, 40, 300)) > 0.6).astype(np.uint8) * 255
    for z in range(5):
        save_png(tmp_path / "raw" / f"{z}.png", raw[z])
        save_png(tmp_path / "mask" / f"{z}.png", mask[z])
    assert main(["ingest", str(tmp_path / "raw"), str(tmp_path / "cli.zarr" / "raw"), "--no-progress"]) == 0
    assert main(["ingest", str(tmp_path / "mask"), str(tmp_path / "cli.zarr" / "labels"), "--binarize", "--no-progress"]) == 0
    ctx = StageContext(run_dir=tmp_path / "run", stage="ingest", runtime=RuntimeSection(backend="serial", progress=False))
    out = IngestStage().run(ctx, IngestSection(raw=str(tmp_path / "raw"), labels=str(tmp_path / "mask"), labels_binarize=True))
    for name, expected in (("raw", raw), ("labels", (mask > 0).astype(np.uint8))):
        a, b = open_volume(tmp_path / "cli.zarr" / name), open_volume(out[name])
        assert a.chunk_shape == b.chunk_shape == (5, 40, 256) and a.dtype == b.dtype and a.voxel_size == b.voxel_size
        np.testing.assert_array_equal(read_all(a), expected)
        np.testing.assert_array_equal(read_all(a), read_all(b))


# -- the real data sets (../shared/data, see its README) -------------------------------------------
def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def unique_counts(a: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(a, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


@pytest.mark.realdata
def test_flyem_medulla_sample2(shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = shared_data / "flyem_medulla_sample2"
    images = ingest(root / "grayscale_maps", tmp_path / "m.zarr" / "raw", voxel_size=(10, 10, 10), progress=False)
    assert images.shape == (250, 250, 250) and images.dtype == np.uint8 and images.voxel_size == (10.0, 10.0, 10.0)
    raw = read_all(images)
    for k in (0, 9, 10, 137, 249):  # iso.2600.png is slice 0 ... iso.2849.png slice 249
        np.testing.assert_array_equal(raw[k], png(root / "grayscale_maps" / f"iso.{2600 + k}.png"))
    assert int(raw[100].sum()) == 7938668

    with caplog.at_level(logging.INFO):
        gt_vol = ingest(root / "groundtruth.h5.gz", tmp_path / "m.zarr" / "gt", progress=False)
    assert "found 'transforms' (21317 rows) beside 'stack'" in caplog.text
    assert gt_vol.shape == (250, 250, 250) and gt_vol.dtype == np.uint64
    gt = read_all(gt_vol)
    bodies = unique_counts(gt)
    assert len(bodies) == 526  # the README's 526 bodies count id 0 ...
    assert bodies[0] == 250  # ... which is 250 voxels (supervoxel 0): 525 nonzero bodies
    assert max(bodies, key=bodies.__getitem__) == 114488 and bodies[114488] == 3702057
    assert gt[125, 125, 125] == 114488 and gt[0, 0, :3].tolist() == [0, 228, 228]

    overseg = ingest(root / "oversegmented_stack_labels.h5.gz", tmp_path / "m.zarr" / "ws", lut=False, progress=False)
    assert overseg.dtype == np.int32 and len(np.unique(read_all(overseg))) == 3337  # supervoxels, unmapped


@pytest.mark.realdata
@pytest.mark.parametrize(("split", "ids", "boundary", "image_sum"), [("train", 88, 67136, 148221759), ("test", 133, 87998, 142056807)])
def test_gala_fibsem(shared_data: Path, tmp_path: Path, split: str, ids: int, boundary: int, image_sum: int) -> None:
    root = shared_data / "gala_fibsem"
    image = ingest(root / f"{split}-image.h5", tmp_path / "g.zarr" / "raw", progress=False)
    assert image.shape == (50, 100, 200) and image.dtype == np.uint8
    assert int(read_all(image).sum(dtype=np.int64)) == image_sum
    gt = ingest(root / f"{split}-gt.lzf.h5", tmp_path / "g.zarr" / "gt", progress=False)  # lzf-compressed
    assert gt.shape == (50, 100, 200) and gt.dtype == np.int32
    labels = unique_counts(read_all(gt))
    # the README's 88 / 133 "neurons" count id 0 (boundary): ids are exactly 0..87 / 0..132
    assert sorted(labels) == list(range(ids)) and labels[0] == boundary


@pytest.fixture(scope="module")
def lucchi(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, Volume]:
    out = tmp_path_factory.mktemp("lucchi") / "l.zarr"
    root = shared_data / "lucchi_pp"
    return ingest(root / "Train_In", out / "raw", progress=False), ingest(root / "Train_Out", out / "mito", progress=False)


@pytest.mark.realdata
def test_lucchi_pp(shared_data: Path, lucchi: tuple[Volume, Volume]) -> None:
    images, mito = lucchi
    assert images.shape == mito.shape == (165, 768, 1024) and images.dtype == mito.dtype == np.uint8
    root = shared_data / "lucchi_pp"
    for k in (0, 2, 10, 100, 164):  # Train_In/mask0010.png is image 10; Train_Out/10.png (not the 3rd file) label 10
        box = Box((k, 0, 0), (k + 1, 768, 1024))
        np.testing.assert_array_equal(images.read(box)[0], png(root / "Train_In" / f"mask{k:04d}.png"))
        np.testing.assert_array_equal(mito.read(box)[0], png(root / "Train_Out" / f"{k}.png"))
    labels = read_all(mito)
    assert unique_counts(labels) == {0: 120683979, 255: 9077301}  # mitochondria = 255
    assert [int((labels[k] == 255).sum()) for k in (2, 10, 100, 164)] == [80259, 77250, 29928, 37799]


@pytest.mark.realdata
def test_cardona_vnc(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "cardona_vnc"
    raw = ingest(root / "stack1" / "raw", tmp_path / "c.zarr" / "raw", voxel_size=(50, 4.6, 4.6), progress=False)
    assert raw.shape == (20, 1024, 1024) and raw.dtype == np.uint8 and raw.voxel_size == (50.0, 4.6, 4.6)
    data = read_all(raw)
    assert [int(data[k].sum()) for k in (0, 19)] == [134930314, 134699407]
    np.testing.assert_array_equal(data[12], tifffile.imread(root / "stack1" / "raw" / "12.tif"))

    labels = read_all(ingest(root / "stack1" / "labels", tmp_path / "c.zarr" / "labels", progress=False))
    counts = unique_counts(labels)
    assert set(counts) <= {0, 32, 64, 96, 128, 159, 191, 223, 255}
    assert counts == {0: 535987, 32: 602018, 64: 704540, 96: 677199, 128: 1078689, 159: 597185, 191: 1127679, 223: 117147, 255: 15531076}

    # binary folders mix PNG modes '1' and 'L' (mitochondria: slices 1, 7 and 18 are '1'; synapses: slice 2 is 'L')
    foreground = {"membranes": 4273417, "mitochondria": 1130084, "synapses": 117147}
    for name, count in foreground.items():
        vol = ingest(root / "stack1" / name, tmp_path / "c.zarr" / name, binarize=True, progress=False)
        mask = read_all(vol)
        assert vol.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
        assert int(mask.sum()) == count
        if name == "mitochondria":
            assert Image.open(root / "stack1" / name / "07.png").mode == "1"
            np.testing.assert_array_equal(mask[7], png(root / "stack1" / name / "07.png").astype(np.uint8))
            assert Image.open(root / "stack1" / name / "08.png").mode == "L"
            np.testing.assert_array_equal(mask[8], (png(root / "stack1" / name / "08.png") != 0).astype(np.uint8))
    np.testing.assert_array_equal(mask, (labels == 223).astype(np.uint8))  # synapses are the labels' 223

    assert open_source(str(root / "stack2" / "raw")).shape == (20, 1024, 1024)


@pytest.mark.realdata
def test_isbi2012(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "isbi2012"
    image = ingest(root / "train" / "image", tmp_path / "i.zarr" / "raw", voxel_size=(50, 4, 4), progress=False)
    label = ingest(root / "train" / "label", tmp_path / "i.zarr" / "label", progress=False)
    assert image.shape == label.shape == (30, 512, 512) and image.dtype == label.dtype == np.uint8
    images, labels = read_all(image), read_all(label)
    assert unique_counts(labels) == {0: 1727250, 255: 6137070}  # 0 = membrane, 255 = cell interior
    assert [int((labels[k] == 255).sum()) for k in (2, 10, 29)] == [197578, 200645, 218222]
    assert [int(images[k].sum()) for k in (2, 10, 29)] == [35484654, 36511488, 34950447]
    np.testing.assert_array_equal(labels[10], png(root / "train" / "label" / "10.png"))
    assert open_source(str(root / "test")).shape == (30, 512, 512)


def test_ingest_on_ray_equals_serial_and_resumes(tmp_path: Path, ray_cluster: str) -> None:
    numbered_slices(tmp_path / "in", 12)
    serial = ingest(tmp_path / "in", tmp_path / "a.zarr" / "raw", chunks=(2, 8, 8), progress=False)
    on_ray = ingest(tmp_path / "in", tmp_path / "b.zarr" / "raw", chunks=(2, 8, 8), progress=False, backend="ray", workers=2)
    assert np.array_equal(serial.read(serial.box), on_ray.read(on_ray.box))
    import json

    summary = json.loads((tmp_path / "b.zarr" / ".connectile" / "raw.ingest" / "summary.json").read_text())
    assert summary["done"] == 6 and summary["backend"] == "ray"
    again = ingest(tmp_path / "in", tmp_path / "b.zarr" / "raw", chunks=(2, 8, 8), progress=False, backend="ray", workers=2)
    assert np.array_equal(again.read(again.box), serial.read(serial.box))
    summary = json.loads((tmp_path / "b.zarr" / ".connectile" / "raw.ingest" / "summary.json").read_text())
    assert summary["done"] == 0 and summary["already_done"] == 6
