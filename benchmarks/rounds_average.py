#!/usr/bin/env python
"""Offline: what weight averaging (``rounds.finetune.average``) would have made of a finished run's rounds.

    .venv/bin/python benchmarks/rounds_average.py RUN [RUN ...] --shares 0.5 --out DIR

For every round of every run folder (a ``connectile run``/``demo`` folder, or a ``quality_loop.py`` run whose
config sits beside it as ``RUN.yaml``), the model the round started from (``decision.json``'s ``previous``),
the fine-tuned model (``tuned``, or ``candidate`` in runs written before averaging existed) and their
averages at ``--shares`` are predicted over the whole volume with the run's own predict settings and scored
on the run's test sections (``test_from_z``) as the score stage scores IoU (``region_iou``). Every round
writes its fine-tuned checkpoint even where the gate reverted it, so this needs no training. One JSON line
a round on stdout and in ``DIR/rounds_average.jsonl``. Serial, one thread: about 25 s a model on the
2x-downsampled Lucchi++ of quality_loop.py, 100 s on the full-size demo volume (2-core AMD EPYC).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PREDICT_KEYS = ("window", "overlap", "blend", "sigma_scale", "batch_size")


def run_settings(run: Path) -> dict[str, Any]:
    """The raw, truth, test region, predict and score settings of a run folder, references resolved."""
    import yaml

    inside = run / "config.yaml"
    cfg = yaml.safe_load(inside.read_text() if inside.exists() else Path(f"{run}.yaml").read_text())
    stages = json.loads((run / "manifest.json").read_text())["stages"]

    def ref(v: str) -> str:
        if v.startswith("/") or "." not in v:
            return v
        stage, out = v.split(".", 1)
        return str(stages[stage]["outputs"][out])

    pred, score = cfg["rounds"]["predict"], cfg["rounds"]["score"]
    return {"raw": ref(pred["raw"]), "truth": ref(score["truth"]), "z": int(cfg.get("test_from_z") or 0), "target": score.get("target", "mask"),
            "boundary": int(score.get("boundary", 2)), "threshold": float(score.get("threshold", 0.5)), "block": tuple(pred.get("block") or (64, 256, 256)),
            "predict": {k: pred[k] for k in PREDICT_KEYS if pred.get(k) is not None}}


def test_iou(checkpoint: str, s: dict[str, Any], scratch: Path) -> float:
    from engine.ops.predict import predict_volume
    from engine.pipeline.stages.score import region_iou
    from engine.storage import open_volume

    out = scratch / "prob.zarr"
    if out.exists():
        shutil.rmtree(out)
    predict_volume(checkpoint, s["raw"], str(out), block=s["block"], backend="serial", threads=1, progress=False, overwrite=True, **s["predict"])
    iou = region_iou(open_volume(str(out)), open_volume(s["truth"]), s["target"], s["boundary"], s["threshold"], s["z"])["iou"]
    shutil.rmtree(out)
    return float(iou)


def main(argv: list[str] | None = None) -> int:
    from engine.models.checkpoint import average_checkpoints

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--shares", default="0.5", help="the fine-tuned weights' shares to try (comma-separated)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shares = [float(v) for v in args.shares.split(",")]
    for run in map(Path, args.runs):
        s = run_settings(run)
        for path in sorted(run.glob("round-*/finetune/decision.json")):
            d = json.loads(path.read_text())
            tuned = d.get("tuned") or d["candidate"]
            row: dict[str, Any] = {"run": str(run), "round": d["round"], "kept": d["kept"], "previous": test_iou(d["previous"], s, out),
                                   "tuned": test_iou(tuned, s, out)}
            for a in shares:
                avg = average_checkpoints(d["previous"], tuned, a, out / "averaged" / f"step-{a}")
                row[f"average_{a:g}"] = test_iou(avg, s, out)
            print(json.dumps(row), flush=True)
            with (out / "rounds_average.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
