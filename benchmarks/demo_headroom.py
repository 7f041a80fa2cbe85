#!/usr/bin/env python
"""Headroom of the synthetic demo: the base model against a model trained on all of the volume's labels.

    .venv/bin/python benchmarks/demo_headroom.py --smoke                       # seconds: a tiny volume, a few steps
    nice -n 5 .venv/bin/python benchmarks/demo_headroom.py --seeds 0,1,2      # the demo as it is configured today
    nice -n 5 .venv/bin/python benchmarks/demo_headroom.py --seeds 0 --set body_darkness=0.42 --train steps=400

For each generator seed this builds the demo's stages before the rounds with the pipeline API
(:func:`engine.pipeline.demo.demo_config` without its round, metrics and report sections, run by
:func:`engine.pipeline.run.run_pipeline` in ``OUT/seed<s>``): synth -> embed -> selection -> annotate
(oracle) -> train. Then it trains, with the same ``train`` section (same model, steps, semi-supervised
settings, seed), the *ceiling*: the target over the whole volume outside the held-out region as labels,
crops drawn from that region. Both models predict the whole volume (:func:`engine.ops.predict.predict_volume`,
the demo's window and overlap) and are scored as the demo's ``score`` stage scores voxels (IoU of
``probability > 0.5`` against the target of the ground truth, :func:`engine.pipeline.stages.annotate.read_foreground`),
but only inside the **held-out region** (``--heldout``, by default the last quarter of the sections:
``z 24..32`` of the 32-section demo volume). Neither model trains on a label there: a selected box that
reaches into it is moved out of it along z before ``annotate`` (same size, so the base model keeps all its
labelled voxels; the moves are reported). The semi-supervised terms see the raw image of the whole volume,
as in the demo (no labels).

``--set name=value`` changes a generator parameter (:class:`engine.synth.SynthParams`), ``--train
name=value`` a ``train`` setting (dotted: ``semi.unlabelled=0``), ``--target``/``--truth``/``--boundary``
what is segmented. Prints one line per seed (base IoU, ceiling IoU, gap, wall and CPU seconds of each
part), a table at the end, and writes ``OUT/results.json``.

Measured (seed 0, held-out z 24..32, demo config of commit 1985cfd: 4 coverage boxes of 8 x 96 x 96 with
a quarter of each held out for validation, 2D U-Net 8-16-32, 200 steps, semi-supervised; machine
loaded 6-18 on 2 cores, so wall times are 3-10x the CPU times)::

    volume        synth changes                                              steps  base    ceiling  gap
    32x256x256    none (today's demo)                                        200    0.9695  0.9693   -0.0002
    32x256x256    none, target: synth.mito mask                              200    0.7473  0.7322   -0.0151
    32x256x256    er=0.8 dark_cells=0.1 dark_cell_level=0.45 illum=0.3 n=0.1 200    0.9644  0.9661   +0.0017
    32x256x256    same                                                       400    0.9709  0.9703   -0.0006
    32x512x512    same                                                       200    0.9612  0.9645   +0.0033
    32x512x512    er=1 dark_cells=0.2 dark_cell_level=0.3 illum=0.3 n=0.12   200    0.9485  0.9529   +0.0045
    32x256x256    er=1 dark_cells=0.05 dark_cell_level=0.3 illum=0.2 n=0.1   200    0.9646  0.9673   +0.0028

Second session (2026-12-06, the object target): the demo now segments mitochondria (``synth.mito``,
``target: mask``) with ``mito_squeeze`` (every axon holds one, cut off inside its membrane: 2-3% of the
voxels, 19-36 objects in the held-out slab) and regional dark bodies (``bodies``, lysosome-like, background
in the labels). Seed 0, same held-out slab, load 6-9 (CPU seconds are the meaningful times)::

    run  bodies (darkness)  train                                                        base    ceiling  gap
    a    0.42, grains 0.3   200 steps, semi, default sampling                            0.3803  0.6029   +0.2226
    c    same               200, no semi                                                 0.5638  0.5637   -0.0001
    d    0.62               200, no semi, reject_empty 0.5, max_pos_weight 3, int. 0.3   0.6671  0.6207   -0.0464
    e    0.62               same, 400 steps                                              0.5934  0.6449   +0.0516
    f    0.42               same, 400 steps                                              0.4293  0.5923   +0.1630
    g    0.50 (regions 0.5, radius 80-150)  same, 400 steps                              0.5396  0.2964   -0.2433

At a constant learning rate of 3e-3 the final model of 200-400 steps is a random point of a noisy
trajectory (g's ceiling: 0.30): the shipped demo decays it (cosine, 500 steps). The ceiling of the demo
itself is now the ``ceiling`` stage (``connectile demo`` reports it), so this script is for trying
generator and training settings without the rounds.

First session (the neuron-interior target): no setting reached the +0.05 the issue asks for: the residual error of both models is the placement
of cell boundaries (1-2% false positives and 1-2% false negatives of the held-out voxels), which more
labels at the same training budget do not fix; the base's boxes already show every kind of image
these options make (dark cells: the base misses 5.4% of their voxels against 2.2% for the ceiling,
but they are 8% of the volume).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the demo's sections before the rounds (everything else -- rounds, metrics, report -- is dropped)
KEEP = ("run_dir", "runtime", "synth", "embed", "selection", "annotate", "train")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (Ray workers are not counted)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Wall and CPU seconds of named parts."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {}

    def __call__(self, name: str) -> Any:
        clock = self

        class _Part:
            def __enter__(self) -> None:
                self.t, self.c = time.perf_counter(), cpu_seconds()

            def __exit__(self, *exc: Any) -> None:
                clock.parts[name] = {"wall": time.perf_counter() - self.t, "cpu": cpu_seconds() - self.c}

        return _Part()


def parse_value(text: str) -> Any:
    """``1`` -> 1, ``0.5`` -> 0.5, ``40,100`` -> [40, 100], ``true`` -> True, else the text."""
    import yaml

    if "," in text:
        return [parse_value(t) for t in text.split(",")]
    return yaml.safe_load(text)


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *path, last = key.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def heldout_box(spec: str, shape: tuple[int, ...]) -> Any:
    """``z:24:32`` (an axis and a range; negative or empty bounds as in Python slices) as a Box."""
    from engine.geometry import Box

    axis_name, lo, hi = spec.split(":")
    axis = "zyx".index(axis_name)
    a, b, _ = slice(int(lo) if lo else None, int(hi) if hi else None).indices(shape[axis])
    start, stop = [0, 0, 0], list(shape)
    start[axis], stop[axis] = a, b
    return Box(tuple(start), tuple(stop)), axis


def move_out(boxes: list[dict[str, list[int]]], held: Any, axis: int, shape: tuple[int, ...]) -> tuple[list[dict[str, list[int]]], int]:
    """Boxes that reach into the held-out box moved out of it along ``axis`` (to the side with room)."""
    from engine.geometry import Box

    out, moved = [], 0
    for b in boxes:
        box = Box(tuple(b["start"]), tuple(b["stop"]))
        if box.intersect(held).empty:
            out.append(b)
            continue
        size = box.stop[axis] - box.start[axis]
        start = list(box.start)
        if held.start[axis] >= size:  # room before the held-out range
            start[axis] = held.start[axis] - size
        elif shape[axis] - held.stop[axis] >= size:
            start[axis] = held.stop[axis]
        else:
            raise SystemExit(f"box {box} cannot be moved out of the held-out region {held}: no room along axis {axis}")
        stop = [s + (e - s0) for s, s0, e in zip(start, box.start, box.stop, strict=True)]
        out.append({"start": start, "stop": stop})
        moved += 1
    return out, moved


def demo_sections(args: argparse.Namespace, run_dir: Path, seed: int) -> dict[str, Any]:
    """The demo config without its rounds, metrics and report, with the command line's changes."""
    from engine.pipeline.demo import apply_tiny, demo_config

    cfg = demo_config(str(run_dir), seed=seed, shape=args.shape, rounds=1)
    if args.smoke:
        cfg = apply_tiny(cfg)
    cfg = {k: v for k, v in cfg.items() if k in KEEP}
    cfg["runtime"] = {"backend": args.backend, "progress": False}
    for item in args.set:
        k, v = item.split("=", 1)
        cfg["synth"]["params"][k] = parse_value(v)
    for item in args.train:
        k, v = item.split("=", 1)
        set_dotted(cfg["train"], k, parse_value(v))
    if args.target:
        cfg["annotate"]["target"] = args.target
    if args.truth:
        cfg["annotate"]["truth"] = args.truth
    if args.boundary:
        cfg["annotate"]["boundary"] = args.boundary
    return cfg


