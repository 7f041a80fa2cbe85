"""The ``connectile`` command.

Each sub-command lives in its own module under :mod:`engine.commands`: its ``run(args) -> int`` and
``add_parser = Command(...).add_parser``, the declaration of its name, help and flags in order
(:class:`engine.commands._command.Command`: the op's settings, the runtime options, ``--overwrite`` and
the other shared flags are declared there once). This file discovers the modules, so adding a command
never touches a hand-kept list here.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from engine.errors import ConnectileError

log = logging.getLogger("engine")


def build_parser() -> argparse.ArgumentParser:
    import engine.commands as commands

    parser = argparse.ArgumentParser(prog="connectile", description="Distributed label-efficient segmentation of EM volumes on Ray.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"engine.commands.{info.name}")
        module.add_parser(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    level = int(os.environ.get("CONNECTILE_LOG_LEVEL", level))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code = int(args.func(args) or 0)
    except ConnectileError as err:
        print(f"connectile {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
            raise
        # not a bug but the machine's rights: the one line names the path (an output folder, mostly)
        print(f"connectile {args.command}: error: {err.strerror}: {err.filename}; choose a path you may write to, or fix its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"connectile {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
