"""``connectile review RUN``: the review page of the current round, served on 127.0.0.1 with a token.

Examples::

    connectile review runs/demo                  # prints http://127.0.0.1:PORT/?token=...
    connectile review runs/demo --round round-01 --port 8765
"""

from __future__ import annotations

import argparse
import logging

from engine.commands._command import Command, arg
from engine.commands._common import serve_until_interrupted

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; prints the URL with the token."""
    from engine.errors import ConfigError
    from engine.review import ReviewServer

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    with ReviewServer(args.run_dir, host=args.host, port=args.port, round_name=args.round_name) as server:
        rnd = server.app.current()
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("the review page listens on %s: anyone who can reach it and has the token can change answers", args.host)
        print(f"reviewing {rnd.name} of {server.app.run_dir} ({len(rnd.queries)} queries, {len(rnd.store.answers())} answered)")
        print(f"open {server.url}", flush=True)
        if args.open_browser:
            import webbrowser

            webbrowser.open(server.url)
        serve_until_interrupted(server, "stopped; answers are saved, run the same command to continue")
    return 0


add_parser = Command(
    "review", run, help="serve the review page: True/False on the suggested ROIs of a round, saved as you go",
    description=(
        "Serve the current round's queries (the highest round not finished) as tiles grouped by cluster. "
        "Answers are saved at once in RUN/rounds/round-NN/answers.sqlite; stop any time and come back. "
        "The page is bound to 127.0.0.1 and needs the access token printed in its URL."
    ),
    flags=(
        arg("run_dir", metavar="RUN", help="run directory (holds rois/ and rounds/round-NN/)"),
        arg("--round", dest="round_name", metavar="round-NN", default=None, help="review this round instead of the current one"),
        arg("--host", default="127.0.0.1", help="address to bind (default: %(default)s; anything else exposes the page to the network)"),
        arg("--port", type=int, default=0, help="port (default: a free one)"),
        arg("--open", dest="open_browser", action="store_true", help="open the page in the default browser"),
    ),
).add_parser
