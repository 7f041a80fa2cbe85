"""The pipeline driver: stages in a run folder, the manifest, skipping, invalidation, resume.

Tiny volumes, serial backend (the stages call the same blockwise functions as on Ray; the Ray path is
covered by tests/test_multinode.py). The crash test SIGKILLs a real subprocess in the middle of a stage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from pydantic import Field, PrivateAttr

from engine.config import Config
from engine.errors import ConfigError, StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.pipeline.manifest import Manifest
from engine.pipeline.run import pipeline_config, plan, run_pipeline
from engine.pipeline.stage import Stage, StageContext
from engine.runtime import run_blockwise
from engine.runtime.op import BlockOp
from engine.storage import Volume, create_volume, open_volume

REPO = Path(__file__).resolve().parents[1]


# -- a slow copy stage, for killing a run in the middle of a stage --------------------------------
class SlowCopyOp(BlockOp):
    """Copies ``input`` to ``output`` block by block, sleeping ``delay`` seconds per block."""

    kind: ClassVar[str] = "test-slow-copy"
    input: str
    output: str
    delay: float = 0.1
    overwrite: bool = Field(default=False, exclude=True)
    _in: Volume | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.input)
        create_volume(self.output, src.spatial_shape, src.dtype, src.chunk_shape, overwrite=self.overwrite)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._in, self._out = open_volume(self.input), open_volume(self.output, mode="r+")

    def process(self, block: Block) -> dict[str, float]:
        assert self._in is not None and self._out is not None
        time.sleep(self.delay)
        self._out.write(block.write, self._in.read(block.write))
        return {"voxels": float(block.write.size)}


class SlowCopySection(Config):
    input: str
    delay: float = 0.1


class SlowCopyStage(Stage):
    name = "test_slowcopy"
    config = SlowCopySection
    inputs = ("input",)
    outputs = ("copy",)
    order = 900

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        src = open_volume(ctx.input(cfg.input))
        op = SlowCopyOp(input=src.url, output=str(ctx.dir / "copy.zarr" / "copy"), delay=cfg.delay, overwrite=ctx.overwrite)
        grid = BlockGrid(Box.from_shape(src.spatial_shape), write_shape=src.chunk_shape)
        run_blockwise(op, grid, state_dir=ctx.state_dir(), backend="serial", overwrite=ctx.overwrite, progress=False)
        return {"copy": op.output}


# -- helpers -------------------------------------------------------------------------------------
def tiny(run_dir: Path, **sections: Any) -> dict[str, Any]:
    """A config of synth (8, 64, 64) + label of its neurons, with ``sections`` merged in."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "runtime": {"backend": "serial", "progress": False},
        "synth": {"shape": [8, 64, 64], "chunks": [8, 32, 32], "params": {"seed": 3, "mito_probability": 0.9}},
        "label": {"input": "synth.neurons", "block": [8, 32, 32], "chunks": [8, 32, 32]},
    }
    for k, v in sections.items():
        if v is None:
            cfg.pop(k, None)
        elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def actions(results: list[Any]) -> dict[str, str]:
    return {r.stage: r.action for r in results}


def read(url: str) -> np.ndarray:
    v = open_volume(url)
    return v.read(v.box)


