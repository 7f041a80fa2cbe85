"""``connectile query RUN``: suggest the ROIs to review in the next round of active learning.

Examples::

    connectile query runs/mito --method hierarchical --clusters 64 --sub 4
    connectile query runs/mito --method coreset --budget 256
    connectile query runs/mito --config query.yaml --set features.image.epochs=10
    connectile query runs/mito --oracle data.zarr/mito_gt     # answer from ground truth at once
"""

from __future__ import annotations

import argparse
from typing import get_args

from engine.commands._command import Command, Settings, arg, config_file, no_progress, overwrite, set_keys
from engine.commands._flags import params_over
from engine.params import QueryMethod, QueryParams

METHOD_CHOICES = get_args(QueryMethod)


def run(args: argparse.Namespace) -> int:
    """Suggest the queries and print a summary line."""
    from engine.active.rounds import QueryConfig, run_query
    from engine.config import load_config

    cfg = params_over(load_config(QueryConfig, args.config, args.overrides), args)
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), 4))
    result = run_query(args.run_dir, cfg, round_number=args.round, overwrite=args.overwrite, progress=args.progress)
    state = " (already there)" if result.already_done else ""
    print(f"round {result.round:02d}: {result.queries} {result.method} queries among {result.candidates} unreviewed ROIs -> {result.path}{state}")
    if args.oracle:
        from engine.active.oracle import answer_round

        answers = answer_round(args.run_dir, result.round, args.oracle, gt_binary=args.oracle_binary)
        print(f"round {result.round:02d}: oracle accepted {sum(answers.values())} of {len(answers)}")
    return 0


add_parser = Command(
    "query", run, help="suggest ROIs to review (two-stream hierarchical clustering or a baseline)",
    description=(
        "Compute the ROI features of RUN once (mask VAE on the aligned masks, image VAE on patches of the whole "
        "volume), fine-tune the image VAE on earlier answers (triplet loss), and write the next round's "
        "queries to RUN/rounds/round-NN/queries.parquet. ROIs with an answer are never suggested again."
    ),
    flags=(
        arg("run_dir", metavar="RUN", help="run directory holding rois/ (see connectile rois)"),
        Settings(QueryParams, "query (the pipeline's rounds.query.query: the same settings; given flags override --config)", defaults=False,
                 aliases={"n_clusters": ("--clusters",), "n_sub": ("--sub",)}),
        arg("--round", type=int, default=None, help="round number (default: the next one)"),
        config_file("query config in YAML, as the pipeline's rounds.query.query (the settings below, features, triplet)"),
        set_keys("override a config key, e.g. features.image.epochs=5"),
        arg("--oracle", metavar="GT", default=None, help="answer the queries from this ground-truth volume and finish the round"),
        arg("--oracle-binary", action="store_true", help="the ground truth is a binary mask (its connected components are the objects)"),
        overwrite("suggest again a round whose queries exist (not once it has answers)"), no_progress("no progress bars"),
    ),
).add_parser
