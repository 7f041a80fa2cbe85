"""The whole pipeline (``connectile demo``'s config) on a tiny synthetic volume: every stage runs and
is recorded, a second run skips everything, a changed section reruns only its stage and what depends
on it, and a person's review makes the round wait until it is finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.pipeline.demo import apply_tiny, demo_config
from engine.pipeline.manifest import Manifest
from engine.pipeline.run import pipeline_config, plan, run_pipeline

REPO = Path(__file__).resolve().parents[1]

STAGES = [
    "synth", "embed", "selection", "annotate", "train",
    "predict1", "label1", "score1", "query1", "review1", "finetune1",
    "predict2", "label2", "score2", "query2", "review2", "finetune2",
    "predict3", "label3", "score3", "metrics", "report",
]


def tiny(run_dir: Path) -> dict[str, Any]:
    return apply_tiny(demo_config(str(run_dir), shape=(16, 64, 96), chunks=(8, 64, 64), seed=3))


def test_shipped_configs_are_the_demo_config() -> None:
    """jobs/configs/demo*.yaml are what engine.pipeline.demo builds (one source of truth), and valid."""
    assert yaml.safe_load((REPO / "jobs/configs/demo.yaml").read_text()) == json.loads(json.dumps(demo_config("runs/demo")))
    lucchi = yaml.safe_load((REPO / "jobs/configs/demo_lucchi.yaml").read_text())
    assert lucchi == json.loads(json.dumps(demo_config("runs/demo_lucchi", lucchi="../shared/data/lucchi_pp")))
    p = plan(pipeline_config(yaml.safe_load((REPO / "jobs/configs/demo.yaml").read_text())))
    assert p.order == STAGES
    assert p.depends["predict2"] == ["finetune1", "synth"] and p.depends["finetune2"] == ["annotate", "finetune1", "query2", "review2"]


def test_tiny_pipeline_end_to_end_skip_rerun_and_person_review(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny(run_dir)
    first = run_pipeline(pipeline_config(cfg))
    assert [r.stage for r in first] == STAGES and all(r.action == "ran" for r in first)
    manifest = Manifest(run_dir)
    assert set(manifest.stages) == set(STAGES)
    assert all(e["status"] == "done" and e["hash"] for e in manifest.stages.values())

    # what the stages made: selection boxes became the labelled boxes; fine-tuning continued the base model
    sel = json.loads((run_dir / "selection" / "selection.json").read_text())
    boxes = json.loads((run_dir / "annotate" / "boxes.json").read_text())["boxes"]
    assert boxes == [{"start": b["start"], "stop": b["stop"]} for b in sel["boxes"]] and len(boxes) == 2
    steps = cfg["train"]["steps"]
    assert manifest.stages["train"]["outputs"]["checkpoint"].endswith(f"step-{steps:06d}")
    assert manifest.stages["finetune1"]["outputs"]["checkpoint"].endswith(f"step-{steps + 4:06d}")
    assert manifest.stages["finetune2"]["outputs"]["checkpoint"].endswith(f"step-{steps + 8:06d}")
    metrics = json.loads((run_dir / "metrics" / "metrics.json").read_text())["rounds"]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0.0 <= m["iou"] <= 1.0 and m["voi_split"] >= 0.0 and m["objects"] >= 0
    report = (run_dir / "report.md").read_text()
    for png in ("selection/picks.png", "metrics/metrics_per_round.png", "metrics/learning_curves.png", "train/loss.png"):
        assert (run_dir / png).stat().st_size > 1000 and png in report
    assert "neuroglancer" in report and "predict1.probability" in report

    # a second run: everything done already
    again = run_pipeline(pipeline_config(cfg))
    assert all(r.action == "skipped" for r in again)

    # a changed section reruns that stage and everything downstream of it, nothing else
    changed = run_pipeline(pipeline_config(cfg, ["review2.threshold=0.6"]))
    ran = {r.stage for r in changed if r.action == "ran"}
    assert ran == {"review2", "finetune2", "predict3", "label3", "score3", "metrics", "report"}

    # a person's review: the round waits (one clear error) until its answers are finished
    from engine.active.answers import AnswerStore, answers_path
    from engine.active.query import read_queries
    from engine.pipeline.stages.review import ReviewPending

    person = ["review1.source=person", "query1.query.seed=1"]
    with pytest.raises(ReviewPending, match=r"connectile review .*query1"):
        run_pipeline(pipeline_config(cfg, person))
    assert Manifest(run_dir).stages["review1"]["status"] == "failed"
    rdir = run_dir / "query1" / "rounds" / "round-01"
    ids = read_queries(rdir / "queries.parquet")["roi_id"].tolist()
    with AnswerStore(answers_path(rdir)) as store:
        for i in ids:
            store.set(int(i), True, source="person")
        store.finish()
    done = run_pipeline(pipeline_config(cfg, person), only=["review1"])
    assert [r.action for r in done] == ["ran"]
    answers = json.loads((run_dir / "review1" / "answers.json").read_text())
    assert answers["source"] == "person" and answers["reviewed"] == len(ids) and answers["accepted"] == len(ids)


def test_real_data_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import StorageError
    from engine.pipeline.demo import find_shared_data

    monkeypatch.setenv("CONNECTILE_DATA", "/nonexistent/data")
    with pytest.raises(StorageError, match="CONNECTILE_DATA") as err:
        find_shared_data("no_such_set")
    assert "no_such_set" in str(err.value) and "\n" not in str(err.value)