# -- tests ---------------------------------------------------------------------------------------
def test_skip_then_rerun_only_what_a_change_reaches(tmp_path: Path) -> None:
    from engine.ops.label import label_volume

    run = tmp_path / "run"
    first = run_pipeline(pipeline_config(tiny(run)))
    assert actions(first) == {"synth": "ran", "label": "ran"}
    m1 = json.loads((run / "manifest.json").read_text())
    assert {n: e["status"] for n, e in m1["stages"].items()} == {"synth": "done", "label": "done"}
    assert m1["stages"]["label"]["depends"] == ["synth"]

    # the same config again: nothing runs
    assert actions(run_pipeline(pipeline_config(tiny(run)))) == {"synth": "skipped", "label": "skipped"}
    # only the runtime changes: still nothing (not part of any hash)
    assert actions(run_pipeline(pipeline_config(tiny(run, runtime={"backend": "serial", "workers": 3, "progress": False})))) == {"synth": "skipped", "label": "skipped"}

    # a change in label's section reruns label only
    r = run_pipeline(pipeline_config(tiny(run, label={"min_size": 10})))
    assert actions(r) == {"synth": "skipped", "label": "ran"}

    # a change upstream reruns synth and everything downstream; the label output follows the new input
    cfg = pipeline_config(tiny(run, label={"min_size": 10}, synth={"params": {"seed": 4, "mito_probability": 0.9}}))
    r = run_pipeline(cfg)
    assert actions(r) == {"synth": "ran", "label": "ran"}
    m2 = json.loads((run / "manifest.json").read_text())
    assert m2["stages"]["synth"]["hash"] != m1["stages"]["synth"]["hash"]
    assert m2["stages"]["label"]["hash"] != m1["stages"]["label"]["hash"]
    ref = label_volume(r[0].outputs["neurons"], tmp_path / "ref.zarr" / "l", min_size=10, block=(8, 32, 32), chunks=(8, 32, 32), progress=False)
    assert ref.objects > 0
    np.testing.assert_array_equal(read(r[1].outputs["labels"]), read(ref.output))


def _as_written_before(run: Path, removed: dict[str, list[str]]) -> None:
    """Rewrite a run's manifest as a Connectile without the settings ``removed`` (stage -> keys of its section)
    would have written it: those keys absent from the recorded configs, and every hash computed from those."""
    from engine.pipeline.run import stage_hash

    m = json.loads((run / "manifest.json").read_text())
    hashes: dict[str, str] = {}
    for name, e in m["stages"].items():  # in the order they ran: dependencies first
        for key in removed.get(name, []):
            del e["config"][key]
        e["hash"] = hashes[name] = stage_hash(name, e["config"], {d: hashes[d] for d in e["depends"]}, None)
    (run / "manifest.json").write_text(json.dumps(m))


def test_settings_added_since_a_run_keep_its_finished_stages(tmp_path: Path) -> None:
    """A stage finished by an earlier version, whose section has since gained settings, is not started over when
    the new settings are at their defaults (an upgrade must not recompute finished work, nor ask a person's
    rounds again); a new setting given another value, or any other change, still reruns what it reaches."""
    run = tmp_path / "run"
    run_pipeline(pipeline_config(tiny(run)))
    _as_written_before(run, {"synth": ["block"], "label": ["table", "device"]})
    before = json.loads((run / "manifest.json").read_text())["stages"]
    assert before["label"]["hash"] != plan(pipeline_config(tiny(run))).hashes["label"]  # as an upgrade finds it
    assert actions(run_pipeline(pipeline_config(tiny(run)))) == {"synth": "skipped", "label": "skipped"}
    after = json.loads((run / "manifest.json").read_text())["stages"]
    assert {n: after[n]["hash"] for n in after} == plan(pipeline_config(tiny(run))).hashes and "table" in after["label"]["config"]

    _as_written_before(run, {"label": ["table"]})
    assert actions(run_pipeline(pipeline_config(tiny(run, label={"table": False})))) == {"synth": "skipped", "label": "ran"}
    _as_written_before(run, {"label": ["device"]})
    m = json.loads((run / "manifest.json").read_text())
    m["stages"]["label"]["config"]["min_size"] = 10  # the recorded config no longer reproduces the recorded hash
    (run / "manifest.json").write_text(json.dumps(m))
    assert actions(run_pipeline(pipeline_config(tiny(run, label={"table": False})))) == {"synth": "skipped", "label": "ran"}
    _as_written_before(run, {"synth": ["block"]})  # adopted upstream, but a setting changed downstream: that stage reruns
    assert actions(run_pipeline(pipeline_config(tiny(run)))) == {"synth": "skipped", "label": "ran"}


