"""The deployment files parse and validate: KubeRay manifests against the KubeRay v1 fields and the
Kubernetes pod-template schema (deploy/schemas), the NetworkPolicy against the Kubernetes schema, the
cluster-launcher config against Ray's own schema and checks, the Dockerfile against the pins. Sizes are
checked against each other (the object store fits in /dev/shm, which fits in the pod's memory). The
protection is checked too: Ray token authentication on everywhere with the token from a Secret (or the
launcher's token file), the dashboard and job API off public addresses, a non-root image and pods, a
NetworkPolicy that admits only the cluster's own pods and the operator; each check is also shown to
fail on a manifest that breaks it, and the documented way of submitting a job with the token is run
against a real token-protected Ray head of the pinned version."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
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


# -- protection: token auth, private dashboard, non-root, NetworkPolicy ---------------------------
TOKEN_SECRET = "connectile-ray-token"
TOKEN_KEY = "auth_token"  # the key KubeRay's authOptions.secretName expects


def _image_uid() -> int:
    """The uid the image runs as: its last USER line (numeric, so runAsNonRoot can check it)."""
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "the Dockerfile has no USER line: the image runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: give a numeric uid (Kubernetes cannot check a name against runAsNonRoot)"
    last_install = max(m.start() for m in re.finditer(r"^RUN .*(pip install|apt-get install)", text, re.M))
    assert text.rindex("USER ") > last_install, "USER comes before an install step"
    return int(uid)


def _walk(o: Any) -> Iterator[dict[str, Any]]:
    if isinstance(o, dict):
        yield o
        for v in o.values():
            yield from _walk(v)
    elif isinstance(o, list):
        for v in o:
            yield from _walk(v)


def _token_env_problems(env: list[dict[str, Any]], what: str) -> list[str]:
    by = {e["name"]: e for e in env}
    out = []
    if by.get("RAY_AUTH_MODE", {}).get("value") != "token":
        out.append(f"{what}: RAY_AUTH_MODE is not set to token")
    ref = by.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    if ref != {"name": TOKEN_SECRET, "key": TOKEN_KEY}:  # exactly: `optional: true` would start pods without a token
        out.append(f"{what}: RAY_AUTH_TOKEN does not come from Secret {TOKEN_SECRET}/{TOKEN_KEY} (got {ref})")
    return out


def _pod_problems(template: dict[str, Any], what: str, uid: int) -> list[str]:
    spec = template["spec"]
    out = []
    pod = spec.get("securityContext", {})
    if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") != uid:
        out.append(f"{what}: the pod does not run as the image's non-root uid {uid} ({pod})")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"{what}: {key}")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged") or "ALL" not in sc.get("capabilities", {}).get("drop", []):
            out.append(f"{what}/{c['name']}: privilege escalation or capabilities left on ({sc})")
        if sc.get("runAsUser", uid) == 0 or sc.get("runAsNonRoot") is False:
            out.append(f"{what}/{c['name']}: runs as root")
        if any("hostPort" in port for port in c.get("ports", [])):
            out.append(f"{what}/{c['name']}: a hostPort publishes a port on the node's address")
        out += _token_env_problems(c.get("env", []), f"{what}/{c['name']}")
    return out


def cluster_problems(spec: dict[str, Any], what: str) -> list[str]:
    """Why a RayCluster spec is not protected (empty: it is)."""
    uid = _image_uid()
    out = []
    if spec.get("authOptions") != {"mode": "token", "secretName": TOKEN_SECRET}:
        out.append(f"{what}: authOptions must be mode token with secretName {TOKEN_SECRET} (got {spec.get('authOptions')})")
    head = spec["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        out.append(f"{what}: the head service is exposed outside the cluster ({head.get('serviceType')}, ingress {head.get('enableIngress')})")
    if head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
        out.append(f"{what}: headService overrides the service type")
    host = head["rayStartParams"].get("dashboard-host", "localhost")
    if host not in ("0.0.0.0", "localhost") and not ipaddress.ip_address(host).is_loopback:  # the pod's own addresses only
        out.append(f"{what}: dashboard-host {host}")
    auto = spec.get("autoscalerOptions", {})
    out += _token_env_problems(auto.get("env", []), f"{what} autoscaler")
    sc = auto.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True or sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{what} autoscaler: not locked down ({sc})")
    for group in [head, *spec["workerGroupSpecs"]]:
        out += _pod_problems(group["template"], f"{what} {group.get('groupName', 'head')}", uid)
    return out


def _manifest_problems(doc: dict[str, Any], what: str) -> list[str]:
    """Problems anywhere in a manifest: a literal token, token auth switched off."""
    out = []
    for node in _walk(doc):
        if node.get("name") == "RAY_AUTH_TOKEN" and "value" in node:
            out.append(f"{what}: a literal RAY_AUTH_TOKEN (the token belongs in a Secret)")
        if node.get("name") == "RAY_AUTH_MODE" and node.get("value") != "token":
            out.append(f"{what}: RAY_AUTH_MODE={node.get('value')}")
    return out


def test_kuberay_clusters_are_token_protected_private_and_non_root() -> None:
    cluster = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    job = _load(DEPLOY / "kuberay" / "rayjob.yaml")
    assert cluster_problems(cluster["spec"], "raycluster.yaml") == []
    assert _manifest_problems(cluster, "raycluster.yaml") == [] and _manifest_problems(job, "rayjob.yaml") == []
    submitter = job["spec"]["submitterPodTemplate"]
    assert _pod_problems(submitter, "rayjob.yaml submitter", _image_uid()) == []
    assert submitter["spec"]["restartPolicy"] == "Never"
    assert submitter["spec"]["containers"][0]["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert job["spec"]["submissionMode"] == "K8sJobMode"  # SidecarMode cannot take a submitter template


@pytest.mark.parametrize(
    "breakage",
    ["no authOptions", "optional secret", "literal token", "auth disabled", "LoadBalancer", "ingress", "hostNetwork", "hostPort", "root pod",
     "root container", "privileged", "autoscaler without token", "public dashboard"],
)
def test_the_protection_checks_can_fail(breakage: str) -> None:
    doc = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    spec = doc["spec"]
    head = spec["headGroupSpec"]
    head_pod = head["template"]["spec"]
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]
    env = worker["containers"][0]["env"]
    if breakage == "no authOptions":
        del spec["authOptions"]
    elif breakage == "optional secret":
        next(e for e in env if e["name"] == "RAY_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]["optional"] = True
    elif breakage == "literal token":
        next(e for e in env if e["name"] == "RAY_AUTH_TOKEN").update(value="hunter2")
    elif breakage == "auth disabled":
        next(e for e in env if e["name"] == "RAY_AUTH_MODE")["value"] = "disabled"
    elif breakage == "LoadBalancer":
        head["serviceType"] = "LoadBalancer"
    elif breakage == "ingress":
        head["enableIngress"] = True
    elif breakage == "hostNetwork":
        worker["hostNetwork"] = True
    elif breakage == "hostPort":
        head_pod["containers"][0]["ports"][1]["hostPort"] = 8265
    elif breakage == "root pod":
        head_pod["securityContext"]["runAsUser"] = 0
    elif breakage == "root container":
        worker["containers"][0]["securityContext"]["runAsUser"] = 0
    elif breakage == "privileged":
        worker["containers"][0]["securityContext"]["privileged"] = True
    elif breakage == "autoscaler without token":
        spec["autoscalerOptions"]["env"] = []
    elif breakage == "public dashboard":
        head["rayStartParams"]["dashboard-host"] = "203.0.113.7"
    assert cluster_problems(spec, "broken") + _manifest_problems(doc, "broken")


def networkpolicy_problems(policy: dict[str, Any], pod_labels: list[dict[str, str]]) -> list[str]:
    """Why a NetworkPolicy does not fence the Ray pods in (empty: it does): it must select every Ray pod,
    restrict ingress, and admit only pods carrying the cluster's own label (any port) or the KubeRay
    operator (the dashboard port only) -- no ipBlock, no empty selector, no rule open to all."""
    spec = policy["spec"]
    out = []
    want = spec.get("podSelector", {}).get("matchLabels") or {}
    if not want or spec["podSelector"].get("matchExpressions"):
        out.append("the policy must select the Ray pods by matchLabels")
    for labels in pod_labels:
        if not want.items() <= labels.items():
            out.append(f"pods labelled {labels} are not covered")
    if "Ingress" not in spec.get("policyTypes", []):
        out.append("ingress is not restricted")
    for i, rule in enumerate(spec.get("ingress", [])):
        peers = rule.get("from") or []
        if not peers:
            out.append(f"rule {i} admits every source")
        for peer in peers:
            sel = peer.get("podSelector", {}).get("matchLabels") or {}
            if "ipBlock" in peer or not sel or peer.get("podSelector", {}).get("matchExpressions"):
                out.append(f"rule {i}: peer {peer} is not a labelled set of pods")
            elif sel == want and "namespaceSelector" not in peer:
                continue  # the cluster's own pods, this namespace: any port
            elif sel == {"app.kubernetes.io/name": "kuberay-operator"}:
                ports = rule.get("ports") or []
                if [(p.get("protocol", "TCP"), p.get("port")) for p in ports] != [("TCP", 8265)]:
                    out.append(f"rule {i}: the operator may reach more than the dashboard ({ports})")
            else:
                out.append(f"rule {i}: admits other pods ({peer})")
    return out


def test_networkpolicy_fences_the_ray_pods_in() -> None:
    schema = json.loads((SCHEMAS / "k8s-v1.37-networkpolicy.json").read_text())
    policy = _load(DEPLOY / "kuberay" / "networkpolicy.yaml")
    jsonschema.validators.validator_for(schema)(schema).validate(policy)
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    cluster = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    job = _load(DEPLOY / "kuberay" / "rayjob.yaml")
    templates = [cluster["spec"]["headGroupSpec"]["template"], *(g["template"] for g in cluster["spec"]["workerGroupSpecs"]),
                 job["spec"]["submitterPodTemplate"]]
    labels = [t["metadata"]["labels"] for t in templates]
    assert networkpolicy_problems(policy, labels) == []
    # the dashboard port is one the head really opens
    assert 8265 in [p["containerPort"] for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]]
    # the check can fail
    for mutate in (
        lambda p: p["spec"].update(policyTypes=["Egress"]),
        lambda p: p["spec"]["ingress"].append({}),
        lambda p: p["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
        lambda p: p["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]}),
        lambda p: p["spec"]["ingress"].append({"from": [{"podSelector": {}}]}),
        lambda p: p["spec"]["ingress"][1].pop("ports"),
        lambda p: p["spec"]["podSelector"]["matchLabels"].update(tier="other"),
    ):
        bad = copy.deepcopy(policy)
        mutate(bad)
        assert networkpolicy_problems(bad, labels), bad


def launcher_problems(config: dict[str, Any]) -> list[str]:
    """Why a cluster-launcher config is not protected (empty: it is)."""
    out = []
    opts = shlex.split(" ".join(config["docker"].get("run_options", [])))
    envs = [opts[i + 1] for i, o in enumerate(opts[:-1]) if o in ("--env", "-e")] + [o.split("=", 1)[1] for o in opts if o.startswith("--env=")]
    if "RAY_AUTH_MODE=token" not in envs:
        out.append("the containers do not get RAY_AUTH_MODE=token")
    if any(e.startswith("RAY_AUTH_TOKEN=") for e in envs):
        out.append("a literal token in run_options")
    for i, o in enumerate(opts):
        if o in ("--privileged", "--cap-add") or o.startswith(("--privileged=", "--cap-add=", "--net=container", "--pid=host")):
            out.append(f"docker run {o}")
        user = opts[i + 1] if o in ("-u", "--user") and i + 1 < len(opts) else o.split("=", 1)[1] if o.startswith("--user=") else None
        if user is not None and user.split(":")[0] in ("0", "root"):
            out.append("the container runs as root")
    if config.get("file_mounts", {}).get("~/.ray/auth_token") != "~/.ray/auth_token":
        out.append("the token file is not copied to the nodes")
    heads = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    for cmd in heads + [c for c in config["worker_start_ray_commands"] if "ray start" in c]:
        if "RAY_AUTH_MODE=" in cmd and "RAY_AUTH_MODE=token" not in cmd:
            out.append(f"token auth switched off in {cmd!r}")
    for cmd in heads:
        args = shlex.split(cmd.split(";")[-1])
        host = next((a.split("=", 1)[1] for a in args if a.startswith("--dashboard-host=")), None)
        if host is None and "--dashboard-host" in args:
            host = args[args.index("--dashboard-host") + 1]
        if host not in (None, "localhost") and not ipaddress.ip_address(host).is_loopback:
            out.append(f"the dashboard and job API listen on {host}")
    return out


def test_cluster_launcher_is_token_protected_with_a_loopback_dashboard() -> None:
    config = _load(DEPLOY / "cluster-launcher.yaml")
    assert launcher_problems(config) == []
    _image_uid()  # the image it runs is non-root
    for mutate in (
        lambda c: c["docker"]["run_options"].remove("--env RAY_AUTH_MODE=token"),
        lambda c: c["docker"]["run_options"].append("--user root"),
        lambda c: c["docker"]["run_options"].append("--privileged"),
        lambda c: c["docker"]["run_options"].append("-e RAY_AUTH_TOKEN=hunter2"),
        lambda c: c.update(file_mounts={}),
        lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")),
        lambda c: c["worker_start_ray_commands"].__setitem__(1, "RAY_AUTH_MODE=disabled " + c["worker_start_ray_commands"][1]),
    ):
        bad = copy.deepcopy(config)
        mutate(bad)
        assert launcher_problems(bad), bad


def test_dockerfile_runs_as_a_non_root_user() -> None:
    uid = _image_uid()
    assert uid != 0
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"useradd --uid {uid} ", text), "the image does not create the user it runs as"
    for name in ("raycluster.yaml", "rayjob.yaml"):  # the pods run as the image's user
        doc = _load(DEPLOY / "kuberay" / name)
        assert {n["runAsUser"] for n in _walk(doc) if "runAsUser" in n} == {uid}, name


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_jobs_are_submitted_with_the_token_and_refused_without(tmp_path: Path) -> None:
    """A real Ray head of the pinned version, started with the head container's environment from
    raycluster.yaml (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN from the Secret, here a random token) and the
    dashboard on 127.0.0.1: `ray job submit` as deploy/README.md shows it (RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN in the submitting shell) runs the job; without the token (401) or with a wrong one
    (403) nothing is submitted, and the job API refuses a plain HTTP request."""
    import secrets
    import signal
    import subprocess
    import tempfile
    import time
    import urllib.error
    import urllib.request

    token = secrets.token_urlsafe(32)
    head = _load(DEPLOY / "kuberay" / "raycluster.yaml")["spec"]["headGroupSpec"]
    manifest_env = {}
    for e in head["template"]["spec"]["containers"][0]["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        if e["name"].startswith("RAY_AUTH_"):
            manifest_env[e["name"]] = token if ref.get("name") == TOKEN_SECRET else e["value"]
    assert manifest_env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    home = tmp_path / "home"
    home.mkdir()  # no ~/.ray/auth_token of this machine is read or written
    venv_bin = Path(sys.executable).parent
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(HOME=str(home), PATH=f"{venv_bin}{os.pathsep}{base.get('PATH', '')}", PYTHONWARNINGS="ignore::DeprecationWarning")
    temp = Path(tempfile.mkdtemp(prefix="cntok", dir="/tmp"))  # Ray's socket paths must stay short
    ports = _free_ports(8)
    dashboard = f"http://127.0.0.1:{ports[1]}"
    args = ["ray", "start", "--head", "--port", str(ports[0]), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(ports[1]), "--ray-client-server-port", str(ports[2]), "--dashboard-agent-listen-port", str(ports[3]),
            "--dashboard-agent-grpc-port", str(ports[4]), "--metrics-export-port", str(ports[5]), "--runtime-env-agent-port", str(ports[6]),
            "--node-manager-port", str(ports[7]), "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
            "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp)]
    proc = subprocess.Popen(args, env={**base, **manifest_env}, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        work = tmp_path / "work"
        work.mkdir()
        (work / "hello.py").write_text("print('connectile-job-ran')\n")

        def submit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            cmd = ["ray", "job", "submit", "--address", dashboard, "--working-dir", str(work), "--", "python", "hello.py"]
            return subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=180)

        refused = submit({"RAY_AUTH_MODE": "disabled"})
        assert refused.returncode != 0 and "connectile-job-ran" not in refused.stdout
        assert "Unauthorized" in refused.stdout + refused.stderr, (refused.stdout + refused.stderr)[-2000:]
        wrong = submit({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token[::-1]})
        assert wrong.returncode != 0 and "Forbidden" in wrong.stdout + wrong.stderr, (wrong.stdout + wrong.stderr)[-2000:]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=30)
        assert err.value.code == 401
        deadline = time.monotonic() + 120
        while True:  # the job agent may still be starting
            ok = submit({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
            if ok.returncode == 0 or "agent" not in ok.stdout + ok.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert ok.returncode == 0 and "connectile-job-ran" in ok.stdout, (ok.stdout + ok.stderr)[-3000:]
        request = urllib.request.Request(f"{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert len(json.loads(resp.read())) == 1  # the one job that got through
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


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
