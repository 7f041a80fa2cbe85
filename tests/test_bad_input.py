"""The bad-input catalogue: each case runs the real ``connectile`` command on a bad input and expects a
non-zero exit, exactly one line on stderr that names the problem, and no output marked done.

Most cases run :func:`engine.cli.main` in this process (starting Python for each would cost about two
seconds a case); cases marked ``own_process`` run as a ``connectile`` process of their own, where its log
is on stderr as a user sees it (a failing block) or where root's right to write anywhere must be dropped
(permissions); the interrupted run is a real subprocess that gets SIGINT. The blockwise commands run
with ``--backend serial`` where a block would run at all (most cases fail before any block).

A case is named ``"COMMAND: what is wrong"``; :func:`test_catalogue_covers_every_command_with_60_kinds`
reads the commands from the real argument parser and counts the distinct names. What looks like bad
input but is not (an all-zero volume where an empty result is an answer, a volume smaller than the
prediction window, paths with spaces and non-ASCII characters) is tested to work at the end.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine.cli import main
from engine.storage import create_volume

REPO = Path(__file__).resolve().parents[1]
SERIAL = ["--backend", "serial", "--no-progress"]


@dataclass
class Case:
    """A bad input: ``make(tmp)`` builds it and returns the argv; ``pattern`` must be in the one error line."""

    name: str
    make: Callable[[Path], list[str]]
    pattern: str
    #: what else must hold afterwards (beyond nothing marked done), e.g. no new checkpoint
    after: Callable[[Path], None] | None = None
    #: environment variables set (None: unset) for the run, e.g. a stale RAY_ADDRESS; or a function of the
    #: case's folder giving them (e.g. a server started for it)
    env: dict[str, str | None] | Callable[[Path], dict[str, str | None]] | None = None
    #: run as a ``connectile`` process of its own (its log on stderr as a user sees it), without root's
    #: right to write through permission bits
    own_process: bool = False


# -- inputs --------------------------------------------------------------------------------------
def _vol(tmp: Path, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None, voxel_size: tuple[float, ...] | None = None) -> str:
    v = create_volume(str(tmp / "in.zarr" / name), data.shape, data.dtype, chunks or tuple(min(16, s) for s in data.shape), voxel_size=voxel_size)
    v.write(v.box, data)
    return v.url


def _mask(tmp: Path, voxel_size: tuple[float, ...] | None = None) -> str:
    m = np.zeros((8, 32, 32), np.uint8)
    m[2:6, 4:20, 4:20] = 1
    return _vol(tmp, "mask", m, voxel_size=voxel_size)


def _png(path: Path, shape: tuple[int, int], value: int = 7) -> None:
    from PIL import Image

    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _slices(tmp: Path, shapes: list[tuple[int, int]]) -> str:
    d = tmp / "slices"
    d.mkdir()
    for i, s in enumerate(shapes):
        _png(d / f"{i}.png", s)
    return str(d)


def _h5(tmp: Path) -> str:
    import h5py

    with h5py.File(tmp / "a.h5", "w") as f:
        f["raw"] = np.zeros((4, 8, 8), np.uint8)
        f["flat"] = np.zeros((8, 8), np.uint8)
    return str(tmp / "a.h5")


def _corrupt_store(tmp: Path) -> str:
    d = tmp / "bad.zarr" / "x"
    d.mkdir(parents=True)
    (d / ".zarray").write_text("{ this is not json")
    return str(d)


def _config(tmp: Path, data: dict | str) -> str:
    p = tmp / "run.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def _run_cfg(tmp: Path, **sections: object) -> dict:
    return {"run_dir": str(tmp / "run"), "runtime": {"backend": "serial", "progress": False}, **sections}


def _affs(tmp: Path, shape: tuple[int, ...], dtype: str = "float32") -> str:
    return _vol(tmp, "affs", np.full(shape, 0.9, dtype), tuple(min(16, s) for s in shape))


def _checkpoint(tmp: Path, name: str, weights: dict, config: dict | None = None, extra: dict | None = None) -> str:
    """A checkpoint written by ``save_checkpoint`` for a U-Net of ``weights``; ``config`` replaces the
    model config in its config.json (two files from different models)."""
    from engine.models import save_checkpoint
    from engine.models.config import ModelConfig
    from engine.models.unet import build_model

    d = tmp / name
    save_checkpoint(d, build_model(ModelConfig(**weights)), ModelConfig(**weights), extra)
    if config is not None:
        meta = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**meta, "model": ModelConfig(**config).model_dump(mode="json")}))
    return str(d)


def _encoder_checkpoint(tmp: Path) -> str:
    """A patch encoder checkpoint as ``connectile embed-train`` writes it (the encoder half of a U-Net)."""
    from engine.models import save_checkpoint
    from engine.models.config import ModelConfig
    from engine.models.unet import PatchEncoder

    cfg = ModelConfig(dims=2, filters=[4, 8])
    save_checkpoint(tmp / "encoder", PatchEncoder(cfg), cfg, {"kind": "patch_encoder", "step": 1, "patch": [1, 32, 32]})
    return str(tmp / "encoder")


def _foreign_checkpoint(tmp: Path) -> str:
    """A folder with a config.json of some other tool's model."""
    d = tmp / "other"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": {"arch": "resnet50", "num_classes": 1000}}))
    (d / "model.safetensors").write_bytes(b"")
    return str(d)


def _predict(tmp: Path, checkpoint: str) -> list[str]:
    return ["predict", checkpoint, _mask(tmp), str(tmp / "o.zarr/prob"), "--window", "1,32,32", *SERIAL]


def _trained(tmp: Path) -> str:
    """A training run that finished (2 steps, a 2D U-Net of filters [4, 8]); returns its config file."""
    rng = np.random.default_rng(0)
    labels = (rng.random((4, 32, 32)) > 0.5).astype(np.uint8) * 255
    cfg = {"model": {"dims": 2, "filters": [4, 8]}, "data": {"raw": _vol(tmp, "raw", labels), "labels": _vol(tmp, "labels", labels)},
           "crop": [1, 32, 32], "batch_size": 1, "steps": 2, "checkpoint_every": 2, "output": str(tmp / "train"), "progress": False}
    path = _config(tmp, cfg)
    assert main(["train", path]) == 0
    return path


