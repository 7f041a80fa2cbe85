"""Benchmarks never break silently (issue 17 points 7 and 8): every ``benchmarks/bench_*.py`` runs in its
``--smoke`` mode through ``connectile bench --smoke`` (as a user runs the suite), every
``benchmarks/quality_*.py`` runs its ``--smoke`` mode as a subprocess, and ``benchmarks/gpu_check.sh``
exits 0 with "skipped: no GPU" lines where there is no GPU. Smoke modes run the scripts' real code
paths on tiny inputs, so a script that crashes, or whose sides disagree, fails here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

#: quality scripts: (needs ../shared/data, extra arguments besides --smoke; {tmp} is the test's folder);
#: a quality_*.py not listed here runs as ``--smoke --out {tmp}`` with the real data (DEFAULT_QUALITY)
DEFAULT_QUALITY: tuple[bool, list[str]] = (True, ["--out", "{tmp}"])
QUALITY_SCRIPTS = sorted(p.name for p in BENCH.glob("quality_*.py"))
QUALITY: dict[str, tuple[bool, list[str]]] = {
    "quality_active.py": (False, ["--out", "{tmp}"]),
    "quality_flyem.py": (True, ["--out", "{tmp}"]),
    "quality_lucchi.py": (True, ["--work", "{tmp}"]),
    "quality_segment.py": (True, ["--out", "{tmp}"]),
    "quality_selection.py": (True, ["--out", "{tmp}"]),
    "quality_semi.py": (True, ["--out", "{tmp}"]),
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each script starts its own local cluster
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_every_benchmark_has_a_smoke_mode_and_a_test() -> None:
    """A bench_*.py or quality_*.py without --smoke fails here (each then runs below)."""
    scripts = sorted(p.name for p in BENCH.glob("bench_*.py")) + sorted(p.name for p in BENCH.glob("quality_*.py"))
    assert len(scripts) >= 10
    for name in scripts:
        assert '"--smoke"' in (BENCH / name).read_text(), f"{name} has no --smoke mode"
    assert set(QUALITY) <= set(QUALITY_SCRIPTS)


def test_connectile_bench_smoke(tmp_path: Path) -> None:
    """``connectile bench --smoke``: every bench_*.py script, exit 0, its JSON lines tabulated; where both
    sides are exact they agree; an extrapolated peer figure is marked as such in the table."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-c", "from engine.cli import main; raise SystemExit(main())", "bench", "--smoke", "--no-progress", "--out", str(out), "--timeout", "600"]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    log = out.with_suffix(".log").read_text() if out.with_suffix(".log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-6000:]
    data = json.loads(out.read_text())
    assert data["smoke"] is True
    ran = {s["script"]: s for s in data["scripts"]}
    assert sorted(ran) == sorted(p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py"))
    for name, s in ran.items():
        assert s["returncode"] == 0 and s["command"].endswith("--smoke"), s
        assert s["lines"] >= 2, f"{name} printed no measurement"
    lines = data["lines"]
    machine = [ln for ln in lines if ln.get("bench") == "machine" and ln.get("script") == "select"]
    assert machine and machine[0]["cpu"] and "load_avg_1m" in machine[0]
    # selection: exact picks identical to the hoisted reference; the larger size extrapolated and marked
    sel = [ln for ln in lines if ln.get("bench") == "selection"]
    assert any(ln["knn"] == "exact" and ln["identical_picks"] is True for ln in sel)
    assert any(ln.get("extrapolated") is True and "ratio_extrapolated" in ln and "ratio" not in ln for ln in sel)
    assert "* extrapolated, not measured" in res.stdout
    assert any(r["extrapolated"] and r["ratio"] is not None for r in data["rows"])
    # the other comparisons agree with their peers
    cc = [ln for ln in lines if ln.get("bench") == "connected_components"]
    assert cc and all(ln["agree"] is True for ln in cc) and all("uint32 (its fastest)" in ln["peer"] for ln in cc)
    assert all(ln["identical"] is True for ln in lines if ln.get("bench") == "downsample")
    assert all(ln["all_done_and_resumable"] is True for ln in lines if ln.get("bench") == "dispatch")
    scale = [ln for ln in lines if ln.get("bench") == "scale"]  # issue 17 pt 6, tiny here: every block done, the resume finds them all
    assert scale and all(ln["all_done_and_resumable"] is True and ln["marker_bytes"] > 0 for ln in scale)
    assert any(ln.get("bench") == "gaussian" and ln["agree"] is True for ln in lines)
    # inference: Connectile's output within one uint8 step of MONAI's on the same converted model and of
    # the Ray Data peer's; the converted model within 1e-4 of the plain one (each asserted by the script too)
    infer = {ln.get("variant", ln["bench"]): ln for ln in lines if ln.get("script") == "infer" and ln.get("bench") != "machine"}
    assert infer["monai_same_model"]["max_abs_diff_uint8"] <= 1 and infer["ray_data"]["max_abs_diff_uint8"] <= 1
    assert infer["infer_conversion"]["max_abs_diff_prob"] <= 1e-4 and infer["monai_same_model"]["windows"] == 4


def test_quick_and_smoke_arguments_are_accepted() -> None:
    """What ``connectile bench`` passes to each script (quick and smoke) is among the script's options
    (``--no-exact-large`` was passed to bench_select.py, which did not know it)."""
    from engine.bench import discover_scripts

    for smoke in (False, True):
        for s in discover_scripts(BENCH, quick=True, smoke=smoke):
            res = subprocess.run([sys.executable, str(s.path), "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False)
            assert res.returncode == 0, res.stderr[-2000:]
            for arg in s.args:
                if arg.startswith("--"):
                    assert arg in res.stdout, f"{s.path.name} has no {arg}"


@pytest.mark.slow  # 20-30 CPU-seconds each (real data loaded, models trained and scored): `make test` runs them, `make test-fast` not
@pytest.mark.parametrize("script", QUALITY_SCRIPTS)
def test_quality_script_smoke(script: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Each quality_*.py end to end on tiny inputs: exit 0 and at least one result line."""
    needs_data, extra = QUALITY.get(script, DEFAULT_QUALITY)
    if needs_data:
        request.getfixturevalue("shared_data")  # skipped where ../shared/data is absent (a failure in CI)
    args = [a.replace("{tmp}", str(tmp_path / "out")) for a in extra]
    res = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    rows = _json_lines(res.stdout)
    assert rows, res.stdout[-2000:]
    if script == "quality_loop.py":  # rounds_average.py scores a finished run's rounds offline: it must reproduce the run's own scores
        d_row = next(r for r in rows if r.get("method") == "d")
        run = tmp_path / "out" / "work" / "runs" / f"lucchi-d-{d_row['budget']:g}-{d_row['seed']}"
        ra = subprocess.run([sys.executable, str(BENCH / "rounds_average.py"), str(run), "--shares", "0.5", "--out", str(tmp_path / "ra")],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
        assert ra.returncode == 0, ra.stdout[-2000:] + ra.stderr[-3000:]
        (offline,) = _json_lines(ra.stdout)
        assert offline["previous"] == pytest.approx(d_row["rounds_iou"][0], abs=1e-9)
        if d_row["kept"] == ["candidate"]:
            assert offline["tuned"] == pytest.approx(d_row["rounds_iou"][1], abs=1e-9)
        assert isinstance(offline["average_0.5"], float)  # the averaged model was written, predicted and scored
    if script == "quality_selection.py":  # it called the trainer with the wrong signature at HEAD~: every method trained
        trained = [r for r in rows if "method" in r]
        assert {r["method"] for r in trained} == {"coverage", "random", "kcenter"} and all(r["steps"] >= 1 for r in trained)


def _load_gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the whole check (minutes), not this quick no-GPU run")
def test_gpu_check_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gpu_check.sh on a machine without a GPU: exit 0, a 'skipped: no GPU' line per GPU path, the
    same lines in $OUT/gpu_check.jsonl; each Python check skips by itself too."""
    res = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=tmp_path, env={**_env(), "OUT": str(tmp_path / "out")},
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = _json_lines(res.stdout)
    assert lines == _json_lines((tmp_path / "out" / "gpu_check.jsonl").read_text())
    by = {ln["check"]: ln for ln in lines}
    assert by["machine"]["cores"] == os.cpu_count() and by["machine"]["torch_cuda"] is False
    for name in ("cupy_cc", "faiss_gpu", "predict_amp", "ray_train_gpu", "bench_cc_gpu", "bench_knn"):
        assert by[name]["skipped"].startswith("no GPU"), by[name]
    assert by["done"]["gpu"] is False and by["done"]["failed"] == 0
    mod = _load_gpu_check()
    for name, check in mod.CHECKS.items():
        if name == "machine":
            continue
        capsys.readouterr()
        assert check() is True
        (line,) = _json_lines(capsys.readouterr().out)
        assert line["skipped"].startswith("no GPU"), line


def test_projection_takes_the_drivers_measured_costs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """issue 17 pt 6: projection.py reads the scale run's line (or flags) and projects one driver pass
    over 1 PB of 128^3 blocks: driver CPU, marker store, resume; the stages' dispatch bound follows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("projection", BENCH / "projection.py")
    assert spec is not None and spec.loader is not None
    proj = importlib.util.module_from_spec(spec)
    sys.modules["projection"] = proj  # dataclasses look their module up
    spec.loader.exec_module(proj)
    scale = {"bench": "scale", "blocks": 10_000_000, "workers": 2, "driver_cpu_us_per_block": 5.0, "marker_bytes_per_block": 24.0,
             "sustained_blocks_per_s": 25_000.0, "resume_s": 3.0, "driver_peak_rss_mib": 190.0, "driver_rss_before_run_mib": 140.0, "machine": "m"}
    f = tmp_path / "scale.jsonl"
    f.write_text(json.dumps({"bench": "machine", "cpu": "x"}) + "\nchatter\n" + json.dumps(scale) + "\n")
    assert proj.main(["--gpus", "8", "--driver-scale", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    d, blocks = data["driver"], 1e15 / 128**3
    assert d["blocks"] == pytest.approx(blocks)
    assert d["driver_pass_hours"] == pytest.approx(blocks * 5e-6 / 3600)
    assert d["marker_store_gib"] == pytest.approx(blocks * 24 / 2**30)
    assert d["resume_s"] == pytest.approx(3.0 * blocks / 1e7) and d["measured_pass_hours"] == pytest.approx(blocks / 25_000 / 3600)
    assert data["assumptions"]["dispatch_blocks_per_s"] == pytest.approx(200_000) and data["assumptions"]["block_voxels"] == 128**3
    assert proj.main(["--gpus", "8", "--driver-scale", str(f), "--marker-bytes-per-block", "2"]) == 0  # a flag overrides the file
    assert "done-markers 2 B per block: 0.9 GiB per pass" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        proj.main(["--gpus", "8", "--driver-us-per-block", "5"])  # one of the two costs alone
    (tmp_path / "other.jsonl").write_text(json.dumps({"bench": "dispatch"}) + "\n")
    with pytest.raises(SystemExit):
        proj.main(["--gpus", "8", "--driver-scale", str(tmp_path / "other.jsonl")])


def test_loop_errors_smoke() -> None:
    """``benchmarks/loop_errors.py --smoke``: the error breakdown on a constructed case (one false object,
    one missed object, a one-voxel boundary error) is checked inside the script."""
    res = subprocess.run([sys.executable, str(BENCH / "loop_errors.py"), "--smoke"], capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = _json_lines(res.stdout)
    assert (row["false_objects"], row["missed_objects"], row["boundary_voxels"]) == (1, 1, 32)


def test_quality_loop_scores_neurons_from_the_interior_probability(tmp_path: Path) -> None:
    """FlyEM's neuron scores: a probability that is 0 on the cell boundaries gives the cells back, far better than
    a probability without boundaries (one object); with one boundary missing two cells merge, and the merge term
    and the object count say so."""
    from engine.storage import create_volume

    spec = importlib.util.spec_from_file_location("quality_loop", BENCH / "quality_loop.py")
    assert spec is not None and spec.loader is not None
    ql = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ql)
    z, y, x = np.meshgrid(np.arange(16), np.arange(64), np.arange(64), indexing="ij")
    gt = (1 + (z // 8) * 16 + (y // 16) * 4 + x // 16).astype(np.uint32)  # 32 cells of 8 x 16 x 16
    edge = np.zeros(gt.shape, bool)
    for ax in range(3):
        edge[tuple(slice(0, -1) if a == ax else slice(None) for a in range(3))] |= np.diff(gt, axis=ax) != 0
    truth = create_volume(str(tmp_path / "truth.zarr"), gt.shape, "uint32", (16, 64, 64))
    truth.write(truth.box, gt)
    data = {"name": "flyem", "shape": list(gt.shape), "test_from_z": 4, "truth": truth.url}
    scores = {}
    for name, prob in (("right", ~edge), ("gap", ~edge | ((x == 15) & (y < 16))), ("none", np.ones(gt.shape, bool))):
        run = tmp_path / name  # "gap": cells 1 and 2 (and their twins in z) touch
        vol = create_volume(str(run / "round-01" / "predict" / "prob.zarr" / "probability"), gt.shape, "uint8", (16, 64, 64))
        vol.write(vol.box, np.where(prob, 255, 0).astype(np.uint8))
        scores[name] = ql.neuron_scores(run, data)
    right, gap, none = scores["right"], scores["gap"], scores["none"]
    assert none["neuron_objects"] == 1 and none["neuron_voi_merge"] > 4.5 and none["neuron_arand"] > 0.9, none  # 32 cells: log2 32 = 5 bits
    assert right["neuron_voi"] < none["neuron_voi"] - 3.0 and right["neuron_arand"] < none["neuron_arand"] - 0.4, right
    assert gap["neuron_voi_merge"] > right["neuron_voi_merge"] + 0.03 and gap["neuron_objects"] < right["neuron_objects"], (gap, right)


def test_bench_cc_alone_reports_each_workers_memory(tmp_path: Path) -> None:
    """``bench_cc.py --no-peer`` (sizes where cc3d's whole array cannot fit): Connectile alone, with the peak of its
    largest worker beside the sums, so that "per-worker memory flat as the volume grows" can be read off two sizes."""
    res = subprocess.run([sys.executable, str(BENCH / "bench_cc.py"), "--smoke", "--no-peer", "--workdir", str(tmp_path)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = _json_lines(res.stdout)
    assert not [ln for ln in lines if ln.get("bench") == "connected_components"], "the peer ran"
    (alone,) = [ln for ln in lines if ln.get("bench") == "connected_components_alone"]
    assert alone["objects"] > 0 and alone["blocks"] == 8 and alone["peer"].startswith("not run")
    assert 0 < alone["connectile_one_worker_peak_rss_mib"] <= alone["connectile_workers_peak_rss_mib"] <= alone["connectile_peak_rss_mib"]
