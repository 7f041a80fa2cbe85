"""``connectile rois RUN``: the aligned ROI crops of every predicted object, for active learning.

Example::

    connectile label data.zarr/mito_prob data.zarr/mito_cc --threshold 0.5 --min-size 200 --table mito.parquet
    connectile rois runs/mito --labels data.zarr/mito_cc --image data.zarr/raw --table mito.parquet
    connectile rois runs/syn --labels data.zarr/syn_cc --image data.zarr/raw --table syn.parquet --pre data.zarr/polarity --pre-value 1
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs
from engine.commands._flags import add_flags, params_from_args
from engine.params import RoisParams


def add_parser(subparsers: Any) -> None:
    """Register ``connectile rois``."""
    parser = subparsers.add_parser(
        "rois",
        help="aligned ROI crops (image + mask) of every object of a label volume (blockwise)",
        description=(
            "For every object of the object table: the z-slice of largest area, rotated so that the mask's first "
            "principal axis is vertical (synapses: pre-synaptic side left), cropped to SIZE x SIZE. Writes "
            "RUN/rois/rois.zarr (image, mask) and RUN/rois/index.parquet."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run directory (created if missing)")
    parser.add_argument("--labels", required=True, help="label volume of the prediction (connectile label output)")
    parser.add_argument("--image", required=True, help="the EM image volume")
    parser.add_argument("--table", required=True, help="object table of the labels (connectile label --table)")
    parser.add_argument("--prob", default=None, help="predicted probabilities (for the ROI score where the table has none)")
    parser.add_argument("--pre", default=None, help="volume marking pre-synaptic voxels (synapses: pre side put on the left)")
    add_flags(parser.add_argument_group("ROIs (the pipeline's query stages take the same settings)"), RoisParams)
    parser.add_argument("--overwrite", action="store_true", help="extract again")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Extract the ROIs and print a summary line."""
    from engine.commands._common import check_output
    from engine.ops.rois import extract_rois

    check_output(args.run_dir, {"--labels": args.labels, "--image": args.image, "--prob": args.prob, "--pre": args.pre}, option="the run folder RUN")
    params = params_from_args(RoisParams, args)
    result = extract_rois(
        args.run_dir, args.labels, args.image, args.table, prob=args.prob, pre=args.pre, overwrite=args.overwrite, **params.settings(), **runtime_kwargs(args),
    )
    print(f"{result.rois} ROIs of {result.size} x {result.size} pixels -> {result.store}, index {result.index} ({result.seconds:.1f} s)")
    return 0
