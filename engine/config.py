"""Typed configuration: strict pydantic models loaded from YAML, with command-line overrides.

Every config in Connectile (a training run, a pipeline run, a job) is a :class:`Config` subclass.
Loading goes through :func:`load_config`, which turns every way a file can be wrong into one
:class:`~engine.errors.ConfigError` that names the file and the key::

    class TrainConfig(Config):
        steps: int = 1000
        lr: float = 1e-3

    cfg = load_config(TrainConfig, "train.yaml", overrides=["lr=3e-4"])

An unknown key is an error (``extra="forbid"``), never silently ignored; a wrong type names the key,
the value and the expected type. Overrides are ``dotted.key=value`` with the value parsed as YAML.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class Params(BaseModel):
    """The settings of one operation, declared once (issue 15): the op's configuration (the op class
    derives from it), the pipeline stage's section (which derives from it and adds the stage's wiring)
    and the command's flags (:func:`engine.commands._flags.add_flags`, help from the field
    descriptions). Every default lives here. ``unhashed`` names the fields that change how the op runs
    but not what it writes (left out of its done-markers' parameters)."""

    model_config = ConfigDict(extra="forbid")

    unhashed: ClassVar[frozenset[str]] = frozenset()

    def settings(self) -> dict[str, Any]:
        """The values of this model's own :class:`Params` fields (not a section's wiring) by name."""
        own = _params_fields(type(self))
        return {n: getattr(self, n) for n in type(self).model_fields if n in own}


def _params_fields(cls: type[BaseModel]) -> set[str]:
    """The fields declared by the operations' settings among ``cls``'s bases: the classes that derive from
    :class:`Params` directly (``PredictParams``, not the stage section or the op built on it)."""
    out: set[str] = set()
    for base in cls.__mro__:
        if Params in getattr(base, "__bases__", ()):
            out |= set(inspect.get_annotations(base)) & set(cls.model_fields)
    return out


class Config(BaseModel):
    """Base of all configs: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_yaml(self) -> str:
        """The fully resolved config (defaults filled in) as YAML, to store next to outputs."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self) -> str:
        """A short stable hash of the resolved config (for manifests and done-markers)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: the most values (mapping entries, list items and scalars, each alias counted again where it is used)
#: a config may expand to: a config is at most thousands; YAML aliases can blow a short file up past memory
MAX_YAML_NODES = 200_000


def _expanded_size(data: Any, limit: int, path: str) -> int:
    """Values in ``data`` with every shared (aliased) node counted where it is used; a ConfigError
    past ``limit`` or for a node that contains itself (a recursive alias)."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_ids:
            raise ConfigError(f"config file {path!r} has a YAML alias that contains itself", "replace the recursive alias (*name inside &name) by the values")
        open_ids.add(key)
        total = 1 + sum(size(v) for v in (node.values() if isinstance(node, dict) else node))
        open_ids.discard(key)
        if total > limit:
            raise ConfigError(
                f"config file {path!r} expands to more than {limit} values (YAML aliases repeated inside each other)",
                "write the values out instead of nesting aliases (&name / *name)",
            )
        sizes[key] = total
        return total

    return size(data)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable, non-UTF-8, non-mapping or alias-bomb file is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist", "check the path")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {err.start} is not valid UTF-8)", "save it as UTF-8") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(p)!r}: {err.strerror}", "check its permissions") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{line}", "fix the syntax") from err
    except RecursionError as err:
        raise ConfigError(f"config file {str(p)!r} is nested too deeply", "flatten it") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of keys to values, not a {type(data).__name__}", "write it as key: value lines, e.g. steps: 100"
        )
    _expanded_size(data, MAX_YAML_NODES, str(p))
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides applied (value parsed as YAML)."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str)) if data else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value", "e.g. --set train.lr=3e-4")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_config(model: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Validate ``data`` against ``model``; the first problem becomes a one-line :class:`ConfigError`."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        key = _key_path(tuple(first.get("loc", ())))
        kind = first.get("type", "")
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(first.get("loc", ()))[:-1])
            hint = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
            raise ConfigError(f"{source}: unknown key {key!r}{more}", hint) from err
        if kind == "missing":
            raise ConfigError(f"{source}: missing required key {key!r}{more}", "add it") from err
        value = first.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        raise ConfigError(f"{source}: bad value for {key!r}: {shown} ({first.get('msg', 'invalid')}){more}") from err


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``loc``, best effort, for the error hint."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def load_config(model: type[C], path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> C:
    """Read ``path`` (YAML; None for all defaults), apply ``overrides`` and validate against ``model``."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return parse_config(model, data, source=str(path) if path is not None else "config")
