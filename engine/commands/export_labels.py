"""``connectile export-labels VOLUME SELECTION OUT``: crops of the chosen sub-volumes for annotators.

Writes ``OUT/crop_NNN.zarr/raw`` and ``OUT/crop_NNN.tif`` for every box of SELECTION (the
``selection.json`` of connectile select) with ``OUT/manifest.json``; annotators save dense labels as
``OUT/crop_NNN.zarr/labels`` or ``OUT/crop_NNN_labels.tif``, then ``connectile import-labels`` brings
them back.

Example::

    connectile export-labels data.zarr/raw runs/select/selection.json runs/crops
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``connectile export-labels``."""
    parser = subparsers.add_parser(
        "export-labels", help="export the selected sub-volumes as zarr and TIFF crops for annotation", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("volume", metavar="VOLUME", help="raw volume, e.g. data.zarr/raw")
    parser.add_argument("selection", metavar="SELECTION", help="selection.json of connectile select")
    parser.add_argument("out", metavar="OUT", help="output folder for the crops and manifest.json")
    parser.add_argument("--no-tiff", dest="tiff", action="store_false", help="zarr crops only")
    parser.add_argument("--no-zarr", dest="zarr", action="store_false", help="TIFF crops only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands._common import check_output
    from engine.select.export import export_crops

    check_output(args.out, {"VOLUME": args.volume, "SELECTION": args.selection}, option="the output folder OUT")
    path = export_crops(args.volume, args.selection, args.out, tiff=args.tiff, zarr=args.zarr)
    print(f"exported crops of {args.volume} -> {path}")
    return 0
