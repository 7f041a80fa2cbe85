"""``connectile label IN OUT``: connected components of a whole volume, blockwise and exact.

Examples::

    connectile label data.zarr/mito_prob data.zarr/mito_cc --threshold 0.5 --min-size 500 --table mito.parquet
    connectile label data.zarr/mask data.zarr/cc --connectivity 6 --backend serial
"""

from __future__ import annotations

import argparse

from engine.commands._command import OVERWRITE, RUNTIME, Command, Settings, Writes, arg
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import LabelParams


def run(args: argparse.Namespace) -> int:
    """Label ``args.input`` into ``args.output`` and print a summary line."""
    from engine.ops.label import label_volume

    params = params_from_args(LabelParams, args)
    result = label_volume(
        args.input, args.output, table=args.table, device=args.device, overwrite=args.overwrite,
        keep_scratch=args.keep_scratch, **params.settings(), **runtime_kwargs(args),
    )
    removed = f", {result.removed} smaller than {args.min_size} voxels removed" if args.min_size > 1 else ""
    table = f"; object table {result.table}" if result.table else ""
    print(
        f"labelled {args.input} -> {result.output}: {result.objects} objects{removed} "
        f"({result.blocks} blocks, {result.boundary_labels} labels on block faces) in {result.seconds.get('total', 0.0):.1f} s{table}"
    )
    return 0


add_parser = Command(
    "label", run, help="connected components of a probability, binary or label volume (blockwise, exact stitching)",
    description=(
        "Threshold a probability volume (or take a binary or label volume), label each block, stitch the "
        "blocks exactly and write consecutive uint64 ids; optionally remove small objects and write an "
        "object table (Parquet: id, voxels, bounding box, centroid, mean probability)."
    ),
    flags=(
        arg("input", metavar="IN", help="input volume, e.g. data.zarr/mito_prob"),
        arg("output", metavar="OUT", help="output label volume (uint64 unless --dtype), e.g. data.zarr/mito_cc"),
        Settings(LabelParams, "labelling (the pipeline's label stages take the same settings)"),
        arg("--table", metavar="PATH", help="write the object table as Parquet here"),
        arg("--device", choices=("cpu", "gpu", "auto"), default="cpu", help="labelling kernel: cc3d on CPU, CuPy on GPU (default: %(default)s)"),
        OVERWRITE,
        arg("--keep-scratch", action="store_true", help="keep the intermediate files (local labels, faces, pairs) beside the output"),
        RUNTIME,
    ),
    writes=Writes("output", {"IN": "input"}),
).add_parser
