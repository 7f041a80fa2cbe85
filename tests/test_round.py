"""``connectile round RUN``: one active-learning round on a run folder of ``connectile demo``.

The base run is the tiny demo with one round (made once per module, about 15 s on 2 loaded cores; its
``run_dir`` is relative, so each test copies the folder into its own cwd); round 2 then runs the pipeline's
round stages query[2] -> review[2] -> finetune[2] -> predict[3] -> label[3] -> score[3] with the real
oracle, a person's answers through the review page's store, a deliberately harmful round (every answer
flipped: the model is kept), a real failure after the query step, and bad RUNs.
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

ROUND2 = ["predict[2]", "label[2]", "score[2]", "query[2]", "review[2]", "finetune[2]", "predict[3]", "label[3]", "score[3]"]
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

    # pipeline round r's queries are round r of its active-learning folder
    return [int(i) for i in read_queries(Path(run) / f"round-{r:02d}" / "query" / "rounds" / f"round-{r:02d}" / "queries.parquet")["roi_id"].tolist()]


def test_oracle_round_writes_queries_answers_checkpoint_metrics_then_skips(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _started(run)
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = Manifest(run)
    assert all(m.stages[s]["status"] == "done" for s in ROUND2)
    # round 1's stages (and the base) were not run again
    assert {n: t for n, t in _started(run).items() if n in before} == before
    state = json.loads((Path(run) / "round-02" / "round.json").read_text())
    assert state["round"] == 2 and state["status"] == "done" and all(state["stages"][s] == "ran" for s in NEW)
    queries = _queries(run, 2)
    assert len(queries) >= 1 and len(set(queries)) == len(queries)
    answers = json.loads(Path(state["answers"]).read_text())
    assert answers["source"] == "oracle" and sorted(int(k) for k in answers["answers"]) == sorted(queries)
    # the fine-tuning labels: every reviewed ROI of rounds 1 and 2 became foreground (accepted) or background (rejected)
    first = json.loads(Path(m.stages["review[1]"]["outputs"]["answers"]).read_text())
    counts = json.loads((Path(run) / "round-02" / "finetune" / "review_labels.json").read_text())
    assert counts["accepted"] == answers["accepted"] + first["accepted"]
    assert counts["accepted"] + counts["rejected"] == len(queries) + first["reviewed"]
    base_step = int(m.stages["finetune[1]"]["outputs"]["checkpoint"].rsplit("-", 1)[1])
    decision = json.loads(Path(state["decision"]).read_text())
    assert decision["candidate"].endswith(f"step-{base_step + 4:06d}") and Path(state["checkpoint"]).is_dir()
    assert state["checkpoint"] == (decision["candidate"] if decision["kept"] == "candidate" else decision["previous"])
    assert m.stages["predict[3]"]["config"]["checkpoint"] == "finetune[2].checkpoint"
    metrics = json.loads(Path(state["metrics"]).read_text())
    assert metrics["round"] == 3 and 0.0 <= metrics["iou"] <= 1.0 and metrics["objects"] >= 0
    assert "round 2: done" in out and "round 3 model: IoU" in out
    # the extended config stays in the run folder: round 2 is part of it now
    import yaml

    assert yaml.safe_load((Path(run) / "config.yaml").read_text())["rounds"]["count"] == 2

    # objects reviewed in round 1 are not asked again in round 2: the ROIs matching them (IoU > 0.5, brute force
    # over the whole volumes here) are excluded from round 2's candidates
    from engine.active.rois import read_index
    from engine.pipeline.stages.query import answered_before
    from engine.storage import open_volume

    q1, q2 = Path(m.stages["query[1]"]["outputs"]["rois"]), Path(m.stages["query[2]"]["outputs"]["rois"])
    lab1, lab2 = (open_volume(m.stages[f"label[{k}]"]["outputs"]["labels"]) for k in (1, 2))
    v1, v2 = lab1.read(lab1.box), lab2.read(lab2.box)
    i1, i2 = read_index(q1), read_index(q2)
    expect = set()
    for roi in first["answers"]:
        a = v1 == i1["object_id"][int(roi)]
        for r2, o2 in zip(i2["roi_id"].tolist(), i2["object_id"].tolist(), strict=True):
            b = v2 == o2
            if (a & b).sum() / (a | b).sum() > 0.5:
                expect.add(int(r2))
    got = answered_before(q2, [(str(q1), m.stages["review[1]"]["outputs"]["answers"])], 0.5)
    assert got == expect and not set(queries) & got
    assert json.loads((q2 / "summary.json").read_text())["answered_before"] == len(expect)

    # the same round again: nothing runs
    done = _started(run)
    assert main(["round", run, "--round", "2", "--oracle", "synth.neurons", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("done already (skipped)") == len(NEW) and "ran in" not in out
    assert _started(run) == done

    # without --round: one more round (3), the count raised to 3
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    m = Manifest(run)
    assert all(m.stages[s]["status"] == "done" for s in ("query[3]", "review[3]", "finetune[3]", "predict[4]", "label[4]", "score[4]"))
    assert {n: t for n, t in _started(run).items() if n in done} == done
    assert m.stages["predict[4]"]["config"]["checkpoint"] == "finetune[3].checkpoint" and m.stages["query[3]"]["config"]["labels"] == "label[3].labels"
    assert m.stages["finetune[3]"]["config"]["answers"] == ["review[1].answers", "review[2].answers", "review[3].answers"]
    assert json.loads((Path(run) / "round-04" / "score" / "metrics.json").read_text())["round"] == 4
    assert yaml.safe_load((Path(run) / "config.yaml").read_text())["rounds"]["count"] == 3


def test_failure_after_the_query_step_resumes_without_redoing_it(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    # a real failure after query2: the oracle's ground truth does not exist (the review stage raises)
    assert main(["round", run, "--oracle", "run/missing.zarr/truth", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.zarr" in err
    m = Manifest(run)
    assert m.stages["query[2]"]["status"] == "done" and m.stages["review[2]"]["status"] == "failed" and "finetune[2]" not in m.stages
    assert json.loads((Path(run) / "round-02" / "round.json").read_text())["status"] == "failed"
    query = dict(m.stages["query[2]"])
    queries = _queries(run, 2)

    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress"]) == 0
    m = Manifest(run)
    assert m.stages["query[2]"] == query  # not run again
    assert m.stages["review[2]"]["attempts"] == 2 and all(m.stages[s]["status"] == "done" for s in NEW)
    assert _queries(run, 2) == queries
    assert json.loads((Path(run) / "round-02" / "round.json").read_text())["status"] == "done"


def test_round_killed_in_finetuning_resumes_without_redoing_query_and_review(run: str) -> None:
    """A real crash: the round's process is SIGKILLed while it fine-tunes (a long run of steps)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "engine.cli", "round", run, "--oracle", "synth.neurons", "--no-progress", "--set", "rounds.overrides.2.finetune.steps=100000"]
    log = open("round.log", "w")  # noqa: SIM115 (closed below; a pipe could fill up and block the child)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            e = Manifest(run).entry("finetune[2]") if (Path(run) / "manifest.json").exists() else None
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
    assert m.stages["finetune[2]"]["status"] == "running" and "predict[3]" not in m.stages
    assert json.loads((Path(run) / "round-02" / "round.json").read_text())["status"] == "running"
    query, review = dict(m.stages["query[2]"]), dict(m.stages["review[2]"])
    assert query["status"] == review["status"] == "done"

    # the round's config (with its --set) is in RUN/config.yaml now: the usual steps need --set again
    assert "100000" in (Path(run) / "config.yaml").read_text()
    # without --round, the unfinished last round is resumed (not one more round)
    assert main(["round", run, "--oracle", "synth.neurons", "--no-progress", "--set", "rounds.overrides.2.finetune.steps=4"]) == 0
    m = Manifest(run)
    assert m.stages["query[2]"] == query and m.stages["review[2]"] == review  # finished steps: not run again
    assert m.stages["finetune[2]"]["attempts"] == 2 and all(m.stages[s]["status"] == "done" for s in NEW)
    assert json.loads((Path(run) / "round-02" / "round.json").read_text())["status"] == "done"
    assert "query[3]" not in m.stages


