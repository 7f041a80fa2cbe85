#!/usr/bin/env python
"""The ceiling of ``connectile demo --real lucchi``: its base recipe trained on all of the training labels.

    nice -n 5 .venv/bin/python benchmarks/demo_lucchi_ceiling.py --run RUN          # RUN: a demo run whose train stage is done
    .venv/bin/python benchmarks/demo_lucchi_ceiling.py --smoke --out /tmp/dlc        # seconds: a real 16-section crop, tiny settings

Takes a ``connectile demo --real lucchi`` run folder (``--run``; its ``ingest`` and ``annotate`` stages done)
and trains, with the demo's ``train`` section unchanged (same model, crop, batch, steps,
learning rate, augmentation, sampling, seed, threads), the *ceiling*: every section below the run's test
region (``test_from_z``, sections 0..124 of 165) labelled from the ground truth, crops drawn anywhere
there. Then it scores the run's base model (``train.checkpoint``) and the ceiling the same way on the test
region (sections ``z >= test_from_z``, never labelled or trained on by either): IoU of
``probability > 0.5`` against the ground-truth mask, sliding windows of the training crop
(:class:`engine.learn.validate.Validator`), and prints one JSON line with both, their ratio, the labelled
share of each and the wall/CPU time of the ceiling's training. The demo's own ``score[1]`` IoU (the same
model, predicted blockwise over the whole volume) is printed beside it when the run has it. The ceiling
can train while the demo does: the base model is scored when the run's ``train`` is done (else ``null``);
run the script again later and it reuses the finished ceiling (training resumes from its checkpoint).
Writes ``OUT/results.json`` (``--out``, default ``RUN/ceiling``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UNKNOWN = 255


def cpu_seconds() -> float:
    return time.process_time()


def smoke_run(out: Path) -> Path:
    """A tiny demo run (ingest .. train) on a real 16 x 256 x 384 crop of Lucchi++ (sections 60-75)."""
    from PIL import Image

    from engine.pipeline.demo import apply_tiny, demo_config, find_shared_data
    from engine.pipeline.run import pipeline_config, run_pipeline

    src = find_shared_data("lucchi_pp")
    for sub in ("Train_In", "Train_Out"):
        (out / "lucchi" / sub).mkdir(parents=True, exist_ok=True)
        files = sorted((src / sub).iterdir(), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))[60:76]
        for f in files:
            with Image.open(f) as im:
                Image.fromarray(np.asarray(im)[256:512, 384:768]).save(out / "lucchi" / sub / f.name)
    run = out / "run"
    cfg = apply_tiny(demo_config(str(run), lucchi=str(out / "lucchi"), rounds=1))
    cfg = {k: v for k, v in cfg.items() if k in ("run_dir", "runtime", "ingest", "embed", "selection", "annotate", "train")}
    cfg["test_from_z"] = 12
    cfg["ingest"]["chunks"] = [16, 128, 128]
    cfg["train"]["validation_roi"] = None
    run_pipeline(pipeline_config(cfg, source="demo_lucchi_ceiling --smoke"))
    (run / "demo_config.json").write_text(json.dumps(cfg))
    return run


def run_config(run: Path) -> dict[str, Any]:
    """The run's pipeline config (the one its manifest was made with)."""
    import yaml

    for name in ("demo_config.json", "config.yaml", "pipeline.yaml"):
        p = run / name
        if p.exists():
            data: dict[str, Any] = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
            return data
    from engine.pipeline.demo import demo_config

    return demo_config(str(run), lucchi="../shared/data/lucchi_pp")


def iou_on_test(checkpoint: str, raw: str, target: str, z_from: int, tcfg: Any) -> float:
    """IoU of a checkpoint on sections z >= z_from (the Validator's sliding windows, threshold 0.5)."""
    from engine.learn.config import ValidationConfig
    from engine.learn.validate import Validator
    from engine.models import load_checkpoint
    from engine.storage import open_volume

    shape = open_volume(raw).spatial_shape
    v = Validator(ValidationConfig.model_validate({"raw": raw, "labels": target, "roi": {"start": [z_from, 0, 0], "stop": list(shape)}}), tcfg)
    model, _, _ = load_checkpoint(checkpoint)
    return float(v(model)["iou"])


