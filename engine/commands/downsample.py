"""``connectile downsample IN``: an OME-Zarr multiscale pyramid, built blockwise (mean or mode).

Examples::

    connectile downsample data.zarr/raw                  # -> data.zarr/raw_pyramid/{s0,s1,...}
    connectile downsample data.zarr/seg --method mode --backend serial
    connectile downsample data.zarr/raw/s0 --levels 4    # levels beside s0, nothing copied
"""

from __future__ import annotations

import argparse

from engine.commands._command import OVERWRITE, RUNTIME_SERIAL, Command, Settings, arg
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import DownsampleParams


def run(args: argparse.Namespace) -> int:
    """Build the pyramid and print one line per level."""
    from engine.commands._common import check_output
    from engine.ops.downsample import build_pyramid

    if args.out is not None:  # IN_pyramid by default; IN named s0 may sit inside its own group
        check_output(args.out, {"IN": args.input}, option="--out")
    settings = params_from_args(DownsampleParams, args).settings()
    factor = settings.pop("factor")
    result = build_pyramid(
        args.input, args.out, factors=[factor] if factor is not None else None, overwrite=args.overwrite, **settings, **runtime_kwargs(args),
    )
    for lv in result.levels:
        shape = "x".join(map(str, lv["shape"]))
        voxel = "x".join(f"{v:g}" for v in lv["voxel_size"])
        print(f"  {lv['path']}: {shape} voxels of {voxel} nm")
    copied = " (s0 copied from the input)" if result.copied_s0 else ""
    print(f"pyramid {result.group}: {len(result.levels)} levels, {result.method}{copied}, in {result.seconds:.1f} s")
    return 0


add_parser = Command(
    "downsample", run, help="build an OME-Zarr multiscale pyramid (mean for images/probabilities, mode for labels)",
    description=(
        "Write levels s0, s1, ... of IN into a zarr group with OME-Zarr multiscales metadata, each level computed "
        "blockwise from the one before, so that large volumes open fast in neuroglancer and other viewers. "
        "The group is IN_pyramid beside IN (s0 a copy of IN), or IN's own group when IN is named s0. "
        "connectile view uses the pyramid when it is there."
    ),
    flags=(
        arg("input", metavar="IN", help="volume to downsample, e.g. data.zarr/raw"),
        arg("--out", metavar="GROUP", default=None, help="output group (default: IN_pyramid beside IN)"),
        Settings(DownsampleParams, "pyramid"), OVERWRITE, RUNTIME_SERIAL,
    ),
).add_parser
