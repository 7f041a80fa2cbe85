"""The params models of engine/params.py (issue 15): every model gives command-line flags, and the
``affinities`` stage and its op take their settings from :class:`~engine.params.AffinitiesParams`."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import numpy as np
import pytest

import engine.params as params
from engine.commands._flags import add_flags, flag, params_from_args
from engine.config import Params
from engine.geometry import Box

MODELS = [m for _, m in inspect.getmembers(params, inspect.isclass) if issubclass(m, Params) and m is not Params]
#: fields whose flags a command writes by hand (ingest: --lut DATASET / --no-lut)
BY_HAND = {"lut"}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_params_model_gives_flags_whose_defaults_are_the_models(model: type[Params]) -> None:
    """Each field a flag with the model's default; parsed back with no flag given, the model's defaults."""
    parser = argparse.ArgumentParser()
    add_flags(parser, model, skip=BY_HAND)
    text = parser.format_help()
    assert all(flag(name) in text for name in set(model.model_fields) - BY_HAND)
    assert params_from_args(model, parser.parse_args([])).settings() == model().settings()


def test_affinities_stage_and_op_share_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """The ``affinities`` section is AffinitiesParams + ``input``; the op takes the same settings and defaults;
    the stage writes the chunks asked for (capped at the volume), blockwise equal to the whole volume."""
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.affinities import (
        AffinitiesSection,
        AffinitiesStage,
        LabelAffinitiesOp,
        label_affinities,
    )
    from engine.storage import create_volume, open_volume

    defaults = params.AffinitiesParams().settings()
    assert AffinitiesSection(input="x").settings() == defaults == {"chunks": params.AFFINITIES_CHUNKS}
    assert LabelAffinitiesOp(input="a", output="b").settings() == defaults
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (6, 20, 40), dtype=np.uint64)
    labels[:, 5:9, 10:30] = 7  # runs of one label along every axis
    url = str(tmp_path / "l.zarr" / "labels")
    create_volume(url, labels.shape, "uint64", (6, 20, 40)).write(Box.from_shape(labels.shape), labels)
    whole = label_affinities(labels, Box.from_shape(labels.shape), Box.from_shape(labels.shape))
    assert whole.any()
    for chunks, want in (((4, 8, 16), (4, 8, 16)), (None, (6, 20, 40))):  # spatial chunks; the default capped at the volume
        ctx = StageContext(run_dir=tmp_path / f"run{want[0]}", stage="affinities", runtime=RuntimeSection(backend="serial", progress=False))
        section = AffinitiesSection(input=url) if chunks is None else AffinitiesSection(input=url, chunks=chunks)
        out = open_volume(AffinitiesStage().run(ctx, section)["affinities"])
        assert out.chunk_shape == want
        np.testing.assert_array_equal(out.read(out.box), whole)
