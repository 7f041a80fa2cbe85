"""Neuroglancer states as plain JSON: volume layers (zarr, zarr3, n5, precomputed; OME-Zarr pyramids
where built), local annotation layers (boxes, points) and the link that opens them.

No neuroglancer package is needed. Coordinates: every layer's output dimensions are named ``z``, ``y``,
``x`` in metres (voxel size in nm times 1e-9), so layers of different volumes line up; annotations are
in voxels of the first volume.

>>> s = build_state([], boxes=[{"start": [0, 0, 0], "stop": [4, 8, 8]}], voxel_size=(40.0, 4.0, 4.0), shape=(4, 8, 8))
>>> s["layers"][0]["annotations"][0]["type"]
'axis_aligned_bounding_box'
>>> neuroglancer_link({"layers": []})
'https://neuroglancer-demo.appspot.com/#!%7B%22layers%22%3A%5B%5D%7D'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from engine.storage import Volume, open_volume, parse_url
from engine.storage.ome import find_pyramid
from engine.view.files import ViewError

Kind = Literal["image", "prediction", "segmentation"]
DEFAULT_NEUROGLANCER = "https://neuroglancer-demo.appspot.com"
_SCHEME = {"zarr": "zarr2", "zarr3": "zarr3", "n5": "n5", "precomputed": "precomputed"}
LABEL_DTYPES = ("uint32", "uint64", "int32", "int64")
PREDICTION_SHADER = """#uicontrol vec3 color color(default="#ff7f00")
#uicontrol invlerp normalized
void main() {
  float v = normalized();
  emitRGBA(vec4(color * v, v));
}
"""
POINT_SHADER = """void main() {
  int a = int(prop_answer());
  if (a == 1) { setColor(vec3(0.2, 1.0, 0.2)); }
  else if (a == 0) { setColor(vec3(1.0, 0.25, 0.2)); }
  else { setColor(vec3(1.0, 0.9, 0.1)); }
}
"""


@dataclass
class Layer:
    """A volume to show: where it is, what it holds, and (filled in by :func:`volume_layer`) its layout."""

    name: str
    url: str
    kind: Kind
    format: str = "zarr"
    shape: tuple[int, ...] = ()
    dtype: str = ""
    voxel_size: tuple[float, ...] = (1.0, 1.0, 1.0)
    offset: tuple[float, ...] = (0.0, 0.0, 0.0)
    pyramid: str | None = None  # the OME-Zarr multiscale group, where one was built
    levels: list[str] = field(default_factory=list)

    @property
    def source_path(self) -> str:
        """What neuroglancer reads: the pyramid group when there is one, else the array."""
        return self.pyramid or self.url

    @property
    def source_format(self) -> str:
        if self.pyramid is not None:
            return "zarr3" if self.format == "zarr3" else "zarr"
        return self.format


def default_kind(vol: Volume, name: str) -> Kind:
    """Labels by dtype; an image where the name says raw/image/em; else a prediction."""
    if str(vol.dtype) in LABEL_DTYPES:
        return "segmentation"
    lowered = name.lower()
    if any(k in lowered for k in ("raw", "image", "img", "em")) and not any(k in lowered for k in ("pred", "prob", "aff")):
        return "image"
    return "prediction"


def volume_layer(url: str | os.PathLike[str], kind: Kind | None = None, name: str | None = None) -> Layer:
    """Open a volume and describe it as a layer (its pyramid is used where ``connectile downsample`` built one)."""
    from engine.storage.ome import multiscale_levels

    vol = open_volume(url)
    if len(vol.shape) > 4:
        raise ViewError(f"{vol.url} has {len(vol.shape)} axes {vol.shape}; neuroglancer layers here are (z, y, x) or (c, z, y, x)", "pick fewer channels")
    layer_name = name or vol.loc.name
    if layer_name in ("s0",):
        layer_name = vol.loc.parent().name
    pyramid = find_pyramid(vol.url) if vol.format in ("zarr", "zarr3") else None
    return Layer(
        name=layer_name,
        url=vol.url,
        kind=kind or default_kind(vol, layer_name),
        format=vol.format,
        shape=vol.shape,
        dtype=str(vol.dtype),
        voxel_size=vol.voxel_size,
        offset=vol.offset,
        pyramid=pyramid,
        levels=multiscale_levels(pyramid) if pyramid else [],
    )


def _dims(voxel_size: Sequence[float]) -> dict[str, list[Any]]:
    return {a: [float(v) * 1e-9, "m"] for a, v in zip("zyx", voxel_size, strict=True)}


def source_url(layer: Layer, http_url: str | None) -> str:
    """``zarr2://http://...`` for a served local store, ``zarr2://gs://bucket/...`` for a cloud one."""
    scheme = _SCHEME.get(layer.source_format)
    if scheme is None:
        raise ViewError(f"neuroglancer cannot read {layer.source_format} volumes ({layer.url})", "convert it to zarr first")
    if http_url is not None:
        return f"{scheme}://{http_url}"
    loc = parse_url(layer.source_path)
    if loc.scheme in ("gs", "s3"):
        return f"{scheme}://{loc.scheme}://{loc.bucket}/{loc.path.strip('/')}"
    raise ViewError(f"{layer.url} is local and no file server serves it", "serve it with connectile view (it starts one)")


