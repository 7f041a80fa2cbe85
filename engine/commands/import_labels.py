"""``connectile import-labels CROPS LABELS``: dense labels of annotated crops into a labels volume.

CROPS is the folder (or its manifest.json) written by ``connectile export-labels``; LABELS the uint64
volume to write (created with the raw volume's shape and voxel size, or opened if it exists). Every
crop is checked before anything is written: labels whose shape or recorded box differs from the
crop's box are refused with a message naming the crop.

Example::

    connectile import-labels runs/crops data.zarr/labels
"""

from __future__ import annotations

import argparse

from engine.commands._command import Command, Writes, arg


def run(args: argparse.Namespace) -> int:
    from engine.select.export import import_labels

    n = import_labels(args.crops, args.labels)
    print(f"imported labels of {n} crops -> {args.labels}")
    return 0


add_parser = Command(
    "import-labels", run, help="bring dense labels of exported crops back into a labels volume", description=__doc__, raw=True, flags=(
        arg("crops", metavar="CROPS", help="folder (or manifest.json) of connectile export-labels"),
        arg("labels", metavar="LABELS", help="labels volume to write, e.g. data.zarr/labels"),
    ),
    writes=Writes("labels", {"CROPS": "crops"}, option="the labels volume LABELS"),
).add_parser
