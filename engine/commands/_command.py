"""A sub-command declared as data: :class:`Command` (its name, help, flags in order, and which output it
must not write over its inputs) builds its parser, so that a command module holds only what is special
about it: its own flags and its ``run``. The flags every command shares are declared here once: the
op's settings (:class:`Settings`, generated from its params model by :func:`~engine.commands._flags.add_flags`),
the runtime options (:data:`RUNTIME`), ``--overwrite``, ``--no-progress``, ``--address``, ``--config`` and
``--set``.

A command module ends with::

    add_parser = Command("segment", run, help="...", description=__doc__, flags=(
        arg("affs", metavar="AFFS", help="..."), arg("output", metavar="OUT", help="..."),
        Settings(SegmentParams, "segmentation (the pipeline's segment stage takes the same settings)"), OVERWRITE, RUNTIME,
    ), writes=Writes("output", {"AFFS": "affs"})).add_parser

and :mod:`engine.cli` calls every module's ``add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from engine.commands._common import add_runtime_args, check_output
from engine.commands._flags import add_flags


@dataclass(frozen=True)
class Arg:
    """One argument as :meth:`argparse.ArgumentParser.add_argument` takes it."""

    names: tuple[str, ...]
    kw: Mapping[str, Any]

    def add_to(self, parser: Any) -> None:
        parser.add_argument(*self.names, **self.kw)


def arg(*names: str, **kw: Any) -> Arg:
    """``arg("--port", type=int, default=0, help=...)``: what ``parser.add_argument`` would be given."""
    return Arg(names, kw)


@dataclass(frozen=True)
class Settings:
    """The flags of an op's params model, in an argument group titled ``title`` (see
    :func:`~engine.commands._flags.add_flags` for ``defaults``, ``aliases`` and ``skip``); ``exclusive``:
    further flags of the group that exclude each other (e.g. ``--lut`` / ``--no-lut``)."""

    model: type[BaseModel]
    title: str
    defaults: bool = True
    aliases: Mapping[str, Sequence[str]] | None = None
    skip: Sequence[str] = ()
    exclusive: Sequence[Arg] = ()

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(self.title)
        add_flags(group, self.model, skip=self.skip, defaults=self.defaults, aliases=self.aliases)
        if self.exclusive:
            either = group.add_mutually_exclusive_group()
            for item in self.exclusive:
                item.add_to(either)


@dataclass(frozen=True)
class Runtime:
    """The runtime group (:func:`~engine.commands._common.add_runtime_args`): ``--backend`` (default
    ``default_backend``), ``--workers``, ``--address``, ``--max-retries``, ``--no-progress``."""

    default_backend: str = "ray"

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        add_runtime_args(parser, default_backend=self.default_backend)


#: one entry of a command's flags, added in order
Flag = Arg | Settings | Runtime | tuple[Arg, ...]

# -- the flags commands share ------------------------------------------------------------------------
RUNTIME = Runtime()
RUNTIME_SERIAL = Runtime("serial")
OVERWRITE = arg("--overwrite", action="store_true", help="start over instead of resuming")
ADDRESS = arg("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
VOLUME = arg("volume", metavar="VOLUME", help="raw volume, e.g. data.zarr/raw")


def overwrite(help_text: str) -> Arg:
    """``--overwrite`` with the command's own words for what it does."""
    return arg("--overwrite", action="store_true", help=help_text)


def no_progress(help_text: str = "no progress bar", default: Any = True) -> Arg:
    """``--no-progress`` (``args.progress`` False; ``default=None``: None unless given, for overrides)."""
    return arg("--no-progress", dest="progress", action="store_false", help=help_text, **({} if default is True else {"default": default}))


def config_file(help_text: str) -> Arg:
    """``--config YAML`` (default None)."""
    return arg("--config", metavar="YAML", default=None, help=help_text)


def set_keys(help_text: str, dest: str = "overrides", metavar: str = "KEY=VALUE") -> Arg:
    """``--set KEY=VALUE`` (repeatable, into ``args.<dest>``)."""
    return arg("--set", dest=dest, action="append", default=[], metavar=metavar, help=help_text)


#: ``connectile run`` and ``round``: the runtime section's keys, None unless given (overrides of the config)
RUNTIME_OVERRIDES = (
    arg("--backend", choices=("ray", "serial"), default=None, help="override runtime.backend"),
    arg("--workers", type=int, default=None, help="override runtime.workers"),
    arg("--address", default=None, help="override runtime.address (Ray cluster)"),
    no_progress("no progress bars", default=None),
)


@dataclass(frozen=True)
class Writes:
    """The output a command writes (the dest of its argument) and its inputs (name shown -> dest, or a
    function of the arguments), which the output must not be, nor (``inside``) lie inside
    (:func:`~engine.commands._common.check_output`); checked before ``run``. ``option``: how the error
    names the output."""

    output: str
    inputs: Mapping[str, str | Callable[[argparse.Namespace], str | None]]
    option: str = "the output"
    inside: bool = True

    def check(self, args: argparse.Namespace) -> None:
        named = {name: dest(args) if callable(dest) else getattr(args, dest) for name, dest in self.inputs.items()}
        check_output(getattr(args, self.output), named, option=self.option, inside=self.inside)


@dataclass(frozen=True)
class Command:
    """One ``connectile`` sub-command: ``name``, ``run(args) -> exit code``, the one-line ``help``, the
    ``description`` (shown as written with ``raw``, e.g. a module docstring with examples; else wrapped),
    the ``flags`` in order and what it ``writes``."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str | None = None
    raw: bool = False
    flags: Sequence[Flag] = ()
    writes: Writes | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def add_parser(self, subparsers: Any) -> argparse.ArgumentParser:
        """Register the command with ``subparsers`` (of :func:`engine.cli.build_parser`)."""
        kw: dict[str, Any] = {"formatter_class": argparse.RawDescriptionHelpFormatter} if self.raw else {}
        parser: argparse.ArgumentParser = subparsers.add_parser(self.name, help=self.help, description=self.description, **kw)
        for item in self.flags:
            for one in (item if isinstance(item, tuple) else (item,)):
                one.add_to(parser)
        parser.set_defaults(func=self.invoke, **self.defaults)
        return parser

    def invoke(self, args: argparse.Namespace) -> int:
        """Check the output against the inputs, then run."""
        if self.writes is not None:
            self.writes.check(args)
        return self.run(args)