def layer_json(layer: Layer, url: str) -> dict[str, Any]:
    """The neuroglancer layer of a volume; ``url`` from :func:`source_url`."""
    source: dict[str, Any] = {"url": url}
    if layer.pyramid is None and layer.format != "precomputed":
        # a bare array carries no units for neuroglancer: name its axes z, y, x and give the voxel size
        lead = len(layer.shape) - 3
        out = {**({"c^": [1, ""]} if lead == 1 else {}), **_dims(layer.voxel_size)}
        vox_off = [o / v for o, v in zip(layer.offset, layer.voxel_size, strict=True)]
        rank = lead + 3
        matrix = [[1.0 if c == r else 0.0 for c in range(rank)] + [0.0 if r < lead else vox_off[r - lead]] for r in range(rank)]
        source["transform"] = {"outputDimensions": out, "matrix": matrix}
    out_layer: dict[str, Any] = {"type": "segmentation" if layer.kind == "segmentation" else "image", "name": layer.name, "source": source}
    if layer.kind == "prediction":
        out_layer.update({"shader": PREDICTION_SHADER, "blend": "additive", "opacity": 1.0})
    elif layer.kind == "segmentation":
        out_layer.update({"selectedAlpha": 0.35, "notSelectedAlpha": 0.15})
    return out_layer


def build_state(
    layers: Sequence[Layer],
    *,
    url_of: Callable[[Layer], str | None] | None = None,
    boxes: Sequence[dict[str, Any]] = (),
    points: Sequence[dict[str, Any]] = (),
    voxel_size: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The whole state: volume layers in the order given, then the boxes and the points.

    ``url_of(layer)`` gives the HTTP URL a file server serves the layer at (None: a cloud URL).
    Boxes are ``{"start": [z, y, x], "stop": [z, y, x], "label": ...}`` in voxels; points are
    ``{"z", "y", "x", "roi_id", "cluster", "round", "answer"}`` (answer 1, 0 or -1 for none).
    """
    vs = tuple(voxel_size) if voxel_size is not None else (layers[0].voxel_size if layers else (1.0, 1.0, 1.0))
    sh = tuple(shape) if shape is not None else (layers[0].shape[-3:] if layers else (1, 1, 1))
    out_layers: list[dict[str, Any]] = []
    for layer in layers:
        http = url_of(layer) if url_of is not None else None
        out_layers.append(layer_json(layer, source_url(layer, http)))
    ann_source = {"url": "local://annotations", "transform": {"outputDimensions": _dims(vs)}}
    if boxes:
        out_layers.append(
            {
                "type": "annotation",
                "name": "selected sub-volumes",
                "source": ann_source,
                "annotationColor": "#00c8ff",
                "annotations": [
                    {
                        "type": "axis_aligned_bounding_box",
                        "id": f"box{i}",
                        "pointA": [float(v) for v in b["start"]],
                        "pointB": [float(v) for v in b["stop"]],
                        "description": str(b.get("label", f"sub-volume {i}")),
                    }
                    for i, b in enumerate(boxes)
                ],
            }
        )
    if points:
        out_layers.append(
            {
                "type": "annotation",
                "name": "queried ROIs",
                "source": ann_source,
                "annotationColor": "#ffe119",
                "annotationProperties": [
                    {"id": "roi_id", "type": "uint32"},
                    {"id": "cluster", "type": "int32"},
                    {"id": "answer", "type": "int8", "description": "1 True, 0 False, -1 not reviewed"},
                ],
                "shader": POINT_SHADER,
                "annotations": [
                    {
                        "type": "point",
                        "id": f"roi{int(p['roi_id'])}",
                        "point": [float(p["z"]) + 0.5, float(p["y"]) + 0.5, float(p["x"]) + 0.5],
                        "props": [int(p["roi_id"]), int(p.get("cluster", -1)), int(p.get("answer", -1))],
                        "description": str(p.get("label", f"ROI {int(p['roi_id'])}")),
                    }
                    for p in points
                ],
            }
        )
    centre = [s / 2 for s in sh]
    state: dict[str, Any] = {
        "dimensions": {a: [float(v) * 1e-9, "m"] for a, v in zip("xyz", reversed(vs), strict=True)},
        "position": [centre[2], centre[1], centre[0]],
        "crossSectionScale": max(1.0, float(max(sh[1], sh[2])) / 1024),
        "projectionScale": float(2 * np.linalg.norm(np.asarray(sh, float) * np.asarray(vs, float)) / min(vs)),
        "layers": out_layers,
        "layout": "4panel",
        "showSlices": True,
    }
    if out_layers:
        state["selectedLayer"] = {"layer": out_layers[0]["name"], "visible": True}
    return state


def neuroglancer_link(state: dict[str, Any], base: str = DEFAULT_NEUROGLANCER) -> str:
    """``BASE/#!<url-encoded JSON>``: opens the state in any neuroglancer."""
    text = json.dumps(state, separators=(",", ":"))
    return f"{base.rstrip('/')}/#!{quote(text, safe='')}"
