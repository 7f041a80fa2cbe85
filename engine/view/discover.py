"""What a run directory holds for a viewer: its volumes, the selected sub-volumes, the queried ROIs.

Volumes are found by walking the run (zarr, zarr3 and n5 arrays, at most a few folders deep; hidden
folders, ``rois/`` and pyramid levels skipped) unless given explicitly; the selection is the first
``selection.json`` (a list of ``{"start", "stop"}`` boxes, or an object holding one under ``boxes`` or
``selected``); the ROIs are those of ``rounds/round-NN/queries.parquet`` placed by ``rois/index.parquet``,
with their answers where given.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.active.answers import AnswerStore, answers_path, round_dirs
from engine.errors import StorageError
from engine.view.files import ViewError
from engine.view.state import Kind, Layer, volume_layer

log = logging.getLogger(__name__)

MAX_DEPTH = 4
_LEVEL = re.compile(r"^s\d+$")


@dataclass
class RunView:
    """The layers, boxes and points of a run, ready for :func:`engine.view.build_state`."""

    run_dir: Path
    layers: list[Layer]
    boxes: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    selection_file: Path | None = None


def _is_array(folder: Path) -> bool:
    if (folder / ".zarray").is_file():
        return True
    for meta, key in (("zarr.json", "node_type"), ("attributes.json", "dimensions")):
        path = folder / meta
        if path.is_file():
            try:
                obj = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (key == "node_type" and obj.get(key) == "array") or (key == "dimensions" and key in obj):
                return True
    return False


def find_arrays(run_dir: Path, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Arrays under ``run_dir`` (not in hidden folders, ``rois/``, pyramid groups or levels ``s1``...)."""
    out: list[Path] = []
    root_depth = len(run_dir.parts)
    for folder, dirs, _files in os.walk(run_dir):
        here = Path(folder)
        depth = len(here.parts) - root_depth
        if here != run_dir and _is_array(here):
            dirs[:] = []
            if _LEVEL.match(here.name) and here.name != "s0":
                continue
            out.append(here)
            continue
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and not (here == run_dir and d in ("rois", "rounds")) and not d.endswith("_pyramid") and depth < max_depth
        )
    return sorted(out)


def _boxes(path: Path) -> list[dict[str, Any]]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ViewError(f"selection {path} is not JSON ({err})", "write it again with connectile select") from err
    items = obj
    if isinstance(obj, dict):
        items = next((obj[k] for k in ("boxes", "selected", "selection") if isinstance(obj.get(k), list)), None)
    if not isinstance(items, list):
        raise ViewError(f"selection {path} holds no list of boxes", 'give a list of {"start": [z, y, x], "stop": [z, y, x]}')
    boxes = []
    for i, b in enumerate(items):
        if not (isinstance(b, dict) and len(b.get("start", ())) == 3 and len(b.get("stop", ())) == 3):
            raise ViewError(f"selection {path}: box {i} is {b!r}", 'each box is {"start": [z, y, x], "stop": [z, y, x]}')
        boxes.append({"start": [int(v) for v in b["start"]], "stop": [int(v) for v in b["stop"]], "label": f"selected {i + 1} of {len(items)}"})
    return boxes


def _points(run_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    index_path = run_dir / "rois" / "index.parquet"
    if not index_path.is_file():
        return []
    index = pq.read_table(index_path, columns=["roi_id", "z", "y", "x"]).to_pydict()
    where = {int(r): (int(z), int(y), int(x)) for r, z, y, x in zip(index["roi_id"], index["z"], index["y"], index["x"], strict=True)}
    points: dict[int, dict[str, Any]] = {}
    for d in round_dirs(run_dir):
        qpath = d / "queries.parquet"
        if not qpath.is_file():
            continue
        q = pq.read_table(qpath, columns=["roi_id", "cluster"]).to_pydict()
        answers: dict[int, bool] = {}
        if answers_path(d).is_file():
            with AnswerStore(answers_path(d)) as store:
                answers = store.answers()
        for rid, cluster in zip(q["roi_id"], q["cluster"], strict=True):
            rid = int(rid)
            if rid not in where:
                log.warning("%s queries ROI %d, which rois/index.parquet does not hold", qpath, rid)
                continue
            z, y, x = where[rid]
            answer = -1 if rid not in answers else int(answers[rid])
            text = {-1: "not reviewed", 1: "True", 0: "False"}[answer]
            points[rid] = {"roi_id": rid, "z": z, "y": y, "x": x, "cluster": int(cluster), "round": d.name, "answer": answer,
                           "label": f"ROI {rid}, cluster {int(cluster)}, {d.name}: {text}"}
    return [points[k] for k in sorted(points)]


def discover_run(
    run_dir: str | os.PathLike[str],
    *,
    raw: str | None = None,
    predictions: Sequence[str] = (),
    segmentations: Sequence[str] = (),
    selection: str | os.PathLike[str] | None = None,
) -> RunView:
    """Collect what to show; explicit volumes replace the ones found by walking the run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ViewError(f"run directory {run_dir} does not exist", "give the RUN folder (or any folder) and the volumes with --raw/--pred/--seg")
    layers: list[Layer] = []
    explicit: list[tuple[str, Kind]] = [(raw, "image")] if raw else []
    explicit += [(p, "prediction") for p in predictions]
    explicit += [(s, "segmentation") for s in segmentations]
    if explicit:
        layers = [volume_layer(url, kind) for url, kind in explicit]
    else:
        for path in find_arrays(run):
            try:
                layers.append(volume_layer(path))
            except StorageError as err:
                log.warning("skipping %s: %s", path, err)
        order = {"image": 0, "prediction": 1, "segmentation": 2}
        layers.sort(key=lambda layer: (order[layer.kind], layer.name))
    names: dict[str, int] = {}
    for layer in layers:  # neuroglancer needs unique layer names
        n = names.get(layer.name, 0)
        names[layer.name] = n + 1
        if n:
            layer.name = f"{layer.name}-{n + 1}"
    sel_path: Path | None = Path(selection) if selection is not None else None
    if sel_path is None:
        found = sorted(run.glob("selection.json")) + sorted(run.glob("*/selection.json")) + sorted(run.glob("*/*/selection.json"))
        sel_path = found[0] if found else None
    elif not sel_path.is_file():
        raise ViewError(f"selection file {selection} does not exist", "give the selection.json written by connectile select")
    boxes = _boxes(sel_path) if sel_path is not None else []
    return RunView(run, layers, boxes + _round_boxes(run), _points(run), sel_path)


def _round_boxes(run: Path) -> list[dict[str, Any]]:
    """The boxes a round asked to paint (``round-NN/query/boxes.json``, or ``boxes.json`` of a query folder itself)."""
    out: list[dict[str, Any]] = []
    for path in sorted(run.glob("boxes.json")) + sorted(run.glob("round-*/query/boxes.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(doc, dict) or "choice" not in doc:  # not a round's query (annotate and finetune write boxes.json too)
            continue
        items = doc.get("boxes", [])
        out += [{"start": [int(v) for v in b["start"]], "stop": [int(v) for v in b["stop"]],
                 "label": f"round {doc.get('round')}: box {i + 1} of {len(items)} to paint"} for i, b in enumerate(items)]
    return out
