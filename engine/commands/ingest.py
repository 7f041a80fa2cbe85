"""``connectile ingest SRC DST``: PNG/TIFF slices, multi-page TIFF or HDF5 into zarr/n5.

Examples::

    connectile ingest grayscale_maps/ data.zarr/raw --voxel-size 10,10,10
    connectile ingest 'Train_Out/*.png' data.zarr/mito --binarize
    connectile ingest groundtruth.h5.gz:stack data.zarr/gt          # applies 'transforms' if present
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs
from engine.commands._flags import add_flags, params_from_args
from engine.params import IngestParams


def add_parser(subparsers: Any) -> None:
    """Register ``connectile ingest``."""
    parser = subparsers.add_parser(
        "ingest",
        help="convert PNG/TIFF slices, multi-page TIFF or HDF5 (also .h5.gz) into a zarr/n5 volume",
        description=(
            "Convert image slices (a folder or a quoted glob, sorted numerically), a multi-page TIFF, or an HDF5 "
            "dataset (FILE.h5[:DATASET], also .h5.gz) into a chunked volume, blockwise."
        ),
    )
    parser.add_argument("src", metavar="SRC", help="folder, glob ('dir/*.png'), multi-page TIFF, or FILE.h5[:DATASET]")
    parser.add_argument("dst", metavar="DST", help="output array, e.g. data.zarr/raw")
    group = parser.add_argument_group("ingest (the pipeline's ingest stage takes the same layout; its labels_* settings the conversion)")
    add_flags(group, IngestParams, skip=("lut",))
    lut = group.add_mutually_exclusive_group()
    lut.add_argument("--lut", metavar="DATASET", help=str(IngestParams.model_fields["lut"].description))
    lut.add_argument("--no-lut", dest="lut", action="store_false", help="keep HDF5 ids as they are, even when 'transforms' is present")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output of another layout")
    add_runtime_args(parser, default_backend="serial")
    parser.set_defaults(func=run, lut=None)


def run(args: argparse.Namespace) -> int:
    """Ingest ``args.src`` into ``args.dst`` and print a one-line summary."""
    import os

    from engine.commands._common import check_output
    from engine.ops.ingest import ingest

    src = args.src.split(".h5:")[0] + ".h5" if ".h5:" in args.src else args.src
    check_output(args.dst, {"SRC": os.path.dirname(src) if any(c in src for c in "*?[") else src}, option="the output DST", inside=False)
    params = params_from_args(IngestParams, args)
    volume = ingest(
        args.src,
        args.dst,
        overwrite=args.overwrite,
        **params.settings(),
        **{k: v for k, v in runtime_kwargs(args).items() if k in ("backend", "workers", "progress")},
    )
    shape = "x".join(str(s) for s in volume.shape)
    print(f"ingested {args.src} -> {volume.url}: {shape} (z,y,x) {volume.dtype}, voxel size {volume.voxel_size} nm")
    return 0
