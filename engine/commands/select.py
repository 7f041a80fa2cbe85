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
from typing import Any

from engine.commands._common import triple
from engine.errors import ConfigError

#: option dest -> SelectConfig field
_FIELDS = ("budget", "k", "seed", "knn", "nprobe", "nlist", "workers", "backend")


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
    parser.add_argument("--config", metavar="YAML", help="SelectConfig in YAML (options below override it)")
    parser.add_argument("--budget", type=int, help="sub-volumes to pick (default 4)")
    parser.add_argument("--k", type=int, help="kNN ball size, the patch itself included (default 30)")
    parser.add_argument("--window", metavar="Z,Y,X", help="window of patches per sub-volume (default 1,9,9)")
    parser.add_argument("--step", metavar="Z,Y,X", help="window positions every STEP patches (default 1,1,1)")
    parser.add_argument("--methods", metavar="LIST", help="comma list of coverage, random, kcenter, kmeans, hierarchical; the first is chosen (default coverage,random,kcenter,kmeans)")
    parser.add_argument("--seed", type=int, help="seed of the baselines and the approximate index (default 0)")
    parser.add_argument("--knn", choices=("auto", "exact", "approx"), help="kNN search (default auto: exact up to 50,000 patches)")
    parser.add_argument("--nprobe", type=int, help="lists searched by the approximate index (default 16)")
    parser.add_argument("--nlist", type=int, help="lists of the approximate index (default 4 sqrt(N))")
    parser.add_argument("--backend", choices=("local", "ray"), help="score candidates in this process or on Ray actors (default local)")
    parser.add_argument("--workers", type=int, help="Ray actors (default 2)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other SelectConfig field")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = [f"{name}={getattr(args, name)}" for name in _FIELDS if getattr(args, name) is not None]
    for name in ("window", "step"):
        value = triple(getattr(args, name), f"--{name}", int, "1,9,9")
        if value is not None:
            out.append(f"{name}=[{value[0]}, {value[1]}, {value[2]}]")
    if args.methods:
        out.append(f"methods=[{args.methods}]")
    return [*out, *args.set]


def run(args: argparse.Namespace) -> int:
    """Select sub-volumes and print where the results went."""
    from engine.commands._common import check_output
    from engine.config import load_config
    from engine.select.embeddings import load_embeddings
    from engine.select.run import SelectConfig, select, write_outputs

    check_output(args.out, {"EMB": args.embeddings}, option="the output folder OUT")
    cfg = load_config(SelectConfig, args.config, _overrides(args))
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
