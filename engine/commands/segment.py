"""``connectile segment AFFS OUT``: neurons from affinities, blockwise (watershed fragments, region
adjacency scored by the affinities, agglomeration at a threshold, relabel).

Example::

    connectile segment data.zarr/affs data.zarr/neurons --threshold 0.7 --scoring quantile --quantile 0.5
"""

from __future__ import annotations

import argparse

from engine.commands._command import OVERWRITE, RUNTIME, Command, Settings, Writes, arg
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import SegmentParams


def run(args: argparse.Namespace) -> int:
    from engine.ops.segment import segment_volume

    r = segment_volume(args.affs, args.output, overwrite=args.overwrite, **params_from_args(SegmentParams, args).settings(), **runtime_kwargs(args))
    print(f"segmented {args.affs} -> {r.output}: {r.objects} neurons from {r.local_objects} fragments ({r.blocks} blocks) in {r.seconds.get('total', 0.0):.1f} s")
    return 0


add_parser = Command("segment", run, help="neuron segmentation from (3, z, y, x) affinities, blockwise", description=__doc__.split("\n\n")[0], flags=(
    arg("affs", metavar="AFFS", help="affinities (3, z, y, x), uint8 or float in [0, 1]"),
    arg("output", metavar="OUT", help="output label volume (uint64)"),
    Settings(SegmentParams, "segmentation (the pipeline's segment stage takes the same settings)"), OVERWRITE, RUNTIME,
), writes=Writes("output", {"AFFS": "affs"})).add_parser
