"""``review1``, ``review2`` ...: the answers to a round's queries.

``source: oracle`` answers at once from ground truth (:func:`engine.active.oracle.answer_round`: an
object is correct when it covers more than half of a ground-truth object); ``source: person`` waits
for a person: until the round's answers are marked finished, the stage fails with a message telling
to run ``connectile review RUN/query<r>`` and then to run the pipeline again (the stage then reads the
answers and the run goes on). Writes ``RUN/review<r>/answers.json`` (roi id -> accepted) and the share
of queried objects that were right (the round's ROI accuracy on the queries).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from engine.config import Config
from engine.errors import ConnectileError
from engine.pipeline.stage import Stage, StageContext
from engine.pipeline.stages._rounds import per_round


class ReviewPending(ConnectileError):
    """A round waits for a person's review."""

    exit_code = 3


class ReviewSection(Config):
    """``review<r>:`` -- ``rois``: ``query<r>.rois``; ``source``: oracle or person; ``truth``: the
    ground truth of the oracle (an instance volume, or a binary one with ``truth_binary``)."""

    rois: str
    source: Literal["oracle", "person"] = "oracle"
    truth: str | None = None
    truth_binary: bool = False
    criterion: Literal["cover", "iou"] = "cover"
    threshold: float = 0.5


class ReviewStage(Stage):
    config = ReviewSection
    inputs = ("rois", "truth")
    outputs = ("answers",)
    round: ClassVar[int] = 0

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.active.answers import AnswerStore, answers_path, round_finished
        from engine.active.oracle import answer_round
        from engine.active.rois import round_dir
        from engine.errors import ConfigError

        active = ctx.input(cfg.rois)
        rdir = round_dir(active, 1)
        answers: dict[int, bool] = {}
        if (rdir / "queries.parquet").exists():
            if cfg.source == "oracle":
                if cfg.truth is None:
                    raise ConfigError(f"{self.name}: source 'oracle' needs truth (the ground-truth volume)", f"set {self.name}.truth, or source: person")
                if round_finished(rdir) and not ctx.overwrite:
                    with AnswerStore(answers_path(rdir)) as store:
                        answers = store.answers()
                else:
                    if ctx.overwrite:
                        answers_path(rdir).unlink(missing_ok=True)
                    answers = answer_round(active, 1, ctx.input(cfg.truth), criterion=cfg.criterion, threshold=cfg.threshold, gt_binary=cfg.truth_binary)
            else:
                if not round_finished(rdir):
                    raise ReviewPending(
                        f"{self.name}: the queries of {active} wait for a person's review",
                        f"run `connectile review {active}`, finish the round, then run the pipeline again",
                    )
                with AnswerStore(answers_path(rdir)) as store:
                    answers = store.answers()
        accepted = sum(answers.values())
        doc = {"source": cfg.source, "answers": {str(k): bool(v) for k, v in sorted(answers.items())}, "reviewed": len(answers),
               "accepted": accepted, "query_accuracy": accepted / len(answers) if answers else None}
        path = ctx.dir / "answers.json"
        path.write_text(json.dumps(doc, indent=1))
        return {"answers": str(path)}


REVIEW = per_round(ReviewStage, "review", 140)
