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

from engine.commands._command import VOLUME, Command, Settings, Writes, arg, config_file, no_progress, set_keys
from engine.commands._flags import params_over
from engine.params import SimSiamParams


def run(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.learn.simsiam import SimSiamConfig, train_simsiam

    cfg = params_over(load_config(SimSiamConfig, args.config, [f"volume={args.volume}", f"out={args.out}", *args.set]), args)
    result = train_simsiam(cfg, progress=args.progress)
    print(f"trained {result['steps']} steps in {result['seconds']:.1f} s, loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}; encoder -> {result['encoder']}")
    if result.get("stopped") == "budget":
        print(f"stopped at its time budget before step {cfg.steps}; the same command continues from the newest checkpoint")
    return 0


add_parser = Command(
    "embed-train", run, help="self-supervised SimSiam training of the patch encoder", description=__doc__, raw=True, flags=(
        VOLUME, arg("out", metavar="OUT", help="run folder (encoder/, loss.png)"),
        config_file("SimSiamConfig in YAML (options below override it)"),
        Settings(SimSiamParams, "training (given flags override --config and --set)", defaults=False),
        set_keys("any other SimSiamConfig field, e.g. model.filters=[8,16]", dest="set"), no_progress(),
    ),
    writes=Writes("out", {"VOLUME": "volume"}, option="the run folder OUT"),
).add_parser
