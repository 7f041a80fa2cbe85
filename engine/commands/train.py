"""``connectile train CONFIG``: train a network on labelled volumes (in this process or on Ray Train).

Examples::

    connectile train mito.yaml
    connectile train mito.yaml --set steps=5000 --set optimizer.lr=3e-4
    connectile train mito.yaml --set ray.num_workers=4 --set ray.use_gpu=true
    connectile train mito.yaml --no-resume        # start over
    connectile train semi.yaml                    # with data.unlabelled + semi: supervised warm-up, then spatial mixing
    connectile train pre.yaml                     # with contrastive: local contrastive pretraining, then fine-tuning
"""

from __future__ import annotations

import argparse

from engine.commands._command import Command, arg, no_progress, set_keys


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print a summary line."""
    from engine.commands._common import check_output
    from engine.config import load_config
    from engine.learn import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    check_output(cfg.output, {"data.raw": cfg.data.raw, "data.labels": cfg.data.labels}, option="output")
    if not args.progress:
        cfg = cfg.model_copy(update={"progress": False})
    summary = train(cfg, resume=args.resume)
    last = summary.get("last") or {}
    loss = f", last loss {last['loss']:.4f}" if "loss" in last else ""
    print(f"trained {summary['step']} steps in {summary['elapsed']:.1f} s{loss}; checkpoints in {cfg.output}/checkpoints")
    if summary.get("stopped") == "budget":
        print(f"stopped at its time budget before step {cfg.steps}; the same command continues from the newest checkpoint")
    return 0


add_parser = Command(
    "train", run, help="train a U-Net on labelled volumes (checkpoints, resume, TensorBoard, Ray Train)",
    description=(
        "Train the residual SE U-Net described by a YAML TrainConfig: random augmented crops from labelled "
        "volumes (or labelled boxes), BCE + Dice, checkpoints in OUT/checkpoints/step-XXXXXX (safetensors + "
        "config.json + optimizer state), TensorBoard logs in OUT/tensorboard, OUT/loss.png. Resumes from the "
        "newest checkpoint unless --no-resume. With ray.num_workers > 0 it runs data-parallel on Ray Train."
    ),
    flags=(
        arg("config", metavar="CONFIG", help="training config (YAML)"),
        set_keys("override a config key, e.g. --set optimizer.lr=3e-4 (repeatable)"),
        arg("--resume", dest="resume", action=argparse.BooleanOptionalAction, default=True,
            help="continue from the newest checkpoint in the output directory (default: %(default)s)"),
        no_progress(),
    ),
).add_parser
