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
from typing import TYPE_CHECKING

from engine.commands._command import ADDRESS, Command, Settings, Writes, arg, config_file, no_progress, set_keys
from engine.commands._flags import params_over
from engine.errors import ConfigError
from engine.params import SelectParams

if TYPE_CHECKING:
    from engine.select.run import SelectConfig


def _params(args: argparse.Namespace) -> SelectConfig:
    """The SelectConfig of ``--config`` (else the defaults), ``--set`` and the flags given, in that order."""
    from engine.config import load_config
    from engine.select.run import SelectConfig

    return params_over(load_config(SelectConfig, args.config, args.set), args)


def run(args: argparse.Namespace) -> int:
    """Select sub-volumes and print where the results went."""
    from engine.select.embeddings import load_embeddings
    from engine.select.run import select, write_outputs

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


add_parser = Command(
    "select", run, help="choose sub-volumes to label by coverage of kNN balls of patch embeddings (with baselines)", description=__doc__, raw=True,
    flags=(
        arg("embeddings", metavar="EMB", help="embedding array written by connectile embed, e.g. runs/emb.zarr"),
        arg("out", metavar="OUT", help="output folder (selection.json, coverage.png, picks.png)"),
        config_file("the settings in YAML, as the pipeline's selection.params (flags given override them)"),
        Settings(SelectParams, "selection (the pipeline's selection.params: the same settings; given flags override --config)", defaults=False),
        ADDRESS, set_keys("a setting as in --config (a flag given wins)", dest="set"), no_progress("no progress bars"),
    ),
    writes=Writes("out", {"EMB": "embeddings"}, option="the output folder OUT"),
).add_parser