def _raw(tmp: Path, shape: tuple[int, int, int] = (8, 32, 32), name: str = "raw", voxel_size: tuple[float, ...] | None = None) -> str:
    data = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    v = create_volume(str(tmp / "in.zarr" / name), shape, np.uint8, tuple(min(16, s) for s in shape), voxel_size=voxel_size)
    v.write(v.box, data)
    return v.url


def _write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _boxes(tmp: Path, stop: list[int], as_selection: bool = True) -> str:
    boxes = [{"start": [0, 0, 0], "stop": stop}]
    return _write(tmp / "boxes.json", json.dumps({"boxes": boxes} if as_selection else boxes))


def _train_cfg(tmp: Path, **over: object) -> list[str]:
    """``connectile train`` on a tiny 2D U-Net; ``over`` replaces top-level keys, ``data`` keys merge."""
    data = {"raw": _raw(tmp), "labels": _mask(tmp), **over.pop("data", {})}  # type: ignore[dict-item]
    cfg = {"model": {"dims": 2, "filters": [4, 8]}, "data": data, "crop": [1, 16, 16], "batch_size": 1, "steps": 1,
           "output": str(tmp / "train"), "progress": False, **over}
    return ["train", _config(tmp, cfg)]


def _truncate(path: Path, keep: int = 200) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _truncated_checkpoint(tmp: Path) -> str:
    ck = _checkpoint(tmp, "ck", {"dims": 2, "filters": [4, 8]})
    _truncate(Path(ck) / "model.safetensors")
    return ck


def _corrupt_chunk(tmp: Path) -> str:
    """A mask volume whose first chunk file holds garbage."""
    url = _mask(tmp)
    chunk = next(p for p in sorted((tmp / "in.zarr" / "mask").rglob("*")) if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"not a compressed chunk" * 4)
    return url


def _zero_axis(tmp: Path) -> str:
    """A zarr array whose metadata says z has size 0 (TensorStore opens it; create_volume refuses to make one)."""
    url = _mask(tmp)
    meta = tmp / "in.zarr" / "mask" / ".zarray"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "shape": [0, 32, 32]}))
    return url


def _zero_h5(tmp: Path) -> str:
    import h5py

    with h5py.File(tmp / "z.h5", "w") as f:
        f["raw"] = np.zeros((0, 8, 8), np.uint8)
    return str(tmp / "z.h5") + ":raw"


def _readonly(tmp: Path) -> Path:
    d = tmp / "readonly"
    d.mkdir()
    d.chmod(0o555)
    return d


def _run_dir(tmp: Path) -> str:
    (tmp / "run").mkdir()
    return str(tmp / "run")


def _bomb(levels: int = 7, width: int = 9) -> str:
    """The "billion laughs": each level an alias list of ``width`` copies of the one before."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _empty_table(tmp: Path) -> tuple[str, str]:
    """(labels, object table) of an all-zero mask, made by ``connectile label`` in a folder beside ``tmp``
    (its own done-markers are not this case's)."""
    prep = tmp.with_name(tmp.name + "-prep")
    zero = _vol(prep, "zero", np.zeros((8, 32, 32), np.uint8))
    assert main(["label", zero, str(prep / "o.zarr/cc"), "--table", str(prep / "t.parquet"), *SERIAL]) == 0
    return str(prep / "o.zarr/cc"), str(prep / "t.parquet")


def _labelled(tmp: Path, voxel_size: tuple[float, ...] | None = None) -> tuple[str, str]:
    """(labels, object table) of the mask, made by ``connectile label`` in a folder beside ``tmp``."""
    prep = tmp.with_name(tmp.name + "-prep")
    assert main(["label", _mask(prep, voxel_size), str(prep / "o.zarr/cc"), "--table", str(prep / "t.parquet"), *SERIAL]) == 0
    return str(prep / "o.zarr/cc"), str(prep / "t.parquet")


def _rois(tmp: Path, *extra: str, image: str | None = None, voxel_size: tuple[float, ...] | None = None) -> list[str]:
    labels, table = _labelled(tmp, voxel_size)
    return ["rois", str(tmp / "run"), "--labels", labels, "--image", image or _raw(tmp), "--table", table, "--size", "16", *extra, *SERIAL]


def _truncated_newest(tmp: Path) -> list[str]:
    """A finished training run whose newest checkpoint lost the end of its weights file."""
    cfg = _trained(tmp)
    _truncate(tmp / "train" / "checkpoints" / "step-000002" / "model.safetensors", 100)
    return ["train", cfg, "--set", "steps=4"]


def _ingest_pair(tmp: Path) -> list[str]:
    raw, labels = tmp / "raw slices", tmp / "label slices"
    raw.mkdir()
    labels.mkdir()
    for i in range(2):
        _png(raw / f"{i}.png", (16, 16))
        _png(labels / f"{i}.png", (16, 20), 1)
    return ["run", _config(tmp, _run_cfg(tmp, ingest={"raw": str(raw), "labels": str(labels)}))]


@functools.cache
def _moto() -> Any:
    """moto's S3 server (tests/s3_server.py) with one bucket, started once for the catalogue."""
    from s3_server import MotoServer

    server = MotoServer()
    atexit.register(server.stop)
    server.create_bucket("connectile-bad-input")
    # a volume in it, written with credentials (in a process of its own: TensorStore keeps the first ones it finds)
    write = "import numpy as np; from engine.storage import create_volume; create_volume('s3://connectile-bad-input/private/in.zarr/mask', (4, 8, 8), 'uint8', (4, 8, 8))"
    creds = {"CONNECTILE_S3_ENDPOINT": server.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    subprocess.run([sys.executable, "-c", write], cwd=REPO, env={**os.environ, **creds}, check=True, timeout=120)
    return server


def _s3_without_credentials(tmp: Path) -> dict[str, str | None]:
    """The endpoint of a real S3-compatible server (private buckets, as S3) and no credentials anywhere."""
    if not (Path(sys.executable).parent / "moto_server").exists():
        pytest.skip("moto's server is not installed (pip install -e '.[dev]')")
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("AWS_", "CONNECTILE_S3"))}
    return {**env, "CONNECTILE_S3_ENDPOINT": _moto().endpoint, "CONNECTILE_S3_RETRY_DELAY": "10ms", "HOME": str(tmp)}


