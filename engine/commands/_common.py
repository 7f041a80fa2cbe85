"""Options shared by the blockwise sub-commands, and how to parse ``z,y,x`` triples."""

from __future__ import annotations

import argparse
from typing import Any

from engine.errors import ConfigError


def add_runtime_args(parser: argparse.ArgumentParser, *, default_backend: str = "ray") -> None:
    """``--backend``, ``--workers``, ``--address``, ``--max-retries`` and ``--no-progress``."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--backend", choices=("ray", "serial"), default=default_backend, help="where blocks run (default: %(default)s)")
    group.add_argument("--workers", type=int, default=None, help="CPU workers (default: one per CPU; with GPUs: one per GPU)")
    group.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else start a local cluster)")
    group.add_argument("--max-retries", type=int, default=2, help="retries of a failing block before the run fails (default: %(default)s)")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def runtime_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`engine.runtime.run_blockwise` that the options above set."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    return {"backend": args.backend, "workers": args.workers, "address": args.address, "max_retries": args.max_retries, "progress": args.progress}


def serve_until_interrupted(server: Any, stopped: str) -> None:
    """``server.serve_forever()`` until Ctrl-C, then print ``stopped`` (the caller closes the server)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(stopped)


def triple(text: str | None, what: str, kind: type, example: str) -> tuple[Any, ...] | None:
    """Parse ``"40,4,4"`` into a tuple of three ``kind`` values (None stays None)."""
    if text is None:
        return None
    try:
        out = tuple(kind(v) for v in text.split(","))
    except ValueError as err:
        raise ConfigError(f"{what} must be three comma-separated numbers z,y,x, got {text!r}", f"e.g. {what} {example}") from err
    if len(out) != 3:
        raise ConfigError(f"{what} must be three comma-separated numbers z,y,x, got {text!r}", f"e.g. {what} {example}")
    return out


def _where(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, path) of a path or URL, local paths resolved (symlinks, ``..``)."""
    import os

    from engine.storage.urls import parse_url

    loc = parse_url(url)
    path = os.path.realpath(loc.path) if loc.is_local_file else loc.path
    return loc.scheme, loc.bucket, path.rstrip("/") or "/"


def check_output(output: str, inputs: dict[str, str | None], *, option: str = "the output", inside: bool = True) -> None:
    """Refuse an output that is one of ``inputs`` (name -> path) or (``inside``) lies inside one.

    Writing there would overwrite the data the command reads or mix files into it; the message names the
    output, the input and what to do. (An output that holds an input, such as its group, is refused by
    :func:`engine.storage.create_volume`, which names what the group holds.)
    """
    out = _where(output)
    for name, value in inputs.items():
        if not value:
            continue
        src = _where(value)
        if src[:2] != out[:2]:
            continue
        if src[2] == out[2]:
            raise ConfigError(f"{option} {output} is the input {name} {value}", "choose another output, e.g. a new array or folder beside it")
        if inside and out[2].startswith(src[2] + "/"):
            raise ConfigError(f"{option} {output} lies inside the input {name} {value}", "choose an output outside the input")
