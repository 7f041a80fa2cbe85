"""Ray job entrypoint: one stage of a pipeline config, or one stage of one round of its model loop.

    ray job submit --working-dir . -- python jobs/stage.py --config jobs/configs/demo.yaml --stage train
    ray job submit --working-dir . -- python jobs/stage.py --config jobs/configs/demo.yaml --stage predict --round 3

The same as ``connectile run CONFIG --only STAGE`` (``--only predict[3]`` for a round stage): the
stage's inputs must be paths or stages already done in the same run folder. Further options
(``--set k=v``, ``--backend`` ...) go to ``connectile run``.
"""

from __future__ import annotations

import argparse
import sys

from _entry import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="jobs/stage.py", add_help=False)
    parser.add_argument("--stage", required=True, help="a stage name (train) or a round kind (predict, label, score, query, review, finetune)")
    parser.add_argument("--round", type=int, default=None, help="the round of a round kind (1 ..)")
    args, rest = parser.parse_known_args()
    stage = f"{args.stage}[{args.round}]" if args.round is not None else args.stage
    sys.exit(main(stage, rest))
