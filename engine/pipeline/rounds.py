"""Rounds of the model loop as data: the ``rounds:`` section and its expansion into stage keys.

A config with rounds has one ``rounds:`` section::

    rounds:
      count: 2                        # rounds of query -> review -> fine-tune
      model: train.checkpoint         # the model of round 1
      predict: {raw: synth.raw, window: [1, 128, 128]}
      label: {threshold: 0.5, min_size: 50}
      score: {truth: synth.neurons}   # optional: the metrics of each round's model
      query: {}
      review: {source: oracle, truth: synth.neurons}
      finetune: {steps: 40}
      overrides:                      # optional, per round (1 .. count)
        2: {finetune: {steps: 80}}

The planner expands it into stage keys ``predict[r]``, ``label[r]``, ``score[r]``, ``query[r]``,
``review[r]``, ``finetune[r]`` for ``r = 1 .. count``, and ``predict[count+1]``, ``label[count+1]``,
``score[count+1]``: the model after the last round is predicted and scored too. Round ``r``'s section
of a kind is the shared settings of that kind, then the round's override, then the wiring between
the stages, which is written once here (:func:`wiring`): ``predict[r]`` reads ``rounds.model`` for
``r = 1`` and ``finetune[r-1].checkpoint`` after, ``finetune[r]`` fine-tunes that same model on every
answer so far (``query[1..r].rois``, ``review[1..r].answers``). Inside the section, a value
``KIND.OUTPUT`` with a round kind (``predict.probability``) means the same round's stage.

A round stage's files are in ``RUN/round-NN/<kind>/``; its manifest entry is its key. A round stage
class registers by ``kind`` (:data:`ROUND_STAGES`), apart from the stages that run once.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model, model_validator

from engine.config import Config, parse_config
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.pipeline.stage import Stage

#: the kinds of round stages, in run order
KINDS = ("predict", "label", "score", "query", "review", "finetune")
#: the kinds that also run for the model after the last round (round ``count + 1``)
FINAL_KINDS = ("predict", "label", "score")
#: kinds a config must set (the others are optional: no score without ground truth)
REQUIRED_KINDS = ("predict", "label", "query", "review", "finetune")

#: round stage classes by kind
ROUND_STAGES: dict[str, type[Stage]] = {}

_KEY = re.compile(r"^([a-z_]+)\[(\d+)\]$")
_OLD_KEY = re.compile(r"^(predict|label|score|query|review|finetune)\d+$")


def round_key(kind: str, r: int) -> str:
    """The stage key of ``kind`` in round ``r``: ``predict[2]``."""
    return f"{kind}[{r}]"


def parse_key(key: str) -> tuple[str, int] | None:
    """``("predict", 2)`` for ``predict[2]``; None for a stage that runs once."""
    m = _KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else None


def folder_of(key: str) -> str:
    """The folder of a stage in the run: ``round-02/predict`` for ``predict[2]``, the name otherwise."""
    parsed = parse_key(key)
    return f"round-{parsed[1]:02d}/{parsed[0]}" if parsed else key


def check_not_old_layout(data: Mapping[str, Any], source: str) -> None:
    """A config (or a run folder's config.yaml) with per-round sections ``predict1``, ``finetune2`` ... is
    one clear error: rounds are the ``rounds:`` section now."""
    old = sorted(k for k in data if isinstance(k, str) and _OLD_KEY.match(k))
    if old:
        raise ConfigError(
            f"{source} has per-round sections ({', '.join(old[:4])}{' ...' if len(old) > 4 else ''}) of the old layout; rounds are one `rounds:` section now",
            "start a new run folder from `connectile demo --print-config` (nothing of the old run was changed or deleted)",
        )


class RoundsBase(Config):
    """``rounds:`` (see the module docstring); one optional field per round kind is added from the registry."""

    count: int = Field(ge=1, description="rounds of query -> review -> fine-tune (the model after each is predicted and scored)")
    model: str = Field(default="train.checkpoint", description="the checkpoint round 1 predicts with (STAGE.OUTPUT or a path)")
    overrides: dict[int, dict[str, dict[str, Any]]] = Field(default_factory=dict, description="per round: {kind: settings}")

    @model_validator(mode="after")
    def _check(self) -> RoundsBase:
        for kind in REQUIRED_KINDS:
            if getattr(self, kind, None) is None:
                raise ValueError(f"rounds.{kind} is missing: a round needs settings for {', '.join(REQUIRED_KINDS)} (score is optional)")
        for r, over in self.overrides.items():
            if not 1 <= r <= self.count:
                raise ValueError(f"rounds.overrides has round {r}, but rounds.count is {self.count}: overrides are for rounds 1 to {self.count}")
            unknown = [k for k in over if k not in KINDS]
            if unknown:
                raise ValueError(f"rounds.overrides.{r} has unknown kind(s) {unknown}; kinds: {', '.join(KINDS)}")
        return self


_MODELS: dict[tuple[str, ...], type[RoundsBase]] = {}


def rounds_model() -> type[RoundsBase]:
    """The ``rounds:`` section's model: :class:`RoundsBase` plus one optional section per round kind."""
    key = tuple(sorted(ROUND_STAGES))
    if key not in _MODELS:
        fields: dict[str, Any] = {kind: (cls.config | None, None) for kind, cls in sorted(ROUND_STAGES.items())}
        _MODELS[key] = create_model("RoundsSection", __base__=RoundsBase, **fields)
    return _MODELS[key]


def kinds_in(rounds: RoundsBase, r: int) -> list[str]:
    """The kinds that run in round ``r`` (``count + 1``: the final prediction and its score)."""
    kinds = FINAL_KINDS if r == rounds.count + 1 else KINDS
    return [k for k in kinds if getattr(rounds, k, None) is not None]


def model_of(rounds: RoundsBase, r: int) -> str:
    """The checkpoint that round ``r`` predicts with and fine-tunes."""
    return rounds.model if r == 1 else f"{round_key('finetune', r - 1)}.checkpoint"


def asks_boxes(rounds: RoundsBase, r: int) -> bool:
    """Whether round ``r``'s query asks for boxes to paint (``rounds.query.boxes``, or the round's override)."""
    over = rounds.overrides.get(r, {}).get("query", {})
    return int(over.get("boxes", getattr(rounds.query, "boxes", 0) or 0)) > 0  # type: ignore[attr-defined]


def wiring(kind: str, r: int, rounds: RoundsBase) -> dict[str, Any]:
    """The inputs of ``kind`` in round ``r`` that come from other stages of the loop (written once, here)."""
    def ref(k: str, out: str) -> str:
        return f"{round_key(k, r)}.{out}"

    raw = rounds.predict.raw  # type: ignore[attr-defined]
    return {
        "predict": {"checkpoint": model_of(rounds, r)},
        "label": {"input": ref("predict", "probability")},
        "score": {"probability": ref("predict", "probability"), "labels": ref("label", "labels"), "table": ref("label", "table")},
        "query": {"labels": ref("label", "labels"), "table": ref("label", "table"), "image": raw, "probability": ref("predict", "probability"),
                  "earlier": [f"{round_key('review', k)}.answers" for k in range(1, r)], "earlier_rois": [f"{round_key('query', k)}.rois" for k in range(1, r)],
                  **({"annotated": "annotate.boxes"} if asks_boxes(rounds, r) else {})},
        "review": {"rois": ref("query", "rois")},
        "finetune": {"checkpoint": model_of(rounds, r), "rois": [f"{round_key('query', k)}.rois" for k in range(1, r + 1)],
                     "answers": [f"{round_key('review', k)}.answers" for k in range(1, r + 1)]},
    }[kind]


def _same_round(value: Any, r: int) -> Any:
    """``predict.probability`` -> ``predict[r].probability`` inside a round's section (nested values too)."""
    if isinstance(value, dict):
        return {k: _same_round(v, r) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_round(v, r) for v in value]
    if isinstance(value, str) and "/" not in value and "." in value:
        kind, _, out = value.partition(".")
        if kind in KINDS and out.isidentifier():
            return f"{round_key(kind, r)}.{out}"
    return value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def expand(rounds: RoundsBase) -> dict[str, tuple[type[Stage], Config]]:
    """Every round stage of ``rounds``: ``{key: (class, section)}`` in round order (see the module docstring)."""
    out: dict[str, tuple[type[Stage], Config]] = {}
    for r in range(1, rounds.count + 2):
        for kind in kinds_in(rounds, r):
            cls = ROUND_STAGES[kind]
            shared = getattr(rounds, kind).model_dump(mode="json", exclude_unset=True)
            data = _merge(shared, rounds.overrides.get(r, {}).get(kind, {}))
            data = _same_round(data, r)
            for f, v in wiring(kind, r, rounds).items():
                if data.get(f) is None:
                    data[f] = v
            where = f"rounds.{kind}" + (f" with rounds.overrides.{r}.{kind}" if kind in rounds.overrides.get(r, {}) else "")
            out[round_key(kind, r)] = (cls, parse_config(cls.config, data, source=f"round {r} ({where})"))
    return out
