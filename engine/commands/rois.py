"""``connectile rois RUN``: the aligned ROI crops of every predicted object, for active learning.

Example::

    connectile label data.zarr/mito_prob data.zarr/mito_cc --threshold 0.5 --min-size 200 --table mito.parquet
    connectile rois runs/mito --labels data.zarr/mito_cc --image data.zarr/raw --table mito.parquet
    connectile rois runs/syn --labels data.zarr/syn_cc --image data.zarr/raw --table syn.parquet --pre data.zarr/polarity --pre-value 1
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple


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
    parser.add_argument("--pre-value", type=int, default=1, help="value of pre-synaptic voxels in --pre (default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="crop size in pixels (default: %(default)s)")
    parser.add_argument("--min-voxels", type=int, default=0, help="leave out smaller objects")
    parser.add_argument("--block", metavar="Z,Y,X", default="64,512,512", help="voxels per block (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="extract again")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Extract the ROIs and print a summary line."""
    from engine.commands._common import check_output
    from engine.ops.rois import extract_rois

    check_output(args.run_dir, {"--labels": args.labels, "--image": args.image, "--prob": args.prob, "--pre": args.pre}, option="the run folder RUN")
    result = extract_rois(
        args.run_dir, args.labels, args.image, args.table, prob=args.prob, pre=args.pre, pre_value=args.pre_value, size=args.size,
        min_voxels=args.min_voxels, block=triple(args.block, "--block", int, "64,512,512") or (64, 512, 512), overwrite=args.overwrite,
        **runtime_kwargs(args),
    )
    print(f"{result.rois} ROIs of {result.size} x {result.size} pixels -> {result.store}, index {result.index} ({result.seconds:.1f} s)")
    return 0
