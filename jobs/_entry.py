"""Shared by the job entrypoints ``jobs/pipeline.py`` and ``jobs/stage.py`` (``--config FILE [--set k=v ...]``).

A stage job runs ``connectile run FILE --only <stage>`` (``predict[3]`` for a round stage): the stage's inputs must be paths or stages
already done in the same run folder. Exit code 0 on success, the error's exit code (one line on
stderr) on a :class:`~engine.errors.ConnectileError`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Inside ``ray job submit --working-dir .`` the working directory is the repository copy; make sure
# ``engine`` imports from it when the package is not installed on the cluster.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(stage: str | None, argv: Sequence[str] | None = None) -> int:
    """Parse ``--config`` (and pass the rest on to ``connectile run``), run, return the exit code."""
    from engine.cli import main as cli_main

    what = f"the {stage!r} stage" if stage else "the whole pipeline"
    parser = argparse.ArgumentParser(prog="jobs/stage.py" if stage else "jobs/pipeline.py", description=f"Ray job entrypoint: {what} of a pipeline config.")
    parser.add_argument("--config", required=True, help="pipeline YAML (see jobs/configs/)")
    args, rest = parser.parse_known_args(argv)
    return cli_main(["run", args.config, *(["--only", stage] if stage else []), *rest])