def continue_base(checkpoint: str, section: Any, raw: str, annotate: dict[str, str], out: Path, steps: int) -> str:
    """The run's base model trained on to ``steps`` steps in ``out`` (its checkpoint copied there first; the
    per-step batches are a function of the step, so this equals a run of ``steps`` from the start)."""
    import shutil

    from engine.pipeline.stages.train import build_train_config, run_training

    tcfg = build_train_config(section.model_copy(update={"steps": steps}), raw, annotate["labels"], annotate["boxes"], None, str(out), False)
    copy = out / "checkpoints" / Path(checkpoint).name
    if not copy.exists() and not (out / "checkpoints").exists():
        shutil.copytree(checkpoint, copy)
    return run_training(tcfg, resume=True)["checkpoint"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a connectile demo --real lucchi run folder (train done)")
    ap.add_argument("--out", default=None, help="work folder (default RUN/ceiling)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of the ceiling (default: the demo's train.steps)")
    ap.add_argument("--base-steps", type=int, default=None,
                    help="also train the run's base model on to this many steps (same labels, crops drawn as an uninterrupted run would) and score that")
    ap.add_argument("--base-lr", type=float, default=None, help="learning rate of the --base-steps continuation (default: the demo's)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the ceiling: only score the base (with --base-steps: the control, the base trained on without answers)")
    ap.add_argument("--smoke", action="store_true", help="a tiny demo run on a real crop and a few steps (seconds)")
    args = ap.parse_args(argv)
    import torch

    from engine.pipeline.manifest import Manifest
    from engine.pipeline.stages.train import TrainSection, build_train_config, run_training
    from engine.storage import create_volume, open_volume

    if args.smoke:
        out = Path(args.out or "/tmp/demo_lucchi_ceiling_smoke")
        run = smoke_run(out)
    elif args.run:
        run = Path(args.run)
        out = Path(args.out) if args.out else run / "ceiling"
    else:
        ap.error("give --run RUN (a demo run folder) or --smoke")
    stages = {n: e for n, e in Manifest(run).stages.items() if e.get("status") == "done"}
    missing = [s for s in ("ingest", "annotate") if s not in stages]
    if missing:
        raise SystemExit(f"{run}: stage(s) {', '.join(missing)} not done; run the demo first (connectile demo --real lucchi --out {run})")
    cfg = run_config(run)
    z_from = int(cfg["test_from_z"])
    raw, target = stages["ingest"]["outputs"]["raw"], stages["annotate"]["outputs"]["validation"]
    base_ck = stages.get("train", {}).get("outputs", {}).get("checkpoint")
    tv = open_volume(target)
    shape = tv.spatial_shape
    # the ceiling's labels: the ground truth's foreground below the test region, unknown in it
    labels = tv.read(tv.box)
    labels[z_from:] = UNKNOWN
    lab_url = str(out / "labels.zarr" / "labels")
    create_volume(lab_url, shape, "uint8", tv.chunk_shape, voxel_size=tv.voxel_size, fill_value=UNKNOWN, overwrite=True).write(tv.box, labels)
    boxes = out / "boxes.json"
    boxes.write_text(json.dumps({"boxes": [{"start": [0, 0, 0], "stop": [z_from, *shape[1:]]}]}))
    train = {k: v for k, v in cfg["train"].items() if k not in ("raw", "labels", "boxes", "truth", "semi")}
    if args.steps:
        train["steps"] = args.steps
    section = TrainSection.model_validate({**train, "raw": "x", "labels": "x", "validation_roi": None})
    tcfg = build_train_config(section, raw, lab_url, str(boxes), None, str(out / "train"), False)
    t0, c0 = time.perf_counter(), cpu_seconds()
    # a finished ceiling is reused (run again once the demo's train is done)
    ceiling_ck = None if args.no_ceiling else run_training(tcfg, resume=True)["checkpoint"]
    if base_ck and args.base_steps:
        lr = section.optimizer.model_copy(update={"lr": args.base_lr}) if args.base_lr else section.optimizer
        base_ck = continue_base(base_ck, section.model_copy(update={"optimizer": lr}), raw, stages["annotate"]["outputs"], out / "base", args.base_steps)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    torch.set_num_threads(section.threads)
    base = iou_on_test(base_ck, raw, target, z_from, tcfg) if base_ck else None
    ceiling = iou_on_test(ceiling_ck, raw, target, z_from, tcfg) if ceiling_ck else None
    ann = json.loads((Path(stages["annotate"]["outputs"]["boxes"]).parent / "annotate.json").read_text())
    total = float(np.prod(shape))
    demo_score = None
    s1 = stages.get("score[1]", {}).get("outputs", {}).get("metrics")
    if s1 and os.path.exists(s1):
        demo_score = json.loads(Path(s1).read_text())["iou"]
    row = {"run": str(run), "test_from_z": z_from, "base_iou": base, "ceiling_iou": ceiling, "ratio": base / ceiling if ceiling and base is not None else None,
           "demo_score1_iou": demo_score if not args.base_steps else None, "base_checkpoint": base_ck, "base_labelled_share": (ann["known_voxels"] + ann.get("heldout_voxels", 0)) / total,
           "base_trained_share": ann["known_voxels"] / total, "ceiling_labelled_share": z_from * float(np.prod(shape[1:])) / total,
           "ceiling_train_wall_s": wall, "ceiling_train_cpu_s": cpu, "train": train, "load_avg": os.getloadavg()}
    print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
