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

from engine.commands._command import RUNTIME_OVERRIDES, Command, arg, overwrite, set_keys


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


def _strings(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (dotted key, string value) of a config dump."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _strings(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _strings(v, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, str) else []


def check_run_dir(run_dir: str, config: dict[str, Any], option: str = "run_dir") -> None:
    """Refuse a run folder that is a volume, or is or lies inside an input volume of the config (its files would go into the array)."""
    import os

    from engine.commands._common import check_output
    from engine.errors import ConfigError
    from engine.storage import detect_format
    from engine.storage.urls import local_folder

    local_folder(run_dir, option)  # not an s3:// or gs:// URL
    if os.path.isdir(run_dir) and detect_format(run_dir) is not None:
        raise ConfigError(f"{option} {run_dir} is a volume, not a folder for a run", "give a new folder for the run's files, e.g. beside the volume")
    for key, value in _strings(config):
        if key != "run_dir" and "://" not in value and os.path.isdir(value) and detect_format(value) is not None:
            check_output(run_dir, {key: value}, option=option)


def run(args: argparse.Namespace) -> int:
    """Load the config, run the pipeline and print one line per stage."""
    from engine.pipeline.run import load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.config, overrides_from(args))
    check_run_dir(str(cfg.run_dir), cfg.model_dump(mode="json"))
    def starting(name: str, i: int, n: int) -> None:
        print(f"[{i}/{n}] {name} ...", flush=True)

    for r in run_pipeline(cfg, only=args.only, from_stage=args.from_stage, overwrite=args.overwrite, on_stage=starting):
        print(r.line())
    print(f"run folder: {cfg.run_dir} (manifest.json)")
    return 0


add_parser = Command(
    "run", run, help="run a pipeline config (YAML, one section per stage) resumably in its run folder", description=__doc__, raw=True, flags=(
        arg("config", metavar="CONFIG", help="pipeline YAML: run_dir, runtime and one section per stage"),
        set_keys("override a key, e.g. label.min_size=20 (repeatable)"),
        arg("--only", action="append", default=None, metavar="STAGE", help="run only this stage (repeatable); its inputs must be done"),
        arg("--from", dest="from_stage", default=None, metavar="STAGE", help="run this stage and everything downstream again"),
        arg("--run-dir", default=None, help="override run_dir of the config"),
        overwrite("run every stage again from scratch"), RUNTIME_OVERRIDES,
    ),
).add_parser
