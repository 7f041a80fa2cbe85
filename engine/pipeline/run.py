"""Run the stages of a pipeline config in a run folder, resumably.

>>> import tempfile
>>> cfg = pipeline_config({"run_dir": tempfile.mkdtemp(), "synth": {"shape": [8, 32, 32], "chunks": [8, 32, 32]},
...                        "label": {"input": "synth.mito"}, "runtime": {"progress": False}})
>>> [r.action for r in run_pipeline(cfg)]
['ran', 'ran']
>>> [r.action for r in run_pipeline(cfg)]
['skipped', 'skipped']

Rules:

- The order: each stage after the stages whose outputs it names (``label.input: synth.mito``), ties
  broken by the stages' ``order``; a ``last`` stage (the report) after all others.
- A stage's hash covers its own section and the hashes of the stages it depends on, so a changed
  section changes the hash of that stage and of everything downstream. The runtime section (backend,
  workers) is in no hash: the results are the same on any backend.
- A stage whose manifest entry is ``done`` with the same hash (and whose outputs exist) is skipped.
  A stage whose hash changed starts over (its blockwise ops get ``overwrite``); a stage left
  ``running`` or ``failed`` with the same hash resumes (its blockwise ops skip finished blocks).
- ``only``: run just these stages; what they depend on must be done already. ``from_stage``: run
  that stage and everything downstream of it again, even if done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, create_model

from engine.config import Config, apply_overrides, parse_config, read_yaml
from engine.errors import ConfigError, ConnectileError, StorageError
from engine.faults import kill_point
from engine.pipeline.manifest import Manifest
from engine.pipeline.stage import STAGES, RuntimeSection, Stage, StageContext, discover, split_ref
from engine.storage.urls import local_folder

log = logging.getLogger(__name__)


class PipelineBase(Config):
    """The top of a pipeline config: the run folder and the runtime; one section per stage is added
    from the registry (a stage runs when its section is present)."""

    run_dir: str = "runs/pipeline"
    runtime: RuntimeSection = RuntimeSection()
    test_from_z: int | None = Field(
        default=None, ge=1,
        description="sections z >= this are the test region: never embedded for training, selected, annotated, queried, reviewed or trained "
                    "on; the score stages score only there (None: no test region, scores over the whole volume)")


_MODELS: dict[tuple[str, ...], type[PipelineBase]] = {}


def pipeline_model() -> type[PipelineBase]:
    """The ``PipelineConfig`` model: :class:`PipelineBase` plus one optional section per registered stage
    and the ``rounds:`` section of the model loop (:mod:`engine.pipeline.rounds`)."""
    from engine.pipeline.rounds import ROUND_STAGES, rounds_model

    stages = discover()
    key = (*sorted(stages), "|", *sorted(ROUND_STAGES))
    if key not in _MODELS:
        fields: dict[str, Any] = {name: (cls.config | None, None) for name, cls in sorted(stages.items())}
        fields["rounds"] = (rounds_model() | None, None)
        _MODELS[key] = create_model("PipelineConfig", __base__=PipelineBase, **fields)
    return _MODELS[key]


def pipeline_config(data: Mapping[str, Any], overrides: Iterable[str] = (), source: str = "config") -> PipelineBase:
    """Validate a mapping (with ``key=value`` overrides) into a pipeline config."""
    from engine.pipeline.rounds import check_not_old_layout

    check_not_old_layout(data, source)
    return parse_config(pipeline_model(), apply_overrides(data, overrides), source=source)


def load_pipeline_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> PipelineBase:
    """Read a pipeline YAML file; every problem is one :class:`ConfigError` naming the key."""
    return pipeline_config(read_yaml(path), overrides, source=str(path))


@dataclass
class Plan:
    """The enabled stages in run order, what each depends on, and each one's hash."""

    order: list[str]
    depends: dict[str, list[str]]
    hashes: dict[str, str]
    sections: dict[str, Config] = field(default_factory=dict)
    classes: dict[str, type[Stage]] = field(default_factory=dict)

    def downstream(self, stage: str) -> set[str]:
        """``stage`` and every stage that depends on it, directly or not."""
        out = {stage}
        for name in self.order:
            if any(d in out for d in self.depends[name]):
                out.add(name)
        return out


def enabled_stages(cfg: PipelineBase) -> dict[str, tuple[type[Stage], Config]]:
    """Every stage the config runs, by key (the round stages expanded: ``predict[2]``), with its section."""
    from engine.pipeline.rounds import expand

    enabled: dict[str, tuple[type[Stage], Config]] = {n: (c, getattr(cfg, n)) for n, c in STAGES.items() if getattr(cfg, n, None) is not None}
    rounds = getattr(cfg, "rounds", None)
    if rounds is not None:
        enabled |= expand(rounds)
    keys = list(enabled)
    return {k: (c, c.wire(sec, keys)) for k, (c, sec) in enabled.items()}