_GCS_ENV = ("GOOGLE_", "GCE_METADATA", "CLOUDSDK_CONFIG", "TENSORSTORE_GCS", "CONNECTILE_GCS", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def _denied_gcs() -> Any:
    from s3_server import DeniedGcs

    server = DeniedGcs()
    atexit.register(server.stop)
    return server


def _gcs_env(tmp: Path, endpoint: str) -> dict[str, str | None]:
    """No Google credentials anywhere (no key file, no gcloud login, not on GCE) and GCS at ``endpoint``."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(_GCS_ENV)}
    return {**env, "TENSORSTORE_GCS_HTTP_URL": endpoint, "GCE_METADATA_ROOT": _UNREACHABLE, "HOME": str(tmp), "CONNECTILE_GCS_RETRY_DELAY": "10ms"}


def _gcs_without_credentials(tmp: Path) -> dict[str, str | None]:
    """GCS reachable (a stand-in whose buckets are private, as a real one's are to an anonymous caller)."""
    return _gcs_env(tmp, _denied_gcs().endpoint)


def _gcs_offline(tmp: Path) -> dict[str, str | None]:
    """Nothing answers where GCS should be (this machine offline): TensorStore would retry for many minutes."""
    return _gcs_env(tmp, f"http://{_UNREACHABLE}")


def _gcs_missing_key_file(tmp: Path) -> dict[str, str | None]:
    return {**_gcs_env(tmp, _denied_gcs().endpoint), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp / "key.json")}


_UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1
_NO_RAY = {"RAY_ADDRESS": _UNREACHABLE}


def _no_folder(path: Path) -> None:
    assert not path.exists(), f"{path} was made (a URL taken as a local path)"


def _only_the_first_checkpoint(tmp: Path) -> None:
    assert sorted(p.name for p in (tmp / "train" / "checkpoints").iterdir()) == ["step-000002"]


CASES = [
    # ingest
    Case("ingest: missing source", lambda t: ["ingest", str(t / "nowhere"), str(t / "o.zarr/raw")], "nowhere"),
    Case("ingest: folder without images", lambda t: (t / "empty").mkdir() or ["ingest", str(t / "empty"), str(t / "o.zarr/raw")], "empty"),
    Case("ingest: corrupt TIFF", lambda t: (t / "x.tif").write_bytes(b"II*\x00garbage" * 10) and ["ingest", str(t / "x.tif"), str(t / "o.zarr/raw")], "x.tif"),
    Case("ingest: slices of different shapes", lambda t: ["ingest", _slices(t, [(16, 16), (16, 16), (16, 20)]), str(t / "o.zarr/raw")], "2.png"),
    Case("ingest: missing HDF5 dataset", lambda t: ["ingest", _h5(t) + ":nope", str(t / "o.zarr/raw")], "nope"),
    Case("ingest: 2D HDF5 dataset", lambda t: ["ingest", _h5(t) + ":flat", str(t / "o.zarr/raw")], "flat"),
    Case("ingest: bad voxel size", lambda t: ["ingest", _h5(t) + ":raw", str(t / "o.zarr/raw"), "--voxel-size", "a,b,c"], "voxel"),
    Case("ingest: zero chunk", lambda t: ["ingest", _h5(t) + ":raw", str(t / "o.zarr/raw"), "--chunks", "0,8,8"], "chunks"),
    Case("ingest: unknown dtype", lambda t: ["ingest", _h5(t) + ":raw", str(t / "o.zarr/raw"), "--dtype", "float99"], "float99"),
    Case("ingest: unwritable output", lambda t: (t / "afile").write_text("x") and ["ingest", _h5(t) + ":raw", str(t / "afile" / "o.zarr/raw")], "afile"),
    # synth
    Case("synth: zero shape", lambda t: ["synth", str(t / "s.zarr"), "--shape", "0,64,64"], "shape"),
    Case("synth: two numbers for a shape", lambda t: ["synth", str(t / "s.zarr"), "--shape", "8,64"], "shape"),
    Case("synth: negative parameter", lambda t: ["synth", str(t / "s.zarr"), "--shape", "8,32,32", "--set", "neuron_spacing=-1"], "neuron_spacing"),
    Case("synth: unknown parameter", lambda t: ["synth", str(t / "s.zarr"), "--shape", "8,32,32", "--set", "colour=3"], "colour"),
    Case("synth: negative parameter flag", lambda t: ["synth", str(t / "s.zarr"), "--shape", "8,32,32", "--neuron-spacing", "-1"], "--neuron-spacing"),
    Case("synth: block not whole chunks", lambda t: ["synth", str(t / "s.zarr"), "--shape", "8,32,32", "--chunks", "8,16,16", "--block", "8,24,24"], "block"),
    # label
    Case("label: missing input store", lambda t: ["label", str(t / "no.zarr/mask"), str(t / "o.zarr/cc"), *SERIAL], "no.zarr"),
    Case("label: corrupt input store", lambda t: ["label", _corrupt_store(t), str(t / "o.zarr/cc"), *SERIAL], "bad.zarr"),
    Case("label: float input without threshold", lambda t: ["label", _vol(t, "p", np.zeros((8, 16, 16), np.float32)), str(t / "o.zarr/cc"), *SERIAL], "threshold"),
    Case("label: threshold outside [0, 1] for uint8", lambda t: ["label", _mask(t), str(t / "o.zarr/cc"), "--threshold", "2", *SERIAL], "threshold"),
    Case("label: NaN threshold", lambda t: ["label", _mask(t), str(t / "o.zarr/cc"), "--threshold", "nan", *SERIAL], "threshold"),
    Case("label: 4D input", lambda t: ["label", _vol(t, "c", np.zeros((2, 8, 16, 16), np.uint8)), str(t / "o.zarr/cc"), *SERIAL], "axes"),
    Case("label: output is the input", lambda t: ["label", (u := _mask(t)), u, *SERIAL], "is the input"),
    Case("label: bad block", lambda t: ["label", _mask(t), str(t / "o.zarr/cc"), "--block", "8,x,8", *SERIAL], "--block"),
    Case("label: zero workers", lambda t: ["label", _mask(t), str(t / "o.zarr/cc"), "--workers", "0", "--no-progress"], "--workers"),
    # segment
    Case("segment: affinities without channels", lambda t: ["segment", _affs(t, (8, 16, 16)), str(t / "o.zarr/seg"), *SERIAL], "(3, z, y, x)"),
    Case("segment: integer affinities", lambda t: ["segment", _affs(t, (3, 8, 16, 16), "int32"), str(t / "o.zarr/seg"), *SERIAL], "int32"),
    Case("segment: quantile outside [0, 1]", lambda t: ["segment", _affs(t, (3, 8, 16, 16)), str(t / "o.zarr/seg"), "--scoring", "quantile", "--quantile", "2", *SERIAL], "quantile"),
    # a checkpoint that does not match the model
    Case("predict: checkpoint of another channel count", lambda t: _predict(t, _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8], "in_channels": 2})),
         "its model takes 2 input channel(s) but"),
    Case("predict: weights of another architecture than its config", lambda t: _predict(t, _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8, 16]}, {"dims": 2, "filters": [4, 8]})),
         "come from different models"),
    Case("predict: a patch encoder checkpoint", lambda t: _predict(t, _encoder_checkpoint(t)), "is a patch encoder"),
    Case("predict: another tool's checkpoint", lambda t: _predict(t, _foreign_checkpoint(t)), "is not a Connectile model checkpoint"),
    Case("train: resume onto a checkpoint of another model", lambda t: ["train", _trained(t), "--set", "steps=4", "--set", "model.filters=[4,16]"],
         "cannot resume from", after=_only_the_first_checkpoint),
    Case("run: predict stage with a checkpoint of another channel count",
         lambda t: ["run", _config(t, _run_cfg(t, rounds={
             "count": 1, "model": _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8], "in_channels": 2}),
             "predict": {"raw": _mask(t), "window": [1, 32, 32], "block": [8, 32, 32], "chunks": [8, 32, 32]}, "label": {}, "query": {},
             "review": {"source": "person"}, "finetune": {"labels": _mask(t), "boxes": str(t / "boxes.json"), "heldout": None}}))],
         "its model takes 2 input channel(s) but"),
    # run
    Case("run: missing config file", lambda t: ["run", str(t / "none.yaml")], "none.yaml"),
    Case("run: invalid YAML", lambda t: ["run", _config(t, "synth: [1, 2\nlabel: x")], "not valid YAML"),
    Case("run: unknown key", lambda t: ["run", _config(t, _run_cfg(t, synth={"shape": [8, 32, 32], "colour": 1}))], "synth.colour"),
    Case("run: wrong type", lambda t: ["run", _config(t, _run_cfg(t, synth={"shape": [8, 32, 32]}, label={"input": "synth.mito", "min_size": "big"}))], "label.min_size"),
    Case("run: missing input", lambda t: ["run", _config(t, _run_cfg(t, label={"input": str(t / "gone.zarr/mask")}))], "gone.zarr"),
    Case("run: unknown stage for --only", lambda t: ["run", _config(t, _run_cfg(t, synth={"shape": [8, 32, 32]})), "--only", "trian"], "trian"),
    Case("run: bad --set", lambda t: ["run", _config(t, _run_cfg(t, synth={"shape": [8, 32, 32]})), "--set", "synth.shape"], "key=value"),
    Case("run: run_dir is a file", lambda t: (t / "f").write_text("x") and ["run", _config(t, {**_run_cfg(t, synth={"shape": [8, 32, 32]}), "run_dir": str(t / "f")})], "is a file"),
    Case("run: NaN in the raw data", lambda t: ["run", _config(t, _run_cfg(t, label={"input": _vol(t, "nan", np.full((8, 16, 16), np.nan, np.float32)), "threshold": 0.5}))], "NaN"),
    # demo
    Case("demo: volume smaller than a chunk", lambda t: ["demo", "--out", str(t / "demo"), "--shape", "8,8,8", *SERIAL], "smaller than one chunk"),
    Case("demo: shape not numbers", lambda t: ["demo", "--out", str(t / "demo"), "--shape", "a,b,c", *SERIAL], "--shape"),
    # config files
    Case("train: config not UTF-8", lambda t: ["train", _write(t / "c.yaml", b"steps: \xff\xfe 10\n")], "not UTF-8"),
    Case("query: --config not UTF-8", lambda t: ["query", _run_dir(t), "--config", _write(t / "q.yaml", b"\xff"), "--no-progress"], "not UTF-8"),
    Case("run: config is a list, not a mapping", lambda t: ["run", _config(t, "- synth\n- label\n")], "must hold a mapping"),
    Case("select: --config is a number, not a mapping", lambda t: ["select", str(t / "e.zarr"), str(t / "sel"), "--config", _config(t, "42\n")], "must hold a mapping"),
    Case("run: YAML aliases expanding past the size limit", lambda t: ["run", _config(t, _bomb())], "expands to more than"),
    Case("embed-train: --config of nested aliases past the size limit", lambda t: ["embed-train", _raw(t), str(t / "et"), "--config", _config(t, _bomb())], "expands to more than"),
    Case("run: YAML alias that contains itself", lambda t: ["run", _config(t, "synth: &s {shape: [8, 32, 32], again: *s}\n")], "contains itself"),
    # the Ray cluster
    Case("label: unreachable --address", lambda t: ["label", _mask(t), str(t / "o.zarr/cc"), "--backend", "ray", "--address", _UNREACHABLE, "--no-progress"],
         "cannot reach the Ray cluster at 127.0.0.1:1 from --address"),
    Case("segment: stale RAY_ADDRESS", lambda t: ["segment", _affs(t, (3, 8, 16, 16)), str(t / "o.zarr/seg"), "--backend", "ray", "--no-progress"],
         "from RAY_ADDRESS", env=_NO_RAY),
    Case("run: unreachable runtime.address", lambda t: ["run", _config(t, {**_run_cfg(t, label={"input": _mask(t)}), "runtime": {"backend": "ray", "address": _UNREACHABLE, "progress": False}})],
         "cannot reach the Ray cluster"),
    Case("demo: stale RAY_ADDRESS", lambda t: ["demo", "--out", str(t / "demo"), "--tiny", "--no-progress"], "unset RAY_ADDRESS", env=_NO_RAY),
    Case("bench: unreachable --address", lambda t: ["bench", "--address", _UNREACHABLE, "--out", str(t / "b.json"), "--no-progress"], "cannot reach the Ray cluster"),
    # the cloud
    Case("label: s3:// path without credentials", lambda t: ["label", "s3://connectile-bad-input/private/in.zarr/mask", str(t / "o.zarr/cc"), *SERIAL],
         "AWS_ACCESS_KEY_ID", env=_s3_without_credentials, own_process=True),
    Case("label: gs:// path without credentials", lambda t: ["label", "gs://connectile-bad-input/in.zarr/mask", str(t / "o.zarr/cc"), *SERIAL],
         "GOOGLE_APPLICATION_CREDENTIALS", env=_gcs_without_credentials, own_process=True),
    Case("run: run_dir on s3://", lambda t: ["run", _config(t, {**_run_cfg(t, synth={"shape": [8, 32, 32]}), "run_dir": "s3://connectile-bad-input/runs/a"})],
         "a run folder must be on a local or shared file system", after=lambda t: _no_folder(Path.cwd() / "s3:")),
    Case("demo: --out on gs://", lambda t: ["demo", "--out", "gs://connectile-bad-input/runs/demo"], "set --out to a local or mounted shared folder",
         after=lambda t: _no_folder(Path.cwd() / "gs:")),
    Case("segment: s3:// store unreachable (offline)", lambda t: ["segment", "s3://connectile-bad-input/in.zarr/affs", str(t / "o.zarr/seg"), *SERIAL],
         "cannot reach S3 at 127.0.0.1:1", env={"CONNECTILE_S3_ENDPOINT": f"http://{_UNREACHABLE}", "HTTPS_PROXY": None, "https_proxy": None}),
    Case("downsample: gs:// store unreachable (offline)", lambda t: ["downsample", "gs://connectile-bad-input/in.zarr/raw", *SERIAL],
         "cannot reach Google Cloud Storage at 127.0.0.1:1", env=_gcs_offline),
    Case("predict: GOOGLE_APPLICATION_CREDENTIALS names no file", lambda t: ["predict", _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8]}),
         "gs://connectile-bad-input/in.zarr/raw", str(t / "o.zarr/p"), *SERIAL], "key.json, which is not a readable file", env=_gcs_missing_key_file),
    # permissions (root writes anywhere: these run as an unprivileged user then)
    Case("label: output folder not writable", lambda t: ["label", _mask(t), str(_readonly(t) / "o.zarr/cc"), *SERIAL], "Permission denied", own_process=True),
    Case("train: output folder not writable", lambda t: _train_cfg(t, output=str(_readonly(t) / "train")), "Permission denied", own_process=True),
    Case("export-labels: output folder not writable", lambda t: ["export-labels", _raw(t), _boxes(t, [4, 16, 16]), str(_readonly(t) / "crops")], "Permission denied", own_process=True),
    Case("run: run_dir not writable", lambda t: ["run", _config(t, {**_run_cfg(t, label={"input": _mask(t)}), "run_dir": str(_readonly(t) / "run")})], "Permission denied", own_process=True),
    # output equal to (or inside) an input
    Case("label: output is the group of the input", lambda t: ["label", _mask(t), str(t / "in.zarr"), *SERIAL], "it is a zarr group"),
    Case("segment: output is the input", lambda t: ["segment", (u := _affs(t, (3, 8, 16, 16))), u, *SERIAL], "is the input AFFS"),
    Case("predict: output is the input", lambda t: ["predict", _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8]}), (u := _mask(t)), u, *SERIAL], "is the input IN"),
    Case("predict: output inside the checkpoint", lambda t: ["predict", (c := _checkpoint(t, "ck", {"dims": 2, "filters": [4, 8]})), _mask(t), c + "/p.zarr/prob", *SERIAL],
         "lies inside the input CHECKPOINT"),
    Case("downsample: --out is the input", lambda t: ["downsample", (u := _mask(t)), "--out", u, *SERIAL], "is the input IN"),
    Case("embed: output is the input", lambda t: ["embed", (u := _raw(t)), u, "--encoder", _encoder_checkpoint(t), *SERIAL], "is the input VOLUME"),
    Case("embed-train: run folder inside the volume", lambda t: ["embed-train", (u := _raw(t)), u + "/run", "--steps", "1"], "lies inside the input VOLUME"),
    Case("select: output folder is the embeddings", lambda t: ["select", str(t / "e.zarr"), str(t / "e.zarr")], "is the input EMB"),
    Case("export-labels: output folder is the volume", lambda t: ["export-labels", (u := _raw(t)), _boxes(t, [4, 16, 16]), u], "is the input VOLUME"),
    Case("import-labels: labels inside the crops folder", lambda t: ["import-labels", str(t), str(t / "labels.zarr/labels")], "lies inside the input CROPS"),
    Case("rois: run folder inside the labels volume", lambda t: ["rois", (u := _mask(t)) + "/run", "--labels", u, "--image", _raw(t), "--table", str(t / "t.parquet"), *SERIAL],
         "lies inside the input --labels"),
    Case("ingest: output is the source folder", lambda t: ["ingest", (u := _slices(t, [(16, 16), (16, 16)])), u], "is the input SRC"),
    Case("run: run_dir is an input volume", lambda t: ["run", _config(t, {**_run_cfg(t, label={"input": (u := _mask(t))}), "run_dir": u + "/run"})],
         "lies inside the input label.input"),
    Case("demo: --out is a volume", lambda t: ["demo", "--out", _mask(t), "--tiny", *SERIAL], "is a volume, not a folder for a run"),
    Case("view: --state-out inside the raw volume", lambda t: ["view", str(t), "--raw", (u := _mask(t)), "--state-out", u + "/.zarray", "--once"],
         "lies inside the input"),
    Case("train: output is data.raw", lambda t: _train_cfg(t, output=str(t / "in.zarr" / "raw")), "is the input data.raw"),
    # boxes, crops, windows and the volume
    Case("export-labels: box outside the volume", lambda t: ["export-labels", _raw(t), _boxes(t, [4, 64, 64]), str(t / "crops")], "lies outside the volume"),
    Case("train: labelled box outside the volume", lambda t: _train_cfg(t, data={"boxes": _boxes(t, [4, 64, 64], as_selection=False)}), "outside the data"),
    Case("train: data.roi outside the volume", lambda t: _train_cfg(t, data={"roi": {"start": [0, 0, 0], "stop": [8, 64, 64]}}), "data.roi"),
    Case("train: crop larger than the volume", lambda t: _train_cfg(t, crop=[1, 64, 64]), "larger than the data"),
    Case("embed: patch larger than the volume", lambda t: ["embed", _raw(t), str(t / "e.zarr"), "--encoder", _encoder_checkpoint(t), "--patch", "1,64,64", *SERIAL],
         "does not fit in the volume"),
    Case("embed-train: patch larger than the volume", lambda t: ["embed-train", _raw(t), str(t / "et"), "--patch", "1,64,64", "--steps", "1", "--no-progress"],
         "larger than the volume"),
    # raw, labels and masks that do not belong together
    Case("train: raw and labels of different shapes", lambda t: _train_cfg(t, data={"raw": _raw(t, (8, 16, 16), "r")}), "of one shape"),
    Case("train: raw and labels of different voxel sizes",
         lambda t: _train_cfg(t, data={"raw": _raw(t, name="r", voxel_size=(40, 4, 4)), "labels": _vol(t, "l", np.ones((8, 32, 32), np.uint8), voxel_size=(40, 8, 8))}),
         "same voxel size"),
    Case("rois: image and labels of different shapes", lambda t: ["rois", str(t / "run"), "--labels", _mask(t), "--image", _raw(t, (8, 16, 16)), "--table", str(t / "t.parquet"), *SERIAL],
         "has shape (8, 16, 16)"),
    Case("rois: image and labels of different voxel sizes", lambda t: _rois(t, image=_raw(t, voxel_size=(40, 4, 4)), voxel_size=(40, 8, 8)), "voxels of (40.0, 4.0, 4.0) nm"),
    Case("rois: probabilities of another shape", lambda t: _rois(t, "--prob", _raw(t, (8, 16, 16), "prob")), "--prob"),
    Case("run: ingest raw and labels of different shapes", _ingest_pair, "ingest.labels"),
    # empty volumes
    Case("train: all-zero labels", lambda t: _train_cfg(t, data={"labels": _vol(t, "zero", np.zeros((8, 32, 32), np.uint8))}), "no foreground"),
    Case("embed-train: all-zero volume", lambda t: ["embed-train", _vol(t, "zero", np.zeros((8, 32, 32), np.uint8)), str(t / "et"), "--patch", "1,16,16", "--steps", "1"],
         "looks empty"),
    Case("rois: labels without objects (all zero)", lambda t: ["rois", str(t / "run"), "--labels", (lt := _empty_table(t))[0], "--image", _raw(t), "--table", lt[1], *SERIAL],
         "holds no objects"),
    Case("label: zero-sized axis", lambda t: ["label", _zero_axis(t), str(t / "o.zarr/cc"), *SERIAL], "an axis of size 0"),
    Case("downsample: zero-sized axis", lambda t: ["downsample", _zero_axis(t), *SERIAL], "an axis of size 0"),
    Case("ingest: HDF5 dataset with a zero-sized axis", lambda t: ["ingest", _zero_h5(t), str(t / "o.zarr/raw")], "shape (0, 8, 8)"),
    # broken files
    Case("predict: truncated checkpoint", lambda t: _predict(t, _truncated_checkpoint(t)), "are corrupt"),
    Case("train: resume from a truncated checkpoint", _truncated_newest, "cannot be read", after=_only_the_first_checkpoint),
    Case("embed: missing encoder", lambda t: ["embed", _raw(t), str(t / "e.zarr"), "--encoder", str(t / "noenc"), *SERIAL], "no checkpoint at --encoder"),
    Case("label: corrupt chunk", lambda t: ["label", _corrupt_chunk(t), str(t / "o.zarr/cc"), *SERIAL], "mask/0", own_process=True),
    # missing inputs of the other commands
    Case("downsample: missing input", lambda t: ["downsample", str(t / "no.zarr/x"), *SERIAL], "no.zarr"),
    Case("downsample: negative --levels", lambda t: ["downsample", _mask(t), "--levels", "-1", *SERIAL], "--levels"),
    Case("select: missing embeddings", lambda t: ["select", str(t / "none.zarr"), str(t / "sel")], "none.zarr"),
    Case("export-labels: missing selection", lambda t: ["export-labels", _raw(t), str(t / "s.json"), str(t / "crops")], "s.json"),
    Case("import-labels: no manifest", lambda t: ["import-labels", str(t / "crops"), str(t / "l.zarr/labels")], "no manifest"),
    Case("rois: missing object table", lambda t: ["rois", str(t / "run"), "--labels", _mask(t), "--image", _raw(t), "--table", str(t / "no.parquet"), *SERIAL], "no.parquet"),
    Case("query: no ROIs in the run", lambda t: ["query", _run_dir(t), "--no-progress"], "run connectile rois first"),
    Case("review: missing run folder", lambda t: ["review", str(t / "run")], "does not exist"),
    Case("review: port out of range", lambda t: ["review", str(t / "run"), "--port", "99999"], "--port"),
    Case("round: missing run folder", lambda t: ["round", str(t / "run")], "does not exist"),
    Case("view: missing run folder", lambda t: ["view", str(t / "run"), "--once"], "does not exist"),
    Case("view: port out of range", lambda t: ["view", str(t / "run"), "--port", "-1", "--once"], "--port"),
    Case("bench: unknown benchmark", lambda t: ["bench", "--only", "nosuch", "--out", str(t / "b.json"), "--no-progress"], "nosuch"),
    Case("bench: missing benchmarks folder", lambda t: ["bench", "--benchmarks", str(t / "nob"), "--out", str(t / "b.json"), "--no-progress"], "nob"),
]