def test_a_deleted_output_is_made_again(tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    r = run_pipeline(pipeline_config(tiny(run, label=None)))
    shutil.rmtree(run / "synth" / "synth.zarr")
    assert actions(run_pipeline(pipeline_config(tiny(run, label=None), ["synth.params.seed=3"]))) == {"synth": "ran"}
    assert read(r[0].outputs["raw"]).std() > 0


def test_only_and_from(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"stage 'label' needs 'synth', which is not done"):
        run_pipeline(pipeline_config(tiny(run)), only=["label"])
    assert Manifest(run).entry("label") is None  # nothing was started, nothing marked
    assert actions(run_pipeline(pipeline_config(tiny(run)), only=["synth"])) == {"synth": "ran"}
    assert actions(run_pipeline(pipeline_config(tiny(run)), only=["label"])) == {"label": "ran"}
    assert actions(run_pipeline(pipeline_config(tiny(run)), from_stage="label")) == {"synth": "skipped", "label": "ran"}
    assert actions(run_pipeline(pipeline_config(tiny(run)), from_stage="synth")) == {"synth": "ran", "label": "ran"}
    with pytest.raises(ConfigError, match=r"stage 'segment' is not in this run"):
        run_pipeline(pipeline_config(tiny(run)), only=["segment"])


def test_plan_order_hashes_and_downstream(tmp_path: Path) -> None:
    cfg = pipeline_config(tiny(tmp_path, affinities={"input": "synth.neurons"}, segment={"input": "affinities.affinities"},
                               objects={"labels": "segment.segmentation"}, report={}))
    p = plan(cfg)
    assert p.order == ["synth", "affinities", "label", "segment", "objects", "report"]
    assert p.depends["segment"] == ["affinities"] and p.depends["report"] == ["affinities", "label", "objects", "segment", "synth"]
    assert p.downstream("affinities") == {"affinities", "segment", "objects", "report"}
    p2 = plan(pipeline_config(tiny(tmp_path, affinities={"input": "synth.neurons", "chunks": [8, 16, 16]}, segment={"input": "affinities.affinities"},
                                   objects={"labels": "segment.segmentation"}, report={})))
    changed = {n for n in p.order if p.hashes[n] != p2.hashes[n]}
    assert changed == {"affinities", "segment", "objects", "report"}


@pytest.mark.parametrize(
    ("data", "overrides", "pattern"),
    [
        ({"synth": {"shape": [8, 64, 64], "colour": 1}}, [], r"unknown key 'synth.colour'"),
        ({"synth": {"shape": "big"}}, [], r"bad value for 'synth.shape'"),
        ({"label": {}}, [], r"missing required key 'label.input'"),
        ({"labl": {"input": "x"}}, [], r"unknown key 'labl'.*allowed keys here: .*label"),
        ({"synth": {}}, ["runtime.workers=0"], r"bad value for 'runtime.workers'"),
        ({"label": {"input": "segment.segmentation"}}, [], r"refers to stage 'segment', which this run does not include"),
        ({"synth": {}, "label": {"input": "synth.membranes"}}, [], r"stage 'synth' has no output 'membranes'.*raw, neurons, mito, synapses"),
        ({}, [], r"enables no stage"),
        ({"affinities": {"input": "segment.segmentation"}, "segment": {"input": "affinities.affinities"}}, [], r"in a cycle"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, data: dict[str, Any], overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        run_pipeline(pipeline_config({"run_dir": str(tmp_path / "run"), **data}, overrides))
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_missing_input_path_fails_the_stage_and_marks_nothing_done(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(StorageError, match=r"label: input '.*nowhere.zarr/mask' does not exist"):
        run_pipeline(pipeline_config({"run_dir": str(run), "label": {"input": str(tmp_path / "nowhere.zarr" / "mask")}}))
    entry = Manifest(run).entry("label")
    assert entry is not None and entry["status"] == "failed" and "does not exist" in entry["error"]


def test_manifest_is_replaced_atomically_and_a_corrupt_one_is_an_error(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.start("a", "h1", [], {})
    m.finish("a", {"x": "y"}, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left behind
    assert Manifest(tmp_path).is_done("a", "h1") and not Manifest(tmp_path).is_done("a", "h2")
    (tmp_path / "manifest.json").write_text('{"version": 1, "stag')
    with pytest.raises(StorageError, match="cannot be read"):
        Manifest(tmp_path)


_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    import test_pipeline  # registers the test_slowcopy stage
    from engine.pipeline.run import pipeline_config, run_pipeline
    import json
    run_pipeline(pipeline_config(json.loads(sys.argv[1])))
    """
)


def test_resume_after_the_driver_is_killed_mid_stage(tmp_path: Path) -> None:
    """SIGKILL the driver while the slow stage has done some of its 16 blocks; the next run resumes
    the stage (finished blocks are not recomputed) and the output equals the input."""
    src = create_volume(str(tmp_path / "in.zarr" / "x"), (8, 64, 64), "uint16", (8, 16, 16))
    data = np.random.default_rng(0).integers(0, 60000, (8, 64, 64)).astype(np.uint16)
    src.write(src.box, data)
    run = tmp_path / "run"
    cfg = {"run_dir": str(run), "runtime": {"progress": False}, "test_slowcopy": {"input": src.url, "delay": 0.25}}
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT.format(tests=str(Path(__file__).parent), repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = run / ".state" / "test_slowcopy" / "markers.sqlite"
    done = 0
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                        done = conn.execute("SELECT COUNT(*) FROM blocks WHERE status=1").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
                if done >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    entry = Manifest(run).entry("test_slowcopy")
    assert entry is not None and entry["status"] == "running" and entry["outputs"] == {}  # not marked done

    r = run_pipeline(pipeline_config(cfg, ["test_slowcopy.delay=0.25"]))
    assert actions(r) == {"test_slowcopy": "ran"}
    summary = json.loads((run / ".state" / "test_slowcopy" / "summary.json").read_text())
    assert 3 <= summary["already_done"] < 16 and summary["done"] == 16 - summary["already_done"]
    assert Manifest(run).entry("test_slowcopy")["status"] == "done"  # type: ignore[index]
    assert Manifest(run).entry("test_slowcopy")["attempts"] == 2  # type: ignore[index]
    np.testing.assert_array_equal(read(r[0].outputs["copy"]), data)


def test_affinities_objects_segment_and_report(tmp_path: Path) -> None:
    from engine.pipeline.stages.affinities import label_affinities
    from engine.storage.object_table import read_object_table

    run = tmp_path / "run"
    cfg = pipeline_config(tiny(run, label=None, affinities={"input": "synth.neurons", "chunks": [8, 16, 16]},
                               segment={"input": "affinities.affinities", "block": [8, 32, 32], "chunks": [8, 32, 32]},
                               objects={"labels": "segment.segmentation"}, report={"title": "t"}))
    r = {x.stage: x for x in run_pipeline(cfg)}
    neurons = read(r["synth"].outputs["neurons"])
    whole = label_affinities(neurons, Box.from_shape(neurons.shape), Box.from_shape(neurons.shape))
    np.testing.assert_array_equal(read(r["affinities"].outputs["affinities"]), whole)  # blockwise == whole volume
    assert whole[2][:, :, 0].max() == 0 and whole[2].max() == 255

    seg = read(r["segment"].outputs["segmentation"])
    ids, counts = np.unique(seg[seg != 0], return_counts=True)
    table = read_object_table(r["objects"].outputs["table"])
    np.testing.assert_array_equal(table["id"], ids)
    np.testing.assert_array_equal(table["voxels"], counts)
    one = int(ids[np.argmax(counts)])
    zz, yy, xx = np.nonzero(seg == one)
    row = int(np.flatnonzero(table["id"] == one)[0])
    assert [table[k][row] for k in ("z0", "y0", "x0", "z1", "y1", "x1")] == [zz.min(), yy.min(), xx.min(), zz.max() + 1, yy.max() + 1, xx.max() + 1]
    assert np.isclose(table["cy"][row], yy.mean())

    report = Path(r["report"].outputs["report"])
    text = report.read_text()
    assert text.startswith("# t") and "| segment | done |" in text
    for link in ("report/stage_seconds.png", "report/preview.png"):
        assert f"]({link})" in text and (run / link).stat().st_size > 1000

    # the neuroglancer link (engine.view's state): the zarr outputs on the raw grid, read from `connectile view RUN --port PORT`,
    # engine.view's token-protected file server, which serves the run folder under the run's kept token with CORS
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    from engine.view import run_token

    found = re.search(r"\]\((https://neuroglancer-demo[^)]*)\)", text)
    assert found is not None, text
    assert f"`connectile view {run} --port 9000`" in text
    url = found.group(1)
    state = json.loads(urllib.parse.unquote(url.split("#!", 1)[1]))
    layers = {la["name"]: la for la in state["layers"]}
    assert layers["segment.segmentation"]["type"] == "segmentation" and layers["synth.raw"]["type"] == "image"
    assert state["layers"][0]["name"] == "synth.raw" and "visible" not in state["layers"][0]
    token = run_token(run)
    assert layers["synth.raw"]["source"]["url"] == f"zarr2://http://127.0.0.1:9000/{token}/run/synth/synth.zarr/raw"
    assert state["dimensions"]["z"] == [40e-9, "m"] and state["dimensions"]["x"] == [8e-9, "m"]  # the synthetic volume's voxel size
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "engine.cli", "view", str(run), "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("serving"):
                break
        src = layers["segment.segmentation"]["source"]["url"].replace(":9000", f":{port}").removeprefix("zarr2://")
        with urllib.request.urlopen(f"{src}/.zarray", timeout=10) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert json.loads(resp.read())["dtype"] == "<u8"
        with pytest.raises(urllib.error.HTTPError, match="404"):  # without the token: nothing
            urllib.request.urlopen(src.replace(f"/{token}/", "/") + "/.zarray", timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_job_entrypoint_runs_one_stage(tmp_path: Path) -> None:
    """``python jobs/stage.py --config FILE --stage S [--round R]``: the same stage as ``connectile run
    --only S`` (``--only predict[R]``); a bad config is one line on stderr and exit 2."""
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny(run)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ok = subprocess.run([sys.executable, "jobs/stage.py", "--config", str(config), "--stage", "synth"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "synth: ran" in ok.stdout
    assert set(Manifest(run).stages) == {"synth"}
    bad = subprocess.run([sys.executable, "jobs/stage.py", "--config", str(config), "--stage", "label", "--set", "label.threshold=high"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"connectile run: error: {config}: bad value for 'label.threshold': 'high' (Input should be a valid number, unable to parse string as a number)"]


def test_a_round_stage_job_runs_that_round_only(tmp_path: Path) -> None:
    """``--stage predict --round 2`` is the stage key ``predict[2]``; a round the config does not have is one clear line."""
    from engine.pipeline.demo import apply_tiny, demo_config

    cfg = apply_tiny(demo_config(str(tmp_path / "run"), shape=(8, 64, 64), chunks=(8, 64, 64), rounds=1))
    config = tmp_path / "d.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "jobs/stage.py", "--config", str(config), "--stage", "predict", "--round", "2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    # the stage exists (round 2 is the final prediction of a one-round config) but its inputs are not done
    assert res.stderr.strip().splitlines() == ["connectile run: error: stage 'predict[2]' needs 'finetune[1]', which is not done with the current config; "
                                               "run the whole config (without --only), or --only finetune[1] first"]
    res = subprocess.run([sys.executable, "jobs/stage.py", "--config", str(config), "--stage", "predict", "--round", "3"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "stage 'predict[3]' is not in this run" in res.stderr


def test_jobs_folder_is_small() -> None:
    """One entrypoint per kind of job, not per stage and round."""
    assert sorted(p.name for p in (REPO / "jobs").glob("*.py")) == ["_entry.py", "demo.py", "pipeline.py", "stage.py"]
