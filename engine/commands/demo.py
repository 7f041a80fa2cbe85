"""``connectile demo``: the main job on the embedded default (a synthetic volume), end to end.

Runs on a local Ray cluster (or the one in RAY_ADDRESS / --address), CPU workers where there is no
GPU. Running it again resumes; ``--overwrite`` starts over.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple


def add_parser(subparsers: Any) -> None:
    """Register ``connectile demo``."""
    from engine.pipeline.demo import DEFAULT_CHUNKS, DEFAULT_SHAPE

    parser = subparsers.add_parser("demo", help="run the main job end to end on a synthetic EM volume (local Ray)")
    parser.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)), help="volume shape z,y,x (default: %(default)s)")
    parser.add_argument("--chunks", default=",".join(map(str, DEFAULT_CHUNKS)), help="storage chunks z,y,x (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic volume seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="recompute everything instead of resuming")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.pipeline.demo import run_demo, summary_lines

    kw = runtime_kwargs(args)
    kw.pop("max_retries")
    summary = run_demo(
        args.out,
        shape=triple(args.shape, "--shape", int, "64,512,512"),  # type: ignore[arg-type]
        chunks=triple(args.chunks, "--chunks", int, "16,64,64"),  # type: ignore[arg-type]
        seed=args.seed,
        overwrite=args.overwrite,
        **kw,
    )
    print("\n".join(summary_lines(summary)))
    return 0 if all(r["ok"] for r in summary["runs"]) else 1
