"""Annotation hand-off: export the chosen sub-volumes for the people who label them, and bring the
dense labels back into a labels volume aligned with the raw data.

``export_crops`` writes, for every box of a selection, ``crop_NNN.zarr/raw`` (zarr, with ``box`` and
the voxel size as attributes) and ``crop_NNN.tif`` (ImageJ TIFF with the voxel size; the box in the
description), plus ``manifest.json`` listing the crops, their boxes, shapes and where labels go::

    crops/manifest.json          {"volume": ..., "voxel_size": [z, y, x], "crops": [{"name": "crop_000",
                                  "box": {"start": [...], "stop": [...]}, "shape": [...], ...}]}
    crops/crop_000.zarr/raw      raw voxels of box 0
    crops/crop_000.tif           the same as TIFF
    crops/crop_000.zarr/labels   <- the annotator writes dense labels here (zarr), or
    crops/crop_000_labels.tif    <- here (TIFF, same shape as crop_000.tif)

``import_labels`` checks every crop's labels before writing any: the shape must equal the box's, and
a box recorded with the labels (zarr attribute ``box``, or JSON in the TIFF description) must equal the
manifest's. A crop that does not match is refused with a message naming it; nothing is written then.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, StorageError
from engine.geometry import Box
from engine.storage import create_volume, open_volume
from engine.storage.safety import write_json_atomic

log = logging.getLogger(__name__)


def read_boxes(selection: str | os.PathLike[str]) -> list[Box]:
    """The boxes of a ``selection.json`` (or any JSON with ``boxes: [{start, stop}]``)."""
    path = Path(selection)
    try:
        doc = json.loads(path.read_text())
        return [Box(tuple(b["start"]), tuple(b["stop"])) for b in doc["boxes"]]
    except FileNotFoundError as err:
        raise ConfigError(f"no selection file at {path}", "run connectile select first") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not a selection file (needs 'boxes': [{{'start': [z,y,x], 'stop': [z,y,x]}}])") from err


def export_crops(volume: str, selection: str | os.PathLike[str], out: str | os.PathLike[str], *, tiff: bool = True, zarr: bool = True) -> Path:
    """Write every selected box of ``volume`` as zarr and TIFF crops with a manifest; returns it."""
    import tifffile

    vol = open_volume(volume)
    boxes = read_boxes(selection)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    crops: list[dict[str, Any]] = []
    for i, box in enumerate(boxes):
        if not vol.box.contains(box):
            raise ConfigError(f"box {i} {box} lies outside the volume {volume} of shape {vol.spatial_shape}", "select on embeddings of this volume")
        name = f"crop_{i:03d}"
        data = vol.read(box)
        entry: dict[str, Any] = {"name": name, "box": box.to_dict(), "shape": list(box.shape), "dtype": str(data.dtype)}
        if zarr:
            url = str(outdir / f"{name}.zarr" / "raw")
            chunks = tuple(min(s, c) for s, c in zip(box.shape, (32, 128, 128), strict=True))
            crop = create_volume(url, box.shape, data.dtype, chunks, voxel_size=vol.voxel_size, attrs={"box": box.to_dict(), "volume": vol.url}, overwrite=True)
            crop.write(Box.from_shape(box.shape), data)
            entry["raw_zarr"] = f"{name}.zarr/raw"
            entry["labels_zarr"] = f"{name}.zarr/labels"
        if tiff:
            desc = json.dumps({"box": box.to_dict(), "voxel_size": list(vol.voxel_size), "volume": vol.url})
            vz, vy, vx = vol.voxel_size
            tifffile.imwrite(
                outdir / f"{name}.tif", data, imagej=True, resolution=(1.0 / vx, 1.0 / vy), metadata={"spacing": vz, "unit": "nm", "axes": "ZYX", "Info": desc}
            )
            entry["raw_tiff"] = f"{name}.tif"
            entry["labels_tiff"] = f"{name}_labels.tif"
        crops.append(entry)
    manifest = {"volume": vol.url, "shape": list(vol.spatial_shape), "voxel_size": list(vol.voxel_size), "selection": str(selection), "crops": crops}
    path = outdir / "manifest.json"
    write_json_atomic(path, manifest)
    log.info("exported %d crops of %s to %s", len(crops), vol.url, outdir)
    return path


def _tiff_box(path: Path) -> dict[str, Any] | None:
    """The box recorded in a TIFF's description (ImageJ Info or plain JSON), if any."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        texts = []
        if tif.imagej_metadata:
            texts.append(str(tif.imagej_metadata.get("Info", "")))
        texts.append(tif.pages[0].description or "")  # type: ignore[union-attr]
    for text in texts:
        start = text.find("{")
        if start < 0:
            continue
        try:
            doc = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(doc, dict) and "box" in doc:
            return dict(doc["box"])
    return None


