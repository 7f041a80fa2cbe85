"""``connectile ingest SRC DST``: PNG/TIFF slices, multi-page TIFF or HDF5 into zarr/n5.

Examples::

    connectile ingest grayscale_maps/ data.zarr/raw --voxel-size 10,10,10
    connectile ingest 'Train_Out/*.png' data.zarr/mito --binarize
    connectile ingest groundtruth.h5.gz:stack data.zarr/gt          # applies 'transforms' if present
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple
from engine.ops.ingest import DEFAULT_CHUNKS, INGEST_FORMATS, ingest


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
    parser.add_argument("--voxel-size", metavar="Z,Y,X", help="voxel size in nm, stored as metadata (e.g. 40,4,4)")
    parser.add_argument(
        "--chunks", metavar="Z,Y,X", default=",".join(map(str, DEFAULT_CHUNKS)), help="storage chunks, clipped to the volume (default: %(default)s)"
    )
    parser.add_argument("--format", choices=INGEST_FORMATS, default="zarr", help="output format (default: %(default)s)")
    parser.add_argument("--binarize", action="store_true", help="store nonzero as 1 (uint8), e.g. for binary masks")
    lut = parser.add_mutually_exclusive_group()
    lut.add_argument("--lut", metavar="DATASET", help="HDF5 Nx2 (supervoxel, body) table to map ids through (default: 'transforms' beside the dataset, if any)")
    lut.add_argument("--no-lut", dest="lut", action="store_false", help="keep HDF5 ids as they are, even when 'transforms' is present")
    parser.add_argument("--rgb-to-label", action="store_true", help="turn each colour of RGB(A) slices into one label id")
    parser.add_argument("--dtype", help="output dtype (default: the source's; uint8 with --binarize, uint64 through a lut)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output of another layout")
    add_runtime_args(parser, default_backend="serial")
    parser.set_defaults(func=run, lut=None)


def run(args: argparse.Namespace) -> int:
    """Ingest ``args.src`` into ``args.dst`` and print a one-line summary."""
    import os

    from engine.commands._common import check_output

    src = args.src.split(".h5:")[0] + ".h5" if ".h5:" in args.src else args.src
    check_output(args.dst, {"SRC": os.path.dirname(src) if any(c in src for c in "*?[") else src}, option="the output DST", inside=False)
    chunks = triple(args.chunks, "--chunks", int, "64,256,256") or DEFAULT_CHUNKS
    volume = ingest(
        args.src,
        args.dst,
        voxel_size=triple(args.voxel_size, "--voxel-size", float, "40,4,4"),
        chunks=chunks,
        format=args.format,
        binarize=args.binarize,
        lut=args.lut,
        rgb_to_label=args.rgb_to_label,
        dtype=args.dtype,
        overwrite=args.overwrite,
        **{k: v for k, v in runtime_kwargs(args).items() if k in ("backend", "workers", "progress")},
    )
    shape = "x".join(str(s) for s in volume.shape)
    print(f"ingested {args.src} -> {volume.url}: {shape} (z,y,x) {volume.dtype}, voxel size {volume.voxel_size} nm")
    return 0
