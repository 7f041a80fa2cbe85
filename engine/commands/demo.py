"""``connectile demo``: the whole pipeline on the embedded default config, end to end.

A synthetic EM volume with ground truth (target: mitochondria) -> self-supervised embeddings ->
coverage selection of the boxes to label -> labels from the oracle -> supervised training and a
ceiling (every label outside the test region) -> per round: prediction, objects, metrics, active
queries, oracle review, fine-tuning -> metrics per round -> a Markdown report with plots and a
neuroglancer link. Resumable: running it again skips finished stages (``--overwrite``
starts over). ``--real lucchi`` runs it on the Lucchi++ volume of the shared data folder instead.

Examples::

    connectile demo                                   # runs/demo, local Ray, 3.5 minutes on 2 quiet cores
    connectile demo --real lucchi --out runs/demo_lucchi
    connectile demo --print-config > my.yaml          # the config, to edit and run with connectile run
"""

from __future__ import annotations

import argparse

from engine.commands._command import RUNTIME, Command, arg, overwrite, set_keys
from engine.commands._common import triple


def run(args: argparse.Namespace) -> int:
    from engine.commands._common import runtime_kwargs
    from engine.commands.run import check_run_dir
    from engine.errors import ConfigError
    from engine.pipeline.demo import apply_tiny, demo_config, demo_yaml, find_shared_data, run_demo, summary_lines

    rt = runtime_kwargs(args)
    shape = triple(args.shape, "--shape", int, "32,256,256")
    chunks = triple(args.chunks, "--chunks", int, "16,128,128")
    assert shape is not None and chunks is not None
    if any(s < c for s, c in zip(shape, chunks, strict=True)):
        raise ConfigError(f"the demo volume {shape} is smaller than one chunk {chunks}", "give --shape of at least --chunks, e.g. --shape 32,256,256")
    lucchi = str(find_shared_data("lucchi_pp")) if args.real == "lucchi" else None
    out = args.out or ("runs/demo_lucchi" if lucchi else "runs/demo")
    cfg = demo_config(out, shape=shape, chunks=chunks, seed=args.seed, rounds=args.rounds, lucchi=lucchi)
    if args.tiny:
        cfg = apply_tiny(cfg)
    check_run_dir(out, cfg, "--out")
    cfg["runtime"] = {**cfg["runtime"], "backend": rt["backend"], "max_retries": rt["max_retries"], "progress": rt["progress"]}
    cfg["runtime"] |= {k: rt[k] for k in ("workers", "address") if rt[k] is not None}
    if args.print_config:  # what would run: the --set overrides applied
        from engine.config import apply_overrides

        print(demo_yaml(apply_overrides(cfg, args.overrides or ())), end="")
        return 0

    def starting(name: str, i: int, n: int) -> None:
        print(f"[{i}/{n}] {name} ...", flush=True)

    summary = run_demo(cfg, overrides=args.overrides, overwrite=args.overwrite, on_stage=starting)
    for r in summary["results"]:
        print(r.line())
    print("\n".join(summary_lines(summary)))
    return 0


add_parser = Command(
    "demo", run, help="run the whole pipeline end to end on a synthetic EM volume (or --real lucchi)", description=__doc__, raw=True, flags=(
        arg("--out", default=None, help="run folder (default: runs/demo, runs/demo_lucchi with --real lucchi)"),
        arg("--real", choices=("lucchi",), default=None, help="run on a real data set from the shared data folder"),
        arg("--shape", default="32,256,256", help="synthetic volume shape z,y,x (default: %(default)s)"),
        arg("--chunks", default="16,128,128", help="storage chunks z,y,x (default: %(default)s)"),
        arg("--seed", type=int, default=0, help="synthetic volume seed (default: %(default)s)"),
        arg("--rounds", type=int, default=2, help="active-learning rounds (default: %(default)s)"),
        arg("--tiny", action="store_true", help="a seconds-long run with tiny models (tests, smoke checks)"),
        set_keys("override a config key, e.g. train.steps=400"),
        arg("--print-config", action="store_true", help="print the demo config (YAML) and exit"),
        overwrite("run every stage again from scratch"), RUNTIME,
    ),
).add_parser
