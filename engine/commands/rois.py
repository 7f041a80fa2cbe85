"""``connectile rois RUN``: the aligned ROI crops of every predicted object, for active learning.

Example::

    connectile label data.zarr/mito_prob data.zarr/mito_cc --threshold 0.5 --min-size 200 --table mito.parquet
    connectile rois runs/mito --labels data.zarr/mito_cc --image data.zarr/raw --table mito.parquet
    connectile rois runs/syn --labels data.zarr/syn_cc --image data.zarr/raw --table syn.parquet --pre data.zarr/polarity --pre-value 1
"""

from __future__ import annotations

import argparse

from engine.commands._command import RUNTIME, Command, Settings, Writes, arg, overwrite
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import RoisParams


def run(args: argparse.Namespace) -> int:
    """Extract the ROIs and print a summary line."""
    from engine.ops.rois import extract_rois

    params = params_from_args(RoisParams, args)
    result = extract_rois(
        args.run_dir, args.labels, args.image, args.table, prob=args.prob, pre=args.pre, overwrite=args.overwrite, **params.settings(), **runtime_kwargs(args),
    )
    print(f"{result.rois} ROIs of {result.size} x {result.size} pixels -> {result.store}, index {result.index} ({result.seconds:.1f} s)")
    return 0


add_parser = Command(
    "rois", run, help="aligned ROI crops (image + mask) of every object of a label volume (blockwise)",
    description=(
        "For every object of the object table: the z-slice of largest area, rotated so that the mask's first "
        "principal axis is vertical (synapses: pre-synaptic side left), cropped to SIZE x SIZE. Writes "
        "RUN/rois/rois.zarr (image, mask) and RUN/rois/index.parquet."
    ),
    flags=(
        arg("run_dir", metavar="RUN", help="run directory (created if missing)"),
        arg("--labels", required=True, help="label volume of the prediction (connectile label output)"),
        arg("--image", required=True, help="the EM image volume"),
        arg("--table", required=True, help="object table of the labels (connectile label --table)"),
        arg("--prob", default=None, help="predicted probabilities (for the ROI score where the table has none)"),
        arg("--pre", default=None, help="volume marking pre-synaptic voxels (synapses: pre side put on the left)"),
        Settings(RoisParams, "ROIs (the pipeline's query stages take the same settings)"), overwrite("extract again"), RUNTIME,
    ),
    writes=Writes("run_dir", {"--labels": "labels", "--image": "image", "--prob": "prob", "--pre": "pre"}, option="the run folder RUN"),
).add_parser
