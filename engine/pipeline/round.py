"""One more round of active learning on an existing run folder (``connectile round RUN``).

RUN is the folder of a ``connectile run`` / ``connectile demo`` run with a ``rounds:`` section
(:mod:`engine.pipeline.rounds`). Round ``n`` is ``query[n] -> review[n] -> finetune[n] ->
predict[n+1] -> label[n+1] (-> score[n+1])``; its prediction ``predict[n]`` is the previous round's.
Without ``--round``, the round is the last one when it is unfinished (resume it), else
``rounds.count + 1`` (one more round: the count is raised in ``RUN/config.yaml``). The review's source
is the oracle (``oracle``: a ground-truth volume or ``STAGE.OUTPUT``) or, without it, a person; it is
kept as the round's override (``rounds.overrides.N.review``). The config is written back to
``RUN/config.yaml`` and run with :func:`engine.pipeline.run.run_pipeline` restricted to the round's
stages, so the manifest skips finished steps and resumes an interrupted one.

A person's round stops at the review (the queries are written): :func:`run_round` returns
``status="waiting"`` and the command to open the review page; once the answers are finished there, the
same call goes on from them. ``RUN/round-NN/round.json`` records each round's state and files.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import read_yaml
from engine.errors import ConfigError, StorageError

log = logging.getLogger(__name__)


@dataclass
class RoundResult:
    """What :func:`run_round` did: the round, ``done`` or ``waiting``, per-stage actions, the state file."""

    round: int
    status: str
    results: list[Any] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    state_path: str = ""
    review_command: str | None = None


def _done(manifest: Any, name: str) -> bool:
    e = manifest.entry(name)
    return e is not None and e.get("status") == "done"


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """The config mapping and manifest of a run folder; one clear error when RUN is not one."""
    from engine.pipeline.manifest import Manifest
    from engine.pipeline.rounds import check_not_old_layout

    run = Path(run_dir)
    fix = "give the folder of a `connectile run CONFIG` or `connectile demo` run (it holds config.yaml and manifest.json)"
    if not run.is_dir():
        raise StorageError(f"run folder {str(run)!r} does not exist", fix)
    missing = [n for n in ("config.yaml", "manifest.json") if not (run / n).is_file()]
    if missing:
        raise StorageError(f"{str(run)!r} is not a Connectile run folder (no {' or '.join(missing)})", fix)
    data = read_yaml(run / "config.yaml")
    check_not_old_layout(data, f"run folder {str(run)!r}")
    return data, Manifest(run)


def round_stages(n: int) -> list[str]:
    """The stage keys of round ``n`` (those the config lacks are left out by the caller)."""
    from engine.pipeline.rounds import round_key

    return [round_key(k, n) for k in ("query", "review", "finetune")] + [round_key(k, n + 1) for k in ("predict", "label", "score")]


def round_finished(manifest: Any, n: int) -> bool:
    """Whether round ``n``'s review, fine-tuning and the next prediction are done."""
    from engine.pipeline.rounds import round_key

    return all(_done(manifest, round_key(k, n)) for k in ("query", "review", "finetune")) and all(
        _done(manifest, round_key(k, n + 1)) for k in ("predict", "label"))


def round_config(data: dict[str, Any], n: int, oracle: str | None, oracle_binary: bool = False) -> dict[str, Any]:
    """``data`` with round ``n`` in it: ``rounds.count`` raised to ``n`` when lower, and the review source
    of round ``n`` (the oracle, or a person) as its override."""
    rounds = data.get("rounds")
    if not isinstance(rounds, dict):
        raise ConfigError("the run's config has no `rounds:` section, so it has no model loop to add a round to",
                          "make the run with `connectile demo`, or add a rounds section (see `connectile demo --print-config`)")
    count = int(rounds.get("count", 0))
    if n < 1 or n > count + 1:
        raise ConfigError(f"round {n} is out of range: the run has rounds 1 to {count}, and the next one is {count + 1}", f"give --round 1..{count + 1}, or leave it out")
    out = copy.deepcopy(data)
    r = out["rounds"]
    r["count"] = max(count, n)
    # keys as strings, as `--set rounds.overrides.N.KIND.KEY=V` writes them (the model reads them as ints)
    over = {str(k): v for k, v in (r.get("overrides") or {}).items()}
    r["overrides"] = over
    review = dict(over.get(str(n), {}).get("review", {}))
    if oracle is not None:
        review.update(source="oracle", truth=oracle, truth_binary=oracle_binary)
    else:
        review.update(source="person", truth=None, truth_binary=False)
    over[str(n)] = {**over.get(str(n), {}), "review": review}
    return out


def _write_state(run: Path, n: int, state: dict[str, Any]) -> Path:
    path = run / f"round-{n:02d}" / "round.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)
    return path


def _which_round(data: dict[str, Any], manifest: Any, round_number: int | None) -> int:
    if round_number is not None:
        return round_number
    rounds = data.get("rounds") if isinstance(data.get("rounds"), dict) else {}
    count = int((rounds or {}).get("count", 0))
    return count if count >= 1 and not round_finished(manifest, count) else count + 1


