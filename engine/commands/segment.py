"""``connectile segment AFFS OUT``: neurons from affinities, blockwise (watershed fragments, region
adjacency scored by the affinities, agglomeration at a threshold, relabel).

Example::

    connectile segment data.zarr/affs data.zarr/neurons --threshold 0.7 --scoring quantile --quantile 0.5
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple
from engine.ops.label import DEFAULT_BLOCK, DEFAULT_CHUNKS


def add_parser(subparsers: Any) -> None:
    """Register ``connectile segment``."""
    parser = subparsers.add_parser("segment", help="neuron segmentation from (3, z, y, x) affinities, blockwise", description=__doc__.split("\n\n")[0])
    parser.add_argument("affs", metavar="AFFS", help="affinities (3, z, y, x), uint8 or float in [0, 1]")
    parser.add_argument("output", metavar="OUT", help="output label volume (uint64)")
    parser.add_argument("--threshold", type=float, default=0.5, help="merge fragments whose edge score reaches this (default: %(default)s)")
    parser.add_argument("--scoring", choices=("mean", "quantile"), default="mean", help="edge score from the affinities across it (default: %(default)s)")
    parser.add_argument("--quantile", type=float, default=0.5, help="the quantile for --scoring quantile (default: %(default)s)")
    parser.add_argument(
        "--agglomeration", choices=("threshold", "mean"), default="threshold",
        help="threshold: merge every edge scoring >= --threshold; mean: hierarchical mean-affinity agglomeration down to --threshold (default: %(default)s)",
    )
    parser.add_argument("--per-section", action="store_true", help="fragments per z-section (anisotropic data)")
    parser.add_argument("--seed-threshold", type=float, default=0.5, help="seeds only where every neighbour affinity is above this (default: %(default)s)")
    parser.add_argument("--block", metavar="Z,Y,X", default=",".join(map(str, DEFAULT_BLOCK)), help="voxels per block (default: %(default)s)")
    parser.add_argument("--chunks", metavar="Z,Y,X", default=",".join(map(str, DEFAULT_CHUNKS)), help="output storage chunks (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands._common import check_output
    from engine.ops.segment import segment_volume

    check_output(args.output, {"AFFS": args.affs})
    r = segment_volume(
        args.affs, args.output, threshold=args.threshold, scoring=args.scoring, quantile=args.quantile, agglomeration=args.agglomeration, per_section=args.per_section,
        seed_threshold=args.seed_threshold, block=triple(args.block, "--block", int, "128,128,128") or DEFAULT_BLOCK,
        chunks=triple(args.chunks, "--chunks", int, "64,64,64") or DEFAULT_CHUNKS, overwrite=args.overwrite, **runtime_kwargs(args),
    )
    print(f"segmented {args.affs} -> {r.output}: {r.objects} neurons from {r.local_objects} fragments ({r.blocks} blocks) in {r.seconds.get('total', 0.0):.1f} s")
    return 0
