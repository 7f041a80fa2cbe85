"""A stage of a pipeline run: a name, a typed config section, inputs, outputs and ``run(ctx)``.

A stage is one step of the job (synth, ingest, label, train, predict ...). It declares::

    class LabelStage(Stage):
        name = "label"
        config = LabelSection          # a strict Config: the YAML section ``label:``
        inputs = ("input",)            # fields of the section that name an input
        outputs = ("labels",)          # what it produces (other stages refer to ``label.labels``)

        def run(self, ctx, cfg):
            url = ctx.input(cfg.input)  # a path, or another stage's output
            ...
            return {"labels": out_url}

An input field holds either ``STAGE.OUTPUT`` (an output of another stage of the same run: this makes
a dependency) or a path/URL of existing data. Stages register themselves by ``name`` when their
module is imported; :func:`discover` imports every module of :mod:`engine.pipeline.stages`, so a new
stage plugs in by adding a module there, without touching a hand-kept list.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from engine.config import Config
from engine.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

#: every registered stage by name
STAGES: dict[str, type[Stage]] = {}


class RuntimeSection(Config):
    """Where blocks run; not part of any stage's hash (the same results on any backend)."""

    backend: Literal["serial", "ray"] = "serial"
    workers: int | None = Field(default=None, ge=1)
    address: str | None = None
    max_retries: int = Field(default=2, ge=0)
    progress: bool = True

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the blockwise functions (``label_volume``, ``synthesize`` ...)."""
        return {"backend": self.backend, "workers": self.workers, "address": self.address, "progress": self.progress}


class Stage(ABC):
    """Base class of stages (see the module docstring)."""

    #: the stage's name and the key of its config section
    name: ClassVar[str] = ""
    #: the section's model (a strict :class:`~engine.config.Config`)
    config: ClassVar[type[Config]] = Config
    #: names of the section's fields that hold inputs (``STAGE.OUTPUT`` or a path)
    inputs: ClassVar[tuple[str, ...]] = ()
    #: names of the outputs ``run`` returns
    outputs: ClassVar[tuple[str, ...]] = ()
    #: position in the run when dependencies do not decide (smaller first)
    order: ClassVar[int] = 500
    #: run after every other enabled stage and depend on all of them (e.g. the report)
    last: ClassVar[bool] = False
    #: a stage of the model loop: its kind in ``rounds:`` (one stage ``kind[r]`` per round, see
    #: :mod:`engine.pipeline.rounds`); empty for a stage that runs once
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        from engine.pipeline.rounds import ROUND_STAGES

        super().__init_subclass__(**kwargs)
        name = cls.name or cls.kind
        if not name:
            return
        registry = ROUND_STAGES if cls.kind else STAGES
        other = registry.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"stage {name!r} is registered twice ({other.__qualname__}, {cls.__qualname__})")
        missing = [f for f in cls.inputs if f not in cls.config.model_fields]
        if missing:
            raise TypeError(f"stage {name!r}: input fields {missing} are not fields of {cls.config.__name__}")
        registry[name] = cls

    @abstractmethod
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        """Do the work (resumably) and return ``{output name: location}``."""

    @classmethod
    def input_values(cls, cfg: Config) -> list[str]:
        """The section's input values (a field may hold one input or a list of them), in field order."""
        out: list[str] = []
        for f in cls.input_fields(cfg):
            value = getattr(cfg, f)
            if isinstance(value, (list, tuple)):
                out += [str(v) for v in value]
            elif value is not None:
                out.append(str(value))
        return out

    @classmethod
    def input_fields(cls, cfg: Config) -> tuple[str, ...]:
        """The fields of ``cfg`` that hold inputs (the declared ``inputs``; a stage may add fields it fills in)."""
        return cls.inputs

    @classmethod
    def wire(cls, section: Config, plan_keys: list[str]) -> Config:
        """The section with inputs that depend on which stages the run has (``plan_keys``) filled in;
        the default changes nothing (the metrics stage gathers every round's scores here)."""
        return section


