"""``connectile segment AFFS OUT``: neurons from affinities, blockwise (watershed fragments, region
adjacency scored by the affinities, agglomeration at a threshold, relabel).

Example::

    connectile segment data.zarr/affs data.zarr/neurons --threshold 0.7 --scoring quantile --quantile 0.5
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs
from engine.commands._flags import add_flags, params_from_args
from engine.params import SegmentParams


def add_parser(subparsers: Any) -> None:
    """Register ``connectile segment``."""
    parser = subparsers.add_parser("segment", help="neuron segmentation from (3, z, y, x) affinities, blockwise", description=__doc__.split("\n\n")[0])
    parser.add_argument("affs", metavar="AFFS", help="affinities (3, z, y, x), uint8 or float in [0, 1]")
    parser.add_argument("output", metavar="OUT", help="output label volume (uint64)")
    add_flags(parser.add_argument_group("segmentation (the pipeline's segment stage takes the same settings)"), SegmentParams)
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands._common import check_output
    from engine.ops.segment import segment_volume

    check_output(args.output, {"AFFS": args.affs})
    r = segment_volume(args.affs, args.output, overwrite=args.overwrite, **params_from_args(SegmentParams, args).settings(), **runtime_kwargs(args))
    print(f"segmented {args.affs} -> {r.output}: {r.objects} neurons from {r.local_objects} fragments ({r.blocks} blocks) in {r.seconds.get('total', 0.0):.1f} s")
    return 0
