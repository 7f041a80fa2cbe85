"""``connectile query RUN``: suggest the ROIs to review in the next round of active learning.

Examples::

    connectile query runs/mito --method hierarchical --clusters 64 --sub 4
    connectile query runs/mito --method coreset --budget 256
    connectile query runs/mito --config query.yaml --set features.image.epochs=10
    connectile query runs/mito --oracle data.zarr/mito_gt     # answer from ground truth at once
"""

from __future__ import annotations

import argparse
from typing import Any

METHOD_CHOICES = ("hierarchical", "late-fusion", "mask", "image", "random", "coreset", "uncertainty")


def add_parser(subparsers: Any) -> None:
    """Register ``connectile query``."""
    parser = subparsers.add_parser(
        "query",
        help="suggest ROIs to review (two-stream hierarchical clustering or a baseline)",
        description=(
            "Compute the ROI features of RUN once (mask VAE on the aligned masks, image VAE on patches of the whole "
            "volume), fine-tune the image VAE on earlier answers (triplet loss), and write the next round's "
            "queries to RUN/rounds/round-NN/queries.parquet. ROIs with an answer are never suggested again."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run directory holding rois/ (see connectile rois)")
    parser.add_argument("--method", choices=METHOD_CHOICES, default=None, help="query method (default: hierarchical)")
    parser.add_argument("--clusters", type=int, default=None, metavar="N", help="N: clusters on the mask features (default 64)")
    parser.add_argument("--sub", type=int, default=None, metavar="M", help="M: sub-clusters on the image features (default 4)")
    parser.add_argument("--per-cluster", type=int, default=None, metavar="Q", help="Q: representatives per cluster (default 1)")
    parser.add_argument("--budget", type=int, default=None, help="number of queries of the baselines (default N*M*Q)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--no-active", dest="active", action="store_false", default=None, help="no triplet tuning of the image VAE")
    parser.add_argument("--round", type=int, default=None, help="round number (default: the next one)")
    parser.add_argument("--config", metavar="YAML", default=None, help="query config (keys of QueryConfig: features, triplet, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. features.image.epochs=5")
    parser.add_argument("--oracle", metavar="GT", default=None, help="answer the queries from this ground-truth volume and finish the round")
    parser.add_argument("--oracle-binary", action="store_true", help="the ground truth is a binary mask (its connected components are the objects)")
    parser.add_argument("--overwrite", action="store_true", help="suggest again a round whose queries exist (not once it has answers)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Suggest the queries and print a summary line."""
    from engine.active.rounds import QueryConfig, run_query
    from engine.config import load_config

    overrides = list(args.overrides)
    for key, value in (("method", args.method), ("n_clusters", args.clusters), ("n_sub", args.sub), ("per_cluster", args.per_cluster),
                       ("budget", args.budget), ("seed", args.seed), ("active", args.active)):
        if value is not None:
            overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    cfg = load_config(QueryConfig, args.config, overrides)
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
