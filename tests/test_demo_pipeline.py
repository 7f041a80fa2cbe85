"""The whole pipeline (``connectile demo``'s config) on a tiny synthetic volume: every stage runs and
is recorded, a second run skips everything, a changed section reruns only its stage and what depends
on it, and a person's review makes the round wait until it is finished; the report's contents; the
``--real lucchi`` config on a real crop of Lucchi++."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.pipeline.demo import apply_tiny, demo_config
from engine.pipeline.manifest import Manifest
from engine.pipeline.run import pipeline_config, plan, run_pipeline

REPO = Path(__file__).resolve().parents[1]

STAGES = [
    "synth", "embed", "selection", "annotate", "train", "ceiling",
    "predict[1]", "label[1]", "score[1]", "query[1]", "review[1]", "finetune[1]",
    "predict[2]", "label[2]", "score[2]", "query[2]", "review[2]", "finetune[2]",
    "predict[3]", "label[3]", "score[3]", "metrics", "report",
]


def tiny(run_dir: Path) -> dict[str, Any]:
    return {**apply_tiny(demo_config(str(run_dir), shape=(16, 64, 96), chunks=(8, 64, 64), seed=3)), "test_from_z": 12}


def test_shipped_configs_are_the_demo_config() -> None:
    """jobs/configs/demo*.yaml are what engine.pipeline.demo builds (one source of truth), and valid."""
    assert yaml.safe_load((REPO / "jobs/configs/demo.yaml").read_text()) == json.loads(json.dumps(demo_config("runs/demo")))
    lucchi = yaml.safe_load((REPO / "jobs/configs/demo_lucchi.yaml").read_text())
    assert lucchi == json.loads(json.dumps(demo_config("runs/demo_lucchi", lucchi="../shared/data/lucchi_pp")))
    p = plan(pipeline_config(yaml.safe_load((REPO / "jobs/configs/demo.yaml").read_text())))
    assert p.order == STAGES
    assert p.depends["predict[2]"] == ["finetune[1]", "synth"]
    # every answer so far: the rounds' queries and reviews, not only the latest
    assert p.depends["finetune[2]"] == ["annotate", "finetune[1]", "query[1]", "query[2]", "review[1]", "review[2]"]


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
    split = json.loads((run_dir / "annotate" / "boxes.json").read_text())
    from engine.pipeline.stages.annotate import split_box

    assert [split_box(b, 0.25) for b in sel["boxes"]] == list(zip(split["boxes"], split["heldout"], strict=True)) and len(split["boxes"]) == 2
    steps = cfg["train"]["steps"]
    assert manifest.stages["train"]["outputs"]["checkpoint"].endswith(f"step-{steps:06d}")
    # each round's model is the fine-tuned one when it scores at least as well on the held-out voxels, else the one before
    prev = manifest.stages["train"]["outputs"]["checkpoint"]
    for r in (1, 2):
        d = json.loads(Path(manifest.stages[f"finetune[{r}]"]["outputs"]["decision"]).read_text())
        # the candidate continues the round's model for the round's 4 steps
        assert d["previous"] == prev and d["candidate"].endswith(f"step-{int(prev[-6:]) + 4:06d}") and d["heldout_voxels"] > 0
        assert d["kept"] == ("previous" if d["candidate_score"] < d["previous_score"] else "candidate")
        prev = manifest.stages[f"finetune[{r}]"]["outputs"]["checkpoint"]
        assert prev == (d["previous"] if d["kept"] == "previous" else d["candidate"])
    # the test region (z >= test_from_z) is never selected, annotated, queried or trained on, and the scores are of it only
    zt = cfg["test_from_z"]
    assert all(b["stop"][0] <= zt for b in sel["boxes"])
    from engine.storage import open_volume

    for r in (1, 2):
        lab = open_volume(str(run_dir / f"round-{r:02d}" / "finetune" / "labels.zarr" / "labels"))
        assert np.all(lab.read(lab.box)[zt:] == 255)
        qdir = run_dir / f"round-{r:02d}" / "query"
        with np.load(qdir / "rois" / "objects.npz") as z:
            z1 = {int(i): int(b[3]) for i, b in zip(z["id"].tolist(), z["bbox"], strict=True)}
        from engine.active.query import read_queries
        from engine.active.rois import read_index

        index = read_index(qdir)
        obj = dict(zip(index["roi_id"].tolist(), index["object_id"].tolist(), strict=True))
        qpath = qdir / "rounds" / f"round-{r:02d}" / "queries.parquet"
        asked = read_queries(qpath)["roi_id"].tolist() if qpath.exists() else []
        assert all(z1[int(obj[int(q)])] <= zt for q in asked)
    for m in json.loads((run_dir / "metrics" / "metrics.json").read_text())["rounds"]:
        assert m["scored_from_z"] == zt and m["voi_box"]["start"][0] >= zt
    # the ceiling: trained on every voxel below the test region, none in it; its IoU over the test region, computed again here
    ceiling = json.loads((run_dir / "ceiling" / "metrics.json").read_text())
    lab = open_volume(str(run_dir / "ceiling" / "labels.zarr" / "labels")).read(open_volume(str(run_dir / "ceiling" / "labels.zarr" / "labels")).box)
    assert np.all(lab[:zt] != 255) and np.all(lab[zt:] == 255) and ceiling["labelled_voxels"] == lab[:zt].size
    prob = open_volume(str(run_dir / "ceiling" / "prob.zarr" / "probability"))
    p = prob.read(prob.box)[..., zt:, :, :].reshape(-1, *lab[zt:].shape) > 127
    from engine.pipeline.stages.annotate import read_foreground

    truth = open_volume(str(run_dir / "synth" / "synth.zarr" / cfg["ceiling"]["truth"].split(".")[1]))
    t = read_foreground(truth, truth.box, cfg["ceiling"]["target"], cfg["ceiling"]["boundary"])[zt:]
    union = int((p[0] | t).sum())
    assert ceiling["scored_from_z"] == zt and ceiling["iou"] == pytest.approx(int((p[0] & t).sum()) / union if union else 1.0)
    assert json.loads((run_dir / "metrics" / "metrics.json").read_text())["ceiling"] == ceiling
    # validation never drops across rounds: the held-out score of each round's model, computed again here
    from engine.active.gate import heldout_score
    from engine.learn.config import TrainConfig
    from engine.models import read_checkpoint_config

    models = [manifest.stages[s]["outputs"]["checkpoint"] for s in ("train", "finetune[1]", "finetune[2]")]
    tcfg = TrainConfig.model_validate(read_checkpoint_config(models[0])[1]["train"])
    held = manifest.stages["annotate"]["outputs"]["heldout"]
    scores = [heldout_score(m, tcfg.data.raw, held, split["heldout"], tcfg)[0] for m in models]
    assert all(s is not None for s in scores) and scores == sorted(scores), scores
    metrics = json.loads((run_dir / "metrics" / "metrics.json").read_text())["rounds"]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0.0 <= m["iou"] <= 1.0 and m["voi_split"] >= 0.0 and m["objects"] >= 0
    # the adapted Rand error equals scikit-image's, over the voxels the round's objects label (as the VOI)
    from skimage.metrics import adapted_rand_error

    from engine.geometry import Box

    s1 = json.loads(Path(manifest.stages["score[1]"]["outputs"]["metrics"]).read_text())
    vbox = Box(tuple(s1["voi_box"]["start"]), tuple(s1["voi_box"]["stop"]))
    seg = open_volume(manifest.stages["label[1]"]["outputs"]["labels"]).read(vbox)
    gt = open_volume(manifest.stages["synth"]["outputs"][cfg["rounds"]["score"]["truth"].split(".")[1]]).read(vbox)
    assert not cfg["rounds"]["score"].get("truth_binary") and (seg != 0).any() and (gt[seg != 0] != 0).any()
    g, sg = gt[seg != 0], seg[seg != 0]
    g_small = np.where(g == 0, 0, np.unique(g, return_inverse=True)[1] + 1)  # small ids for scikit-image; gt 0 stays unlabelled
    s_small = np.unique(sg, return_inverse=True)[1] + 1
    assert s1["arand"] == pytest.approx(adapted_rand_error(g_small, s_small)[0], abs=1e-9) and 0.0 < s1["arand"] < 1.0, s1["arand"]
    _check_report(run_dir, metrics, sel["boxes"])

    # a second run: everything done already
    again = run_pipeline(pipeline_config(cfg))
    assert all(r.action == "skipped" for r in again)

    # a changed section reruns that stage and everything downstream of it, nothing else
    changed = run_pipeline(pipeline_config(cfg, ["rounds.overrides.2.review.threshold=0.6"]))
    ran = {r.stage for r in changed if r.action == "ran"}
    assert ran == {"review[2]", "finetune[2]", "predict[3]", "label[3]", "score[3]", "metrics", "report"}

    # a person's review: the round waits (one clear error) until its answers are finished
    from engine.active.answers import AnswerStore, answers_path
    from engine.active.query import read_queries
    from engine.pipeline.stages.review import ReviewPending

    person = ["rounds.overrides.1.review.source=person", "rounds.overrides.1.query.query.seed=1"]
    with pytest.raises(ReviewPending, match=r"connectile review .*round-01/query"):
        run_pipeline(pipeline_config(cfg, person))
    assert Manifest(run_dir).stages["review[1]"]["status"] == "failed"
    rdir = run_dir / "round-01" / "query" / "rounds" / "round-01"
    ids = read_queries(rdir / "queries.parquet")["roi_id"].tolist()
    with AnswerStore(answers_path(rdir)) as store:
        for i in ids:
            store.set(int(i), True, source="person")
        store.finish()
    done = run_pipeline(pipeline_config(cfg, person), only=["review[1]"])
    assert [r.action for r in done] == ["ran"]
    answers = json.loads((run_dir / "round-01" / "review" / "answers.json").read_text())
    assert answers["source"] == "person" and answers["reviewed"] == len(ids) and answers["accepted"] == len(ids)


def _check_report(run_dir: Path, metrics: list[dict[str, Any]], boxes: list[dict[str, Any]]) -> None:
    """The report: the metrics table per round (the metrics stage's numbers), the selection, learning
    curves and metrics-per-round plots (real PNG files, embedded in their sections), and at the end a
    neuroglancer link whose state shows the raw volume, the last prediction and objects, the selected
    boxes and the last round's queried ROIs."""
    import re
    import urllib.parse

    from PIL import Image

    report = (run_dir / "report.md").read_text()
    sections = {m.group(1): m.start() for m in re.finditer(r"^## (.+)$", report, re.M)}
    assert list(sections)[:3] == ["Metrics per round", "The selection", "Learning curves"] and list(sections)[-1] == "Neuroglancer"
    metrics_md = report[sections["Metrics per round"]:sections["The selection"]]
    ceiling = json.loads((run_dir / "ceiling" / "metrics.json").read_text())
    assert f"IoU {ceiling['iou']:.3f}, Dice {ceiling['dice']:.3f}." in metrics_md
    for m in metrics:
        model = "base (train)" if m["round"] == 1 else f"after {m['round'] - 1} round(s)"
        if m.get("kept") == "previous":
            model += ": new model worse on held-out, previous kept"
        elif m.get("too_close"):
            model += ": lower on held-out but too close to tell apart, new model used"
        assert f"| {m['round']} | {model} | {m['iou']:.3f} | {m['dice']:.3f} |" in metrics_md
    embedded = {"Metrics per round": "metrics/metrics_per_round.png", "The selection": "selection/picks.png", "Learning curves": "metrics/learning_curves.png"}
    order = list(sections)
    for title, png in embedded.items():
        nxt = order[order.index(title) + 1]
        assert f"]({png})" in report[sections[title]:sections[nxt]], title
        with Image.open(run_dir / png) as im:
            assert im.format == "PNG" and im.size[0] >= 200 and im.size[1] >= 150, (png, im.size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 10, png  # a drawn plot, not a blank canvas
    for png in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    found = re.search(r"\]\((https://neuroglancer-demo\.appspot\.com/#!([^)]*))\)", report[sections["Neuroglancer"]:])
    assert found is not None
    state = json.loads(urllib.parse.unquote(found.group(2)))
    shown = [la["name"] for la in state["layers"] if la.get("visible", True)]
    assert shown == ["synth.raw", "predict[3].probability", "label[3].labels", "selected sub-volumes", "queried ROIs"]
    layers = {la["name"]: la for la in state["layers"]}
    assert layers["label[3].labels"]["type"] == "segmentation" and layers["predict[1].probability"]["visible"] is False
    # read from the token-protected file server of engine.view (the token is a path segment), relative to the run folder
    assert re.fullmatch(r"zarr2://http://127\.0\.0\.1:9000/[^/]+/(run/)?synth/synth\.zarr/raw", layers["synth.raw"]["source"]["url"])
    assert "embed.embeddings" not in layers  # a patch grid, not on the raw grid
    got = [(a["pointA"], a["pointB"]) for a in layers["selected sub-volumes"]["annotations"]]
    assert got == [([float(v) for v in b["start"]], [float(v) for v in b["stop"]]) for b in boxes]
    from engine.active.query import read_queries

    # pipeline round r's queries are stored as round r of its active-learning folder; the view shows the last round that asked something
    last = max(r for r in (1, 2) if (run_dir / f"round-{r:02d}" / "query" / "rounds" / f"round-{r:02d}" / "queries.parquet").exists())
    queried = read_queries(run_dir / f"round-{last:02d}" / "query" / "rounds" / f"round-{last:02d}" / "queries.parquet")["roi_id"].tolist()
    assert sorted(a["props"][0] for a in layers["queried ROIs"]["annotations"]) == sorted(int(i) for i in queried)
    assert all(a["props"][2] in (0, 1) for a in layers["queried ROIs"]["annotations"])  # the oracle answered every one


def test_real_data_missing_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.errors import StorageError
    from engine.pipeline.demo import find_shared_data

    monkeypatch.setenv("CONNECTILE_DATA", "/nonexistent/data")
    with pytest.raises(StorageError, match="CONNECTILE_DATA") as err:
        find_shared_data("no_such_set")
    assert "no_such_set" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.realdata
def test_real_data_demo_on_a_lucchi_crop(shared_data: Path, tmp_path: Path) -> None:
    """The ``--real lucchi`` config, shrunk to a test (:func:`apply_tiny`, one round) on a real crop of
    Lucchi++ (16 x 256 x 384 voxels of the PNG slices, the labels' numeric file order as the data set
    needs): every stage runs, the ingested volumes are the slices in order, the selection picks whole
    sections below the test region (as the real config does: one-section patches, a window of the whole
    patch plane), the metrics are scored against real mitochondria in the test region only and the
    report ends with the neuroglancer link (about 20 s)."""
    import re
    import urllib.parse

    from PIL import Image

    from engine.pipeline.demo import run_demo
    from engine.storage import open_volume

    src = shared_data / "lucchi_pp"

    def number(p: Path) -> int:
        return int(re.findall(r"\d+", p.name)[-1])

    crops: dict[str, np.ndarray] = {}
    for sub in ("Train_In", "Train_Out"):
        (tmp_path / "lucchi" / sub).mkdir(parents=True)
        planes = []
        for f in sorted((src / sub).iterdir(), key=number)[60:76]:
            with Image.open(f) as im:
                plane = np.asarray(im)[256:512, 384:768]
            Image.fromarray(plane).save(tmp_path / "lucchi" / sub / f.name)
            planes.append(plane)
        crops[sub] = np.stack(planes)
    cfg = apply_tiny(demo_config(str(tmp_path / "run"), lucchi=str(tmp_path / "lucchi"), rounds=1))
    cfg["ingest"]["chunks"] = [16, 128, 128]
    cfg["train"]["validation_roi"] = None  # the demo's ROI is of the whole volume
    real = demo_config(lucchi=str(tmp_path / "lucchi"))
    assert real["selection"]["params"]["window"] == [1, 768 // 128, 1024 // 128] and real["embed"]["patch"][0] == 1  # whole sections
    cfg["test_from_z"] = 12  # the demo's 125 is beyond the crop
    cfg["embed"] |= {"patch": [1, 64, 64], "stride": [2, 64, 64]}
    cfg["selection"]["params"]["window"] = [1, 256 // 64, 384 // 64]
    summary = run_demo(cfg)
    assert all(r.action == "ran" for r in summary["results"]) and len(summary["results"]) == 16

    outs = Manifest(tmp_path / "run").stages["ingest"]["outputs"]
    raw, labels = open_volume(outs["raw"]), open_volume(outs["labels"])
    np.testing.assert_array_equal(raw.read(raw.box), crops["Train_In"])
    truth = labels.read(labels.box)
    assert set(np.unique(truth)) <= {0, 1} and raw.voxel_size == (5.0, 5.0, 5.0)
    np.testing.assert_array_equal(truth, (crops["Train_Out"] > 0).astype(truth.dtype))  # slice i of the labels is 'i.png'
    boxes = json.loads((tmp_path / "run" / "selection" / "selection.json").read_text())["boxes"]
    assert len(boxes) == 2 and all(b["start"][1:] == [0, 0] and b["stop"][1:] == [256, 384] and b["stop"][0] - b["start"][0] == 1 for b in boxes)
    assert all(b["stop"][0] <= 12 for b in boxes)
    assert [m["round"] for m in summary["metrics"]] == [1, 2]
    for m in summary["metrics"]:
        assert m["truth_voxels"] == int(truth[12:].sum()) > 0 and 0.0 <= m["iou"] <= 1.0

    report = Path(summary["report"]).read_text()
    assert report.startswith("# Connectile demo (Lucchi++)") and "## Metrics per round" in report and "## The selection" in report
    assert report.rstrip().splitlines()[-1].count("neuroglancer-demo.appspot.com/#!") == 1
    assert summary["link"] is not None and '"name":"ingest.raw"' in urllib.parse.unquote(summary["link"])