def discover() -> dict[str, type[Stage]]:
    """Import every module of :mod:`engine.pipeline.stages` (each registers its stages) and return
    the registry."""
    import engine.pipeline.stages as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return STAGES


def split_ref(value: str, enabled: Mapping[str, type[Stage]]) -> tuple[str, str] | None:
    """``("label", "labels")`` if ``value`` is ``label.labels`` and ``label`` is an enabled stage
    with that output; None if ``value`` is a path or URL. A known stage with an unknown output is an
    error naming the outputs it has."""
    from engine.pipeline.rounds import ROUND_STAGES, parse_key

    if "/" in value or "." not in value:
        return None
    stage, _, out = value.partition(".")
    if stage not in enabled:
        parsed = parse_key(stage)
        if parsed is not None and parsed[0] in ROUND_STAGES:
            raise ConfigError(f"input {value!r} refers to round stage {stage!r}, which this run does not have", "check rounds.count and the round's kinds")
        if stage in STAGES:
            raise ConfigError(f"input {value!r} refers to stage {stage!r}, which this run does not include", f"add a {stage!r} section or give a path")
        return None
    if out not in enabled[stage].outputs:
        raise ConfigError(f"input {value!r}: stage {stage!r} has no output {out!r}", f"its outputs are: {', '.join(enabled[stage].outputs)}")
    return stage, out


@dataclass
class StageContext:
    """What a stage gets to run: its folder in the run, the runtime options, the outputs of the
    stages it depends on, and whether to start over (its config changed) or resume."""

    run_dir: Path
    stage: str
    runtime: RuntimeSection
    upstream: dict[str, dict[str, str]] = field(default_factory=dict)
    overwrite: bool = False
    #: whole pipeline config (read-only), for stages that look at others (the report)
    pipeline: Any = None
    #: the round of a round stage (``predict[3]``: 3); None for a stage that runs once
    round: int | None = None

    @property
    def test_from_z(self) -> int | None:
        """The first section of the run's test region (``test_from_z``), or None."""
        return getattr(self.pipeline, "test_from_z", None)

    @property
    def folder(self) -> str:
        """This stage's folder relative to the run: ``<stage>``, or ``round-NN/<kind>`` for a round stage."""
        from engine.pipeline.rounds import folder_of

        return folder_of(self.stage)

    @property
    def dir(self) -> Path:
        """This stage's own folder, ``RUN/<folder>``."""
        path = self.run_dir / self.folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    def state_dir(self, *parts: str) -> Path:
        """Where this stage's blockwise runs keep done-markers: ``RUN/.state/<folder>/...``."""
        base = self.run_dir / ".state" / self.folder
        return base / Path(*parts) if parts else base

    def inputs(self, values: list[str]) -> list[str]:
        """:meth:`input` of each value of a list field."""
        return [self.input(v) for v in values]

    def input(self, value: str) -> str:
        """Resolve an input value: another stage's output location, or the path/URL itself (which
        must exist when it is a local path)."""
        if "/" not in value and "." in value:
            stage, _, out = value.partition(".")
            if stage in self.upstream:
                try:
                    return self.upstream[stage][out]
                except KeyError:
                    raise ConfigError(f"{self.stage}: stage {stage!r} recorded no output {out!r}", f"run {stage!r} again") from None
        check_input_exists(value, self.stage)
        return value


def check_input_exists(value: str, stage: str) -> None:
    """A local input path (a store, maybe with an array path inside it) must exist."""
    if "://" in value and not value.startswith("file://"):
        return
    path = value.removeprefix("file://").split(":")[0] if not os.path.exists(value) else value
    if not os.path.exists(path):
        raise StorageError(f"{stage}: input {value!r} does not exist", "check the path, or name another stage's output as STAGE.OUTPUT")