def run_round(
    run_dir: str | Path,
    *,
    round_number: int | None = None,
    oracle: str | None = None,
    oracle_binary: bool = False,
    overrides: Iterable[str] = (),
    on_stage: Callable[[str, int, int], None] | None = None,
) -> RoundResult:
    """Run round ``round_number`` (default: the unfinished last one, else one more) of the run in ``run_dir``."""
    from engine.pipeline.rounds import model_of, round_key
    from engine.pipeline.run import pipeline_config, plan, run_pipeline
    from engine.pipeline.stages.review import BoxesPending, ReviewPending

    run = Path(run_dir)
    data, manifest = load_run(run)
    n = _which_round(data, manifest, round_number)
    extended = round_config(data, n, oracle, oracle_binary)
    extended["run_dir"] = str(run)
    cfg = pipeline_config(extended, overrides, source=str(run / "config.yaml"))
    p = plan(cfg)
    stages = [s for s in round_stages(n) if s in p.order]
    assert cfg.rounds is not None  # type: ignore[attr-defined]
    model = model_of(cfg.rounds, n).partition(".")[0]  # type: ignore[attr-defined]
    if model in p.order and not _done(manifest, model):
        raise ConfigError(f"round {n} needs the model {model_of(cfg.rounds, n)}, which the run has not finished",  # type: ignore[attr-defined]
                          f"run `connectile round {run} --round {n - 1}` first" if n > 1 else f"finish the run first (`connectile run {run / 'config.yaml'}`)")
    missing = [d for d in (round_key("predict", n), round_key("label", n)) if not _done(manifest, d)]
    if missing:
        raise ConfigError(f"round {n} needs {', '.join(missing)}, which the run has not finished", f"run `connectile run {run / 'config.yaml'}` first")
    state: dict[str, Any] = {"round": n, "status": "running", "oracle": oracle, "stages": {}}
    state_path = _write_state(run, n, state)
    log.info("round %d of %s: stages %s", n, run, ", ".join(stages))
    results: list[Any] = []
    try:
        results = run_pipeline(cfg, only=stages, on_stage=on_stage)
    except ReviewPending as err:
        from engine.pipeline.manifest import Manifest

        m = Manifest(run)
        query_dir = m.stages[round_key("query", n)]["outputs"]["rois"]
        cmd = f"connectile review {query_dir}"
        state.update(status="waiting", review=cmd, stages={s: (m.entry(s) or {}).get("status") for s in stages},
                     queries=str(Path(query_dir) / "rounds" / f"round-{n:02d}" / "queries.parquet"))
        if isinstance(err, BoxesPending):  # the objects are answered; the dense boxes wait as crops
            state.update(crops=err.crops)
        _write_state(run, n, state)
        return RoundResult(n, "waiting", [], state, str(state_path), cmd)
    except BaseException:
        state.update(status="failed")
        _write_state(run, n, state)
        raise
    from engine.pipeline.manifest import Manifest

    m = Manifest(run)
    outs = {s: dict((m.entry(s) or {}).get("outputs", {})) for s in stages}
    query_dir = outs.get(round_key("query", n), {}).get("rois")
    state.update(
        status="done", stages={r.stage: r.action for r in results},
        queries=str(Path(query_dir) / "rounds" / f"round-{n:02d}" / "queries.parquet") if query_dir else None,
        answers=outs.get(round_key("review", n), {}).get("answers"), checkpoint=outs.get(round_key("finetune", n), {}).get("checkpoint"),
        decision=outs.get(round_key("finetune", n), {}).get("decision"),
        probability=outs.get(round_key("predict", n + 1), {}).get("probability"), labels=outs.get(round_key("label", n + 1), {}).get("labels"),
        metrics_before=(m.entry(round_key("score", n)) or {}).get("outputs", {}).get("metrics"), metrics=outs.get(round_key("score", n + 1), {}).get("metrics"),
    )
    _write_state(run, n, state)
    return RoundResult(n, "done", results, state, str(state_path))


def summary_lines(res: RoundResult) -> list[str]:
    """What ``connectile round`` prints after the stage lines."""
    s = res.state
    if res.status == "waiting" and s.get("crops"):
        from engine.pipeline.stages.review import paint_instruction

        return [f"round {res.round}: the boxes to label wait to be painted ({s['crops']})",
                paint_instruction(s["crops"], "run `connectile round` on this run folder again")]
    if res.status == "waiting":
        return [f"round {res.round}: the queries wait for answers ({s.get('queries')})",
                f"review them with `{res.review_command}`, finish the round there, then run `connectile round` on this run folder again"]
    lines = [f"round {res.round}: done; state in {res.state_path}"]
    if s.get("answers"):
        a = json.loads(Path(s["answers"]).read_text())
        lines.append(f"review ({a['source']}): {a['accepted']} of {a['reviewed']} queried ROIs accepted")
    if s.get("decision"):
        d = json.loads(Path(s["decision"]).read_text())
        lines.append(f"fine-tuning: {d['reason']}")
    if s.get("checkpoint"):
        lines.append(f"model after round {res.round}: {s['checkpoint']}")
    for key, r in (("metrics_before", res.round), ("metrics", res.round + 1)):
        if s.get(key):
            mt = json.loads(Path(s[key]).read_text())
            acc = mt.get("roi_accuracy")
            lines.append(f"round {r} model: IoU {mt['iou']:.3f}, Dice {mt['dice']:.3f}, VOI {mt['voi']:.3f}, ROI accuracy "
                         + (f"{acc:.3f}" if acc is not None else "n/a") + f" ({s[key]})")
    return lines
