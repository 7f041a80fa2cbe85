"""``connectile embed VOLUME OUT --encoder DIR``: embed every patch of the patch grid (blockwise, actors).

Writes the embedding zarr OUT: ``(gz, gy, gx, D)`` vectors with the grid geometry (patch, stride,
origin, volume, voxel size) as attributes; ``connectile select`` reads it. Defaults: patches
18x160x160 every 8x40x40 for anisotropic voxels (z at least twice the in-plane size), 64^3 every
16^3 otherwise. Resumable: run it again and finished blocks are skipped.

Example::

    connectile embed data.zarr/raw runs/emb.zarr --encoder runs/simsiam/encoder --workers 2
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs
from engine.commands._flags import add_flags, params_from_args
from engine.params import EmbedParams


def add_parser(subparsers: Any) -> None:
    """Register ``connectile embed``."""
    parser = subparsers.add_parser(
        "embed", help="embed every patch of a volume's patch grid with a trained encoder", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("volume", metavar="VOLUME", help="raw volume, e.g. data.zarr/raw")
    parser.add_argument("out", metavar="OUT", help="embedding array to write, e.g. runs/emb.zarr")
    parser.add_argument("--encoder", required=True, metavar="DIR", help="checkpoint of embed-train (or of a U-Net: its encoder)")
    add_flags(parser.add_argument_group("embedding (the pipeline's embed stage takes the same settings)"), EmbedParams)
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from engine.commands._common import check_output
    from engine.errors import ConfigError
    from engine.ops.embed import embed_volume

    check_output(args.out, {"VOLUME": args.volume, "--encoder": args.encoder})
    if "://" not in args.encoder and not os.path.isdir(args.encoder):
        raise ConfigError(f"no checkpoint at --encoder {args.encoder}", "give the encoder folder of connectile embed-train (OUT/encoder) or a U-Net checkpoint")
    params = params_from_args(EmbedParams, args)
    summary = embed_volume(args.volume, args.out, args.encoder, overwrite=args.overwrite, **params.settings(), **runtime_kwargs(args))
    print(
        f"embedded {int(summary.stats.get('patches', 0))} patches of {args.volume} -> {args.out}: {summary.done} blocks done, "
        f"{summary.already_done} already done, in {summary.wall_seconds:.1f} s"
    )
    return 0
