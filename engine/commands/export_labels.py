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

from engine.commands._command import VOLUME, Command, Writes, arg


def run(args: argparse.Namespace) -> int:
    from engine.select.export import export_crops

    path = export_crops(args.volume, args.selection, args.out, tiff=args.tiff, zarr=args.zarr)
    print(f"exported crops of {args.volume} -> {path}")
    return 0


add_parser = Command(
    "export-labels", run, help="export the selected sub-volumes as zarr and TIFF crops for annotation", description=__doc__, raw=True, flags=(
        VOLUME, arg("selection", metavar="SELECTION", help="selection.json of connectile select"),
        arg("out", metavar="OUT", help="output folder for the crops and manifest.json"),
        arg("--no-tiff", dest="tiff", action="store_false", help="zarr crops only"),
        arg("--no-zarr", dest="zarr", action="store_false", help="TIFF crops only"),
    ),
    writes=Writes("out", {"VOLUME": "volume", "SELECTION": "selection"}, option="the output folder OUT"),
).add_parser