def plan(cfg: PipelineBase) -> Plan:
    """Order the enabled stages and hash them (see the module docstring)."""
    both = enabled_stages(cfg)
    if not both:
        raise ConfigError("the config enables no stage", f"add a section for at least one of: {', '.join(sorted(STAGES))}, rounds")
    enabled: dict[str, type[Stage]] = {n: c for n, (c, _) in both.items()}
    sections: dict[str, Config] = {n: sec for n, (_, sec) in both.items()}
    depends: dict[str, list[str]] = {}
    for name, cls in enabled.items():
        deps: set[str] = set()
        for value in cls.input_values(sections[name]):
            ref = split_ref(value, enabled)
            if ref is not None:
                if ref[0] == name:
                    raise ConfigError(f"{name}: input {value!r} refers to the stage itself", "name another stage's output or a path")
                deps.add(ref[0])
        if cls.last:
            deps |= {n for n, c in enabled.items() if not c.last}
        depends[name] = sorted(deps)
    order: list[str] = []
    left = dict(depends)
    while left:
        ready = [n for n, d in left.items() if all(x in order for x in d)]
        if not ready:
            raise ConfigError(f"the stages {', '.join(sorted(left))} depend on each other in a cycle", "make one of them read a path instead")
        first = min(ready, key=lambda n: (enabled[n].last, _round_of(n), enabled[n].order, n))
        order.append(first)
        del left[first]
    hashes: dict[str, str] = {}
    for name in order:
        hashes[name] = stage_hash(name, sections[name].model_dump(mode="json"), {d: hashes[d] for d in depends[name]}, getattr(cfg, "test_from_z", None))
    return Plan(order, depends, hashes, sections, enabled)


def stage_hash(name: str, section: Mapping[str, Any], depends: Mapping[str, str], test_from_z: int | None) -> str:
    """A stage's config hash: its section (as dumped to JSON), the hashes of the stages it depends on, and the
    test region (a test region changes what every stage may use)."""
    blob: dict[str, Any] = {"stage": name, "section": section, "depends": dict(depends)}
    if test_from_z is not None:
        blob["test_from_z"] = test_from_z
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _same_settings(recorded: Any, current: Any, set_here: Any) -> bool:
    """Whether a section dumped by an earlier version (``recorded``) asks for what ``current`` asks for: every
    recorded key the same, every key it lacks (a setting added since) at its default, i.e. absent from the dump
    without defaults (``set_here``). A key removed since counts as a change.

    >>> _same_settings({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2, "d": 0}, "e": 5}, {"a": 1, "b": {"c": 2}})
    True
    >>> _same_settings({"a": 1}, {"a": 1, "e": 6}, {"a": 1, "e": 6}), _same_settings({"a": 1, "x": 0}, {"a": 1}, {"a": 1})
    (False, False)
    """
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return bool(recorded == current)
    if set(recorded) - set(current):
        return False
    nested = set_here if isinstance(set_here, dict) else {}
    return all(_same_settings(recorded[k], v, nested.get(k)) if k in recorded else k not in nested for k, v in current.items())


def adopt_new_defaults(p: Plan, manifest: Manifest, test_from_z: int | None) -> list[str]:
    """Keep finished stages finished across an upgrade that adds settings: a ``done`` stage whose hash differs only
    because its section gained keys, all at their defaults, and whose dependencies are done under the current
    hashes, takes the current hash (its recorded config must reproduce its recorded hash, so nothing else changed:
    not the test region, not a dependency). Without this, every new default would start finished stages over,
    and finished rounds a person reviewed would be asked again. The stages adopted, in order."""
    recorded = {n: e.get("hash") for n, e in manifest.stages.items()}
    adopted = []
    for name in p.order:
        e = manifest.entry(name)
        if e is None or e.get("status") != "done" or e.get("hash") == p.hashes[name] or not isinstance(e.get("config"), dict):
            continue
        deps = p.depends[name]
        if sorted(e.get("depends") or []) != sorted(deps) or not all(manifest.is_done(d, p.hashes[d]) for d in deps):
            continue
        if stage_hash(name, e["config"], {d: str(recorded.get(d)) for d in deps}, test_from_z) != e["hash"]:
            continue
        section = p.sections[name]
        current = section.model_dump(mode="json")
        if _same_settings(e["config"], current, section.model_dump(mode="json", exclude_defaults=True)):
            e.update(hash=p.hashes[name], config=current)
            adopted.append(name)
    if adopted:
        manifest.save()
        log.info("stages finished before settings were added (all at their defaults) stay finished: %s", ", ".join(adopted))
    return adopted


def _round_of(key: str) -> int:
    from engine.pipeline.rounds import parse_key

    parsed = parse_key(key)
    return parsed[1] if parsed else 0


@dataclass
class StageResult:
    """What happened to one stage in :func:`run_pipeline`."""

    stage: str
    action: str  # "ran" or "skipped"
    seconds: float
    outputs: dict[str, str]
    hash: str

    def line(self) -> str:
        outs = ", ".join(f"{k}={v}" for k, v in self.outputs.items())
        what = f"ran in {self.seconds:.1f} s" if self.action == "ran" else "done already (skipped)"
        return f"{self.stage}: {what}" + (f"; {outs}" if outs else "")


