"""``connectile select EMB OUT``: choose the sub-volumes to label by coverage of kNN balls.

Reads the patch embeddings of ``connectile embed``, picks ``--budget`` non-overlapping windows of
``--window`` patches by greedy maximum coverage (the paper's criterion), runs the baselines (random,
k-center, k-means) on the same candidates, and writes ``OUT/selection.json`` (the boxes to label, in
voxels), ``OUT/selection_<method>.json``, ``OUT/coverage.png`` and ``OUT/picks.png``.

Examples::

    connectile select runs/emb.zarr runs/select --budget 4 --k 30 --window 1,9,9
    connectile select runs/emb.zarr runs/select --config select.yaml --set knn=approx --set nprobe=32
    connectile select runs/emb.zarr runs/select --backend ray --workers 4 --methods coverage,hierarchical
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from engine.commands._flags import add_flags, params_over
from engine.errors import ConfigError
from engine.params import SelectParams

if TYPE_CHECKING:
    from engine.select.run import SelectConfig

def add_parser(subparsers: Any) -> None:
    """Register ``connectile select``."""
    parser = subparsers.add_parser(
        "select",
        help="choose sub-volumes to label by coverage of kNN balls of patch embeddings (with baselines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("embeddings", metavar="EMB", help="embedding array written by connectile embed, e.g. runs/emb.zarr")
    parser.add_argument("out", metavar="OUT", help="output folder (selection.json, coverage.png, picks.png)")
    parser.add_argument("--config", metavar="YAML", help="the settings in YAML, as the pipeline's selection.params (flags given override them)")
    add_flags(parser.add_argument_group("selection (the pipeline's selection.params: the same settings; given flags override --config)"),
              SelectParams, defaults=False)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting as in --config (a flag given wins)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)


def _params(args: argparse.Namespace) -> SelectConfig:
    """The SelectConfig of ``--config`` (else the defaults), ``--set`` and the flags given, in that order."""
    from engine.config import load_config
    from engine.select.run import SelectConfig

    return params_over(load_config(SelectConfig, args.config, args.set), args)


def run(args: argparse.Namespace) -> int:
    """Select sub-volumes and print where the results went."""
    from engine.commands._common import check_output
    from engine.select.embeddings import load_embeddings
    from engine.select.run import select, write_outputs

    check_output(args.out, {"EMB": args.embeddings}, option="the output folder OUT")
    cfg = _params(args)
    grid, emb, attrs = load_embeddings(args.embeddings)
    if cfg.backend == "ray":
        from engine.runtime import connect

        connect(args.address, num_cpus=cfg.workers if not args.address else None, dashboard=False)
    selections, info = select(grid, emb, cfg, progress=args.progress)
    if not selections:
        raise ConfigError("no method given", "e.g. --methods coverage,random")
    path = write_outputs(args.out, grid, emb, selections, info, cfg, attrs)
    for sel in selections:
        cov = sel.coverage[-1] / sel.total if sel.coverage else 0.0
        print(f"{sel.method:>12}: {len(sel.boxes)} sub-volumes cover {cov:.1%} of {sel.total} patches")
    print(f"chosen boxes ({selections[0].method}) -> {path}")
    return 0
