"""``connectile run CONFIG``: the stages of a pipeline config, resumably, in its run folder.

Examples::

    connectile run jobs/configs/tiny.yaml
    connectile run jobs/configs/tiny.yaml --set label.min_size=20      # reruns label and what follows
    connectile run jobs/configs/tiny.yaml --only label                  # just this stage (inputs done)
    connectile run jobs/configs/tiny.yaml --from label                  # label and downstream again

``RUN/manifest.json`` records each stage's config hash, outputs, status and timings; running again
skips finished stages whose config did not change and resumes a stage that was interrupted.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``connectile run``."""
    parser = subparsers.add_parser(
        "run", help="run a pipeline config (YAML, one section per stage) resumably in its run folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="pipeline YAML: run_dir, runtime and one section per stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. label.min_size=20 (repeatable)")
    parser.add_argument("--only", action="append", default=None, metavar="STAGE", help="run only this stage (repeatable); its inputs must be done")
    parser.add_argument("--from", dest="from_stage", default=None, metavar="STAGE", help="run this stage and everything downstream again")
    parser.add_argument("--run-dir", default=None, help="override run_dir of the config")
    parser.add_argument("--overwrite", action="store_true", help="run every stage again from scratch")
    parser.add_argument("--backend", choices=("ray", "serial"), default=None, help="override runtime.backend")
    parser.add_argument("--workers", type=int, default=None, help="override runtime.workers")
    parser.add_argument("--address", default=None, help="override runtime.address (Ray cluster)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    parser.set_defaults(func=run)


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides that ``--set`` and the shortcut options make."""
    out = list(args.overrides)
    if args.run_dir is not None:
        out.append(f"run_dir={args.run_dir}")
    for key in ("backend", "workers", "address", "progress"):
        value = getattr(args, key)
        if value is not None:
            out.append(f"runtime.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def run(args: argparse.Namespace) -> int:
    """Load the config, run the pipeline and print one line per stage."""
    from engine.pipeline.run import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.config, overrides_from(args))
    def starting(name: str, i: int, n: int) -> None:
        print(f"[{i}/{n}] {name} ...", flush=True)

    for r in run_pipeline(cfg, only=args.only, from_stage=args.from_stage, overwrite=args.overwrite, on_stage=starting):
        print(r.line())
    print(f"run folder: {cfg.run_dir} (manifest.json)")
    return 0