def _read_crop_labels(folder: Path, entry: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any] | None, str]:
    """(labels, recorded box or None, where) of one crop: zarr first, else TIFF."""
    import tifffile

    zarr_rel = entry.get("labels_zarr")
    if zarr_rel and (folder / zarr_rel).exists():
        vol = open_volume(str(folder / zarr_rel))
        return vol.read(vol.box), vol.attrs.get("box"), str(folder / zarr_rel)
    tiff_rel = entry.get("labels_tiff")
    if tiff_rel and (folder / tiff_rel).exists():
        path = folder / tiff_rel
        return np.asarray(tifffile.imread(path)), _tiff_box(path), str(path)
    raise StorageError(
        f"crop {entry['name']} has no labels (looked for {zarr_rel} and {tiff_rel} in {folder})", "label every crop, or remove it from manifest.json"
    )


def import_labels(manifest: str | os.PathLike[str], labels: str, *, chunks: tuple[int, int, int] = (32, 128, 128)) -> int:
    """Write every crop's labels into the uint64 volume ``labels`` (created like the raw volume).

    All crops are checked first; a crop whose labels have another shape than its box, a box other
    than the manifest's, or a non-integer dtype is refused and nothing is written. Returns the
    number of crops written.
    """
    mpath = Path(manifest)
    if mpath.is_dir():
        mpath = mpath / "manifest.json"
    try:
        doc = json.loads(mpath.read_text())
        crops = list(doc["crops"])
        shape = tuple(doc["shape"])
    except FileNotFoundError as err:
        raise ConfigError(f"no manifest at {mpath}", "give the folder written by connectile export-labels") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{mpath} is not an export manifest", "give the manifest.json written by connectile export-labels") from err
    folder = mpath.parent
    checked: list[tuple[Box, np.ndarray]] = []
    for entry in crops:
        box = Box(tuple(entry["box"]["start"]), tuple(entry["box"]["stop"]))
        data, recorded, where = _read_crop_labels(folder, entry)
        if data.shape != box.shape:
            raise ConfigError(
                f"labels of {entry['name']} ({where}) have shape {data.shape} but the crop's box {box} has shape {box.shape}",
                "label the exported crop itself, without cropping or padding it",
            )
        if recorded is not None and (list(recorded.get("start", [])) != list(box.start) or list(recorded.get("stop", [])) != list(box.stop)):
            raise ConfigError(
                f"labels of {entry['name']} ({where}) were made for box {recorded['start']}:{recorded['stop']}, not {list(box.start)}:{list(box.stop)}",
                "check that the file belongs to this crop",
            )
        if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
            raise ConfigError(f"labels of {entry['name']} ({where}) have dtype {data.dtype}; labels must be integers", "save label ids, not probabilities")
        if np.issubdtype(data.dtype, np.signedinteger) and data.size and int(data.min()) < 0:
            raise ConfigError(f"labels of {entry['name']} ({where}) hold negative ids", "use 0 for background and positive ids for objects")
        checked.append((box, data))
    out = create_volume(
        labels, shape, "uint64", tuple(min(s, c) for s, c in zip(shape, chunks, strict=True)),
        voxel_size=doc.get("voxel_size"), attrs={"labelled_boxes": [c["box"] for c in crops]}, layer_type="segmentation",
    )
    out = open_volume(labels, mode="r+")
    for box, data in checked:
        out.write(box, data.astype(np.uint64))
    log.info("imported labels of %d crops into %s", len(checked), labels)
    return len(checked)
