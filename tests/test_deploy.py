"""The deployment files parse and validate: KubeRay manifests against the KubeRay v1 fields and the
Kubernetes pod-template schema (deploy/schemas), the cluster-launcher config against Ray's own schema
and checks, the Dockerfile against the pins. Sizes are checked against each other (the object store
fits in /dev/shm, which fits in the pod's memory)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCHEMAS = DEPLOY / "schemas"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}


def quantity(text: str | int) -> float:
    """A Kubernetes quantity ('24Gi', '8', '500m') in base units."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"not a quantity: {text!r}"
    value, unit = float(m.group(1)), m.group(2) or ""
    return value / 1000 if unit == "m" else value * _UNITS[unit]


def _pin(name: str) -> str:
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==")[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements/constraints.txt")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def kuberay_validator() -> jsonschema.protocols.Validator:
    pod = json.loads((SCHEMAS / "k8s-v1.37-podtemplatespec.json").read_text())
    kuberay = json.loads((SCHEMAS / "kuberay-v1.json").read_text())
    registry: Registry = Registry().with_resources(
        [("k8s-v1.37-podtemplatespec.json", Resource.from_contents(pod)), ("kuberay-v1.json", Resource.from_contents(kuberay))]
    )
    cls = jsonschema.validators.validator_for(kuberay)
    cls.check_schema(kuberay)
    return cls(kuberay, registry=registry)


def _errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_validate(kuberay_validator: jsonschema.protocols.Validator, name: str) -> None:
    doc = _load(DEPLOY / "kuberay" / name)
    assert _errors(kuberay_validator, doc) == []


def test_the_schemas_reject_typos(kuberay_validator: jsonschema.protocols.Validator) -> None:
    """The validation can fail: a misspelt container key, an unknown spec key, a wrong type."""
    base = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    bad = copy.deepcopy(base)
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert _errors(kuberay_validator, bad)
    bad = copy.deepcopy(base)
    bad["spec"]["workerGroupSpec"] = []
    assert _errors(kuberay_validator, bad)
    bad = copy.deepcopy(base)
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "16"
    assert _errors(kuberay_validator, bad)
    bad = copy.deepcopy(base)
    bad["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["emptyDir"]["medium"] = 3
    assert _errors(kuberay_validator, bad)


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return list(group["template"]["spec"]["containers"])


def _check_group_sizes(group: dict[str, Any], what: str) -> None:
    """/dev/shm is a memory emptyDir mounted in every container, the object store fits in it, and it
    fits in the container's memory limit."""
    vols = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
    for c in _containers(group):
        shm = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1, f"{what}: /dev/shm is not mounted in {c['name']}"
        vol = vols[shm[0]["name"]]
        assert vol["emptyDir"]["medium"] == "Memory", what
        shm_bytes = quantity(vol["emptyDir"]["sizeLimit"])
        store = float(group["rayStartParams"]["object-store-memory"])
        assert store <= shm_bytes < quantity(c["resources"]["limits"]["memory"]), what
        assert c["resources"]["requests"] == c["resources"]["limits"], f"{what}: requests != limits (Guaranteed QoS)"


def _check_credentials(group: dict[str, Any], what: str) -> None:
    spec = group["template"]["spec"]
    secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert "connectile-gcs" in secrets, what
    for c in spec["containers"]:
        env = {e["name"]: e for e in c["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "connectile-s3", what
        assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"].startswith(next(m["mountPath"] for m in c["volumeMounts"] if m["name"] in {v["name"] for v in spec["volumes"] if "secret" in v}))
        assert c["envFrom"], what


def _check_cluster_spec(spec: dict[str, Any], what: str) -> None:
    assert spec["rayVersion"] == _pin("ray"), f"{what}: rayVersion differs from the pinned ray"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{what}: block work must not land on the head"
    _check_group_sizes(head, f"{what} head")
    _check_credentials(head, f"{what} head")
    gpu = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in _containers(g)[0]["resources"]["limits"]]
    assert gpu, f"{what}: no GPU worker group"
    for g in gpu:
        res = _containers(g)[0]["resources"]
        assert quantity(res["limits"]["nvidia.com/gpu"]) >= 1
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])
        _check_group_sizes(g, f"{what} {g['groupName']}")
        _check_credentials(g, f"{what} {g['groupName']}")
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version is not None
    for group in [head, *spec["workerGroupSpecs"]]:
        for c in _containers(group):
            assert c["image"].endswith(f"connectile:{version.group(1)}"), c["image"]


