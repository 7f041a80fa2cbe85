#!/usr/bin/env python
"""Label-efficiency curves of the whole loop on real EM (issue 14 point 4): quality on held-out sections
against the voxels a person labelled, for the ways a lab could spend those labels.

    .venv/bin/python benchmarks/quality_loop.py --data lucchi --budgets 0.005 --methods a,b,d --seeds 0 --out /tmp/ql
    .venv/bin/python benchmarks/quality_loop.py --merge /tmp/ql /tmp/ql2 --out DIR        # table + plot of several runs
    .venv/bin/python benchmarks/quality_loop.py --smoke --out /tmp/ql-smoke               # seconds: the script runs end to end

Every point is a run of the Connectile pipeline (``engine.pipeline``, serial backend, in a child process
whose CPU time is measured) on the same data with a test region (``test_from_z``: the last sections,
never embedded for training, selected, annotated, queried or trained on; the score stages score only
there):

* ``a``  random boxes: the selection's ``random`` baseline picks the labelled boxes;
* ``a2`` one contiguous region of the same voxel count (whole sections where the budget allows): what a
  person labels without any tool;
* ``b``  coverage-selected boxes (``coverage``), supervised training;
* ``c``  ``b`` + semi-supervised training (spatial mixing);
* ``d``  ``c`` + ``--rounds`` active rounds (query, oracle review, fine-tune with the keep-or-revert gate);
* ``e``  ``b`` + the same rounds (no semi-supervised training: it did not help at CPU budgets, RESULTS);
* ``f``  uncertainty boxes: half the boxes random, a first model (``--first-share`` of the steps) on them, then
  the other half where that model is least sure (the highest mean binary entropy of its probability over
  a window, no two picks within two sections of each other at an overlapping place), and the final
  model trained from scratch on all of them with the remaining steps: what a round that asks a person
  for dense boxes instead of object answers would give, at equal optimiser steps and equal labelled voxels
  (the first model's prediction over the volume costs extra CPU: 15-30% on Lucchi++, in the CPU column);
* ``g``  the product's box rounds (``rounds.query.boxes``): half the boxes random and a base model on them, then
  ``--rounds`` rounds that each ask for an equal share of the other half where the round's model is least sure
  (with the objects' answers, as every round), painted by the oracle, and fine-tune on them; the base training
  gets ``--steps`` minus the rounds' steps. (f) at the same voxels, done as rounds of fine-tuning.
* ``h``  (g) with its last round trained afresh (``rounds.finetune.restart``) on every label so far: the base gets
  ``--first-share`` of the steps, the earlier rounds ``--finetune-steps`` each, the last round the rest (equal steps);
  what (f) does with its boxes, done as the product's rounds (with the objects' answers);
* ``full`` the ceiling: every training section labelled.

Data: ``lucchi`` is Lucchi++ 2x downsampled in-plane (165 x 384 x 512) with a 2.5D U-Net of filters 16-128 and crops of
3 x 128 x 128; ``lucchi-full`` is Lucchi++ as shipped (165 x 768 x 1024) with the ``connectile demo --real lucchi`` model
(filters 16-256) and crops (3 x 256 x 256) and its whole-section prediction windows (pass ``--box 1,256,256 --min-size
5000`` for the same boxes' area and the demo's smallest object); ``flyem`` is FlyEM medulla sample 2 (neurons).

Budgets are shares of the training region's voxels (``--budgets 0.001,0.0025,0.005,0.01,0.02``). Boxes
are ``--box`` voxels (z, y, x); the number of boxes is the budget divided by the box size (at least 1).

Equal compute: every final model gets ``--steps`` optimiser steps in all (``d``: the base training gets
``--steps`` minus the rounds' fine-tuning steps); each row records the run's CPU time (the child
process: the pipeline runs serially in it), so the CPU time per final model is reported beside.

The gate's held-out labels: a quarter of every box, or with ``--heldout-boxes N`` (methods on selected boxes)
N whole picks spread over the pick order, the same voxels labelled.

Labelling effort: the annotated voxels (the held-out share of the boxes included: a person labels it
too), plus, for ``d``, each reviewed object counted as the voxels a person would otherwise paint for it
(its predicted voxels, accepted or rejected): ``labelled_voxels`` in the pipeline's metrics. The
x-axis of the plot is that effort.

FlyEM's neurons: the model predicts the neurons' interiors; the VOI and ARAND columns are those of neurons segmented
from that probability (``neuron_scores``: the smaller probability of two neighbours as their affinity, as quality_segment.py's intensity
baseline, then watershed and
mean agglomeration at 0.3 by ``segment_volume``), over the test sections; the label stage's connected components
merge most neurons (their scores stay in ``label_voi``). Lucchi++'s VOI and ARAND are the label stage's objects'.

Output: one JSON line per run on stdout, ``results.jsonl``, ``summary.json``, ``quality_loop.md`` and
``quality_loop.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

METHODS = ("a", "a2", "b", "c", "d", "e", "f", "g", "h", "full")
LABEL = {"a": "(a) random boxes", "a2": "(a') one contiguous region", "b": "(b) coverage", "c": "(c) coverage + semi",
         "d": "(d) (c) + active rounds", "e": "(e) (b) + active rounds (no semi)", "f": "(f) half random, half where the first model is least sure",
         "g": "(g) half random, half in box rounds where the model is least sure",
         "h": "(h) (g), its last round trained afresh on every label",
         "full": "100% (ceiling)"}


# -- data ------------------------------------------------------------------------------------------------
def write_volume(url: str, arr: np.ndarray, chunks: tuple[int, int, int]) -> str:
    from engine.storage import create_volume

    vol = create_volume(url, arr.shape, str(arr.dtype), tuple(min(c, s) for c, s in zip(chunks, arr.shape, strict=True)), overwrite=True)
    vol.write(vol.box, arr)
    return url


def prepare(name: str, work: Path, smoke: bool) -> dict[str, Any]:
    """The data set as zarr volumes in ``work`` (made once), its test region and its target."""
    done = work / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    work.mkdir(parents=True, exist_ok=True)
    if name in ("lucchi", "lucchi-full"):
        from quality_semi import load_lucchi

        raw, lab = load_lucchi(downsample=name == "lucchi")  # 2x downsampled in-plane, as quality_semi; -full: as shipped
        target, test_from = "mask", 125
    elif name in ("cardona", "cardona-full"):  # another volume's mitochondria, to pretrain a model for Lucchi++ (--init)
        from quality_semi import load_cardona, load_lucchi

        like, _ = load_lucchi(downsample=name == "cardona")
        raw, lab = load_cardona(downsample=name == "cardona", like=(float(like[:125].mean()), float(like[:125].std())))  # Lucchi++'s training raw
        target, test_from = "mask", 90  # the last two sections (5 copies each)
    elif name == "flyem":
        import tempfile

        from quality_semi import load_flyem

        with tempfile.TemporaryDirectory() as tmp:
            raw, lab = load_flyem(Path(tmp))
        target, test_from = "interior", 200
    else:
        raise SystemExit(f"unknown data set {name!r}; use lucchi, lucchi-full or flyem")
    if smoke:
        raw, lab = raw[: 24, :128, :128], lab[: 24, :128, :128]
        test_from = 18
    info = {"name": name, "raw": write_volume(str(work / f"{name}.zarr" / "raw"), np.ascontiguousarray(raw), (16, 128, 128)),
            "truth": write_volume(str(work / f"{name}.zarr" / "truth"), np.ascontiguousarray(lab), (16, 128, 128)),
            "shape": list(raw.shape), "target": target, "test_from_z": test_from, "binary": name != "flyem"}
    done.write_text(json.dumps(info))
    return info


# -- configs ---------------------------------------------------------------------------------------------
def n_boxes(data: dict[str, Any], budget: float, box: list[int]) -> int:
    train_voxels = data["test_from_z"] * data["shape"][1] * data["shape"][2]
    return max(1, round(budget * train_voxels / float(np.prod(box))))


def contiguous_box(data: dict[str, Any], budget: float, seed: int) -> dict[str, list[int]]:
    """One region of ``budget`` of the training voxels: whole sections (a slab) where that is at least one
    section, else a centred in-plane rectangle of one section; its place drawn by ``seed``."""
    zt, ny, nx = data["test_from_z"], data["shape"][1], data["shape"][2]
    voxels = budget * zt * ny * nx
    rng = np.random.default_rng(seed)
    if voxels >= ny * nx:
        depth = min(zt, max(1, round(voxels / (ny * nx))))
        z = int(rng.integers(0, zt - depth + 1))
        return {"start": [z, 0, 0], "stop": [z + depth, ny, nx]}
    side = max(8, int(np.sqrt(voxels)))
    h, w = min(ny, side), min(nx, max(8, int(voxels / min(ny, side))))
    z = int(rng.integers(0, zt))
    y, x = int(rng.integers(0, ny - h + 1)), int(rng.integers(0, nx - w + 1))
    return {"start": [z, y, x], "stop": [z + 1, y + h, x + w]}


def shipped_lucchi() -> dict[str, Any]:
    """The ``connectile demo --real lucchi`` config (``engine.pipeline.demo``): ``lucchi-full`` takes its model, crop and
    prediction windows from there rather than repeating them."""
    from engine.pipeline.demo import demo_config, find_shared_data

    return demo_config("unused", lucchi=str(find_shared_data()))


def config(data: dict[str, Any], method: str, budget: float, seed: int, run_dir: Path, args: argparse.Namespace) -> tuple[dict[str, Any], list[str] | None]:
    """The pipeline config of one point, and the stages to run (None: all)."""
    from engine.pipeline.demo import LUCCHI_FINETUNE, LUCCHI_RECIPE, small_query, tiny_overrides

    box = [int(v) for v in args.box.split(",")]
    shape, zt = data["shape"], data["test_from_z"]
    patch = [box[0], box[1] // 2, box[2] // 2]
    cfg: dict[str, Any] = {"run_dir": str(run_dir), "runtime": {"backend": "serial", "progress": False}, "test_from_z": zt}
    cfg["embed"] = {"input": data["raw"], "patch": patch, "stride": patch, "steps": args.embed_steps, "crop": [1, 64, 64], "seed": seed}
    order = "random" if method in ("a", "g", "h") else "coverage"
    methods = [order] + [m for m in ("coverage", "random") if m != order]
    n = n_boxes(data, budget, box)
    n_first = max(1, n // 2) if method in ("g", "h") else n
    cfg["selection"] = {"input": "embed.embeddings", "params": {"budget": n_first, "k": args.k, "window": [1, 2, 2], "methods": methods,
                                                   "seed": seed, "ties": "seeded"}}  # a fixed k 10 on 2 x 2 patches: every gain ties (RESULTS, ninth session)
    boxes: str = "selection.boxes"
    if method in ("a2", "full"):
        region = contiguous_box(data, budget, seed) if method == "a2" else {"start": [0, 0, 0], "stop": [zt, shape[1], shape[2]]}
        path = run_dir.parent / f"{run_dir.name}-boxes.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"boxes": [region]}))
        boxes = str(path)
        del cfg["embed"], cfg["selection"]
    held = {"heldout": 0.0, "heldout_boxes": args.heldout_boxes} if args.heldout_boxes and method in ("b", "c", "d", "e") else {"heldout": 0.25}
    cfg["annotate"] = {"boxes": boxes, "truth": data["truth"], "target": data["target"], "boundary": 2, "chunks": [16, 128, 128], **held}
    active = method in ("d", "e", "g", "h")
    rounds = args.rounds if active else 1
    steps = args.steps - (rounds * args.finetune_steps if active else 0)
    if method == "h":  # the base gets --first-share of the steps, the last round (trained afresh) what the others leave
        steps = max(1, round(args.steps * args.first_share))
        last = args.steps - steps - (rounds - 1) * args.finetune_steps
    shipped = shipped_lucchi() if data["name"] in ("lucchi-full", "cardona-full") else None  # the Lucchi++ demo's model, crop and prediction
    model = shipped["train"]["model"] if shipped else {"dims": 2, "context_slices": 1, "filters": [16, 32, 64, 128], "input_kernel_xy": 3, "input_stride": 2}
    crop = [3, 64, 64] if args.smoke else shipped["train"]["crop"] if shipped else [3, 128, 128]
    cfg["train"] = {"raw": data["raw"], "labels": "annotate.labels", "boxes": "annotate.boxes", "truth": "annotate.validation", "steps": steps,
                    "validate_every": max(1, steps), "crop": crop, "batch_size": 4, "model": model,
                    "seed": seed, "threads": args.threads, **copy.deepcopy(LUCCHI_RECIPE)}  # the shipped Lucchi++ demo's recipe
    if args.init:  # a model trained elsewhere (e.g. --data cardona --methods full) starts every model of the point
        cfg["train"]["init"] = args.init
    if args.min_known is not None:  # boxes smaller than a crop: a crop around one knows box / crop of its voxels
        cfg["train"]["sampling"]["min_known"] = args.min_known
    if method in ("c", "d"):
        cfg["train"]["semi"] = {"box": [32, 32], "unlabelled": 0.2, "inter": 0.2, "labelled_mix": 1.0, "warmup_steps": steps // 4, "rampup_steps": steps // 4}
    binary = data["binary"]
    cfg["rounds"] = {
        "count": rounds, "model": "train.checkpoint",
        # full resolution: the demo's whole-section windows without overlap (256^2 windows at 0.25 overlap cost about 4x the CPU)
        "predict": {"raw": data["raw"], **({k: shipped["rounds"]["predict"][k] for k in ("window", "block", "overlap", "batch_size")} if shipped
                                           else {"block": [64, 256, 256], "overlap": 0.25})},
        "label": {"threshold": 0.5, "connectivity": 6, "min_size": args.min_size, "block": [64, 256, 256]},
        "score": {"truth": data["truth"], "truth_binary": binary, "target": data["target"], "boundary": 2, "criterion": "iou"},
        # the demos' small query (4 x 2 clusters, small VAEs; tiny ones for --smoke): the stage's defaults are the paper's
        # full-size ones since issue 15's params models, far past a CPU budget
        "query": {"block": [64, 256, 256], **(tiny_overrides()["query"] if args.smoke else {"size": 64, "query": small_query()})},
        "review": {"source": "oracle", "truth": data["truth"], "truth_binary": binary, "criterion": "iou"},
        "finetune": LUCCHI_FINETUNE | {"steps": args.finetune_steps} | ({} if args.average is None else {"average": args.average}),  # the shipped Lucchi++ demo's rounds
    }
    if method in ("g", "h"):  # the rest of the budget in equal shares per round, where the round's model is least sure
        cfg["rounds"]["query"] |= {"boxes": max(1, (n - n_first) // rounds), "box": box}
    if method == "h":
        # no anchor: the previous model's segmentation would be pseudo-labels for the fresh model, not labels
        cfg["rounds"]["overrides"] = {rounds: {"finetune": {"restart": True, "steps": last, "average": 1.0, "anchor": 0.0}}}
    cfg["metrics"] = {}
    if active:
        return cfg, None
    # no rounds: the base model's prediction and score only
    cfg["metrics"] = {"scores": ["score[1].metrics"], "histories": ["train.history"], "decisions": [], "effort": "annotate.boxes"}
    only = [s for s in ("embed", "selection", "annotate", "train") if s in cfg] + ["predict[1]", "label[1]", "score[1]", "metrics"]
    return cfg, only


# -- one point, in a child process -------------------------------------------------------------------------
def run_point(cfg: dict[str, Any], only: list[str] | None, threads: int) -> dict[str, Any]:
    """Run the config in a child process (serial backend: all the work is in it); its CPU and wall time."""
    import yaml

    run_dir = Path(cfg["run_dir"])
    path = run_dir.parent / f"{run_dir.name}.yaml"  # not with_suffix: the budget's dot would make two points share one file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "engine.cli", "run", str(path), "--no-progress", *[a for s in only or [] for a in ("--only", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0, c0 = time.perf_counter(), os.times()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    c1 = os.times()
    if res.returncode != 0:
        raise RuntimeError(f"pipeline failed ({res.returncode}): {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.stdout[-500:]}")
    rows = json.loads((Path(cfg["run_dir"]) / "metrics" / "metrics.json").read_text())["rounds"]
    return {"rows": rows, "cpu_s": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system), "wall_s": time.perf_counter() - t0}


def point_row(data: dict[str, Any], method: str, budget: float, seed: int, out: dict[str, Any]) -> dict[str, Any]:
    last, first = out["rows"][-1], out["rows"][0]
    effort = last.get("labelled_voxels")
    train_voxels = data["test_from_z"] * data["shape"][1] * data["shape"][2]
    return {"data": data["name"], "method": method, "budget": budget, "seed": seed, "iou": last["iou"], "voi": last["voi"], "arand": last.get("arand"),
            "base_iou": first["iou"], "rounds_iou": [r["iou"] for r in out["rows"]], "kept": [r.get("kept") for r in out["rows"][1:]],
            "labelled_voxels": effort, "effort_share": (effort / train_voxels) if effort else None, "reviewed": last.get("reviewed"),
            "cpu_s": out["cpu_s"], "wall_s": out["wall_s"], "load": os.getloadavg()[0]}


# -- (f): boxes where a first model is least sure -------------------------------------------------------------
def run_uncertain(data: dict[str, Any], budget: float, seed: int, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Method ``f`` (module docstring): two pipeline runs, their CPU time added; the second's rows."""
    from engine.active.uncertain import least_sure
    from engine.storage import open_volume

    box = [int(v) for v in args.box.split(",")]
    n = n_boxes(data, budget, box)
    n1 = max(1, n // 2)
    first_steps = max(1, round(args.steps * args.first_share))
    cfg1, only1 = config(data, "a", budget, seed, run_dir.with_name(run_dir.name + "-first"), args)
    cfg1["selection"]["params"]["budget"] = n1
    cfg1["train"].update(steps=first_steps, validate_every=first_steps)
    first = run_point(cfg1, only1, args.threads)
    taken = json.loads((Path(cfg1["run_dir"]) / "selection" / "selection.json").read_text())["boxes"]
    prob = open_volume(str(Path(cfg1["run_dir"]) / "round-01" / "predict" / "prob.zarr" / "probability"))
    zt = data["test_from_z"]
    a = np.asarray(prob.read(prob.box)).reshape(-1, *data["shape"])[0][:zt]  # the training region only
    p = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    boxes = taken + least_sure(p, taken, n - n1, box)  # engine.active.uncertain: what a box round asks for
    path = run_dir.parent / f"{run_dir.name}-boxes.json"
    path.write_text(json.dumps({"boxes": boxes}))
    cfg, only = config(data, "a", budget, seed, run_dir, args)
    del cfg["embed"], cfg["selection"]
    cfg["annotate"]["boxes"] = str(path)
    cfg["train"].update(steps=args.steps - first_steps, validate_every=args.steps - first_steps)
    only = [s for s in only if s not in ("embed", "selection")] if only else only
    final = run_point(cfg, only, args.threads)
    final["cpu_s"] += first["cpu_s"]
    final["wall_s"] += first["wall_s"]
    final["first_iou"] = first["rows"][0]["iou"]
    return final


# -- neurons (FlyEM): the interior probability as affinities, segmented as connectile segment does --------------
#: mean-affinity agglomeration threshold of the neuron segmentation: the best of quality_flyem.py's sweep for learned
#: affinities (2026-12-05, another model and run), fixed before this benchmark saw its test sections
NEURON_THRESHOLD = 0.3


def neuron_scores(run_dir: Path, data: dict[str, Any]) -> dict[str, float]:
    """Neurons of the test sections from round 1's interior probability: the affinity of two neighbours is the
    smaller of their probabilities (as quality_segment.py's intensity baseline), then ``segment_volume``
    (watershed fragments, mean agglomeration at ``NEURON_THRESHOLD``) and VOI (split, merge; bits) and the
    adapted Rand error against the truth over every voxel the truth labels. The connected components of
    ``probability > threshold`` that the pipeline's label stage makes merge most neurons through gaps in the
    predicted boundaries (3 objects for 143 true ones in a test box of the 100% model), so its VOI does not
    order the methods."""
    from quality_segment import neighbour_min_affinities

    from engine.metrics.segmentation import adapted_rand, voi
    from engine.ops.segment import segment_volume
    from engine.storage import create_volume, open_volume

    prob = open_volume(str(run_dir / "round-01" / "predict" / "prob.zarr" / "probability"))
    zt = data["test_from_z"]
    a = np.asarray(prob.read(prob.box)).reshape(-1, *data["shape"])[0][zt:]
    p = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    affs = neighbour_min_affinities(p)
    folder = run_dir / "neurons"
    url = str(folder / "affinities.zarr")
    vol = create_volume(url, affs.shape, "uint8", (64, 64, 64), overwrite=True)
    vol.write(vol.box, np.round(affs * 255).astype(np.uint8))
    out = segment_volume(url, str(folder / "segmentation.zarr"), threshold=NEURON_THRESHOLD, agglomeration="mean", backend="serial", progress=False,
                         overwrite=True)
    seg_vol = open_volume(out.output)
    seg = np.asarray(seg_vol.read(seg_vol.box))
    truth = open_volume(data["truth"])
    gt = np.asarray(truth.read(truth.box))[zt:]
    split, merge = voi(seg, gt)
    return {"neuron_voi_split": split, "neuron_voi_merge": merge, "neuron_voi": split + merge, "neuron_arand": adapted_rand(seg, gt).error,
            "neuron_objects": int(out.objects)}


def with_neurons(row: dict[str, Any], run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A FlyEM row's VOI and ARAND become the neurons' (``neuron_scores``); the label stage's stay as ``label_voi``/``label_arand``."""
    if data["name"] != "flyem" or "neuron_voi" in row:
        return row
    n = neuron_scores(run_dir, data)
    return {**row, "label_voi": row["voi"], "label_arand": row.get("arand"), **n, "voi": n["neuron_voi"], "arand": n["neuron_arand"]}


# -- summary -----------------------------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for r in rows:  # points started from another model's weights (--init) are their own group
        groups.setdefault((r["data"], r["method"], r["budget"], r.get("init") or ""), []).append(r)
    # the ceiling: the 100% model from random weights
    ceiling = {(r["data"], r["seed"]): r["iou"] for r in rows if r["method"] == "full" and not r.get("init")}
    out = []
    for (d, m, b, init), rs in sorted(groups.items()):
        iou = np.array([r["iou"] for r in rs])
        voi = np.array([r["voi"] for r in rs])
        arand = np.array([r["arand"] for r in rs if r.get("arand") is not None])
        eff = [r["effort_share"] for r in rs if r["effort_share"] is not None]
        # the share of the ceiling, seed by seed (the same seed's 100% model), where that ceiling was run
        ratio = [r["iou"] / ceiling[(d, r["seed"])] for r in rs if ceiling.get((d, r["seed"]))]
        out.append({"data": d, "method": m, "budget": b, "init": init or None, "n": len(rs), "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
                    "voi_mean": float(voi.mean()), "voi_std": float(voi.std()),
                    "arand_mean": float(arand.mean()) if arand.size else None, "arand_std": float(arand.std()) if arand.size else None, "effort_share": float(np.mean(eff)) if eff else None,
                    "of_ceiling": float(np.mean(ratio)) if ratio else None, "seeds": sorted(r["seed"] for r in rs),
                    "cpu_s": float(np.mean([r["cpu_s"] for r in rs]))})
    return {"groups": out}


def label(group: dict[str, Any]) -> str:
    """The method's name, and where its models started when not from random weights (``--init``)."""
    init = group.get("init")
    if not init:
        return LABEL[group["method"]]
    name = Path(init).parent.name if Path(init).name == "train" else Path(init).name
    m = re.fullmatch(r"(.+)-full-[\d.]+-\d+", name)  # this script's ceiling run on another data set: name that data set
    return LABEL[group["method"]] + f", from a {m.group(1) if m else name} model"


def table(summary: dict[str, Any]) -> list[str]:
    lines = ["| data | method | budget | effort (share of training voxels) | IoU (mean ± std) | of the ceiling | VOI | ARAND | seeds | CPU s / model |",
             "| --- " * 10 + "|"]
    for g in summary["groups"]:
        eff = f"{g['effort_share'] * 100:.2f}%" if g["effort_share"] is not None else ""
        ratio = f"{g['of_ceiling']:.2f}" if g.get("of_ceiling") is not None else ""
        budget = "all" if g["method"] == "full" else f"{g['budget'] * 100:g}%"
        arand = f"{g['arand_mean']:.3f} ± {g['arand_std']:.3f}" if g.get("arand_mean") is not None else ""
        lines.append(f"| {g['data']} | {label(g)} | {budget} | {eff} | {g['iou_mean']:.3f} ± {g['iou_std']:.3f} | {ratio} | "
                     f"{g['voi_mean']:.2f} ± {g['voi_std']:.2f} | {arand} | {g['n']} | {g['cpu_s']:.0f} |")
    return lines


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({g["data"] for g in summary["groups"]})
    fig, axes = plt.subplots(1, len(datas), figsize=(5.5 * len(datas), 4), squeeze=False)
    for ax, d in zip(axes[0], datas, strict=True):
        key, name = ("voi", "VOI of the neurons on held-out sections (bits, lower is better)") if d == "flyem" else ("iou", "IoU on held-out sections")
        for m, init in sorted({(g["method"], g.get("init") or "") for g in summary["groups"] if g["data"] == d}, key=lambda k: (METHODS.index(k[0]), k[1])):
            gs = sorted((g for g in summary["groups"] if g["data"] == d and g["method"] == m and (g.get("init") or "") == init),
                        key=lambda g: g["effort_share"] or g["budget"])
            xs = [100 * (g["effort_share"] or g["budget"]) for g in gs]
            ys, es = [g[f"{key}_mean"] for g in gs], [g[f"{key}_std"] for g in gs]
            if m == "full":
                ax.axhline(ys[0], color="k" if not init else "grey", ls="--", lw=1, label=label(gs[0]))
            else:
                ax.errorbar(xs, ys, yerr=es, marker="o" if not init else "s", capsize=3, label=label(gs[0]))
        ax.set(xscale="log", xlabel="labelled voxels (% of the training region; answers at their painting cost)", ylabel=name, title=d)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def report(rows: list[dict[str, Any]], out: Path) -> None:
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "quality_loop.md").write_text("\n".join(table(summary)) + "\n")
    plot(summary, out / "quality_loop.png")
    print("\n".join(table(summary)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="lucchi", help="lucchi, lucchi-full, flyem (comma-separated)")
    p.add_argument("--budgets", default="0.001,0.0025,0.005,0.01,0.02")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps per final model, rounds included")
    p.add_argument("--finetune-steps", type=int, default=200, help="per round (the Lucchi++ demo's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--average", type=float, default=None, help="rounds.finetune.average: the fine-tuned weights' share in a round's model (default: the demo's)")
    p.add_argument("--embed-steps", type=int, default=40)
    p.add_argument("--box", default="1,128,128", help="labelled box (z, y, x voxels; one section deep: the 2.5D model reads its neighbours from the raw)")
    p.add_argument("--min-known", type=float, default=None, help="train.sampling.min_known (0 for boxes smaller than a third of a crop)")
    p.add_argument("--init", default=None, help="train.init: start every model from this checkpoint or training output (a model trained on "
                   "another volume) instead of random weights")
    p.add_argument("--min-size", type=int, default=200)
    p.add_argument("--k", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="coverage's kNN ball size (auto: engine.select.run.resolve_k; 10 ties every gain here, in effect random windows)")
    p.add_argument("--heldout-boxes", type=int, default=0,
                   help="the gate's held-out labels: this many whole picks (annotate.heldout_boxes) instead of a quarter of every box (0)")
    p.add_argument("--first-share", type=float, default=0.3, help="(f): the first model's share of --steps (the final model gets the rest)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="data and run folders (default: OUT/work)")
    p.add_argument("--merge", nargs="*", default=None, help="summarise the results.jsonl of these folders into --out (with --work: FlyEM rows "
                   "without neuron scores get them from the run folders there, and OUT/results.jsonl holds the rows)")
    p.add_argument("--smoke", action="store_true", help="a corner of the data, a few steps: seconds to a minute")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        found = [Path(d) / "results.jsonl" for d in args.merge if (Path(d) / "results.jsonl").exists()]
        if len(found) < len(args.merge):
            print(f"{len(args.merge) - len(found)} of {len(args.merge)} folders hold no results.jsonl yet: left out", file=sys.stderr)
        rows = [json.loads(ln) for f in found for ln in f.read_text().splitlines() if ln.strip()]
        if args.work:  # FlyEM rows written before the neurons were scored: score them from their run folders
            work = Path(args.work)
            rows = [with_neurons(r, work / "runs" / f"{r['data']}-{r['method']}-{r['budget']:g}-{r['seed']}", prepare(r["data"], work / "data", False))
                    for r in rows]
            with (out / "results.jsonl").open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        report(rows, out)
        return 0
    if args.smoke:
        args.steps, args.finetune_steps, args.rounds, args.embed_steps, args.box, args.min_size = 6, 2, 1, 2, "2,32,32", 10
        args.methods, args.budgets, args.seeds = args.methods if args.methods != ",".join(METHODS) else "a2,d", "0.02", "0"
    from engine.bench.harness import machine_info

    work = Path(args.work) if args.work else out / "work"
    rows: list[dict[str, Any]] = []
    results = out / "results.jsonl"
    for name in args.data.split(","):
        data = prepare(name, work / "data", args.smoke)
        for budget in [float(b) for b in args.budgets.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for method in args.methods.split(","):
                    if method == "full" and budget != float(args.budgets.split(",")[0]):
                        continue  # the ceiling does not depend on the budget: once per data set and seed
                    run_dir = work / "runs" / f"{name}-{method}-{budget:g}-{seed}"
                    if method == "f":
                        got = run_uncertain(data, budget, seed, run_dir, args)
                    else:
                        cfg, only = config(data, method, budget, seed, run_dir, args)
                        got = run_point(cfg, only, args.threads)
                    row = with_neurons(point_row(data, method, budget, seed, got), run_dir, data)
                    if "first_iou" in got:
                        row["first_iou"] = got["first_iou"]
                    if args.init:
                        row["init"] = args.init
                    row["machine"] = machine_info()
                    print(json.dumps(row), flush=True)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
    report(rows, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
