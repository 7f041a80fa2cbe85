"""Command-line flags generated from an operation's :class:`~engine.config.Params` model.

Each field ``name`` becomes ``--name`` (underscores as dashes) with its type, choices, default and help
taken from the model (the field's description, then "(default: ...)"), so that a command, its pipeline
stage and the op share one declaration and one set of defaults. ``z,y,x`` triples are written
``--window 16,128,128`` and ``(min, max)`` ranges ``--mito-radius 40,100``; booleans get ``--name`` / ``--no-name``. :func:`params_from_args` builds the model
back from the parsed arguments (a bad value is one :class:`~engine.errors.ConfigError` naming the flag).

>>> import argparse
>>> from engine.params import PredictParams
>>> ap = argparse.ArgumentParser()
>>> add_flags(ap, PredictParams)
>>> params_from_args(PredictParams, ap.parse_args(["--overlap", "0.25", "--window", "1,64,64"])).settings()["window"]
(1, 64, 64)
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from engine.errors import ConfigError

P = TypeVar("P", bound=BaseModel)


def flag(name: str) -> str:
    """``window_size`` -> ``--window-size``."""
    return "--" + name.replace("_", "-")


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether None is allowed."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _is_triple(annotation: Any) -> bool:
    return get_origin(annotation) is tuple and len(get_args(annotation)) == 3


def _is_pair(annotation: Any) -> bool:
    """A ``(min, max)`` range, written ``--name 40,100``."""
    return get_origin(annotation) is tuple and len(get_args(annotation)) == 2 and Ellipsis not in get_args(annotation)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def _example(model: type[BaseModel], name: str) -> str:
    """A value to show for ``name``: its default, else the field's first example."""
    info = model.model_fields[name]
    return _show(info.default if info.default is not None else (info.examples or [(16, 128, 128)])[0])


def add_flags(
    parser: argparse.ArgumentParser | Any, model: type[BaseModel], *, skip: typing.Iterable[str] = (), defaults: bool = True,
    aliases: typing.Mapping[str, typing.Sequence[str]] | None = None,
) -> None:
    """Add one flag per field of ``model`` (but ``skip``) to ``parser`` (or an argument group). With
    ``defaults=False`` a flag not given leaves no attribute (for commands that read a config file first:
    the flags given override it; the help still shows the model's defaults). ``aliases``: field name ->
    further flags (names users already type, e.g. ``--clusters`` for ``n_clusters``)."""
    skipped = set(skip)
    hints = typing.get_type_hints(model)
    for name, info in model.model_fields.items():
        if name in skipped:
            continue
        kind, _optional = _unwrap(hints[name])
        text = (info.description or "").rstrip(".")
        if info.default is not None:  # a None default is described by the field's description
            text = f"{text} (default: {_show(info.default)})" if text else f"default: {_show(info.default)}"
        help_text = text
        help_text = help_text.replace("%", "%%")
        names = (flag(name), *(aliases or {}).get(name, ()))
        kw: dict[str, Any] = {"dest": name, "default": info.default if defaults else argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
        elif _is_triple(kind):
            parser.add_argument(*names, metavar="Z,Y,X", **kw)
        elif _is_pair(kind):
            parser.add_argument(*names, metavar="MIN,MAX", **kw)
        elif get_origin(kind) is list:
            parser.add_argument(*names, metavar="A,B,...", **kw)
        elif get_origin(kind) is Literal:
            parser.add_argument(*names, choices=list(get_args(kind)), type=type(get_args(kind)[0]), **kw)
        elif kind in (int, float, str):
            parser.add_argument(*names, type=kind, **kw)
        elif get_origin(kind) in (Union, types.UnionType) and all(a in (int, float) or get_origin(a) is Literal for a in get_args(kind)):
            # e.g. ``int | Literal["auto"]``: the text goes to the model, which reads "30" as 30
            parser.add_argument(*names, type=str, metavar="|".join(["N" if a in (int, float) else "|".join(get_args(a)) for a in get_args(kind)]), **kw)
        else:
            raise TypeError(f"{model.__name__}.{name}: no command-line flag for {kind!r}")


def params_from_args(model: type[P], args: argparse.Namespace, /, **extra: Any) -> P:
    """``model`` from the flags :func:`add_flags` added (``z,y,x`` text split into triples), plus ``extra``."""
    hints = typing.get_type_hints(model)
    values: dict[str, Any] = {}
    for name in model.model_fields:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        kind, _ = _unwrap(hints[name])
        if isinstance(value, str) and get_origin(kind) is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str) and _is_triple(kind):
            value = value.split(",")
            if len(value) != 3:
                raise ConfigError(f"{flag(name)} must be three comma-separated numbers z,y,x, got {getattr(args, name)!r}", f"e.g. {flag(name)} {_example(model, name)}")
        if isinstance(value, str) and _is_pair(kind):
            value = value.split(",")
            if len(value) != 2:
                raise ConfigError(f"{flag(name)} must be two comma-separated numbers min,max, got {getattr(args, name)!r}", f"e.g. {flag(name)} {_example(model, name)}")
        values[name] = value
    try:
        return model(**values, **extra)
    except ValidationError as err:
        first = err.errors()[0]
        loc = str(first["loc"][0]) if first.get("loc") else ""
        shown = flag(loc) if loc in model.model_fields else loc or model.__name__
        if loc in model.model_fields and _is_triple(_unwrap(hints[loc])[0]) and isinstance(getattr(args, loc, None), str):
            raise ConfigError(f"{shown} must be three comma-separated numbers z,y,x, got {getattr(args, loc)!r}",
                              f"e.g. {shown} {_example(model, loc)}") from None
        raise ConfigError(f"{shown}: {str(first.get('msg', 'invalid')).removeprefix('Value error, ')} (got {first.get('input')!r})",
                          f"give a valid {shown} (see --help)") from None


def params_over(base: P, args: argparse.Namespace) -> P:
    """``base`` (e.g. read from a ``--config`` file) with the flags given over it (flags added with
    ``add_flags(..., defaults=False)``: a flag not given leaves ``base``'s value)."""
    model = type(base)
    return params_from_args(model, args, **{k: getattr(base, k) for k in model.model_fields if not hasattr(args, k)})
