"""``connectile view RUN``: a neuroglancer link to the run's volumes, selection and queried ROIs.

Examples::

    connectile view runs/demo                          # finds the volumes in the run, serves them
    connectile view runs/demo --raw data.zarr/raw --pred runs/demo/pred.zarr/mito --seg runs/demo/seg.zarr/cc
    connectile view runs/demo --state-out view.json --neuroglancer http://localhost:8080
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Register ``connectile view``."""
    parser = subparsers.add_parser(
        "view",
        help="print a neuroglancer link (raw, predictions, segmentation, selected boxes, queried ROIs) and serve the stores",
        description=(
            "Build a neuroglancer state with the run's raw volume, predictions and segmentation (the OME-Zarr pyramids "
            "of connectile downsample where built), the selected sub-volumes as boxes and the queried ROIs as points "
            "(green True, red False, yellow not reviewed), and serve the local stores over HTTP with CORS on 127.0.0.1 "
            "until interrupted."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run directory (volumes found inside unless given below)")
    parser.add_argument("--raw", metavar="URL", help="the raw image volume")
    parser.add_argument("--pred", metavar="URL", action="append", default=[], help="a prediction volume (repeatable)")
    parser.add_argument("--seg", metavar="URL", action="append", default=[], help="a segmentation volume (repeatable)")
    parser.add_argument("--selection", metavar="FILE", help="selection.json with the selected sub-volumes (default: found in RUN)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the file server (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port of the file server (default: a free one)")
    parser.add_argument("--neuroglancer", metavar="URL", default=None, help="neuroglancer to link to (default: the public demo)")
    parser.add_argument("--state-out", metavar="FILE", default=None, help="also write the state JSON here (default: RUN/view/state.json)")
    parser.add_argument("--once", action="store_true", help="print the link and exit without serving (for cloud volumes)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the link and serve until interrupted."""
    from pathlib import Path

    from engine.commands._common import check_output
    from engine.errors import ConfigError
    from engine.view import discover_run, neuroglancer_link, serve_view
    from engine.view.state import DEFAULT_NEUROGLANCER

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    view = discover_run(args.run_dir, raw=args.raw, predictions=args.pred, segmentations=args.seg, selection=args.selection)
    if not view.layers:
        raise ConfigError(f"found no zarr, zarr3 or n5 volume in {args.run_dir}", "name them with --raw, --pred and --seg")
    out = Path(args.state_out) if args.state_out else Path(args.run_dir) / "view" / "state.json"
    layers = {f"{layer.kind} {layer.name}": layer.url for layer in view.layers}
    check_output(str(out), {**layers, "--selection": args.selection}, option="--state-out")
    server, state = serve_view(view, host=args.host, port=args.port)
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(state, indent=1))
        except OSError as err:
            log.warning("cannot write the state to %s: %s", out, err)
        for layer in view.layers:
            pyr = f" (pyramid {layer.pyramid}, {len(layer.levels)} levels)" if layer.pyramid else ""
            print(f"  {layer.kind:12s} {layer.name}: {layer.url}{pyr}")
        print(f"  {len(view.boxes)} selected sub-volumes, {len(view.points)} queried ROIs; state in {out}")
        print(neuroglancer_link(state, args.neuroglancer or DEFAULT_NEUROGLANCER), flush=True)
        if args.once:
            return 0
        print(f"serving the stores at {server.base}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
    finally:
        server.close()
    return 0