def predict_iou(checkpoint: str, raw: str, out: str, truth: str, held: Any, cfg: dict[str, Any], window: list[int]) -> dict[str, float]:
    """Predict the whole volume, then the IoU of ``probability > 0.5`` against the target, in the
    held-out box and outside it."""
    from engine.kernels.components import foreground
    from engine.ops.predict import predict_volume
    from engine.pipeline.stages.annotate import read_foreground
    from engine.storage import open_volume

    predict_volume(checkpoint, raw, out, block=tuple(open_volume(raw).spatial_shape), window=tuple(window), overlap=0.25,
                   backend="serial", progress=False, overwrite=True, threads=1)
    prob, gt = open_volume(out), open_volume(truth)
    p = foreground(prob.read(prob.box), 0.5)
    t = read_foreground(gt, gt.box, cfg["annotate"]["target"], cfg["annotate"]["boundary"])
    inside = np.zeros(p.shape, bool)
    inside[held.to_slices()] = True

    def iou(m: np.ndarray) -> float:
        union = int((p[m] | t[m]).sum())
        return int((p[m] & t[m]).sum()) / union if union else 1.0

    return {"iou_heldout": iou(inside), "iou_train_region": iou(~inside), "foreground_share": float(t[inside].mean())}


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    import torch

    from engine.pipeline.run import pipeline_config, run_pipeline
    from engine.pipeline.stages.annotate import read_box_list
    from engine.pipeline.stages.train import TrainSection, build_train_config, run_training
    from engine.storage import create_volume, open_volume

    torch.set_num_threads(1)
    run_dir = Path(args.out) / f"seed{seed}"
    full = demo_sections(args, run_dir, seed)
    clock = Clock()
    # 1. synth, embed, selection
    first = {k: v for k, v in full.items() if k not in ("annotate", "train")}
    with clock("synth+embed+selection"):
        done = {r.stage: r.outputs for r in run_pipeline(pipeline_config(first, source="demo_headroom"))}
    shape = tuple(open_volume(done["synth"]["raw"]).spatial_shape)
    held, axis = heldout_box(args.heldout, shape)
    # 2. the selected boxes, moved out of the held-out region; annotate and train the base model
    boxes, moved = move_out(read_box_list(done["selection"]["boxes"]), held, axis, shape)
    boxes_path = run_dir / "boxes_outside_heldout.json"
    boxes_path.write_text(json.dumps({"boxes": boxes}, indent=1))
    full["annotate"]["boxes"] = str(boxes_path)
    with clock("annotate+train(base)"):
        done |= {r.stage: r.outputs for r in run_pipeline(pipeline_config(full, source="demo_headroom"))}
    labelled = sum(int(np.prod(np.subtract(b["stop"], b["start"]))) for b in boxes)
    # 3. the ceiling: the same train section on the target everywhere outside the held-out region
    target = open_volume(done["annotate"]["validation"])
    labels = target.read(target.box)
    labels[held.to_slices()] = 255
    ceil_dir = run_dir / "ceiling"
    lab_url = str(ceil_dir / "labels.zarr" / "labels")
    vol = create_volume(lab_url, shape, "uint8", target.chunk_shape, voxel_size=target.voxel_size, fill_value=255, overwrite=True)
    vol.write(target.box, labels)
    # the region outside the held-out range along its axis (one box on each side where there is room)
    sides = []
    if held.start[axis] > 0:
        stop = list(shape)
        stop[axis] = held.start[axis]
        sides.append({"start": [0, 0, 0], "stop": stop})
    if held.stop[axis] < shape[axis]:
        start = [0, 0, 0]
        start[axis] = held.stop[axis]
        sides.append({"start": start, "stop": list(shape)})
    (ceil_dir / "boxes.json").write_text(json.dumps({"boxes": sides}, indent=1))
    section = TrainSection.model_validate(full["train"] | {"raw": "x", "labels": "x", "boxes": None, "truth": None})
    tcfg = build_train_config(section, done["synth"]["raw"], lab_url, str(ceil_dir / "boxes.json"), None, str(ceil_dir / "train"), False)
    with clock("train(ceiling)"):
        ceiling_ck = run_training(tcfg, resume=False)["checkpoint"]
    # 4. scores on the held-out region
    window = [1, 64, 64] if args.smoke else [1, 128, 128]
    truth = done["synth"][full["annotate"]["truth"].split(".", 1)[1]]
    with clock("predict+score"):
        base = predict_iou(done["train"]["checkpoint"], done["synth"]["raw"], str(run_dir / "eval" / "base.zarr" / "probability"), truth, held, full, window)
        ceil = predict_iou(ceiling_ck, done["synth"]["raw"], str(run_dir / "eval" / "ceiling.zarr" / "probability"), truth, held, full, window)
    row = {
        "seed": seed, "synth": full["synth"]["params"], "target": full["annotate"]["target"], "truth": full["annotate"]["truth"],
        "train": {k: v for k, v in full["train"].items() if k not in ("raw", "labels", "boxes", "truth")},
        "heldout": {"start": list(held.start), "stop": list(held.stop)}, "boxes_moved": moved,
        "labelled_share_base": labelled / float(np.prod(shape)), "labelled_share_ceiling": 1.0 - held.size / float(np.prod(shape)),
        "base": base, "ceiling": ceil, "gap": ceil["iou_heldout"] - base["iou_heldout"], "times": clock.parts,
    }
    print(json.dumps({"seed": seed, "base": round(base["iou_heldout"], 4), "ceiling": round(ceil["iou_heldout"], 4), "gap": round(row["gap"], 4),
                      "boxes_moved": moved, "times": {k: {a: round(b, 1) for a, b in v.items()} for k, v in clock.parts.items()}}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="generator seeds, comma-separated (default 0)")
    ap.add_argument("--out", default="runs/demo_headroom", help="work folder (one run folder per seed)")
    ap.add_argument("--shape", default=None, help="volume shape z,y,x (default: the demo's)")
    ap.add_argument("--heldout", default="z:-8:", help="held-out region: axis:start:stop (default z:-8:, the last 8 sections)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a generator parameter")
    ap.add_argument("--train", action="append", default=[], metavar="NAME=VALUE", help="a train setting (dotted)")
    ap.add_argument("--target", choices=["mask", "interior"], default=None)
    ap.add_argument("--truth", default=None, help="e.g. synth.mito (default: the demo's synth.neurons)")
    ap.add_argument("--boundary", type=int, default=None)
    ap.add_argument("--backend", choices=["serial", "ray"], default="serial", help="blockwise backend of the pipeline stages (the demo uses ray)")
    ap.add_argument("--smoke", action="store_true", help="a tiny volume and a few steps (seconds): checks that the script runs")
    args = ap.parse_args(argv)
    if args.shape:
        args.shape = [int(v) for v in args.shape.split(",")]
    else:
        from engine.pipeline.demo import DEFAULT_SHAPE

        args.shape = [16, 64, 64] if args.smoke else list(DEFAULT_SHAPE)
    if args.smoke and args.heldout == "z:-8:":
        args.heldout = "z:-4:"
    seeds = [int(s) for s in args.seeds.split(",")]
    t0, c0 = time.perf_counter(), cpu_seconds()
    rows = [run_seed(args, s) for s in seeds]
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"\n{'seed':>4} {'base':>7} {'ceiling':>8} {'gap':>7}   (IoU on the held-out region {rows[0]['heldout']})")
    for r in rows:
        print(f"{r['seed']:>4} {r['base']['iou_heldout']:>7.4f} {r['ceiling']['iou_heldout']:>8.4f} {r['gap']:>7.4f}")
    gaps = [r["gap"] for r in rows]
    print(f"min gap {min(gaps):.4f}, mean gap {float(np.mean(gaps)):.4f}; wall {wall:.0f} s, CPU {cpu:.0f} s (this process and finished children)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, "wall": wall, "cpu": cpu, "argv": argv or sys.argv[1:]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
