"""``connectile label IN OUT``: connected components of a whole volume, blockwise and exact.

Examples::

    connectile label data.zarr/mito_prob data.zarr/mito_cc --threshold 0.5 --min-size 500 --table mito.parquet
    connectile label data.zarr/mask data.zarr/cc --connectivity 6 --backend serial
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple
from engine.ops.label import DEFAULT_BLOCK, DEFAULT_CHUNKS


def add_parser(subparsers: Any) -> None:
    """Register ``connectile label``."""
    parser = subparsers.add_parser(
        "label",
        help="connected components of a probability, binary or label volume (blockwise, exact stitching)",
        description=(
            "Threshold a probability volume (or take a binary or label volume), label each block, stitch the "
            "blocks exactly and write consecutive uint64 ids; optionally remove small objects and write an "
            "object table (Parquet: id, voxels, bounding box, centroid, mean probability)."
        ),
    )
    parser.add_argument("input", metavar="IN", help="input volume, e.g. data.zarr/mito_prob")
    parser.add_argument("output", metavar="OUT", help="output label volume (uint64 unless --dtype), e.g. data.zarr/mito_cc")
    parser.add_argument("--threshold", type=float, default=None, help="foreground where probability > T (uint8 read as value/255); leave out for binary or label volumes")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26, help="voxel neighbourhood (default: %(default)s)")
    parser.add_argument("--min-size", type=int, default=0, metavar="VOXELS", help="remove objects smaller than this, measured whole (default: keep all)")
    parser.add_argument("--table", metavar="PATH", help="write the object table as Parquet here")
    parser.add_argument("--block", metavar="Z,Y,X", default=",".join(map(str, DEFAULT_BLOCK)), help="voxels per block, rounded up to whole chunks (default: %(default)s)")
    parser.add_argument("--chunks", metavar="Z,Y,X", default=",".join(map(str, DEFAULT_CHUNKS)), help="output storage chunks (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu", help="labelling kernel: cc3d on CPU, CuPy on GPU (default: %(default)s)")
    parser.add_argument("--dtype", choices=("uint64", "uint32"), default="uint64", help="output ids (default: %(default)s; uint32 halves the output, an error if the objects do not fit)")
    parser.add_argument("--keep-local", action="store_true", help="store the local ids of the first pass (label each block once) instead of labelling each block again in the last pass")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the intermediate files (local labels, faces, pairs) beside the output")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Label ``args.input`` into ``args.output`` and print a summary line."""
    from engine.commands._common import check_output
    from engine.ops.label import label_volume

    check_output(args.output, {"IN": args.input})
    result = label_volume(
        args.input,
        args.output,
        threshold=args.threshold,
        connectivity=args.connectivity,
        min_size=args.min_size,
        table=args.table,
        block=triple(args.block, "--block", int, "128,128,128") or DEFAULT_BLOCK,
        chunks=triple(args.chunks, "--chunks", int, "64,64,64") or DEFAULT_CHUNKS,
        device=args.device,
        dtype=args.dtype,
        keep_local=args.keep_local,
        overwrite=args.overwrite,
        keep_scratch=args.keep_scratch,
        **runtime_kwargs(args),
    )
    removed = f", {result.removed} smaller than {args.min_size} voxels removed" if args.min_size > 1 else ""
    table = f"; object table {result.table}" if result.table else ""
    print(
        f"labelled {args.input} -> {result.output}: {result.objects} objects{removed} "
        f"({result.blocks} blocks, {result.boundary_labels} labels on block faces) in {result.seconds.get('total', 0.0):.1f} s{table}"
    )
    return 0
