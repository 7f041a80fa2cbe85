"""``connectile round RUN``: one more round of active learning on a run folder, resumably.

query -> review -> fine-tune on every answer so far (kept only if it does not lower the held-out
annotated score) -> predict, label and score the round's model, with the round stages of the pipeline
(``query[n]`` ... ``finetune[n]``, ``predict[n+1]``; :mod:`engine.pipeline.rounds`). RUN is the folder of a
``connectile run`` or ``connectile demo`` run whose config has a ``rounds:`` section and a finished
model. Without ``--round`` an unfinished last round is resumed, else one more is added
(``rounds.count + 1``, no limit). Each round's state (queries, answers, checkpoint, metrics) stays in RUN
(``manifest.json``, ``RUN/round-NN/round.json``); finished steps are skipped.

Examples::

    connectile round runs/demo --oracle synth.neurons       # answers from the ground truth
    connectile round runs/demo                              # stops at the queries: review them, then
    connectile review runs/demo/round-03/query              #   (the command it prints)
    connectile round runs/demo                              #   goes on from the answers
    connectile round runs/demo --round 2 --oracle GT        # a given round (done already: skipped)
    connectile round runs/demo --set rounds.overrides.3.finetune.steps=80   # settings of this round only
"""

from __future__ import annotations

import argparse

from engine.commands._command import RUNTIME_OVERRIDES, Command, arg, set_keys


def run(args: argparse.Namespace) -> int:
    """Run the round and print one line per stage, then the round's summary."""
    from engine.commands.run import overrides_from
    from engine.pipeline.round import run_round, summary_lines

    overrides = overrides_from(_with_run_dir_none(args))

    def starting(name: str, i: int, n: int) -> None:
        print(f"[{i}/{n}] {name} ...", flush=True)

    res = run_round(args.run_dir, round_number=args.round, oracle=args.oracle, oracle_binary=args.oracle_binary, overrides=overrides, on_stage=starting)
    for r in res.results:
        print(r.line())
    print("\n".join(summary_lines(res)))
    return 0


def _with_run_dir_none(args: argparse.Namespace) -> argparse.Namespace:
    """``overrides_from`` reads ``args.run_dir`` as an override of the config's run folder; here RUN is the folder itself."""
    ns = argparse.Namespace(**vars(args))
    ns.run_dir = None
    return ns


add_parser = Command(
    "round", run, help="run one round of active learning (query, review, fine-tune, predict) on a run folder", description=__doc__, raw=True,
    flags=(
        arg("run_dir", metavar="RUN", help="run folder of `connectile run` / `connectile demo` (config.yaml, manifest.json)"),
        arg("--oracle", metavar="GT", default=None,
            help="answer the queries from this ground truth (a volume, or STAGE.OUTPUT such as synth.neurons); default: a person, on the review page"),
        arg("--oracle-binary", action="store_true", help="the ground truth is a binary mask (its connected components are the objects)"),
        arg("--round", type=int, default=None, help="round number (default: the unfinished last round, else one more)"),
        set_keys("override a key of the run's config, e.g. rounds.overrides.3.finetune.steps=100 (kept in RUN/config.yaml: a rerun keeps it unless set again)"),
        RUNTIME_OVERRIDES,
    ),
).add_parser
