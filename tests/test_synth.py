"""The synthetic EM volume: deterministic, blockwise, with consistent ground truth."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from engine.cli import main
from engine.errors import ConfigError, ResumeMismatch
from engine.geometry import BlockGrid, Box
from engine.runtime.op import OPS
from engine.storage import open_volume
from engine.synth import OUTPUTS, SynthOp, SynthParams, synth_box, synthesize
from engine.synth.fields import normal_like, uniform, value_noise
from engine.synth.render import missing_sections, section_shifts

REPO = Path(__file__).resolve().parents[1]
# every axon tries a (small) mitochondrion and a synapse, so a small box holds several of both
RICH = SynthParams(seed=8, mito_probability=1.0, mito_radius=(35, 70), mito_length=(200, 500), synapse_probability=1.0)
BOX = Box((3, 10, 20), (35, 106, 116))  # off the origin, 32 x 96 x 96
SIX = [(0, 0, 1), (0, 1, 0), (1, 0, 0)]


@pytest.fixture(scope="module")
def rich() -> dict[str, np.ndarray]:
    return synth_box(RICH, BOX)


def _assemble(p: SynthParams, whole: Box, cuts: list[list[int]]) -> dict[str, np.ndarray]:
    out = {name: np.zeros(whole.shape, dtype) for name, dtype in OUTPUTS.items()}
    for (z0, z1), (y0, y1), (x0, x1) in itertools.product(*(itertools.pairwise(c) for c in cuts)):
        piece = Box((z0, y0, x0), (z1, y1, x1))
        for name, data in synth_box(p, piece).items():
            out[name][piece.to_slices(whole)] = data
    return out


def _pairs(a: np.ndarray) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """Slices of each pair of 6-neighbours along every axis."""
    out = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out.append((tuple(lo), tuple(hi)))
    return out


def _boundary(neurons: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Voxels with a 6-neighbour (along ``axes``) of another neuron."""
    edge = np.zeros(neurons.shape, bool)
    for axis, (lo, hi) in enumerate(_pairs(neurons)):
        if axis in axes:
            diff = neurons[lo] != neurons[hi]
            edge[lo] |= diff
            edge[hi] |= diff
    return edge


# -- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(rich: dict[str, np.ndarray]) -> None:
    again = synth_box(RICH, BOX)
    for name, dtype in OUTPUTS.items():
        assert rich[name].dtype == np.dtype(dtype)
        assert rich[name].shape == BOX.shape
        assert rich[name].tobytes() == again[name].tobytes(), name


def test_other_seed_gives_another_volume(rich: dict[str, np.ndarray]) -> None:
    other = synth_box(RICH.model_copy(update={"seed": 6}), BOX)
    assert (other["raw"] != rich["raw"]).mean() > 0.5
    assert not np.array_equal(other["neurons"], rich["neurons"])


@pytest.mark.parametrize(
    "params",
    [RICH, RICH.model_copy(update={"misalign": 0.4, "misalign_mode": "step", "misalign_labels": True, "missing": 0.2}),
     RICH.model_copy(update={"er": 1.0, "dark_cells": 0.3, "illumination": 0.4, "illumination_scale": 400.0, "misalign": 0.4}),
     RICH.model_copy(update={"mito_squeeze": True, "bodies": 1.0, "body_regions": 0.6, "body_region_scale": 300.0, "er": 0.5})],
    ids=["plain", "defects", "realism", "organelles"],
)
def test_any_block_layout_gives_the_same_volume(params: SynthParams) -> None:
    # uneven pieces, one of them a single voxel wide
    whole = synth_box(params, BOX)
    pieces = _assemble(params, BOX, [[3, 8, 35], [10, 47, 106], [20, 21, 70, 116]])
    for name in OUTPUTS:
        assert whole[name].tobytes() == pieces[name].tobytes(), name


