"""``connectile synth DST --shape Z,Y,X --seed N``: write a synthetic EM volume with ground truth.

Writes ``raw``, ``neurons``, ``mito`` and ``synapses`` into the group DST (see :mod:`engine.synth`).
Every field of :class:`~engine.synth.SynthParams` is an option of its own, generated from the model
(its description and default: ``--neuron-spacing 200``, ``--mito-radius 40,100``; ``--mito`` and
``--synapses`` are short for ``--mito-probability`` and ``--synapse-probability``); ``--set name=value``
(repeatable) sets one too, and an option given beats it.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import yaml

from engine.commands._command import ADDRESS, Command, Settings, arg
from engine.commands._flags import params_from_args
from engine.errors import ConfigError
from engine.params import SynthLayout
from engine.synth.params import SynthParams

log = logging.getLogger(__name__)

def parse_triple(text: str | None, what: str, kind: type = int) -> tuple[Any, ...] | None:
    """``"64,256,256"`` -> ``(64, 256, 256)``; a one-line :class:`ConfigError` otherwise."""
    if text is None:
        return None
    parts = [t.strip() for t in str(text).replace("x", ",").split(",")]
    try:
        values = tuple(kind(t) for t in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ConfigError(f"{what} must be three positive numbers Z,Y,X, got {text!r}", f"e.g. {what} 64,256,256" if kind is int else f"e.g. {what} 40,8,8")
    return values


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r} is not NAME=VALUE", "e.g. --set neuron_stretch=6")
        value = yaml.safe_load(f"[{text}]") if "," in text and not text.strip().startswith("[") else yaml.safe_load(text)
        out[name.strip().replace("-", "_")] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Write the volume (and the preview) asked for by ``args``."""
    from engine.synth import save_preview, synthesize

    shape = parse_triple(args.shape, "--shape")
    layout = params_from_args(SynthLayout, args)
    from_set = _parse_set(args.set)
    if "seed" in from_set:
        raise ConfigError("the seed is set with --seed, not --set seed=", "use --seed N")
    unknown = sorted(set(from_set) - set(SynthParams.model_fields))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}=...: synth has no parameter {unknown[0]!r}", "see connectile synth --help or docs/synth.md for the parameters")
    # the flags given (the generated ones leave no attribute when absent; a bad one is named as a flag) beat --set
    # (its values are checked with them by synthesize, a bad one named as the parameter the user typed)
    flags = params_from_args(SynthParams, args)
    overrides = {**from_set, **{k: getattr(flags, k) for k in flags.model_fields_set}}
    start = time.perf_counter()
    vols = synthesize(
        args.dst, shape, **layout.settings(), overwrite=args.overwrite, progress=not args.no_progress,
        backend=args.backend, workers=args.workers, address=args.address, **overrides
    )
    raw = vols["raw"]
    print(
        f"wrote {args.dst}: raw, neurons, mito, synapses of shape {raw.spatial_shape} at {tuple(raw.voxel_size)} nm "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if args.preview:
        save_preview(args.dst, args.preview)
        print(f"preview: {args.preview}")
    return 0


add_parser = Command(
    "synth", run, help="write a synthetic EM volume with ground truth (neurons, mitochondria, synapses)", description=__doc__, raw=True,
    flags=(
        arg("dst", help="output group, e.g. out.zarr (arrays raw, neurons, mito, synapses)"),
        arg("--shape", required=True, metavar="Z,Y,X", help="volume size in voxels"),
        Settings(SynthLayout, "storage (the pipeline's synth stage takes the same settings)"),
        Settings(SynthParams, "the volume (the pipeline's synth.params; docs/synth.md)", defaults=False,
                 aliases={"mito_probability": ("--mito",), "synapse_probability": ("--synapses",)}),
        arg("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter by its name, e.g. --set neuron_stretch=6 (an option given beats it)"),
        arg("--overwrite", action="store_true", help="replace existing outputs"),
        arg("--preview", metavar="PNG", help="also save a preview image"),
        arg("--no-progress", action="store_true", help="no progress bar"),
        arg("--backend", choices=("serial", "ray"), default="serial", help="where blocks run (default: %(default)s; ray for big volumes)"),
        arg("--workers", type=int, default=None, help="Ray workers (default: one per CPU)"),
        ADDRESS,
    ),
).add_parser
