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

from engine.commands._command import Command, arg
from engine.commands._common import serve_until_interrupted

log = logging.getLogger(__name__)


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
    with server:
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
        serve_until_interrupted(server, "stopped")
    return 0


add_parser = Command(
    "view", run, help="print a neuroglancer link (raw, predictions, segmentation, selected boxes, queried ROIs) and serve the stores",
    description=(
        "Build a neuroglancer state with the run's raw volume, predictions and segmentation (the OME-Zarr pyramids "
        "of connectile downsample where built), the selected sub-volumes as boxes and the queried ROIs as points "
        "(green True, red False, yellow not reviewed), and serve the local stores over HTTP with CORS on 127.0.0.1 "
        "until interrupted."
    ),
    flags=(
        arg("run_dir", metavar="RUN", help="run directory (volumes found inside unless given below)"),
        arg("--raw", metavar="URL", help="the raw image volume"),
        arg("--pred", metavar="URL", action="append", default=[], help="a prediction volume (repeatable)"),
        arg("--seg", metavar="URL", action="append", default=[], help="a segmentation volume (repeatable)"),
        arg("--selection", metavar="FILE", help="selection.json with the selected sub-volumes (default: found in RUN)"),
        arg("--host", default="127.0.0.1", help="address of the file server (default: %(default)s)"),
        arg("--port", type=int, default=0, help="port of the file server (default: a free one)"),
        arg("--neuroglancer", metavar="URL", default=None, help="neuroglancer to link to (default: the public demo)"),
        arg("--state-out", metavar="FILE", default=None, help="also write the state JSON here (default: RUN/view/state.json)"),
        arg("--once", action="store_true", help="print the link and exit without serving (for cloud volumes)"),
    ),
).add_parser