def test_fields_depend_on_coordinates_only() -> None:
    z, y, x = np.arange(-3, 5) / 2.5, np.arange(7) / 2.5, np.arange(-2, 9) / 2.5
    full = value_noise(3, 1, [z, y, x])
    assert np.array_equal(full[2:, 1:4, 5:], value_noise(3, 1, [z[2:], y[1:4], x[5:]]))
    assert float(np.abs(full).max()) <= 1.0
    assert np.array_equal(uniform(1, 2, np.arange(-5, 5)), uniform(1, 2, np.arange(-5, 5)))
    noise = normal_like(9, 0, np.arange(200)[:, None], np.arange(200)[None, :])
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.03


# -- ground truth ------------------------------------------------------------------------------
def test_outputs_hold_every_structure(rich: dict[str, np.ndarray]) -> None:
    assert (rich["neurons"] != 0).all()  # dense: every voxel belongs to a neuron
    assert len(np.unique(rich["neurons"])) > 10
    assert len(np.unique(rich["mito"])) > 3
    assert {0, 1, 2} <= set(np.unique(rich["synapses"]).tolist())


def test_mitochondria_lie_inside_one_neuron_away_from_membranes(rich: dict[str, np.ndarray]) -> None:
    neurons, mito = rich["neurons"], rich["mito"]
    for mid in np.unique(mito[mito != 0]):
        hosts = np.unique(neurons[mito == mid])
        assert hosts.tolist() == [int(mid) // 8]
    assert not (_boundary(neurons) & (mito != 0)).any()


def test_synapses_join_two_neurons_at_a_membrane(rich: dict[str, np.ndarray]) -> None:
    neurons, syn = rich["neurons"], rich["synapses"]
    comps, n = ndimage.label(syn != 0, structure=np.ones((3, 3, 3)))
    checked = 0
    for k in range(1, n + 1):
        comp = comps == k
        pre = set(np.unique(neurons[comp & (syn == 1)]).tolist())
        post = set(np.unique(neurons[comp & (syn == 2)]).tolist())
        assert not pre & post
        if not (pre and post):
            continue  # cut by the box: the other side is outside
        touching = False
        for lo, hi in _pairs(syn):
            a, b = comp[lo] & comp[hi], neurons[lo] != neurons[hi]
            pair = ((syn[lo] == 1) & (syn[hi] == 2)) | ((syn[lo] == 2) & (syn[hi] == 1))
            touching |= bool((a & b & pair).any())
        assert touching, f"synapse {k}: pre and post sides do not meet at a membrane"
        checked += 1
    assert checked >= 2


def test_membranes_are_darker_than_cytoplasm(rich: dict[str, np.ndarray]) -> None:
    raw = rich["raw"].astype(float)
    edge = _boundary(rich["neurons"], axes=(1, 2))
    near = ndimage.binary_dilation(edge, structure=np.ones((1, 9, 9), bool))
    inside = ~near & (rich["mito"] == 0) & (rich["synapses"] == 0)
    assert raw[edge].mean() + 40 < raw[inside].mean()


# -- realism: intracellular membranes, dark cells, uneven illumination ---------------------------
def test_realism_options_change_the_raw_image_only() -> None:
    box = Box((0, 0, 0), (6, 96, 96))
    plain = synth_box(RICH, box)
    for option in ({"er": 1.0}, {"dark_cells": 0.3}, {"illumination": 0.4}):
        out = synth_box(RICH.model_copy(update=option), box)
        for name in ("neurons", "mito", "synapses"):
            assert np.array_equal(out[name], plain[name]), (option, name)
        assert (out["raw"] != plain["raw"]).mean() > 0.02, option


def test_er_tubules_lie_inside_cells_away_from_membranes() -> None:
    p = RICH.model_copy(update={"noise": 0.0})
    box = Box((0, 0, 0), (6, 128, 128))
    plain, er = synth_box(p, box), synth_box(p.model_copy(update={"er": 1.0}), box)
    darker = plain["raw"].astype(int) - er["raw"].astype(int)
    tubule = darker > 25
    assert tubule.mean() > 0.01  # there is ER ...
    assert (darker >= 0).all()  # ... it only darkens ...
    edge = _boundary(plain["neurons"], axes=(1, 2))
    near_edge = ndimage.binary_dilation(edge, structure=np.ones((1, 5, 5), bool))
    assert not (tubule & near_edge).any()  # ... and never reaches the membrane band of its cell
    mito_core = ndimage.binary_erosion(plain["mito"] != 0, structure=np.ones((1, 5, 5), bool))  # blur may reach the rim
    assert mito_core.any() and not (tubule & mito_core).any()


def test_dark_cells_are_darker_throughout() -> None:
    p = RICH.model_copy(update={"noise": 0.0, "texture": 0.0})
    box = Box((0, 0, 0), (4, 128, 128))
    plain, dark = synth_box(p, box), synth_box(p.model_copy(update={"dark_cells": 0.4, "dark_cell_level": 0.5}), box)
    inside = ~ndimage.binary_dilation(_boundary(plain["neurons"], axes=(1, 2)), structure=np.ones((1, 7, 7), bool)) & (plain["mito"] == 0)
    ratios = []
    for nid in np.unique(plain["neurons"][inside]):
        m = inside & (plain["neurons"] == nid)
        if m.sum() >= 50:
            ratios.append(dark["raw"][m].mean() / plain["raw"][m].mean())
    ratios_a = np.array(ratios)
    assert len(ratios_a) >= 10
    dark_share = float((ratios_a < 0.6).mean())
    assert 0.15 < dark_share < 0.7  # about dark_cells of the cells ...
    assert ((ratios_a < 0.6) | (ratios_a > 0.98)).all()  # ... each dark (about dark_cell_level) or untouched


def test_illumination_is_slow_and_bounded() -> None:
    from engine.synth.render import illumination_gain

    p = SynthParams(illumination=0.3, illumination_scale=800.0)
    gain = illumination_gain(p, Box((0, 0, 0), (8, 256, 256)))
    assert float(gain.min()) >= 0.7 - 1e-6 and float(gain.max()) <= 1.3 + 1e-6
    assert float(gain.max() - gain.min()) > 0.2  # it varies across the volume ...
    assert float(np.abs(np.diff(gain, axis=2)).max()) < 0.02  # ... slowly from pixel to pixel
    raw_lo = synth_box(p.model_copy(update={"illumination": 0.0}), Box((0, 0, 0), (2, 256, 256)))["raw"].astype(float)
    raw = synth_box(p, Box((0, 0, 0), (2, 256, 256)))["raw"].astype(float)
    g = gain[:2]
    assert raw[g < 0.85].mean() < raw_lo[g < 0.85].mean() - 10
    assert raw[g > 1.1].mean() > raw_lo[g > 1.1].mean() + 5


# -- section defects ---------------------------------------------------------------------------
def test_misaligned_sections_shift_the_raw_image_only() -> None:
    p = SynthParams(seed=2, misalign=0.5, misalign_shift=6)
    box = Box((0, 0, 0), (8, 48, 48))
    aligned = synth_box(p.model_copy(update={"misalign": 0.0}), box)
    moved = synth_box(p, box)
    shifts = section_shifts(p, 0, 8)
    assert shifts.any(axis=1).sum() >= 2 and not shifts.any(axis=1).all()
    for name in ("neurons", "mito", "synapses"):
        assert np.array_equal(moved[name], aligned[name])  # labels stay in tissue coordinates
    for z, (dy, dx) in enumerate(shifts):
        section = Box((z, -int(dy), -int(dx)), (z + 1, 48 - int(dy), 48 - int(dx)))
        assert np.array_equal(moved["raw"][z], synth_box(p.model_copy(update={"misalign": 0.0}), section)["raw"][0])
        assert np.array_equal(moved["raw"][z], aligned["raw"][z]) == (dy == 0 and dx == 0)
    with_labels = synth_box(p.model_copy(update={"misalign_labels": True}), box)
    assert np.array_equal(with_labels["raw"], moved["raw"])
    z = int(np.flatnonzero(shifts.any(axis=1))[0])
    assert not np.array_equal(with_labels["neurons"][z], aligned["neurons"][z])


def test_step_misalignment_adds_up() -> None:
    slip = SynthParams(seed=4, misalign=0.3)
    step = slip.model_copy(update={"misalign_mode": "step"})
    jumps = section_shifts(slip, 0, 40)
    assert np.array_equal(section_shifts(step, 0, 40), np.cumsum(jumps, axis=0))
    assert np.array_equal(section_shifts(step, 25, 40), np.cumsum(jumps, axis=0)[25:])


# -- dense mitochondria and regional dark bodies (the demo's object target and its confounders) -----
SQUEEZED = RICH.model_copy(update={"mito_squeeze": True, "noise": 0.0})


def test_squeezed_mitochondria_are_denser_and_stay_inside_their_cell(rich: dict[str, np.ndarray]) -> None:
    out = synth_box(SQUEEZED, BOX)
    neurons, mito = out["neurons"], out["mito"]
    assert np.array_equal(neurons, rich["neurons"])
    assert (mito != 0).mean() > 2.0 * (rich["mito"] != 0).mean() and (mito != 0).mean() > 0.01
    for mid in np.unique(mito[mito != 0]):
        assert np.unique(neurons[mito == mid]).tolist() == [int(mid) // 8]
    assert not (_boundary(neurons) & (mito != 0)).any()  # cut off inside the cell, never on its membrane


def test_dark_bodies_are_regional_unlabelled_and_dark() -> None:
    from engine.synth.bodies import in_body_region
    from engine.synth.render import organelles

    box = Box((0, 0, 0), (12, 160, 160))
    p = SQUEEZED.model_copy(update={"bodies": 1.0, "body_regions": 0.4, "body_region_scale": 400.0})
    plain, out = synth_box(SQUEEZED, box), synth_box(p, box)
    bodies = organelles(p, box)[2]
    assert len(bodies) >= 5 and in_body_region(p, bodies.centre).all()
    hosts = set(bodies.host.tolist())
    # the labels: neurons and synapses unchanged; a neuron that holds a body lost its mitochondria, no other did
    for name in ("neurons", "synapses"):
        assert np.array_equal(out[name], plain[name]), name
    lost = set((np.unique(plain["mito"][plain["mito"] != 0]) // 8).tolist()) - set((np.unique(out["mito"][out["mito"] != 0]) // 8).tolist())
    assert lost and lost <= hosts
    # the image: bodies darken voxels of their own neurons only, and only some regions hold them
    darker = (plain["raw"].astype(int) - out["raw"].astype(int) > 40) & (plain["mito"] == 0)
    assert darker.mean() > 0.003
    assert np.isin(out["neurons"][darker], list(hosts)).all()
    column = darker.any(axis=0).reshape(5, 32, 5, 32).any(axis=(1, 3))  # 5 x 5 tiles of 256 nm
    assert 0 < column.mean() < 0.9
    assert np.array_equal(synth_box(p.model_copy(update={"bodies": 0.0}), box)["raw"], plain["raw"])


def test_missing_sections_are_uniform_and_keep_labels() -> None:
    p = SynthParams(seed=3, missing=0.4, missing_value=17)
    box = Box((0, 0, 0), (10, 32, 32))
    out = synth_box(p, box)
    full = synth_box(p.model_copy(update={"missing": 0.0}), box)
    gone = missing_sections(p, 0, 10)
    assert 0 < gone.sum() < 10
    assert (out["raw"][gone] == 17).all()
    assert np.array_equal(out["raw"][~gone], full["raw"][~gone])
    for name in ("neurons", "mito", "synapses"):
        assert np.array_equal(out[name], full[name])


# -- writing volumes ---------------------------------------------------------------------------
def test_synthesize_writes_voxel_size_and_blocks_match_synth_box(tmp_path: Path) -> None:
    p = SynthParams(seed=1, voxel_size=(30.0, 6.0, 6.0))
    vols = synthesize(tmp_path / "s.zarr", (8, 64, 48), params=p, chunks=(4, 32, 32), progress=False)
    whole = synth_box(p, Box((0, 0, 0), (8, 64, 48)))
    for name, dtype in OUTPUTS.items():
        vol = open_volume(tmp_path / "s.zarr" / name)
        assert vol.voxel_size == (30.0, 6.0, 6.0)
        assert vol.dtype == np.dtype(dtype) and vol.chunk_shape == (4, 32, 32)
        assert np.array_equal(vols[name].read(vol.box), whole[name]), name
    assert vols["raw"].attrs["synth"]["seed"] == 1
    assert vols["raw"].attrs["synth"]["voxel_size"] == [30.0, 6.0, 6.0]
    with pytest.raises(ResumeMismatch, match=r"other settings \(op\.synth\.seed: 1 -> 2"):
        synthesize(tmp_path / "s.zarr", (8, 64, 48), seed=2, chunks=(4, 32, 32), progress=False)


def test_op_is_registered_and_pickles(tmp_path: Path) -> None:
    op = SynthOp(output=str(tmp_path / "p.zarr"), shape=(4, 32, 32), chunks=(4, 16, 16), synth=RICH)
    grid = BlockGrid(Box((0, 0, 0), (4, 32, 32)), (4, 16, 16))
    op.prepare(grid)
    op.setup(grid)
    back = pickle.loads(pickle.dumps(op))
    assert OPS["synth"] is SynthOp
    assert back.params() == op.params() and back.synth == RICH
    block = grid.block(3)
    assert back.process(block)["voxels"] == block.write.size
    expected = synth_box(RICH, block.write)
    assert np.array_equal(open_volume(op.url("raw")).read(block.write), expected["raw"])


def test_bad_parameters_give_one_line_config_errors(tmp_path: Path) -> None:
    dst = tmp_path / "bad.zarr"
    cases = [
        ({"shape": (-4, 32, 32)}, "shape"),
        ({"shape": (4, 32, 32), "chunks": (4, 16)}, "chunks"),
        ({"shape": (4, 32, 32), "chunks": (4, 16, 16), "block": (4, 24, 16)}, "multiple of chunks"),
        ({"shape": (4, 32, 32), "noise": -0.5}, "noise"),
        ({"shape": (4, 32, 32), "bogus": 1}, "bogus"),
        ({"shape": (4, 32, 32), "mito_radius": (90, 10)}, "mito_radius"),
        ({"shape": (4, 32, 32), "dendrite_spacing": 100}, "dendrite_spacing"),
    ]
    for kwargs, word in cases:
        with pytest.raises(ConfigError, match=word) as err:
            synthesize(dst, progress=False, **kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    assert not dst.exists()


def test_cli_writes_a_volume_and_a_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst, png = tmp_path / "c.zarr", tmp_path / "c.png"
    args = ["synth", str(dst), "--shape", "8,64,64", "--seed", "3", "--chunks", "8,64,64", "--voxel-size", "40,8,8"]
    assert main([*args, "--no-progress", "--misalign", "0.2", "--set", "neuron_stretch=6", "--preview", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert open_volume(dst / "neurons").spatial_shape == (8, 64, 64)
    assert open_volume(dst / "raw").attrs["synth"]["neuron_stretch"] == 6.0
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "d.zarr"), "--shape=-1,64,64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--shape" in err and "\n" not in err


def test_docs_describe_every_parameter() -> None:
    import engine.synth.params as module

    docs = (REPO / "docs" / "synth.md").read_text()
    for name, field in SynthParams.model_fields.items():
        assert field.description, name
        assert f"`{name}`" in docs, f"docs/synth.md lacks {name}"
        assert name in (module.__doc__ or ""), f"the params module docstring lacks {name}"
    assert (REPO / "docs" / "synth_preview.png").is_file()


def test_synthesize_on_ray_equals_serial_and_resumes(tmp_path: Path, ray_cluster: object) -> None:
    """The Ray backend writes the same bytes as the serial one; a second call finds every block done."""
    shape, chunks = (16, 96, 96), (8, 48, 48)
    serial = synthesize(tmp_path / "s.zarr", shape, seed=3, chunks=chunks, progress=False)
    on_ray = synthesize(tmp_path / "r.zarr", shape, seed=3, chunks=chunks, progress=False, backend="ray", workers=2)
    for name in OUTPUTS:
        np.testing.assert_array_equal(serial[name].read(serial[name].box), on_ray[name].read(on_ray[name].box), err_msg=name)
    state = tmp_path / "r.zarr" / ".connectile" / "raw.synth"
    assert (state / "summary.json").is_file()
    import json

    first = json.loads((state / "summary.json").read_text())
    assert first["done"] == 8 and first["ok"]
    synthesize(tmp_path / "r.zarr", shape, seed=3, chunks=chunks, progress=False, backend="ray", workers=2)
    again = json.loads((state / "summary.json").read_text())
    assert again["done"] == 0 and again["already_done"] == 8


def test_command_and_pipeline_stage_share_the_layout_and_its_defaults(tmp_path: Path) -> None:
    """Issue 15: ``connectile synth``, the pipeline's ``synth`` stage and :func:`synthesize` store the volume
    by one declaration (:class:`~engine.params.SynthLayout`): the same defaults (the stage had chunks
    16,64,64, the command 32,128,128), the same bytes and chunks."""
    import argparse
    import inspect

    from engine.commands import synth as command
    from engine.commands._flags import flag
    from engine.params import SynthLayout
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.synth import SynthSection, SynthStage

    defaults = SynthLayout().settings()
    assert SynthSection().settings() == defaults
    sig = inspect.signature(synthesize).parameters
    assert {k: sig[k].default for k in defaults} == defaults
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["synth"].format_help() for name in defaults)
    shape = (32, 160, 136)  # several chunks of the default 32,128,128 in y and x
    assert main(["synth", str(tmp_path / "cli.zarr"), "--shape", ",".join(map(str, shape)), "--seed", "0", "--no-progress"]) == 0
    ctx = StageContext(run_dir=tmp_path / "run", stage="synth", runtime=RuntimeSection(backend="serial", progress=False))
    out = SynthStage().run(ctx, SynthSection(shape=shape))
    for name in OUTPUTS:
        a, b = open_volume(tmp_path / "cli.zarr" / name), open_volume(out[name])
        assert a.chunk_shape == b.chunk_shape and a.chunk_shape[-3:] == defaults["chunks"]
        np.testing.assert_array_equal(a.read(a.box), b.read(b.box))


def test_cli_flags_are_generated_from_the_params_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15: every SynthParams field is a flag of ``connectile synth`` with the model's default in its
    help (no second list of flags and defaults); ranges are ``MIN,MAX``; a flag beats ``--set``; the
    command line reads the model without importing TensorStore."""
    import argparse
    import subprocess
    import sys

    from engine.commands import synth as command
    from engine.commands._flags import flag

    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    text = " ".join(sub.choices["synth"].format_help().split())
    for name in SynthParams.model_fields:
        assert flag(name) in text, name
    assert "--mito-probability MITO_PROBABILITY, --mito MITO_PROBABILITY" in text and "--mito-radius MIN,MAX" in text
    dst = tmp_path / "f.zarr"
    args = ["synth", str(dst), "--shape", "4,64,64", "--chunks", "4,64,64", "--no-progress", "--seed", "2"]
    assert main([*args, "--mito", "0.9", "--mito-radius", "30,90", "--mito-squeeze", "--set", "mito_probability=0.1", "--set", "noise=0.1"]) == 0
    stored = open_volume(dst / "raw").attrs["synth"]
    assert stored["mito_probability"] == 0.9 and tuple(stored["mito_radius"]) == (30.0, 90.0) and stored["mito_squeeze"] is True
    assert stored["noise"] == 0.1 and stored["seed"] == 2 and stored["neuron_spacing"] == SynthParams().neuron_spacing
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "g.zarr"), "--shape", "4,64,64", "--mito-radius", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--mito-radius" in err and "min,max" in err and "\n" not in err
    assert not (tmp_path / "g.zarr").exists()
    assert main(["synth", str(tmp_path / "h.zarr"), "--shape", "4,64,64", "--set", "neuron_strech=6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "neuron_strech" in err and "\n" not in err
    probe = "import sys, engine.commands.synth; print('tensorstore' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip() == "False"
