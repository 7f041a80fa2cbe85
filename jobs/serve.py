"""Serve a run folder over HTTP with CORS, so that neuroglancer (in a browser) can read its volumes.

    python jobs/serve.py runs/tiny --port 9000

then open the neuroglancer link in ``runs/tiny/report.md``. Binds to 127.0.0.1 only (use an SSH
tunnel to look from another machine).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CorsHandler(SimpleHTTPRequestHandler):
    """Static files with the CORS header neuroglancer needs."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="the run folder (run_dir of the config)")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), functools.partial(CorsHandler, directory=args.folder))
    print(f"serving {args.folder} at http://127.0.0.1:{args.port}/ (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