def _nothing_done(tmp: Path) -> list[str]:
    """Done-markers with done rows, finished results and manifest entries marked done under ``tmp``."""
    found = []
    for db in tmp.rglob("markers.sqlite"):
        with sqlite3.connect(db) as conn:
            n = conn.execute("SELECT COUNT(*) FROM blocks WHERE status=1").fetchone()[0]
        if n:
            found.append(f"{db}: {n} done")
    found += [str(p) for p in tmp.rglob("result.json")]
    for m in tmp.rglob("manifest.json"):
        found += [f"{m}: {k} done" for k, e in json.loads(m.read_text()).get("stages", {}).items() if e["status"] == "done"]
    return found


def _unprivileged(argv: list[str]) -> tuple[int, str]:
    """``connectile argv`` in a subprocess without the right to override permission bits: where the
    tests run as root (which writes through them), as root without CAP_DAC_OVERRIDE (util-linux setpriv)."""
    from conftest import unprivileged_prefix

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    prefix = unprivileged_prefix()
    proc = subprocess.run([*prefix, sys.executable, "-m", "engine.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    # TensorStore's AWS SDK logs through absl (E1206 12:00:00.000000 ...), before Python runs: not connectile's lines
    return proc.returncode, "\n".join(ln for ln in proc.stderr.splitlines() if not re.match(r"^[EWI]\d{4} \d", ln))


def _case(entry: object) -> Case:
    """The case of a catalogue entry (a Case, or a pytest.param around one)."""
    values = getattr(entry, "values", None)
    return values[0] if values else entry  # type: ignore[return-value]


KINDS = [_case(e) for e in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in KINDS])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    env = case.env(tmp_path) if callable(case.env) else case.env or {}
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    argv = case.make(tmp_path)
    assert argv[0] == case.name.split(":")[0], "a case is named after the command it runs"
    capsys.readouterr()
    if case.own_process:
        code, err = _unprivileged(argv)
    else:
        code = main(argv)
        err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith(f"connectile {argv[0]}: error: "), lines[0]
    assert case.pattern in lines[0], lines[0]
    assert _nothing_done(tmp_path) == []
    if case.after is not None:
        case.after(tmp_path)


def _commands() -> list[str]:
    """Every ``connectile`` sub-command, from the real argument parser."""
    import argparse

    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_catalogue_covers_every_command_with_60_kinds() -> None:
    """At least 60 distinct kinds of bad input, and every command has at least one."""
    names = [c.name for c in KINDS]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    assert len(set(names)) >= 60, len(set(names))
    commands = _commands()
    assert len(commands) >= 20, commands  # the parser is read, not a list kept here
    covered = {c.name.split(":")[0] for c in KINDS}  # test_bad_input checks that this is the command each case runs
    assert all(c.name.split(":")[0] in commands for c in KINDS), [c.name for c in KINDS if c.name.split(":")[0] not in commands]
    assert sorted(set(commands) - covered) == []


# -- what is not an error ---------------------------------------------------------------------------
def _whole(url: str) -> np.ndarray:
    from engine.storage import open_volume

    v = open_volume(url)
    return v.read(v.box)


def test_an_all_zero_volume_is_a_valid_empty_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty (all-zero) volume is data, not a mistake, for the commands that measure or transform it:
    ``label`` finds 0 objects (an empty mask is a valid answer: nothing was predicted there), ``segment``
    of all-zero affinities (no voxel joined to its neighbour) and ``downsample`` write all-zero outputs. It is an
    error only where it makes the work meaningless, and there the catalogue has it: training on labels
    without foreground, an encoder trained on a constant image, ROIs of labels without objects."""
    zero = _vol(tmp_path, "zero", np.zeros((8, 32, 32), np.uint8))
    assert main(["label", zero, str(tmp_path / "o.zarr/cc"), "--table", str(tmp_path / "t.parquet"), *SERIAL]) == 0
    assert ": 0 objects" in capsys.readouterr().out
    assert not _whole(str(tmp_path / "o.zarr/cc")).any()
    affs = _vol(tmp_path, "affs", np.zeros((3, 8, 32, 32), np.float32))
    assert main(["segment", affs, str(tmp_path / "o.zarr/seg"), *SERIAL]) == 0, capsys.readouterr().err
    assert not _whole(str(tmp_path / "o.zarr/seg")).any()
    assert main(["downsample", zero, "--min-size", "8", *SERIAL]) == 0, capsys.readouterr().err
    assert not _whole(str(tmp_path / "in.zarr/zero_pyramid/s1")).any()


def test_a_volume_smaller_than_the_prediction_window_is_padded(tmp_path: Path) -> None:
    """``predict`` with a window larger than the volume pads it as MONAI's sliding-window inference does (a
    small volume is still predicted, and each voxel equals the same window over the padded volume);
    where a window must fit (training crops, SimSiam and embedding patches) the catalogue has the error."""
    ck = _checkpoint(tmp_path, "ck", {"dims": 2, "filters": [4, 8]})
    small = _vol(tmp_path, "small", np.random.default_rng(1).integers(0, 255, (2, 24, 20), np.uint8))
    assert main(["predict", ck, small, str(tmp_path / "o.zarr/p"), "--window", "1,32,32", "--dtype", "float32", *SERIAL]) == 0
    got = _whole(str(tmp_path / "o.zarr/p"))
    assert got.shape == (2, 24, 20) and np.isfinite(got).all()
    padded = np.zeros((2, 32, 32), np.uint8)
    padded[:, 4:28, 6:26] = _whole(small)  # MONAI pads symmetrically
    big = _vol(tmp_path, "padded", padded)
    assert main(["predict", ck, big, str(tmp_path / "o.zarr/q"), "--window", "1,32,32", "--dtype", "float32", *SERIAL]) == 0
    np.testing.assert_allclose(got, _whole(str(tmp_path / "o.zarr/q"))[:, 4:28, 6:26], atol=1e-5)


def test_paths_with_spaces_and_non_ascii_characters_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Folders and files named with spaces, accents and CJK characters go through ingest, label (with its
    object table), downsample, predict, export-labels / import-labels, train and a pipeline run."""
    from engine.storage import open_volume

    home = tmp_path / "Daten mit Leerzeichen" / "mitochondrien ß é 漢字"
    home.mkdir(parents=True)
    slices = home / "Schnitte ü"
    slices.mkdir()
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[1:3, 4:12, 4:12] = 1
    masks[:, 20:28, 20:30] = 1
    from PIL import Image

    for i, m in enumerate(masks):
        Image.fromarray(m * 255).save(slices / f"schnitt {i} é.png")
    vol = str(home / "ausgabe ö.zarr" / "maske ä")
    assert main(["ingest", str(slices), vol, "--binarize", "--chunks", "4,16,16"]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(_whole(vol), masks)
    cc = str(home / "ausgabe ö.zarr" / "objekte 対象")
    assert main(["label", vol, cc, "--table", str(home / "tabelle é.parquet"), *SERIAL]) == 0
    assert ": 2 objects" in capsys.readouterr().out
    assert main(["downsample", vol, "--min-size", "8", *SERIAL]) == 0
    assert open_volume(vol + "_pyramid/s1").spatial_shape == (2, 16, 16)
    ck = _checkpoint(home, "modell ü", {"dims": 2, "filters": [4, 8]})
    assert main(["predict", ck, vol, str(home / "vorhersage.zarr" / "wahrscheinlichkeit ß"), "--window", "1,32,32", *SERIAL]) == 0
    sel = _write(home / "auswahl é.json", json.dumps({"boxes": [{"start": [0, 0, 0], "stop": [2, 16, 16]}]}))
    crops = home / "ausschnitte 漢"
    assert main(["export-labels", vol, sel, str(crops), "--no-tiff"]) == 0
    crop = open_volume(str(crops / "crop_000.zarr" / "raw"))
    labels = create_volume(str(crops / "crop_000.zarr" / "labels"), crop.spatial_shape, np.uint8, crop.spatial_shape)
    labels.write(labels.box, crop.read(crop.box))
    assert main(["import-labels", str(crops), str(home / "etiketten ä.zarr" / "labels")]) == 0
    np.testing.assert_array_equal(_whole(str(home / "etiketten ä.zarr" / "labels"))[:2, :16, :16], masks[:2, :16, :16])
    cfg = {"model": {"dims": 2, "filters": [4, 8]}, "data": {"raw": vol, "labels": vol}, "crop": [1, 16, 16], "batch_size": 1, "steps": 2,
           "checkpoint_every": 2, "output": str(home / "training ü"), "progress": False}
    assert main(["train", _write(home / "konfiguration é.yaml", yaml.safe_dump(cfg, allow_unicode=True))]) == 0
    assert (home / "training ü" / "checkpoints" / "step-000002").is_dir()
    run = {"run_dir": str(home / "lauf ö"), "runtime": {"backend": "serial", "progress": False}, "label": {"input": vol}}
    assert main(["run", _write(home / "lauf é.yaml", yaml.safe_dump(run, allow_unicode=True))]) == 0, capsys.readouterr().err
    manifest = json.loads((home / "lauf ö" / "manifest.json").read_text())
    assert manifest["stages"]["label"]["status"] == "done"


def _done_blocks(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM blocks WHERE status=1").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return 0


def test_an_interrupted_run_exits_130_marks_nothing_done_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C (SIGINT) in the middle of ``connectile run``: one line saying how to resume, exit 130,
    and the stage stays unfinished in the manifest; the same command again finishes it, computing only
    the blocks that were not done."""
    cfg = _config(tmp_path, _run_cfg(tmp_path, synth={"shape": [16, 256, 256], "chunks": [8, 32, 32]}))  # 2 x 8 x 8 = 128 blocks
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", cfg], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "run" / ".state" / "synth" / "markers.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _done_blocks(db) == 0 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130
    assert lines == ["connectile run: interrupted; run the same command again to resume"]
    entry = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["synth"]
    assert entry["status"] == "failed" and entry["outputs"] == {}

    done_before = _done_blocks(db)
    assert 0 < done_before < 128
    assert main(["run", cfg]) == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["synth"]
    assert entry["status"] == "done" and entry["outputs"]
    summary = json.loads((db.parent / "summary.json").read_text())
    assert (summary["already_done"], summary["done"]) == (done_before, 128 - done_before)
    assert _done_blocks(db) == 128