def test_raycluster_has_a_gpu_group_shm_secrets_and_sizes() -> None:
    _check_cluster_spec(_load(DEPLOY / "kuberay" / "raycluster.yaml")["spec"], "raycluster.yaml")


def test_rayjob_runs_a_job_entrypoint_on_the_same_cluster_spec() -> None:
    job = _load(DEPLOY / "kuberay" / "rayjob.yaml")
    cluster = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    _check_cluster_spec(job["spec"]["rayClusterSpec"], "rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file() and argv[1].startswith("jobs/")
    config = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    from engine.pipeline.run import load_pipeline_config

    cfg = load_pipeline_config(REPO / config, sets)
    assert cfg.run_dir.startswith("/runs/"), "the run folder must be on the shared volume"
    assert cfg.runtime.backend == "ray"


def test_cluster_launcher_config_passes_rays_schema_and_checks() -> None:
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(DEPLOY / "cluster-launcher.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t.get("max_workers", 0) > 0 for n, t in types.items() if n != config["head_node_type"])
    shm = next(o for o in config["docker"]["run_options"] if o.startswith("--shm-size="))
    shm_bytes = quantity(shm.split("=")[1].replace("g", "Gi"))
    for cmd in config["worker_start_ray_commands"]:
        m = re.search(r"--object-store-memory=(\d+)", cmd)
        if m:
            assert int(m.group(1)) <= shm_bytes
    assert config["docker"]["image"].endswith(":" + re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1))  # type: ignore[union-attr]


def test_dockerfile_builds_on_cuda_torch_with_the_pins() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base is not None
    image = base.group(1)
    m = re.fullmatch(r"pytorch/pytorch:(?P<torch>[\d.]+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-runtime", image)
    assert m, f"base image {image} is not a CUDA PyTorch image"
    assert m.group("torch") == _pin("torch"), "the base image's torch differs from the pinned torch"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert "pip install -c requirements/constraints.txt ." in text
    assert "torch.version.cuda" in text  # the build fails on a CPU-only torch
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), f"COPY {part}: no such path"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# -- scale on paper: benchmarks/projection.py -----------------------------------------------------
def _projection() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("projection", REPO / "benchmarks" / "projection.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["projection"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_projection_adds_up_and_scales(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    proj = _projection()
    costs = proj.DEFAULT_COSTS
    a = dict(proj.DEFAULT_ASSUMPTIONS)
    _, d64 = proj.report(1e15, 64, costs, "defaults", a)
    _, d256 = proj.report(1e15, 256, costs, "defaults", a)
    assert d64["wall_hours"] == pytest.approx(sum(s["wall_h"] for s in d64["stages"]))
    assert d64["gpu_hours"] == pytest.approx(d64["wall_hours"] * 64)
    by = {s["stage"]: s for s in d64["stages"]}
    by4 = {s["stage"]: s for s in d256["stages"]}
    # compute and storage time of the volume stages scale as 1/workers; training is a fixed cost
    assert by4["predict"]["compute_h"] == pytest.approx(by["predict"]["compute_h"] / 4)
    assert by4["segment"]["io_h"] == pytest.approx(by["segment"]["io_h"] / 4)
    assert by4["train"]["wall_h"] == by["train"]["wall_h"]
    # predict: 1e15 voxels x 2 rounds x 10 s/Gvox / (64 GPUs x 0.8) = 390,625 s
    assert by["predict"]["compute_h"] * 3600 == pytest.approx(1e15 * 2 * 10 / 1e9 / (64 * 0.8))
    assert proj.main(["--gpus", "256"]) == 0
    out = capsys.readouterr().out
    assert "total wall time" in out and "| predict | gpu | 256 |" in out and "Assumptions:" in out
    assert proj.main(["--gpus", "0"]) == 2


def test_projection_reads_measured_costs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proj = _projection()
    f = tmp_path / "costs.json"
    f.write_text(json.dumps({"kind": "connectile-stage-costs", "stage_costs": {"predict": {"worker_s_per_gvox": 20.0, "device": "gpu", "source": "measured on an H100"}}}))
    costs, source = proj.load_costs(f)
    assert source == str(f) and costs["predict"].worker_s_per_gvox == 20.0 and "measured on an H100" in costs["predict"].source
    assert costs["predict"].bytes_per_voxel == proj.DEFAULT_COSTS["predict"].bytes_per_voxel  # the rest kept
    assert proj.main(["--gpus", "8", "--costs", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["costs"]["predict"]["worker_s_per_gvox"] == 20.0


# -- benchmarking as a user does it: connectile bench ---------------------------------------------
FAKE_BENCH = '''
import json, sys  # takes "--quick"
print("some chatter")
print(json.dumps({"bench": "machine", "cpu": "x", "quick": "--quick" in sys.argv}))
print(json.dumps({"bench": "dispatch", "connectile_blocks_per_s": 5000.0, "peer": "daisy 2.0.0", "peer_blocks_per_s": 1000.0, "ratio": 5.0}))
print(json.dumps({"bench": "gaussian", "shape": [100, 100, 100], "workers": 2, "connectile_s": 2.0, "peer_s": 3.0, "peer": "scipy", "ratio": 1.5}))
print(json.dumps({"bench": "connected_components", "variant": "uint64", "shape": [100, 100, 100], "workers": 2, "connectile_s": 4.0, "peer_s": 2.0, "ratio": 0.5, "agree": True}))
print(json.dumps({"machine": "x86_64", "cpus": 2}))
print(json.dumps({"N": 1000, "knn": "exact", "total_s": 0.5, "reference_s": 2.0, "ratio": 4.0, "identical_picks": True}))
'''


def test_connectile_bench_table_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_fake.py").write_text(FAKE_BENCH)
    out = tmp_path / "r" / "bench.json"
    assert main(["bench", "--benchmarks", str(bench), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith(("dispatch", "gaussian", "connected_components", "fake"))]
    assert len(rows) == 4
    assert rows[3].startswith("fake:exact N=1000") and "2,000" in rows[3] and "500" in rows[3] and "4.00x" in rows[3]  # a row without a bench name
    assert "5,000" in rows[0] and "1,000" in rows[0] and "5.00x" in rows[0] and "blocks/s" in rows[0]
    assert "0.50" in rows[1] and "0.33" in rows[1] and "Mvoxel/s" in rows[1]  # 1e6 voxels in 2 s and 3 s
    data = json.loads(out.read_text())
    assert data["quick"] and data["scripts"][0]["command"].endswith("bench_fake.py --quick") and data["scripts"][0]["returncode"] == 0
    assert data["hardware"]["cores"] == os.cpu_count() and "cpu" in data["hardware"]
    assert data["stage_costs_quick"]["filter"]["worker_s_per_gvox"] == pytest.approx(2.0 * 2 / 1e-3)
    assert data["stage_costs_quick"]["label"]["worker_s_per_gvox"] == pytest.approx(4.0 * 2 / 1e-3)
    assert "upper bound" in data["stage_costs_quick"]["label"]["source"]
    assert len(data["lines"]) == 6
    proj = _projection()
    assert proj.load_costs(out)[0]["label"].worker_s_per_gvox == proj.DEFAULT_COSTS["label"].worker_s_per_gvox  # quick costs are not used

    assert main(["bench", "--benchmarks", str(bench), "--out", str(out), "--no-progress", "--full"]) == 0
    capsys.readouterr()
    costs, source = proj.load_costs(out)  # what projection.py reads after a full run
    assert source == str(out) and costs["label"].worker_s_per_gvox == pytest.approx(8000.0)

    (bench / "bench_fake.py").write_text(FAKE_BENCH + "\nraise SystemExit(3)\n")
    assert main(["bench", "--benchmarks", str(bench), "--out", str(out), "--no-progress"]) == 1
    assert "fake: exited 3" in capsys.readouterr().out
    assert main(["bench", "--benchmarks", str(bench), "--only", "nope", "--no-progress"]) == 2
    assert "no benchmark named nope" in capsys.readouterr().err
