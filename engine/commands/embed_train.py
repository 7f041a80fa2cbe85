"""``connectile embed-train VOLUME OUT``: self-supervised (SimSiam) training of the patch encoder.

Trains the encoder half of the residual U-Net (+ global pooling, projector and predictor) on patches
sampled from the whole volume, two EM-perturbed views each. Writes ``OUT/encoder`` (checkpoint),
``OUT/loss.json``, ``OUT/loss.png`` and ``OUT/config.yaml``. Any field of
:class:`engine.learn.simsiam.SimSiamConfig` can be set with ``--set`` (e.g. ``--set model.filters=[8,16]``).

Example::

    connectile embed-train data.zarr/raw runs/simsiam --steps 2000 --batch 8 --patch 18,160,160
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._flags import add_flags, params_over
from engine.params import SimSiamParams


def add_parser(subparsers: Any) -> None:
    """Register ``connectile embed-train``."""
    parser = subparsers.add_parser(
        "embed-train", help="self-supervised SimSiam training of the patch encoder", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("volume", metavar="VOLUME", help="raw volume, e.g. data.zarr/raw")
    parser.add_argument("out", metavar="OUT", help="run folder (encoder/, loss.png)")
    parser.add_argument("--config", metavar="YAML", help="SimSiamConfig in YAML (options below override it)")
    add_flags(parser.add_argument_group("training (given flags override --config and --set)"), SimSiamParams, defaults=False)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other SimSiamConfig field, e.g. model.filters=[8,16]")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands._common import check_output
    from engine.config import load_config
    from engine.learn.simsiam import SimSiamConfig, train_simsiam

    check_output(args.out, {"VOLUME": args.volume}, option="the run folder OUT")
    cfg = params_over(load_config(SimSiamConfig, args.config, [f"volume={args.volume}", f"out={args.out}", *args.set]), args)
    result = train_simsiam(cfg, progress=args.progress)
    print(f"trained {result['steps']} steps in {result['seconds']:.1f} s, loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}; encoder -> {result['encoder']}")
    if result.get("stopped") == "budget":
        print(f"stopped at its time budget before step {cfg.steps}; the same command continues from the newest checkpoint")
    return 0