def _outputs_exist(outputs: Mapping[str, str]) -> bool:
    return all("://" in v or os.path.exists(v) for v in outputs.values())


def run_pipeline(
    cfg: PipelineBase,
    *,
    only: Sequence[str] | None = None,
    from_stage: str | None = None,
    overwrite: bool = False,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> list[StageResult]:
    """Run the enabled stages of ``cfg`` in ``cfg.run_dir`` and return what each did.

    ``on_stage(name, i, n)`` is called before stage ``i`` of ``n`` runs (not when it is skipped).
    """
    p = plan(cfg)
    for name in [*(only or ()), *([from_stage] if from_stage else [])]:
        if name not in p.order:
            known = ", ".join(p.order)
            raise ConfigError(f"stage {name!r} is not in this run", f"the config enables: {known}" + ("" if name in STAGES or "[" in name else f"; known stages: {', '.join(sorted(STAGES))}"))
    run_dir = local_folder(cfg.run_dir)  # not an s3:// or gs:// URL
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir {str(run_dir)!r} is a file", "choose a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # stages the config leaves out are not written: a section that is null here would be an unknown key
        # for a process where that stage is not registered (e.g. a stage a plugin or a test registers)
        sections = {k: v for k, v in cfg.model_dump(mode="json").items() if v is not None}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))
    except OSError as err:
        raise StorageError(f"cannot write the run folder {str(run_dir)!r}: {err.strerror or err}", "choose a writable run_dir") from err
    manifest = Manifest(run_dir)
    adopt_new_defaults(p, manifest, getattr(cfg, "test_from_z", None))
    selected = list(p.order) if not only else [n for n in p.order if n in set(only)]
    forced = p.downstream(from_stage) if from_stage else set()
    if overwrite:
        forced = set(p.order)
    ran_now: set[str] = set()
    results: list[StageResult] = []
    for name in selected:
        digest = p.hashes[name]
        for dep in p.depends[name]:
            if dep not in ran_now and not manifest.is_done(dep, p.hashes[dep]):
                raise ConfigError(
                    f"stage {name!r} needs {dep!r}, which is not done with the current config", f"run the whole config (without --only), or --only {dep} first"
                )
        entry = manifest.entry(name)
        if name not in forced and manifest.is_done(name, digest) and entry is not None and _outputs_exist(entry["outputs"]):
            log.info("stage %s: done already (hash %s)", name, digest)
            results.append(StageResult(name, "skipped", 0.0, dict(entry["outputs"]), digest))
            continue
        # a changed config, or a finished stage whose outputs were deleted (its done-markers would
        # claim blocks that no longer exist), starts over; a stage left running/failed resumes
        start_over = name in forced or (entry is not None and (entry.get("hash") != digest or entry.get("status") == "done"))
        if entry is not None and not start_over:
            log.info("stage %s: resuming (it was %s)", name, entry.get("status"))
        if on_stage is not None:
            on_stage(name, selected.index(name) + 1, len(selected))
        results.append(_run_stage(name, p, manifest, cfg, run_dir, start_over))
        ran_now.add(name)
        kill_point(f"pipeline:after-{name}")  # tests: a driver killed between stages (engine.faults)
    return results


def _run_stage(name: str, p: Plan, manifest: Manifest, cfg: PipelineBase, run_dir: Path, start_over: bool) -> StageResult:
    cls = p.classes[name]
    section = p.sections[name]
    digest = p.hashes[name]
    upstream = {d: dict(manifest.stages[d]["outputs"]) for d in p.depends[name]}
    ctx = StageContext(run_dir=run_dir, stage=name, runtime=cfg.runtime, upstream=upstream, overwrite=start_over, pipeline=cfg, round=_round_of(name) or None)
    manifest.start(name, digest, p.depends[name], section.model_dump(mode="json"))
    log.info("stage %s: running (hash %s%s)", name, digest, ", starting over" if start_over else "")
    t0 = time.perf_counter()
    try:
        outputs = cls().run(ctx, section)
    except BaseException as err:
        msg = str(err) if isinstance(err, ConnectileError) else f"{type(err).__name__}: {err}"
        manifest.fail(name, msg.splitlines()[0] if msg else type(err).__name__, time.perf_counter() - t0)
        raise
    unknown = [o for o in outputs if o not in cls.outputs]
    if unknown:
        manifest.fail(name, f"returned undeclared outputs {unknown}", time.perf_counter() - t0)
        raise RuntimeError(f"stage {name!r} returned undeclared output(s) {unknown} (a bug in the stage)")
    seconds = time.perf_counter() - t0
    manifest.finish(name, outputs, seconds)
    log.info("stage %s: done in %.1f s", name, seconds)
    return StageResult(name, "ran", seconds, dict(outputs), digest)
