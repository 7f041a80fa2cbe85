"""``connectile ingest SRC DST``: PNG/TIFF slices, multi-page TIFF or HDF5 into zarr/n5.

Examples::

    connectile ingest grayscale_maps/ data.zarr/raw --voxel-size 10,10,10
    connectile ingest 'Train_Out/*.png' data.zarr/mito --binarize
    connectile ingest groundtruth.h5.gz:stack data.zarr/gt          # applies 'transforms' if present
"""

from __future__ import annotations

import argparse

from engine.commands._command import RUNTIME_SERIAL, Command, Settings, Writes, arg, overwrite
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import IngestParams


def run(args: argparse.Namespace) -> int:
    """Ingest ``args.src`` into ``args.dst`` and print a one-line summary."""
    from engine.ops.ingest import ingest

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


def _source(args: argparse.Namespace) -> str:
    """The file or folder SRC reads: FILE.h5 of FILE.h5:DATASET, the folder of a glob."""
    import os

    src = args.src.split(".h5:")[0] + ".h5" if ".h5:" in args.src else args.src
    return os.path.dirname(src) if any(c in src for c in "*?[") else src


add_parser = Command(
    "ingest", run, help="convert PNG/TIFF slices, multi-page TIFF or HDF5 (also .h5.gz) into a zarr/n5 volume",
    description=(
        "Convert image slices (a folder or a quoted glob, sorted numerically), a multi-page TIFF, or an HDF5 "
        "dataset (FILE.h5[:DATASET], also .h5.gz) into a chunked volume, blockwise."
    ),
    flags=(
        arg("src", metavar="SRC", help="folder, glob ('dir/*.png'), multi-page TIFF, or FILE.h5[:DATASET]"),
        arg("dst", metavar="DST", help="output array, e.g. data.zarr/raw"),
        Settings(IngestParams, "ingest (the pipeline's ingest stage takes the same layout; its labels_* settings the conversion)", skip=("lut",), exclusive=(
            arg("--lut", metavar="DATASET", help=str(IngestParams.model_fields["lut"].description)),
            arg("--no-lut", dest="lut", action="store_false", help="keep HDF5 ids as they are, even when 'transforms' is present"),
        )),
        overwrite("replace an existing output of another layout"), RUNTIME_SERIAL,
    ),
    writes=Writes("dst", {"SRC": _source}, option="the output DST", inside=False), defaults={"lut": None},
).add_parser
