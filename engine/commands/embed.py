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

from engine.commands._command import OVERWRITE, RUNTIME, VOLUME, Command, Settings, Writes, arg
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import EmbedParams


def run(args: argparse.Namespace) -> int:
    import os

    from engine.errors import ConfigError
    from engine.ops.embed import embed_volume

    if "://" not in args.encoder and not os.path.isdir(args.encoder):
        raise ConfigError(f"no checkpoint at --encoder {args.encoder}", "give the encoder folder of connectile embed-train (OUT/encoder) or a U-Net checkpoint")
    params = params_from_args(EmbedParams, args)
    summary = embed_volume(args.volume, args.out, args.encoder, overwrite=args.overwrite, **params.settings(), **runtime_kwargs(args))
    print(
        f"embedded {int(summary.stats.get('patches', 0))} patches of {args.volume} -> {args.out}: {summary.done} blocks done, "
        f"{summary.already_done} already done, in {summary.wall_seconds:.1f} s"
    )
    return 0


add_parser = Command(
    "embed", run, help="embed every patch of a volume's patch grid with a trained encoder", description=__doc__, raw=True, flags=(
        VOLUME, arg("out", metavar="OUT", help="embedding array to write, e.g. runs/emb.zarr"),
        arg("--encoder", required=True, metavar="DIR", help="checkpoint of embed-train (or of a U-Net: its encoder)"),
        Settings(EmbedParams, "embedding (the pipeline's embed stage takes the same settings)"), OVERWRITE, RUNTIME,
    ),
    writes=Writes("out", {"VOLUME": "volume", "--encoder": "encoder"}),
).add_parser
