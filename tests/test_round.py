"""``connectile round RUN``: one active-learning round on a run folder of ``connectile demo``.

The base run is the tiny demo with one round (made once per module, about 15 s on 2 loaded cores; its
``run_dir`` is relative, so each test copies the folder into its own cwd); round 2 then runs the pipeline's
round stages query2 -> review2 -> finetune2 -> predict3 -> label3 -> score3 with the real oracle,
a person's answers through the review page's store, a real failure after the query step, and bad RUNs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.pipeline.demo import apply_tiny, demo_config
from engine.pipeline.manifest import Manifest
from engine.pipeline.run import pipeline_config, run_pipeline

ROUND2 = ["predict2", "label2", "score2", "query2", "review2", "finetune2", "predict3", "label3", "score3"]
NEW = ROUND2[3:]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("round-base")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cfg = apply_tiny(demo_config("run", shape=(16, 64, 96), chunks=(8, 64, 64), seed=3, rounds=1))
        del cfg["metrics"], cfg["report"]
        run_pipeline(pipeline_config(cfg))
    finally:
        os.chdir(cwd)
    return root / "run"


@pytest.fixture
def run(base_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A copy of the base run as ``./run`` in the test's own folder."""
    torch.set_num_threads(1)
    shutil.copytree(base_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return "run"


def _started(run: str) -> dict[str, float]:
    return {n: e["started"] for n, e in Manifest(run).stages.items()}


def _queries(run: str, r: int) -> list[int]:
    from engine.active.query import read_queries

    return [int(i) for i in read_queries(Path(run) / f"query{r}" / "rounds" / "round-01" / "queries.parquet")["roi_id"].tolist()]


def test_oracle_round_writes_queries_answers_checkpoint_metrics_then_skips(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _started(run)
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = Manifest(run)
    assert all(m.stages[s]["status"] == "done" for s in ROUND2)
    # round 1's stages (and the base) were not run again
    assert {n: t for n, t in _started(run).items() if n in before} == before
    state = json.loads((Path(run) / "rounds" / "round-02.json").read_text())
    assert state["round"] == 2 and state["status"] == "done" and all(state["stages"][s] == "ran" for s in NEW)
    queries = _queries(run, 2)
    assert len(queries) >= 1 and len(set(queries)) == len(queries)
    answers = json.loads(Path(state["answers"]).read_text())
    assert answers["source"] == "oracle" and sorted(int(k) for k in answers["answers"]) == sorted(queries)
    # the fine-tuning labels: every reviewed ROI became foreground (accepted) or background (rejected)
    counts = json.loads((Path(run) / "finetune2" / "review_labels.json").read_text())
    assert counts["accepted"] == answers["accepted"] and counts["accepted"] + counts["rejected"] == len(queries)
    base_step = int(m.stages["finetune1"]["outputs"]["checkpoint"].rsplit("-", 1)[1])
    assert state["checkpoint"].endswith(f"step-{base_step + 4:06d}") and Path(state["checkpoint"]).is_dir()
    assert m.stages["predict3"]["config"]["checkpoint"] == "finetune2.checkpoint"
    metrics = json.loads(Path(state["metrics"]).read_text())
    assert metrics["round"] == 3 and 0.0 <= metrics["iou"] <= 1.0 and metrics["objects"] >= 0
    assert "round 2: done" in out and "round 3 model: IoU" in out
    # the extended config stays in the run folder: round 2 is part of it now
    assert "finetune2" in (Path(run) / "config.yaml").read_text()

    # the same round again: nothing runs
    done = _started(run)
    assert main(["round", run, "--round", "2", "--oracle", "synth.neurons", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("done already (skipped)") == len(ROUND2) and "ran in" not in out
    assert _started(run) == done

    # without --round: the next round (3), whose sections are copied from round 2, renumbered
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    m = Manifest(run)
    assert all(m.stages[s]["status"] == "done" for s in ("query3", "review3", "finetune3", "predict4", "label4", "score4"))
    assert {n: t for n, t in _started(run).items() if n in done} == done
    assert m.stages["predict4"]["config"]["checkpoint"] == "finetune3.checkpoint" and m.stages["query3"]["config"]["labels"] == "label3.labels"
    assert m.stages["finetune3"]["outputs"]["checkpoint"].endswith(f"step-{base_step + 8:06d}")
    assert json.loads((Path(run) / "score4" / "metrics.json").read_text())["round"] == 4


def test_failure_after_the_query_step_resumes_without_redoing_it(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a real failure after query2: the oracle's ground truth does not exist (the review stage raises)
    assert main(["round", run, "--oracle", "run/missing.zarr/truth", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.zarr" in err
    m = Manifest(run)
    assert m.stages["query2"]["status"] == "done" and m.stages["review2"]["status"] == "failed" and "finetune2" not in m.stages
    assert json.loads((Path(run) / "rounds" / "round-02.json").read_text())["status"] == "failed"
    query = dict(m.stages["query2"])
    queries = _queries(run, 2)

    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    m = Manifest(run)
    assert m.stages["query2"] == query  # not run again
    assert m.stages["review2"]["attempts"] == 2 and all(m.stages[s]["status"] == "done" for s in NEW)
    assert _queries(run, 2) == queries
    assert json.loads((Path(run) / "rounds" / "round-02.json").read_text())["status"] == "done"


def test_round_killed_in_finetuning_resumes_without_redoing_query_and_review(run: str) -> None:
    """A real crash: the round's process is SIGKILLed while it fine-tunes (a long run of steps)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "round", run, "--oracle", "synth.neurons", "--no-progress", "--set", "finetune2.steps=100000"]
    log = open("round.log", "w")  # noqa: SIM115 (closed below; a pipe could fill up and block the child)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            e = Manifest(run).entry("finetune2") if (Path(run) / "manifest.json").exists() else None
            if e is not None and e["status"] == "running":
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the round ended before fine-tuning: {Path('round.log').read_text()[-2000:]}"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    m = Manifest(run)
    assert m.stages["finetune2"]["status"] == "running" and "predict3" not in m.stages
    assert json.loads((Path(run) / "rounds" / "round-02.json").read_text())["status"] == "running"
    query, review = dict(m.stages["query2"]), dict(m.stages["review2"])
    assert query["status"] == review["status"] == "done"

    # the round's config (with its --set) is in RUN/config.yaml now: the usual steps need --set again
    assert "100000" in (Path(run) / "config.yaml").read_text()
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress", "--set", "finetune2.steps=4"]) == 0
    m = Manifest(run)
    assert m.stages["query2"] == query and m.stages["review2"] == review  # finished steps: not run again
    assert m.stages["finetune2"]["attempts"] == 2 and all(m.stages[s]["status"] == "done" for s in NEW)
    assert json.loads((Path(run) / "rounds" / "round-02.json").read_text())["status"] == "done"


def test_person_round_waits_for_answers_then_goes_on(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.active.answers import AnswerStore, answers_path

    assert main(["round", run, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "connectile review run/query2" in out
    state = json.loads((Path(run) / "rounds" / "round-02.json").read_text())
    assert state["status"] == "waiting" and state["review"] == "connectile review run/query2"
    m = Manifest(run)
    assert m.stages["query2"]["status"] == "done" and "finetune2" not in m.stages
    query = dict(m.stages["query2"])

    # not finished yet: still waiting
    assert main(["round", run, "--no-progress"]) == 0
    assert "connectile review run/query2" in capsys.readouterr().out

    # a person answers on the review page (its store): reject the first query, accept the others
    queries = _queries(run, 2)
    rdir = Path(run) / "query2" / "rounds" / "round-01"
    with AnswerStore(answers_path(rdir)) as store:
        for k, roi in enumerate(queries):
            store.set(roi, k != 0, source="person")
        store.finish()
    assert main(["round", run, "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = Manifest(run)
    assert m.stages["query2"] == query and all(m.stages[s]["status"] == "done" for s in NEW)
    answers = json.loads((Path(run) / "review2" / "answers.json").read_text())
    assert answers["source"] == "person" and answers["reviewed"] == len(queries) and answers["accepted"] == len(queries) - 1
    counts = json.loads((Path(run) / "finetune2" / "review_labels.json").read_text())
    assert counts["rejected"] == 1 and counts["accepted"] == len(queries) - 1
    # the rejected object is background in the fine-tuning labels
    from engine.active.rois import read_index
    from engine.storage import open_volume

    obj = int(read_index(Path(run) / "query2")["object_id"][queries[0]])
    pred = open_volume(m.stages["label2"]["outputs"]["labels"])
    lab = open_volume(str(Path(run) / "finetune2" / "labels.zarr" / "labels"))
    p, t = pred.read(pred.box), lab.read(lab.box)
    base = open_volume(m.stages["annotate"]["outputs"]["labels"])
    free = (p == obj) & (base.read(base.box) == 255)
    assert free.any() and np.all(t[free] == 0)
    assert json.loads((Path(run) / "rounds" / "round-02.json").read_text())["status"] == "done" and "round 2: done" in out


def test_bad_run_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["round", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "connectile run" in err
    (tmp_path / "empty").mkdir()
    assert main(["round", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a Connectile run folder" in err
    # a run without model rounds (just a synthetic volume)
    run_pipeline(pipeline_config({"run_dir": str(tmp_path / "synth"), "synth": {"shape": [8, 32, 32], "chunks": [8, 32, 32]}, "runtime": {"progress": False}}))
    assert main(["round", str(tmp_path / "synth"), "--oracle", "synth.neurons"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model rounds" in err
