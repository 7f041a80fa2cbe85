"""One round of active learning on an existing run folder (``connectile round RUN``).

RUN is the folder of a ``connectile run`` / ``connectile demo`` run: its ``config.yaml`` and
``manifest.json``, a config with model rounds (``predict1``, ``label1`` ... as the demo makes them) and
a finished model for the round (``train.checkpoint`` for round 1, ``finetune<r-1>.checkpoint`` after).

Round ``n`` is the round stages of :mod:`engine.pipeline.stages` for ``n`` and the prediction of the
model it makes: ``predict<n> -> label<n> -> score<n> -> query<n> -> review<n> -> finetune<n> ->
predict<n+1> -> label<n+1> -> score<n+1>``. Sections the config lacks are copied from its last full
round (renumbered; the model of ``predict<n>`` is ``finetune<n-1>.checkpoint``), the review's source is
the oracle (``oracle``: a ground-truth volume or ``STAGE.OUTPUT``) or a person. The extended config is
written back to ``RUN/config.yaml`` and run with :func:`engine.pipeline.run.run_pipeline` restricted to
the round's stages, so the manifest skips finished steps and resumes an interrupted one.

A person's round stops at the review (the queries are written): :func:`run_round` returns
``status="waiting"`` and the command to open the review page; once the answers are finished there, the
same call goes on from them. ``RUN/rounds/round-NN.json`` records each round's state and files.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import read_yaml
from engine.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

#: the kinds of stages of a round, in order
KINDS = ("predict", "label", "score", "query", "review", "finetune")
_REF = re.compile(r"^(predict|label|score|query|review|finetune)(\d+)\.(\w+)$")


@dataclass
class RoundResult:
    """What :func:`run_round` did: the round, ``done`` or ``waiting``, per-stage actions, the state file."""

    round: int
    status: str
    results: list[Any] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    state_path: str = ""
    review_command: str | None = None


def model_of(r: int) -> str:
    """The checkpoint that round ``r`` predicts with."""
    return "train.checkpoint" if r == 1 else f"finetune{r - 1}.checkpoint"


def _renumber(value: Any, shift: int) -> Any:
    """``label2.table`` -> ``label3.table`` for ``shift`` 1, inside nested sections."""
    if isinstance(value, dict):
        return {k: _renumber(v, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_renumber(v, shift) for v in value]
    if isinstance(value, str):
        m = _REF.match(value)
        if m:
            return f"{m.group(1)}{int(m.group(2)) + shift}.{m.group(3)}"
    return value


def _rounds_in(data: dict[str, Any], kind: str) -> list[int]:
    from engine.pipeline.stages._rounds import MAX_ROUNDS

    return [r for r in range(1, MAX_ROUNDS + 1) if data.get(f"{kind}{r}") is not None]


def _done(manifest: Any, name: str) -> bool:
    e = manifest.entry(name)
    return e is not None and e.get("status") == "done"


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Any]:
    """The config mapping and manifest of a run folder; one clear error when RUN is not one."""
    from engine.pipeline.manifest import Manifest

    run = Path(run_dir)
    fix = "give the folder of a `connectile run CONFIG` or `connectile demo` run (it holds config.yaml and manifest.json)"
    if not run.is_dir():
        raise StorageError(f"run folder {str(run)!r} does not exist", fix)
    missing = [n for n in ("config.yaml", "manifest.json") if not (run / n).is_file()]
    if missing:
        raise StorageError(f"{str(run)!r} is not a Connectile run folder (no {' or '.join(missing)})", fix)
    data = read_yaml(run / "config.yaml")
    return data, Manifest(run)


def round_stages(n: int, data: dict[str, Any]) -> list[str]:
    """The stages of round ``n`` that ``data`` enables, in order."""
    names = [f"{k}{n}" for k in KINDS] + [f"{k}{n + 1}" for k in ("predict", "label", "score")]
    return [s for s in names if data.get(s) is not None]


def next_round(data: dict[str, Any], manifest: Any) -> int:
    """The first round whose stages (query, review, fine-tune, next prediction) are not all done."""
    from engine.pipeline.stages._rounds import MAX_ROUNDS

    for n in range(1, MAX_ROUNDS):
        if not all(_done(manifest, f"{k}{n}") for k in ("query", "review", "finetune")) or not all(
            _done(manifest, f"{k}{n + 1}") for k in ("predict", "label")
        ):
            return n
    return MAX_ROUNDS


def round_config(data: dict[str, Any], n: int, oracle: str | None, oracle_binary: bool = False) -> dict[str, Any]:
    """``data`` with the sections of round ``n`` (see the module docstring)."""
    from engine.pipeline.stages._rounds import MAX_ROUNDS

    out = copy.deepcopy(data)
    if not _rounds_in(out, "predict") or not _rounds_in(out, "label"):
        raise ConfigError("the run's config has no model rounds (no predict1/label1 sections)",
                          "make the run with `connectile demo`, or a config with train, predict1 and label1 sections (see `connectile demo --print-config`)")
    if n < 1 or n + 1 > MAX_ROUNDS:
        raise ConfigError(f"round {n} is out of range: a run has rounds 1 to {MAX_ROUNDS - 1} (the last one predicts with the model of round {MAX_ROUNDS})",
                          f"give --round 1..{MAX_ROUNDS - 1}")
    full = [r for r in _rounds_in(out, "finetune") if out.get(f"query{r}") is not None and out.get(f"review{r}") is not None]
    preds = _rounds_in(out, "predict")
    for kind in ("predict", "label", "score"):
        for r in (n, n + 1):
            name = f"{kind}{r}"
            if out.get(name) is None:
                have = [k for k in _rounds_in(out, kind) if k < r]
                if have:
                    out[name] = _renumber(copy.deepcopy(out[f"{kind}{have[-1]}"]), r - have[-1])
        if out.get(f"predict{n}") is None and preds:
            raise ConfigError(f"round {n}: no predict section to copy", "check the run's config")
    for r in (n, n + 1):
        if out.get(f"predict{r}") is not None:
            out[f"predict{r}"]["checkpoint"] = model_of(r)
    for kind in ("query", "review", "finetune"):
        name = f"{kind}{n}"
        if out.get(name) is None:
            if full:
                t = full[-1]
                out[name] = _renumber(copy.deepcopy(out[f"{kind}{t}"]), n - t)
            else:
                out[name] = _default_section(kind, n, out)
    out[f"finetune{n}"]["checkpoint"] = model_of(n)
    review = out[f"review{n}"]
    if oracle is not None:
        review.update(source="oracle", truth=oracle, truth_binary=oracle_binary)
    else:
        review.update(source="person", truth=None, truth_binary=False)
    if out.get(f"score{n + 1}") is None and oracle is not None:
        out[f"score{n + 1}"] = {"probability": f"predict{n + 1}.probability", "labels": f"label{n + 1}.labels", "table": f"label{n + 1}.table",
                                "truth": oracle, "truth_binary": oracle_binary}
    return out


def _default_section(kind: str, n: int, data: dict[str, Any]) -> dict[str, Any]:
    """A round section for a config that has prediction rounds but no full round to copy."""
    raw = data[f"predict{n}"]["raw"]
    if kind == "query":
        return {"labels": f"label{n}.labels", "table": f"label{n}.table", "image": raw, "probability": f"predict{n}.probability"}
    if kind == "review":
        return {"rois": f"query{n}.rois"}
    if data.get("annotate") is None:
        raise ConfigError("fine-tuning needs the annotated boxes of the run (an annotate section) or a full round to copy",
                          "make the run with `connectile demo`, or add annotate and query1/review1/finetune1 sections to its config")
    return {"checkpoint": model_of(n), "rois": f"query{n}.rois", "answers": f"review{n}.answers", "labels": "annotate.labels", "boxes": "annotate.boxes"}


def _write_state(run: Path, n: int, state: dict[str, Any]) -> Path:
    path = run / "rounds" / f"round-{n:02d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)
    return path


def run_round(
    run_dir: str | Path,
    *,
    round_number: int | None = None,
    oracle: str | None = None,
    oracle_binary: bool = False,
    overrides: Iterable[str] = (),
    on_stage: Callable[[str, int, int], None] | None = None,
) -> RoundResult:
    """Run round ``round_number`` (default: the first unfinished one) of the run in ``run_dir``."""
    from engine.pipeline.run import pipeline_config, run_pipeline
    from engine.pipeline.stages.review import ReviewPending

    run = Path(run_dir)
    data, manifest = load_run(run)
    n = round_number if round_number is not None else next_round(data, manifest)
    extended = round_config(data, n, oracle, oracle_binary)
    extended["run_dir"] = str(run)
    cfg = pipeline_config(extended, overrides, source=str(run / "config.yaml"))
    stages: Sequence[str] = round_stages(n, cfg.model_dump(mode="json"))
    first = stages[0]
    model = model_of(n).partition(".")[0]
    if not _done(manifest, model):
        raise ConfigError(f"round {n} needs the model {model_of(n)}, which the run has not finished",
                          f"run `connectile round {run} --round {n - 1}` first" if n > 1 else f"finish the run first (`connectile run {run / 'config.yaml'}`)")
    state: dict[str, Any] = {"round": n, "status": "running", "oracle": oracle, "stages": {}}
    state_path = _write_state(run, n, state)
    log.info("round %d of %s: stages %s (from %s)", n, run, ", ".join(stages), first)
    results: list[Any] = []
    try:
        results = run_pipeline(cfg, only=list(stages), on_stage=on_stage)
    except ReviewPending:
        from engine.pipeline.manifest import Manifest

        m = Manifest(run)
        query_dir = m.stages[f"query{n}"]["outputs"]["rois"]
        cmd = f"connectile review {query_dir}"
        state.update(status="waiting", review=cmd, stages={s: (m.entry(s) or {}).get("status") for s in stages},
                     queries=str(Path(query_dir) / "rounds" / "round-01" / "queries.parquet"))
        _write_state(run, n, state)
        return RoundResult(n, "waiting", [], state, str(state_path), cmd)
    except BaseException:
        state.update(status="failed")
        _write_state(run, n, state)
        raise
    from engine.pipeline.manifest import Manifest

    m = Manifest(run)
    outs = {s: dict((m.entry(s) or {}).get("outputs", {})) for s in stages}
    query_dir = outs.get(f"query{n}", {}).get("rois")
    state.update(
        status="done", stages={r.stage: r.action for r in results},
        queries=str(Path(query_dir) / "rounds" / "round-01" / "queries.parquet") if query_dir else None,
        answers=outs.get(f"review{n}", {}).get("answers"), checkpoint=outs.get(f"finetune{n}", {}).get("checkpoint"),
        probability=outs.get(f"predict{n + 1}", {}).get("probability"), labels=outs.get(f"label{n + 1}", {}).get("labels"),
        metrics_before=outs.get(f"score{n}", {}).get("metrics"), metrics=outs.get(f"score{n + 1}", {}).get("metrics"),
    )
    _write_state(run, n, state)
    return RoundResult(n, "done", results, state, str(state_path))


def summary_lines(res: RoundResult) -> list[str]:
    """What ``connectile round`` prints after the stage lines."""
    s = res.state
    if res.status == "waiting":
        return [f"round {res.round}: the queries wait for answers ({s.get('queries')})",
                f"review them with `{res.review_command}`, finish the round there, then run `connectile round` on this run folder again"]
    lines = [f"round {res.round}: done; state in {res.state_path}"]
    if s.get("answers"):
        a = json.loads(Path(s["answers"]).read_text())
        lines.append(f"review ({a['source']}): {a['accepted']} of {a['reviewed']} queried ROIs accepted")
    if s.get("checkpoint"):
        lines.append(f"fine-tuned model: {s['checkpoint']}")
    for key, r in (("metrics_before", res.round), ("metrics", res.round + 1)):
        if s.get(key):
            mt = json.loads(Path(s[key]).read_text())
            acc = mt.get("roi_accuracy")
            lines.append(f"round {r} model: IoU {mt['iou']:.3f}, Dice {mt['dice']:.3f}, VOI {mt['voi']:.3f}, ROI accuracy "
                         + (f"{acc:.3f}" if acc is not None else "n/a") + f" ({s[key]})")
    return lines
