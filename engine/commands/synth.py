"""``connectile synth DST --shape Z,Y,X --seed N``: write a synthetic EM volume with ground truth.

Writes ``raw``, ``neurons``, ``mito`` and ``synapses`` into the group DST (see :mod:`engine.synth`).
The main parameters have options of their own; any other field of
:class:`~engine.synth.SynthParams` is set with ``--set name=value`` (repeatable).
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

log = logging.getLogger(__name__)

#: options that set a SynthParams field directly: option dest -> field name
_FIELDS = {
    "neuron_spacing": "neuron_spacing",
    "mito": "mito_probability",
    "synapses": "synapse_probability",
    "noise": "noise",
    "blur": "blur",
    "misalign": "misalign",
    "misalign_shift": "misalign_shift",
    "misalign_mode": "misalign_mode",
    "missing": "missing",
}


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
    overrides = _parse_set(args.set)
    voxel_size = parse_triple(args.voxel_size, "--voxel-size", float)
    if voxel_size is not None:
        overrides["voxel_size"] = voxel_size
    for dest, field in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides[field] = value
    if args.misalign_labels:
        overrides["misalign_labels"] = True
    if "seed" in overrides:
        raise ConfigError("the seed is set with --seed, not --set seed=", "use --seed N")
    start = time.perf_counter()
    vols = synthesize(
        args.dst, shape, args.seed, **layout.settings(), overwrite=args.overwrite, progress=not args.no_progress,
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
        arg("--seed", type=int, default=0, help="random seed (default 0)"),
        Settings(SynthLayout, "storage (the pipeline's synth stage takes the same settings)"),
        arg("--voxel-size", default=None, metavar="Z,Y,X", help="voxel size in nm (default 40,8,8)"),
        arg("--neuron-spacing", type=float, metavar="NM", help="mean distance between small neurites (default 260)"),
        arg("--mito", type=float, metavar="P", help="chance that an axon tries a mitochondrion (default 0.5)"),
        arg("--synapses", type=float, metavar="P", help="chance that an axon tries a synapse (default 0.6)"),
        arg("--noise", type=float, metavar="S", help="pixel noise, fraction of the range (default 0.06)"),
        arg("--blur", type=float, metavar="NM", help="in-plane blur sigma (default 7)"),
        arg("--misalign", type=float, metavar="P", help="chance per section of a shifted raw section (default 0)"),
        arg("--misalign-shift", type=int, metavar="VOXELS", help="largest shift (default 12)"),
        arg("--misalign-mode", choices=["slip", "step"], help="slip: one section moves; step: all later ones too"),
        arg("--misalign-labels", action="store_true", help="shift the labels with the raw sections"),
        arg("--missing", type=float, metavar="P", help="chance per section of a missing (uniform) raw section (default 0)"),
        arg("--set", action="append", default=[], metavar="NAME=VALUE", help="any other parameter, e.g. --set neuron_stretch=6"),
        arg("--overwrite", action="store_true", help="replace existing outputs"),
        arg("--preview", metavar="PNG", help="also save a preview image"),
        arg("--no-progress", action="store_true", help="no progress bar"),
        arg("--backend", choices=("serial", "ray"), default="serial", help="where blocks run (default: %(default)s; ray for big volumes)"),
        arg("--workers", type=int, default=None, help="Ray workers (default: one per CPU)"),
        ADDRESS,
    ),
).add_parser