def test_person_round_waits_for_answers_then_goes_on(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.active.answers import AnswerStore, answers_path

    assert main(["round", run, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "connectile review run/round-02/query" in out
    state = json.loads((Path(run) / "round-02" / "round.json").read_text())
    assert state["status"] == "waiting" and state["review"] == "connectile review run/round-02/query"
    m = Manifest(run)
    assert m.stages["query[2]"]["status"] == "done" and "finetune[2]" not in m.stages
    query = dict(m.stages["query[2]"])

    # not finished yet: still waiting
    assert main(["round", run, "--no-progress"]) == 0
    assert "connectile review run/round-02/query" in capsys.readouterr().out

    # a person answers on the review page (its store): reject the first query, accept the others
    queries = _queries(run, 2)
    rdir = Path(run) / "round-02" / "query" / "rounds" / "round-02"
    with AnswerStore(answers_path(rdir)) as store:
        for k, roi in enumerate(queries):
            store.set(roi, k != 0, source="person")
        store.finish()
    assert main(["round", run, "--no-progress"]) == 0
    out = capsys.readouterr().out
    m = Manifest(run)
    assert m.stages["query[2]"] == query and all(m.stages[s]["status"] == "done" for s in NEW)
    answers = json.loads((Path(run) / "round-02" / "review" / "answers.json").read_text())
    assert answers["source"] == "person" and answers["reviewed"] == len(queries) and answers["accepted"] == len(queries) - 1
    first = json.loads(Path(m.stages["review[1]"]["outputs"]["answers"]).read_text())
    counts = json.loads((Path(run) / "round-02" / "finetune" / "review_labels.json").read_text())
    assert counts["rejected"] == 1 + first["reviewed"] - first["accepted"] and counts["accepted"] == len(queries) - 1 + first["accepted"]
    # the rejected object is background in the fine-tuning labels
    from engine.active.rois import read_index
    from engine.storage import open_volume

    obj = int(read_index(Path(run) / "round-02" / "query")["object_id"][queries[0]])
    pred = open_volume(m.stages["label[2]"]["outputs"]["labels"])
    lab = open_volume(str(Path(run) / "round-02" / "finetune" / "labels.zarr" / "labels"))
    p, t = pred.read(pred.box), lab.read(lab.box)
    base = open_volume(m.stages["annotate"]["outputs"]["labels"])
    held = open_volume(m.stages["annotate"]["outputs"]["heldout"])
    free = (p == obj) & (base.read(base.box) == 255) & (held.read(held.box) == 255)
    # background: the newest answer wins, also over round 1's answer on the same object
    assert free.any() and np.all(t[free] == 0)
    assert json.loads((Path(run) / "round-02" / "round.json").read_text())["status"] == "done" and "round 2: done" in out
    # the held-out annotated voxels are never trained on
    assert np.all(t[held.read(held.box) != 255] == 255)

    # a start-over of the round's query (a new prediction) moves the person's answers aside, never deletes them
    assert main(["run", str(Path(run) / "config.yaml"), "--from", "query[2]", "--no-progress"]) == 3  # waits for a person again
    aside = list(Path(run, "round-02").glob("query/rounds.answers-*/round-02/answers.sqlite"))
    assert len(aside) == 1
    with AnswerStore(aside[0]) as store:
        assert store.answers() == {roi: k != 0 for k, roi in enumerate(queries)}


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
    assert len(err.splitlines()) == 1 and "no `rounds:` section" in err


def test_a_harmful_round_keeps_the_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer of a round flipped (what the oracle accepts is rejected and the other way round), and a
    fine-tuning that follows them hard (no replay of the annotated boxes, no anchor, high learning rate): the new
    model scores lower on the held-out annotated voxels, so the round keeps the model it started from;
    with ``keep_better: false`` the same round uses the worse model (the gate is what kept it)."""
    from engine.active.answers import AnswerStore, answers_path
    from engine.active.oracle import oracle_answers
    from engine.pipeline.stages.review import ReviewPending

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    cfg = apply_tiny(demo_config("run", shape=(16, 64, 96), chunks=(8, 64, 64), seed=3, rounds=1))
    del cfg["metrics"], cfg["report"]
    cfg["rounds"]["review"] = {"source": "person"}
    hard = ["rounds.finetune.steps=40", "rounds.finetune.lr=0.03", "rounds.finetune.replay=0.0", "rounds.finetune.propagate=false",
            "rounds.finetune.anchor=0"]
    with pytest.raises(ReviewPending):
        run_pipeline(pipeline_config(cfg, hard))
    m = Manifest("run")
    qdir = Path(m.stages["query[1]"]["outputs"]["rois"])
    from engine.active.query import read_queries

    ids = np.asarray(read_queries(qdir / "rounds" / "round-01" / "queries.parquet")["roi_id"])
    right = oracle_answers(qdir, m.stages["synth"]["outputs"]["neurons"], ids, criterion="iou")
    with AnswerStore(answers_path(qdir / "rounds" / "round-01")) as store:
        for roi, ok in right.items():
            store.set(roi, not ok, source="person")
        store.finish()
    run_pipeline(pipeline_config(cfg, hard))
    m = Manifest("run")
    d = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d["candidate_score"] < d["previous_score"] and d["kept"] == "previous", d
    assert m.stages["finetune[1]"]["outputs"]["checkpoint"] == m.stages["train"]["outputs"]["checkpoint"] == d["previous"]
    assert "kept the previous model" in d["reason"]

    run_pipeline(pipeline_config(cfg, [*hard, "rounds.finetune.keep_better=false"]))
    m = Manifest("run")
    d2 = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d2["kept"] == "candidate" and m.stages["finetune[1]"]["outputs"]["checkpoint"] == d2["candidate"] != d2["previous"]

    # the tolerant gate (revert only what is clearly worse) still reverts this round: it is worse in every resample
    run_pipeline(pipeline_config(cfg, [*hard, "rounds.finetune.gate_confidence=0.9"]))
    d3 = json.loads(Path(Manifest("run").stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d3["kept"] == "previous" and d3["share_worse"] >= 0.9 and d3["heldout_tiles"] > 1, d3

    # the anchor (the previous segmentation as labels wherever no answer is) holds the same flipped round back
    run_pipeline(pipeline_config(cfg, [*hard[:-1], "rounds.finetune.anchor=0.5"]))
    d4 = json.loads(Path(Manifest("run").stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d4["labels"]["voxels_anchor"] > 0 and d4["candidate_score"] > d["candidate_score"] + 0.01, (d4, d)

    # weight averaging: the gate judges half the fine-tuning, which holds the flipped round back too
    run_pipeline(pipeline_config(cfg, [*hard, "rounds.finetune.average=0.5"]))
    d5 = json.loads(Path(Manifest("run").stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d5["average"] == 0.5 and Path(d5["candidate"]).parent.name == "averaged" and Path(d5["tuned"]).parent.name == "checkpoints", d5
    assert d5["candidate_score"] > d["candidate_score"] + 0.01, (d5, d)

    # held-out truth with fewer objects than gate_min_objects cannot judge: the round's model is halfway between the two
    assert d["heldout_objects"] >= 3, d  # the default judged above
    run_pipeline(pipeline_config(cfg, [*hard, f"rounds.finetune.gate_min_objects={d['heldout_objects'] + 1}"]))
    m = Manifest("run")
    d6 = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d6["kept"] == "average" and "too few to judge" in d6["reason"] and Path(d6["checkpoint"]).parent.name == "hedged", d6
    assert m.stages["finetune[1]"]["outputs"]["checkpoint"] == d6["checkpoint"]
    from safetensors.torch import load_file

    w = [load_file(str(Path(d6[k]) / "model.safetensors")) for k in ("previous", "candidate", "checkpoint")]
    name = next(k for k, v in w[0].items() if v.is_floating_point() and not torch.equal(v, w[1][k]))
    torch.testing.assert_close(w[2][name], (w[0][name] + w[1][name]) / 2)


def test_the_tolerant_gate_reverts_only_a_clearly_worse_round() -> None:
    """``gate_confidence``: a lower held-out score that the resampled tiles cannot tell from noise keeps the
    new model (the strict default reverts it); a drop in most tiles reverts it; the IoU is that of all
    tiles together, as :func:`engine.metrics.jaccard` gives it."""
    from engine.active.gate import counts_iou, tile_counts, verdict
    from engine.metrics import jaccard
    from engine.pipeline.stages.finetune import FinetuneSection

    rng = np.random.default_rng(0)
    truth = rng.random((1, 4, 256, 256)) < 0.05
    known = rng.random(truth.shape) < 0.5
    old = truth ^ (rng.random(truth.shape) < 0.02)
    close = old.copy()
    close[0, 1, :64, :64] ^= rng.random((64, 64)) < 0.03  # a little worse in one tile of 64
    worse = truth ^ (rng.random(truth.shape) < 0.04)  # twice the errors everywhere
    counts = {name: tile_counts(pred, truth, known) for name, pred in (("old", old), ("close", close), ("worse", worse))}
    assert len(counts["old"][0]) == 64 and counts_iou(counts["old"]) == pytest.approx(jaccard(old, truth, known))
    assert counts_iou(counts["close"]) < counts_iou(counts["old"])
    for conf, candidate, kept in ((None, "close", "previous"), (0.9, "close", "candidate"), (0.9, "worse", "previous")):
        doc: dict[str, object] = {}
        reason = verdict(FinetuneSection(gate_confidence=conf), counts["old"], counts[candidate], int(known.sum()), doc)
        assert doc["kept"] == kept, (conf, candidate, doc, reason)
    assert "too close to tell apart" in verdict(FinetuneSection(gate_confidence=0.9), counts["old"], counts["close"], 1, {})
    # one tile holds all the held-out foreground and the new model loses it: the resamples without that tile tie, so
    # they cannot reach 0.9, but a drop of more than gate_tolerance reverts the round (Lucchi++: 0.45 -> 0.02 was used)
    one = np.zeros_like(truth)
    one[0, 0, :64, :64] = truth[0, 0, :64, :64]
    kept_one, lost = tile_counts(one, one, known), tile_counts(np.zeros_like(one), one, known)
    doc = {}
    reason = verdict(FinetuneSection(gate_confidence=0.9), kept_one, lost, int(known.sum()), doc)
    assert doc["kept"] == "previous" and float(doc["share_worse"]) < 0.9 and "gate_tolerance" in reason, reason
    doc = {}
    verdict(FinetuneSection(gate_confidence=0.9, gate_tolerance=1.0), kept_one, lost, int(known.sum()), doc)
    assert doc["kept"] == "candidate"  # without the tolerance: "too close"
    empty = tile_counts(old, np.zeros_like(truth), known)  # no foreground held out: IoU 0 whatever the model
    doc = {}
    assert "neither model overlaps any foreground" in verdict(FinetuneSection(), empty, empty, 7, doc) and doc["kept"] == "candidate"
    # too few held-out objects to judge either way (Lucchi++ 0.5%: one object reverted two better rounds, two used a
    # harmful one): the round's model is the gate_hedge average, whichever model scores higher there
    for candidate in ("close", "worse"):
        for objects, section, kept in ((2, FinetuneSection(), "average"), (3, FinetuneSection(), "previous"), (0, FinetuneSection(gate_min_objects=0), "previous"),
                                       (2, FinetuneSection(keep_better=False), "candidate"), (None, FinetuneSection(), "previous")):
            doc = {}
            reason = verdict(section, counts["old"], counts[candidate], int(known.sum()), doc, objects)
            assert doc["kept"] == kept, (candidate, objects, section, reason)
    doc = {}
    assert "fewer than gate_min_objects 3" in verdict(FinetuneSection(), counts["close"], counts["old"], 1, doc, 1) and doc["kept"] == "average"
    from engine.pipeline.stages.metrics import table_lines

    rows = table_lines([{"round": 2, "kept": "candidate", "too_close": True}, {"round": 3, "kept": "previous", "too_close": False}])
    assert "too close to tell apart, new model used" in rows[2] and "previous kept" in rows[3]


def test_round_layout_errors_are_one_line_and_delete_nothing(run: str, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from engine.errors import ConfigError

    cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
    files = sorted(str(p) for p in Path(run).rglob("*"))
    # a run folder of the old layout (per-round sections predict1, finetune1 ...)
    old = {k: v for k, v in cfg.items() if k != "rounds"} | {"predict1": {"raw": "synth.raw", "checkpoint": "train.checkpoint"}, "finetune1": {}}
    (Path(run) / "config.yaml").write_text(yaml.safe_dump(old))
    assert main(["round", run, "--oracle", "synth.neurons"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "old layout" in err and "predict1" in err and "nothing of the old run was changed or deleted" in err
    assert sorted(str(p) for p in Path(run).rglob("*")) == files
    # rounds.count below 1, and an override for a round beyond the count
    for bad, pattern in (({"count": 0}, r"rounds\.count"), ({"overrides": {5: {"finetune": {"steps": 3}}}}, "overrides has round 5, but rounds.count is 1")):
        data = {**cfg, "rounds": {**cfg["rounds"], **bad}}
        with pytest.raises(ConfigError, match=pattern) as e:
            pipeline_config(data)
        assert "\n" not in str(e.value)


def test_finetuning_runs_at_its_own_rate_after_a_cosine_base(tmp_path: Path) -> None:
    """``rounds.finetune.lr`` is the rate of every fine-tuning step, also after a base trained with a cosine
    schedule (continuing that schedule ran the rounds at lr * min_lr_ratio, a twentieth of it); with
    ``lr: null`` the base's schedule continues."""
    from engine.config import parse_config
    from engine.learn.config import TrainConfig
    from engine.learn.trainer import learning_rate
    from engine.pipeline.stages.finetune import FinetuneSection, FinetuneStage

    base = parse_config(TrainConfig, {"data": {"raw": "a.zarr/raw", "labels": "a.zarr/l"}, "output": "o", "steps": 500,
                                      "optimizer": {"lr": 0.003, "schedule": "cosine"}})
    tuned = FinetuneStage._train_config(base, FinetuneSection(lr=0.001, steps=100), "l.zarr/l", tmp_path / "b.json", tmp_path / "t", 600, False)
    assert [learning_rate(tuned, s) for s in (500, 550, 599)] == [0.001] * 3
    kept = FinetuneStage._train_config(base, FinetuneSection(lr=None, steps=100), "l.zarr/l", tmp_path / "b.json", tmp_path / "t", 600, False)
    assert kept.optimizer.schedule == "cosine" and learning_rate(kept, 599) < 0.003 * 0.06


def test_a_restarted_round_trains_afresh_on_every_label_and_is_never_averaged(run: str, tmp_path: Path) -> None:
    """``rounds.finetune.restart``: the round's model starts from random weights (no copy of the previous checkpoint, its
    history from step 1, ``steps`` steps in all) with the base training's optimiser and schedule; where the gate cannot
    judge (``gate_min_objects`` above the held-out objects) it uses the new model, never an average of unrelated weights;
    ``average`` below 1 with ``restart`` is refused."""
    import pydantic

    from engine.config import parse_config
    from engine.learn.config import TrainConfig
    from engine.pipeline.stages.finetune import FinetuneSection, FinetuneStage, step_of

    cfg = apply_tiny(demo_config("run", shape=(16, 64, 96), chunks=(8, 64, 64), seed=3, rounds=1))
    del cfg["metrics"], cfg["report"]
    base_ck = Path(Manifest(run).stages["train"]["outputs"]["checkpoint"])
    steps = step_of(base_ck) + 3  # not the base's step: a copied checkpoint would show
    run_pipeline(pipeline_config(cfg, ["rounds.finetune.restart=true", f"rounds.finetune.steps={steps}", "rounds.finetune.gate_min_objects=1000"]))
    m = Manifest(run)
    d = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())
    assert d["kept"] == "candidate" and "trained afresh" in d["reason"] and d["checkpoint"] == d["candidate"], d
    assert m.stages["finetune[1]"]["outputs"]["checkpoint"] == d["candidate"] and step_of(Path(d["candidate"])) == steps
    train = Path(run) / "round-01" / "finetune" / "train"
    assert not (train / "checkpoints" / base_ck.name).exists() and not (train / "hedged").exists()
    history = [json.loads(ln) for ln in (train / "history.jsonl").read_text().splitlines() if ln.strip()]
    assert history[0]["step"] <= 10 and history[-1]["step"] == steps, (history[0], history[-1])

    base = parse_config(TrainConfig, {"data": {"raw": "a.zarr/raw", "labels": "a.zarr/l"}, "output": "o", "steps": 500,
                                      "optimizer": {"lr": 0.003, "schedule": "cosine"}})
    fresh = FinetuneStage._train_config(base, FinetuneSection(restart=True, lr=0.0001, steps=300), "l.zarr/l", tmp_path / "b.json", tmp_path / "t", 300, False)
    assert fresh.steps == 300 and fresh.optimizer == base.optimizer
    with pytest.raises(pydantic.ValidationError, match="cannot be averaged"):
        FinetuneSection(restart=True, average=0.5)


def test_an_accepted_answer_leaves_its_objects_edge_unknown_with_erode(run: str) -> None:
    """``erode``: an accepted object's predicted mask, less its outer ``erode`` in-plane pixels, is
    foreground and its edge stays unknown (a True says the object is right, not where its edge is); a
    rejected object is background whole; without it (and ``ring``) the whole mask is foreground. On the
    real answers and labels of the run's round 1."""
    from scipy.ndimage import binary_erosion

    from engine.active.finetune import BACKGROUND, FOREGROUND, UNKNOWN, RoundAnswers, _objects, paint_answers
    from engine.active.rois import read_meta
    from engine.pipeline.stages.finetune import read_answers
    from engine.storage import open_volume

    m = Manifest(run)
    ra = RoundAnswers(m.stages["query[1]"]["outputs"]["rois"], 1, read_answers(m.stages["review[1]"]["outputs"]["answers"]))
    pred = open_volume(read_meta(ra.rois_dir)["params"]["labels"])
    pred = pred.read(pred.box)
    objects = _objects(ra, ra.answers)
    assert any(ok for *_, ok in objects), "round 1 of the tiny run accepts an object"
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    painted = {}
    for erode in (0, 1):
        labels = np.full(pred.shape, UNKNOWN, np.uint8)
        paint_answers(labels, [ra], ring=0, erode=erode, propagate_answers=False)
        painted[erode] = labels
        for obj, _, ok in objects:
            mask = pred == obj
            if not ok:
                assert (labels[mask] == BACKGROUND).all()
                continue
            inside = binary_erosion(mask, cross, iterations=erode) if erode else mask
            assert (labels[inside] == FOREGROUND).all() and (labels[mask & ~inside] == UNKNOWN).all()
    assert (painted[1] == FOREGROUND).sum() < (painted[0] == FOREGROUND).sum()


def test_an_anchor_paints_the_previous_segmentation_where_nothing_else_is_known(run: str, tmp_path: Path) -> None:
    """``anchor``: every voxel that no annotation, answer or held-out label covers takes the previous
    model's segmentation (the one the round's queries came from) as a weighted label; the answers and
    the annotated labels are painted as without it, an accepted object's eroded edge stays unknown, and
    the fine-tuning's target weighs the anchor's voxels ``anchor``. On the run's round 1."""
    from engine.active.finetune import ANCHOR_BG, ANCHOR_FG, UNKNOWN, RoundAnswers, _objects, paint_answers
    from engine.learn.config import TrainConfig
    from engine.learn.targets import make_target
    from engine.models import read_checkpoint_config
    from engine.pipeline.stages.finetune import FinetuneSection, FinetuneStage, previous_segmentation, read_answers
    from engine.storage import open_volume

    m = Manifest(run)
    ra = RoundAnswers(m.stages["query[1]"]["outputs"]["rois"], 1, read_answers(m.stages["review[1]"]["outputs"]["answers"]))
    annotated = open_volume(m.stages["annotate"]["outputs"]["labels"])
    annotated = annotated.read(annotated.box)
    seg = previous_segmentation(ra.rois_dir, annotated.shape)
    assert seg.any() and not seg.all()
    protect = np.zeros(annotated.shape, bool)
    protect[-2:] = True  # e.g. held-out voxels (the stage leaves them unknown, as here)
    annotated[protect] = UNKNOWN
    plain, anchored = annotated.copy(), annotated.copy()
    paint_answers(plain, [ra], ring=0, erode=1, propagate_answers=False, protect=protect)
    _, counts = paint_answers(anchored, [ra], ring=0, erode=1, propagate_answers=False, protect=protect, anchor=seg)
    was_unknown = plain == UNKNOWN
    assert (anchored[~was_unknown] == plain[~was_unknown]).all(), "annotations and answers are painted as without the anchor"
    assert (anchored[protect] == UNKNOWN).all()
    filled = anchored != plain
    assert counts["voxels_anchor"] == int(filled.sum()) > 0
    assert (anchored[filled & seg] == ANCHOR_FG).all() and (anchored[filled & ~seg] == ANCHOR_BG).all()
    pred = open_volume(m.stages["label[1]"]["outputs"]["labels"])
    pred = pred.read(pred.box)
    edges = sum((pred == obj) & (plain == UNKNOWN) for obj, _, ok in _objects(ra, ra.answers) if ok)
    assert np.any(edges) and (anchored[edges.astype(bool)] == UNKNOWN).all(), "an accepted object's eroded edge is not anchored"
    _, extras = read_checkpoint_config(Path(m.stages["train"]["outputs"]["checkpoint"]))
    base = TrainConfig.model_validate(extras["train"])
    tuned = FinetuneStage._train_config(base, FinetuneSection(anchor=0.25), "l.zarr/l", tmp_path / "b.json", tmp_path / "t", 50, False)
    target, weight = make_target(anchored, np.ones(anchored.shape, bool), tuned.target, ())
    assert (target[0][anchored == ANCHOR_FG] == 1).all() and (target[0][anchored == ANCHOR_BG] == 0).all()
    assert set(np.unique(weight[0][(anchored == ANCHOR_FG) | (anchored == ANCHOR_BG)])) == {np.float32(0.25)}
    assert (weight[0][anchored == 1] == 1).all() and (weight[0][anchored == UNKNOWN] == 0).all()


def test_finetuning_keeps_the_base_trainings_positive_weight_when_asked(run: str, tmp_path: Path) -> None:
    """``pos_weight: base``: the fine-tuning's loss weighs foreground voxels as the base training did
    (computed on the base's labels); ``auto`` (the default, what the run's round 1 used) recomputes it on
    the fine-tuning labels."""
    import yaml

    from engine.learn.config import TrainConfig
    from engine.learn.sampler import CropSampler
    from engine.models import read_checkpoint_config
    from engine.pipeline.stages.finetune import FinetuneSection, FinetuneStage, base_pos_weight

    m = Manifest(run)
    _, extras = read_checkpoint_config(Path(m.stages["train"]["outputs"]["checkpoint"]))
    base = TrainConfig.model_validate(extras["train"])
    assert base.sampling.pos_weight == "auto"
    expected = CropSampler(base).pos_weight()
    assert expected is not None
    cfg = FinetuneSection(pos_weight="base")
    tuned = FinetuneStage._train_config(base, cfg, base.data.labels, tmp_path / "b.json", tmp_path / "t", 50, False, base_pos_weight(base, cfg))
    assert tuned.sampling.pos_weight == pytest.approx(expected)
    ran = TrainConfig.model_validate(yaml.safe_load((Path(run) / "round-01" / "finetune" / "train" / "train.yaml").read_text()))
    assert ran.sampling.pos_weight == "auto" and base_pos_weight(base, FinetuneSection()) is None
    numbered = base.model_copy(update={"sampling": base.sampling.model_copy(update={"pos_weight": 2.5})})
    assert base_pos_weight(numbered, cfg) == 2.5


def test_gate_scores_each_heldout_box_with_a_margin_not_their_bounding_box(tmp_path: Path) -> None:
    """Whole held-out boxes lie far apart (``annotate.heldout_boxes``): the gate predicts each box with a margin of
    raw around it, not their bounding box; every held-out voxel counts once, also where one box lies in another's
    margin; and a box scores what a prediction of the whole volume scores there (the margin gives its context)."""
    from engine.active.gate import gate_regions, heldout_counts
    from engine.geometry import Box
    from engine.learn.config import TrainConfig, ValidationConfig
    from engine.learn.validate import Validator
    from engine.models import ModelConfig, build_model, load_checkpoint, save_checkpoint
    from engine.pipeline.stages.annotate import UNKNOWN
    from engine.storage import create_volume

    rng = np.random.default_rng(0)
    shape = (24, 96, 96)
    raw = rng.integers(0, 255, shape, dtype=np.uint8)
    truth = (raw > 127).astype(np.uint8)
    raw_url, held_url = str(tmp_path / "v.zarr" / "raw"), str(tmp_path / "v.zarr" / "held")
    vol = create_volume(raw_url, shape, "uint8", (8, 48, 48))
    vol.write(vol.box, raw)
    boxes = [{"start": [2, 0, 0], "stop": [3, 32, 32]}, {"start": [3, 8, 8], "stop": [4, 40, 40]}, {"start": [20, 60, 60], "stop": [21, 96, 96]}]
    held = np.full(shape, UNKNOWN, np.uint8)
    for b in boxes:
        sl = tuple(slice(a, o) for a, o in zip(b["start"], b["stop"], strict=True))
        held[sl] = truth[sl]
    vol = create_volume(held_url, shape, "uint8", (8, 48, 48), fill_value=UNKNOWN)
    vol.write(vol.box, held)
    mcfg = ModelConfig(dims=2, context_slices=1, filters=[4, 8], input_kernel_xy=3)
    torch.manual_seed(0)
    model = build_model(mcfg)
    head = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
    with torch.no_grad():  # outputs on both sides of 0.5 that depend on the raw, so the counts say something
        head.weight.mul_(30.0)
        head.bias.zero_()
    save_checkpoint(tmp_path / "m", model, mcfg, {})
    tcfg = TrainConfig.model_validate({"data": {"raw": raw_url, "labels": held_url}, "model": mcfg.model_dump(), "crop": [3, 32, 32],
                                       "target": {"kind": "mask", "label_ids": [1], "ignore_ids": [UNKNOWN]}, "output": str(tmp_path / "t")})

    whole_box = Box((0, 0, 0), shape)
    (counts,), known, objects = heldout_counts([str(tmp_path / "m")], raw_url, held_url, boxes, tcfg)
    assert known == int((held != UNKNOWN).sum()) == 32 * 32 + 32 * 32 + 36 * 36  # the boxes' voxels, each once
    assert len(counts[0]) == 3  # the bootstrap's tiles start at each box's corner: one tile per box here, not cut by the margin
    import cc3d  # the held-out objects: each box's 26-connected foreground components, the margin's not counted

    per_box = [cc3d.connected_components(truth[tuple(slice(a, o) for a, o in zip(b["start"], b["stop"], strict=True))], connectivity=26, return_N=True)[1]
               for b in boxes]
    assert objects == sum(per_box) and min(per_box) > 1, per_box
    # the same counts from one prediction of the whole volume, read at the held-out voxels
    whole = Validator(ValidationConfig.model_validate({"raw": raw_url, "labels": held_url, "every": 1}), tcfg)
    pred, gt, ok = whole.masks(load_checkpoint(str(tmp_path / "m"))[0])
    inter, union = int((pred & gt & ok).sum()), int(((pred | gt) & ok).sum())
    assert 0 < inter < union and (int(counts[0].sum()), int(counts[1].sum())) == (inter, union)
    # what the gate reads: the boxes and their margins, a fifth of their bounding box (the whole volume here)
    read = sum(int(np.prod(r.shape)) for _, r in gate_regions(boxes, whole_box, 3))
    assert read == 3 * 64 * 64 + 3 * 72 * 72 + 3 * 68 * 68 and read < 0.2 * np.prod(shape), read


def test_annotate_holds_out_whole_boxes_spread_over_the_picks(tmp_path: Path) -> None:
    """``annotate.heldout_boxes``: whole picks, spread over the pick order, are labelled into the held-out volume and
    left unknown in the training labels; the share is cut from the other boxes; holding out every box is one clear error."""
    from engine.errors import ConfigError
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.annotate import UNKNOWN, AnnotateSection, AnnotateStage, split_box
    from engine.storage import create_volume, open_volume

    truth = np.zeros((8, 64, 64), np.uint8)
    truth[:, 10:50, 10:50] = 1
    url = str(tmp_path / "t.zarr" / "truth")
    vol = create_volume(url, truth.shape, "uint8", (8, 64, 64))
    vol.write(vol.box, truth)
    picks = [{"start": [z, 0, 0], "stop": [z + 1, 32, 32]} for z in (0, 2, 4, 6)]
    (tmp_path / "sel.json").write_text(json.dumps({"boxes": picks}))
    ctx = StageContext(run_dir=tmp_path / "run", stage="annotate", runtime=RuntimeSection())
    out = AnnotateStage().run(ctx, AnnotateSection(boxes=str(tmp_path / "sel.json"), truth=url, heldout=0.25, heldout_boxes=2))
    listed = json.loads(Path(out["boxes"]).read_text())
    # picks 1 and 3 (the centres of two runs of two) held out whole; picks 0 and 2 split as before
    assert listed["heldout"][:2] == [picks[1], picks[3]]
    assert listed["boxes"] == [split_box(picks[0], 0.25)[0], split_box(picks[2], 0.25)[0]]
    assert listed["heldout"][2:] == [split_box(picks[0], 0.25)[1], split_box(picks[2], 0.25)[1]]
    lab, held = open_volume(out["labels"]).read(open_volume(out["labels"]).box), open_volume(out["heldout"]).read(open_volume(out["heldout"]).box)
    for z in (2, 6):
        assert np.all(lab[z] == UNKNOWN) and np.array_equal(held[z, :32, :32], truth[z, :32, :32])
    assert not np.any((lab != UNKNOWN) & (held != UNKNOWN))  # never both trained on and held out
    with pytest.raises(ConfigError, match="heldout_boxes is 4, but there are only 4 boxes"):
        AnnotateStage().run(ctx, AnnotateSection(boxes=str(tmp_path / "sel.json"), truth=url, heldout_boxes=4))


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def test_a_box_round_asks_where_the_model_is_least_sure_and_trains_on_the_painted_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``rounds.query.boxes``: the round asks for dense boxes where its prediction is least sure (checked against
    the entropy of every window computed here, window by window), never on an annotated or held-out box nor in
    the test region; the oracle paints them from the ground truth; the fine-tuning copies them into its labels,
    draws ``box_share`` of its crops there and counts them as labelled voxels. A person paints the exported crops:
    the round waits until every crop has labels, then trains on exactly what was painted."""
    from engine.geometry import Box
    from engine.pipeline.stages.annotate import interior, read_foreground
    from engine.pipeline.stages.review import ReviewPending
    from engine.storage import create_volume, open_volume

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    cfg = apply_tiny(demo_config("run", shape=(16, 64, 96), chunks=(8, 64, 64), seed=3, rounds=1))
    del cfg["metrics"], cfg["report"]
    cfg["test_from_z"] = 12
    sets = ["rounds.query.boxes=2", "rounds.query.box=[1,32,32]", "rounds.query.box_stride=16", "rounds.finetune.box_share=0.4"]
    run_pipeline(pipeline_config(cfg, sets))
    m = Manifest("run")
    qdir = Path(m.stages["query[1]"]["outputs"]["rois"])
    asked = json.loads((qdir / "boxes.json").read_text())["boxes"]
    assert len(asked) == 2 and json.loads((qdir / "summary.json").read_text())["boxes"] == 2
    annotated = json.loads(Path(m.stages["annotate"]["outputs"]["boxes"]).read_text())
    taken = annotated["boxes"] + annotated["heldout"]

    def clash(z: int, y: int, x: int, others: list[dict[str, list[int]]]) -> bool:  # within 2 sections of a box's sections, overlapping in-plane
        return any(b["start"][0] - 2 <= z < b["stop"][0] + 2 and y < b["stop"][1] and b["start"][1] < y + 32 and x < b["stop"][2] and b["start"][2] < x + 32
                   for b in others)

    prob = open_volume(m.stages["predict[1]"]["outputs"]["probability"])
    p = np.asarray(prob.read(prob.box)).reshape(-1, 16, 64, 96)[0]
    h = _entropy(p / 255.0 if p.dtype == np.uint8 else p.astype(np.float64))
    picked: list[dict[str, list[int]]] = []
    for _ in range(2):  # the greedy picks, window by window
        best = max((float(h[z, y:y + 32, x:x + 32].mean()), -z, -y, -x) for z in range(12) for y in range(0, 33, 16) for x in range(0, 65, 16)
                    if not clash(z, y, x, taken + picked))
        z, y, x = -best[1], -best[2], -best[3]
        picked.append({"start": [z, y, x], "stop": [z + 1, y + 32, x + 32]})
    assert asked == picked
    assert all(b["stop"][0] <= 12 for b in asked)  # the test region (sections 12-15) is never asked

    # the oracle painted them (the neurons' interiors, as annotate does); the fine-tuning trains on them
    answers = json.loads(Path(m.stages["review[1]"]["outputs"]["answers"]).read_text())
    painted = open_volume(answers["boxes"]["labels"])
    truth = open_volume(m.stages["synth"]["outputs"]["neurons"])
    ft = open_volume(str(Path("run") / "round-01" / "finetune" / "labels.zarr" / "labels"))
    for b in asked:
        box = Box(tuple(b["start"]), tuple(b["stop"]))
        want = read_foreground(truth, box, "interior", 2).astype(np.uint8)
        assert np.array_equal(painted.read(box), want) and np.array_equal(ft.read(box), want)
    crops = json.loads((Path("run") / "round-01" / "finetune" / "boxes.json").read_text())["boxes"]
    dense = [c for c in crops if {"start": c["start"], "stop": c["stop"]} in asked]
    assert len(dense) == 2 and sum(c["weight"] for c in dense) == pytest.approx(0.4)
    counts = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())["labels"]
    assert counts["boxes"] == 2 and counts["voxels_boxes"] == 2 * 32 * 32

    # the viewer shows them beside the selected sub-volumes
    from engine.view import discover_run

    shown = [b for b in discover_run("run").boxes if b["label"].startswith("round 1: box")]
    assert [{"start": b["start"], "stop": b["stop"]} for b in shown] == asked

    # box_heldout: the last of every 2 boxes is held out of training and judges the round with the annotated held-out voxels
    run_pipeline(pipeline_config(cfg, [*sets, "rounds.finetune.box_heldout=2"]))
    m = Manifest("run")
    d = json.loads(Path(m.stages["finetune[1]"]["outputs"]["decision"]).read_text())
    ft = open_volume(str(Path("run") / "round-01" / "finetune" / "labels.zarr" / "labels"))
    held_box = Box(tuple(asked[1]["start"]), tuple(asked[1]["stop"]))
    assert np.all(ft.read(held_box) == 255) and np.array_equal(ft.read(Box(tuple(asked[0]["start"]), tuple(asked[0]["stop"]))),
                                                               painted.read(Box(tuple(asked[0]["start"]), tuple(asked[0]["stop"]))))
    annotated_held = json.loads((Path(m.stages["annotate"]["outputs"]["boxes"]).parent / "annotate.json").read_text())["heldout_voxels"]
    assert d["heldout_voxels"] == annotated_held + 32 * 32 and d["labels"]["boxes_heldout"] == 1 and d["labels"]["voxels_boxes"] == 2 * 32 * 32
    crops = json.loads((Path("run") / "round-01" / "finetune" / "boxes.json").read_text())["boxes"]
    assert [c for c in crops if {"start": c["start"], "stop": c["stop"]} in asked] == [{**asked[0], "weight": pytest.approx(0.4)}]

    # a person paints the boxes: they wait as exported crops until every one is painted (the objects' answers are
    # the oracle's, kept in the round's store)
    person = [*sets, "rounds.review.source=person"]
    crops_dir = Path("run") / "round-01" / "review" / "crops"
    with pytest.raises(ReviewPending, match="wait to be painted"):
        run_pipeline(pipeline_config(cfg, person))
    manifest = json.loads((crops_dir / "manifest.json").read_text())
    assert [c["box"] for c in manifest["crops"]] == asked
    drawn = []
    for k, c in enumerate(manifest["crops"]):
        lab = np.zeros(c["shape"], np.uint32)
        lab[:, 4 + k:20, 8:24] = 7  # what the person painted: one object per crop
        vol = create_volume(str(crops_dir / c["labels_zarr"]), tuple(c["shape"]), "uint32", tuple(c["shape"]))
        vol.write(vol.box, lab)
        drawn.append(interior(lab, 2).astype(np.uint8))  # the annotate stage's target: the objects' interiors
        if k == 0:
            with pytest.raises(ReviewPending, match="crop_001"):  # one crop still unpainted
                run_pipeline(pipeline_config(cfg, person))
    run_pipeline(pipeline_config(cfg, person))
    m = Manifest("run")
    assert m.stages["finetune[1]"]["status"] == "done"
    ft = open_volume(str(Path("run") / "round-01" / "finetune" / "labels.zarr" / "labels"))
    for b, want in zip(asked, drawn, strict=True):
        assert np.array_equal(ft.read(Box(tuple(b["start"]), tuple(b["stop"]))), want)

    # one more round with `connectile round`: the objects wait for the review page, then the boxes for their painter;
    # round 2 never asks again for a box of round 1
    from engine.active.answers import AnswerStore, answers_path
    from engine.active.query import read_queries

    assert main(["round", "run", "--no-progress"]) == 0
    q2 = Path(Manifest("run").stages["query[2]"]["outputs"]["rois"])
    queries = q2 / "rounds" / "round-02" / "queries.parquet"
    if queries.exists():  # objects to review (every object of this tiny volume may have been answered in round 1)
        assert "crops" not in json.loads((Path("run") / "round-02" / "round.json").read_text())
        with AnswerStore(answers_path(queries.parent)) as store:
            for roi in read_queries(queries)["roi_id"].tolist():
                store.set(int(roi), True, source="person")
            store.finish()
        assert main(["round", "run", "--no-progress"]) == 0
    state = json.loads((Path("run") / "round-02" / "round.json").read_text())
    assert state["status"] == "waiting" and state["crops"] == str(Path("run") / "round-02" / "review" / "crops")
    assert "the boxes to label wait to be painted" in capsys.readouterr().out
    again = json.loads((q2 / "boxes.json").read_text())["boxes"]
    assert len(again) == 2 and not any(clash(b["start"][0], b["start"][1], b["start"][2], asked) for b in again)

    # the query of round 1 asks again, for other boxes: the painted crops are set aside (never deleted), the new boxes exported
    from engine.active.answers import round_finished

    one = [*person, "rounds.query.boxes=1"]
    with pytest.raises(ReviewPending):
        run_pipeline(pipeline_config(cfg, one))
    queries1 = qdir / "rounds" / "round-01" / "queries.parquet"
    if queries1.exists() and not round_finished(queries1.parent):  # the objects are asked again first
        with AnswerStore(answers_path(queries1.parent)) as store:
            for roi in read_queries(queries1)["roi_id"].tolist():
                store.set(int(roi), True, source="person")
            store.finish()
        with pytest.raises(ReviewPending, match="wait to be painted"):
            run_pipeline(pipeline_config(cfg, one))
    (aside,) = crops_dir.parent.glob("crops.aside-*")
    assert [c["box"] for c in json.loads((aside / "manifest.json").read_text())["crops"]] == asked
    assert (aside / "crop_001.zarr" / "labels").exists()  # what the person painted is kept
    assert len(json.loads((crops_dir / "manifest.json").read_text())["crops"]) == 1
