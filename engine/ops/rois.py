"""ROI extraction, blockwise: :class:`RoiOp` and the driver :func:`extract_rois`.

The driver reads the object table (``connectile label --table``), numbers the objects (``roi_id`` =
rank of the object id) and creates ``RUN/rois/rois.zarr/{image,mask}`` with one chunk per row, so
that two workers never write the same chunk. Every block of a grid over the label volume then
handles the objects whose centroid lies in its write box: it reads their bounding boxes from the
label volume (one read for the whole batch), finds each object's slice of largest area, reads a
small window of the image (and of the probabilities / pre-synaptic map) around it, aligns it
(:mod:`engine.active.rois`), writes the rows, and leaves its part of the index in a scratch file.
The driver gathers those into ``RUN/rois/index.parquet``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import PrivateAttr
from typing_extensions import Unpack

from engine.active.rois import (
    DEFAULT_SIZE,
    INDEX_COLUMNS,
    align_roi,
    index_path,
    principal_axis,
    rois_dir,
    rois_store,
    to_uint8,
    window_radius,
)
from engine.errors import ConfigError, StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.ops.scratch import Scratch
from engine.options import check_keys
from engine.params import RoisParams
from engine.runtime import BlockOp
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import CompletionRecord, Session
from engine.storage import Volume, create_volume, open_volume
from engine.storage.kv import npz_bytes
from engine.storage.safety import write_atomic
from engine.values import to_unit

log = logging.getLogger(__name__)

#: the defaults of :func:`extract_rois`'s settings (declared once, in :class:`~engine.params.RoisParams`)
_D = RoisParams()
DEFAULT_BLOCK = _D.block
#: a block reads the union of its objects' bounding boxes at once up to this many voxels, else one by one
UNION_READ_MAX_VOXELS = 1 << 26


def _read_padded(vol: Volume, box: Box, fill: float = 0) -> np.ndarray:
    """Read ``box`` (may stick out of the volume); the outside is ``fill``."""
    inside = box.intersect(vol.box)
    out = np.full(box.shape, fill, dtype=vol.dtype)
    if not inside.empty:
        out[inside.to_slices(relative_to=box)] = vol.read(inside)
    return out


class RoiOp(BlockOp):
    """One block: the aligned ROIs of the objects whose centroid lies in ``block.write``."""

    kind: ClassVar[str] = "active-rois"
    labels: str
    image: str
    out: str  # RUN/rois
    objects_digest: str
    prob: str | None = None
    pre: str | None = None
    pre_value: int = 1
    size: int = DEFAULT_SIZE
    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    _labels: Volume | None = PrivateAttr(default=None)
    _image: Volume | None = PrivateAttr(default=None)
    _prob: Volume | None = PrivateAttr(default=None)
    _pre: Volume | None = PrivateAttr(default=None)
    _img_out: Volume | None = PrivateAttr(default=None)
    _mask_out: Volume | None = PrivateAttr(default=None)
    _objects: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)
    _owner: np.ndarray | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)

    @property
    def objects_file(self) -> Path:
        return Path(self.out) / "objects.npz"

    def outputs(self) -> list[str]:
        """The crops it writes and its scratch index files (their done-markers belong to them)."""
        store = rois_store(Path(self.out).parent)
        return [f"{store}/image", f"{store}/mask", str(Path(self.out) / ".scratch")]

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._labels = open_volume(self.labels)
        self._image = open_volume(self.image)
        self._prob = open_volume(self.prob) if self.prob else None
        self._pre = open_volume(self.pre) if self.pre else None
        store = rois_store(Path(self.out).parent)
        self._img_out = open_volume(f"{store}/image", "r+")
        self._mask_out = open_volume(f"{store}/mask", "r+")
        with np.load(self.objects_file) as z:
            self._objects = {k: z[k] for k in z.files}
        grid = BlockGrid(Box.from_shape(self.shape), write_shape=self.block)
        self._owner = owner_blocks(self._objects["centroid"], grid)
        self._scratch = Scratch(str(Path(self.out) / ".scratch"))

    def is_empty(self, block: Block) -> bool:
        if self._owner is None:
            self.setup()
        assert self._owner is not None
        return not bool((self._owner == block.id).any())

    def process(self, block: Block) -> dict[str, float]:
        if self._owner is None:
            self.setup()
        assert self._owner is not None and self._labels is not None and self._scratch is not None
        rows = np.flatnonzero(self._owner == block.id)
        obj = {k: v[rows] for k, v in self._objects.items()}
        boxes = [Box(tuple(b[:3]), tuple(b[3:])) for b in obj["bbox"]]
        union = _union(boxes)
        crop: np.ndarray | None = None
        if union is not None and union.size <= UNION_READ_MAX_VOXELS:
            crop = self._labels.read(union)
        out: dict[str, list[Any]] = {c: [] for c in INDEX_COLUMNS}
        for i in range(rows.size):
            box = boxes[i]
            if crop is not None and union is not None:
                sub = crop[box.shift(tuple(-s for s in union.start)).to_slices()]
            else:
                sub = self._labels.read(box)
            rec = self._one(int(obj["id"][i]), sub, box, int(obj["roi_id"][i]), float(obj["score"][i]))
            rec["voxels"] = int(obj["voxels"][i])
            for c in INDEX_COLUMNS:
                out[c].append(rec[c])
        arrays = {c: np.asarray(v) for c, v in out.items()}
        self._scratch.put_arrays(f"index/{block.id}", arrays)
        return {"rois": float(rows.size)}

    def _one(self, object_id: int, sub: np.ndarray, box: Box, roi_id: int, score: float) -> dict[str, Any]:
        assert self._labels is not None and self._image is not None
        assert self._img_out is not None and self._mask_out is not None
        obj = sub == np.asarray(object_id, sub.dtype)
        areas = obj.sum(axis=(1, 2))
        if not areas.any():
            raise StorageError(
                f"object {object_id} of the table is not in {self.labels} inside its bounding box {box}",
                "the object table does not belong to this label volume; label it again with --table",
            )
        kz = int(np.argmax(areas))
        z = box.start[0] + kz
        axis = principal_axis(obj[kz])
        cy, cx = box.start[1] + axis.cy, box.start[2] + axis.cx
        r = window_radius(self.size)
        iy, ix = round(cy), round(cx)
        win = Box((z, iy - r, ix - r), (z + 1, iy + r + 1, ix + r + 1))
        centre = (cy - (iy - r), cx - (ix - r))
        labels2d = _read_padded(self._labels, win)[0]
        mask2d = labels2d == np.asarray(object_id, labels2d.dtype)
        image2d = to_uint8(_read_padded(self._image, win)[0])
        pre2d = None
        if self._pre is not None:
            pre2d = _read_padded(self._pre, win)[0] == self.pre_value
        if not np.isfinite(score) and self._prob is not None:
            p = _read_padded(self._prob, win)[0]
            pf = to_unit(p, dtype=np.float64)
            score = float(pf[mask2d].mean())
        roi = align_roi(image2d, mask2d, centre, axis.angle, self.size, pre2d)
        row = Box((roi_id, 0, 0), (roi_id + 1, self.size, self.size))
        self._img_out.write(row, roi.image[None])
        self._mask_out.write(row, roi.mask[None])
        return {
            "roi_id": roi_id, "object_id": object_id, "z": z, "y": iy, "x": ix, "area": int(areas[kz]),
            "angle": float(roi.angle), "score": score, "voxels": 0, "flipped": roi.flipped,
        }


def _union(boxes: Sequence[Box]) -> Box | None:
    if not boxes:
        return None
    start = tuple(min(b.start[k] for b in boxes) for k in range(3))
    stop = tuple(max(b.stop[k] for b in boxes) for k in range(3))
    return Box(start, stop)


def owner_blocks(centroids: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """The id of the block whose write box holds each (floored, clipped) centroid."""
    c = np.floor(np.asarray(centroids, np.float64)).astype(np.int64).reshape(-1, 3)
    start, stop = np.asarray(grid.total.start), np.asarray(grid.total.stop)
    c = np.clip(c, start, stop - 1)
    idx = (c - start) // np.asarray(grid.write_shape)
    gs = np.asarray(grid.grid_shape)
    return np.asarray((idx[:, 0] * gs[1] + idx[:, 1]) * gs[2] + idx[:, 2], np.int64)


# -- the driver ----------------------------------------------------------------------------------
@dataclass
class RoiResult:
    """What :func:`extract_rois` did."""

    rois: int
    index: str
    store: str
    size: int
    blocks: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _objects_from_table(table: str | os.PathLike[str], min_voxels: int) -> dict[str, np.ndarray]:
    from engine.storage.object_table import read_object_table

    cols = read_object_table(table)
    need = ("id", "voxels", "z0", "y0", "x0", "z1", "y1", "x1", "cz", "cy", "cx")
    missing = [c for c in need if c not in cols]
    if missing:
        raise StorageError(f"the object table {table} lacks the columns {missing}", "write it with connectile label --table")
    keep = cols["voxels"] >= max(1, min_voxels)
    ids = cols["id"][keep].astype(np.uint64)
    order = np.argsort(ids, kind="stable")
    sel = np.flatnonzero(keep)[order]
    score = cols["mean_probability"][sel].astype(np.float64) if "mean_probability" in cols else np.full(sel.size, np.nan)
    return {
        "id": ids[order],
        "roi_id": np.arange(sel.size, dtype=np.int64),
        "voxels": cols["voxels"][sel].astype(np.int64),
        "bbox": np.stack([cols[c][sel] for c in ("z0", "y0", "x0", "z1", "y1", "x1")], axis=1).astype(np.int64),
        "centroid": np.stack([cols[c][sel] for c in ("cz", "cy", "cx")], axis=1).astype(np.float64),
        "score": score,
    }


def _check_table_fits(labels: Volume, objects: dict[str, np.ndarray], table: str | os.PathLike[str], sample: int = 8) -> None:
    """A cheap driver-side check that the table describes this label volume: a few objects (spread
    over the table) must lie in their bounding boxes, with their voxel counts."""
    n = objects["id"].size
    box_all = labels.box
    for i in np.unique(np.linspace(0, n - 1, min(sample, n)).astype(np.int64)).tolist():
        b = objects["bbox"][i]
        box = Box(tuple(b[:3]), tuple(b[3:]))
        if not box_all.contains(box) or box.empty:
            raise StorageError(f"object {objects['id'][i]} of the table {table} has the bounding box {box}, outside {labels.url} {box_all}",
                               "the object table does not belong to this label volume; label it again with --table")
        got = int((labels.read(box) == objects["id"][i].astype(labels.dtype)).sum())
        if got != int(objects["voxels"][i]):
            raise StorageError(
                f"object {objects['id'][i]} of the table {table} has {int(objects['voxels'][i])} voxels but {got} in {labels.url} inside its bounding box",
                "the object table does not belong to this label volume; label it again with --table")


def _digest(objects: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(objects):
        h.update(k.encode())
        h.update(np.ascontiguousarray(objects[k]).tobytes())
    return h.hexdigest()[:16]


class RoiRun(RuntimeOptions, total=False):
    """How an extraction runs (the ROIs are the same whatever these say): the runtime options and
    ``block``, the blocks of the grid over the label volume (default :data:`DEFAULT_BLOCK`); the
    done-markers go to ``RUN/rois/.state`` unless ``state_dir`` says otherwise."""

    block: Sequence[int]


def extract_rois(
    run_dir: str | os.PathLike[str],
    labels: str,
    image: str,
    table: str | os.PathLike[str],
    *,
    prob: str | None = None,
    pre: str | None = None,
    pre_value: int = _D.pre_value,
    size: int = _D.size,
    min_voxels: int = _D.min_voxels,
    **run: Unpack[RoiRun],
) -> RoiResult:
    """Extract the aligned ROIs of every object of ``table`` (an object table of ``labels``) into
    ``run_dir/rois`` (see :mod:`engine.active.rois` for the layout).

    ``image`` is the EM volume, ``prob`` the predicted probabilities (for ``score`` where the table
    has none), ``pre`` a volume whose value ``pre_value`` marks pre-synaptic voxels (synapses: the
    pre-synaptic side is then put on the left). Objects smaller than ``min_voxels`` are left out.
    Runs blockwise and resumes like every blockwise command (``run``: :class:`RoiRun`).
    """
    check_keys(run, RoiRun, "extract_rois")
    t0 = time.perf_counter()
    if size < 8:
        raise ConfigError(f"size (--size) must be at least 8 pixels, got {size}", f"e.g. {_D.size}")
    lab, img = _check_roi_inputs(labels, image, prob, pre)
    objects = _objects_from_table(table, min_voxels)
    n = int(objects["id"].size)
    if n == 0:
        raise StorageError(f"the object table {table} holds no objects of at least {max(1, min_voxels)} voxels", "check the threshold and min_voxels (--min-voxels)")
    _check_table_fits(lab, objects, table)
    out, overwrite = rois_dir(run_dir), run.get("overwrite", False)
    digest = _digest(objects)
    record = CompletionRecord(out / "rois.json", {"labels": lab.url, "image": img.url, "table": os.fspath(table), "prob": prob, "pre": pre,
                                                  "pre_value": pre_value, "size": size, "min_voxels": min_voxels, "objects": digest, "rois": n})
    if index_path(run_dir).exists() or overwrite:
        saved = record.finished(overwrite, f"rois: {out}", f"{out} holds ROIs made with other parameters",
                                "pass --overwrite to extract them again, or use another run directory")
        if saved is not None:
            return RoiResult(**saved)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        index_path(run_dir).unlink(missing_ok=True)
        Scratch(str(out / ".scratch")).remove()
    store = _create_roi_store(run_dir, objects, size, (lab.url, img.url), overwrite)
    block = run.get("block", DEFAULT_BLOCK)
    grid = BlockGrid(Box.from_shape(lab.spatial_shape), write_shape=tuple(min(int(b), s) for b, s in zip(block, lab.spatial_shape, strict=True)))
    op = RoiOp(labels=lab.url, image=img.url, out=str(out), objects_digest=digest, prob=prob, pre=pre, pre_value=pre_value,
               size=size, shape=lab.spatial_shape, block=grid.write_shape)  # type: ignore[arg-type]
    with Session(run, share_workers=False) as session:  # one pass: run_blockwise starts and ends the workers
        summary = session.run(op, grid, "rois", state_dir=run.get("state_dir") or out / ".state")
    _write_index(index_path(run_dir), _gather_index(out, objects, grid, n))
    result = RoiResult(rois=n, index=str(index_path(run_dir)), store=store, size=size, blocks=grid.num_blocks, seconds=time.perf_counter() - t0)
    record.save(result.to_dict(), {u: summary.run_id for u in op.outputs()[:2]})  # the scratch goes below; the crops must stay
    Scratch(str(out / ".scratch")).remove()
    log.info("rois: %d ROIs of %d x %d pixels in %s, %.1f s", n, size, size, out, result.seconds)
    return result


def _check_roi_inputs(labels: str, image: str, prob: str | None, pre: str | None) -> tuple[Volume, Volume]:
    """The label and image volumes, checked against each other and against ``prob`` and ``pre``."""
    lab = open_volume(labels)
    if len(lab.shape) != 3 or lab.dtype.kind not in "iu":
        raise StorageError(f"{lab.url} is {lab.dtype} of shape {lab.shape}, not a (z, y, x) label volume", "give the output of connectile label")
    img = open_volume(image)
    if img.spatial_shape != lab.spatial_shape:
        raise StorageError(f"the image {img.url} has shape {img.spatial_shape}, the labels {lab.url} {lab.spatial_shape}", "give the image the labels were predicted from")
    unset = (1.0, 1.0, 1.0)  # what a volume written without a voxel size records: it matches any
    if unset not in (tuple(img.voxel_size), tuple(lab.voxel_size)) and not np.allclose(img.voxel_size, lab.voxel_size):
        raise StorageError(
            f"the image {img.url} has voxels of {tuple(img.voxel_size)} nm, the labels {lab.url} of {tuple(lab.voxel_size)} nm",
            "give the image the labels were predicted from (or fix the voxel size attribute of one)",
        )
    for name, url in (("prob", prob), ("pre", pre)):
        if url is not None and open_volume(url).spatial_shape != lab.spatial_shape:
            raise StorageError(f"--{name} {url} does not have the shape {lab.spatial_shape} of the labels", f"give the {name} volume of this prediction")
    return lab, img


def _create_roi_store(run_dir: str | os.PathLike[str], objects: dict[str, np.ndarray], size: int, inputs: tuple[str, str], overwrite: bool) -> str:
    """Write the numbered objects and create the crop arrays (one chunk per row); return the store."""
    write_atomic(rois_dir(run_dir) / "objects.npz", npz_bytes(**objects))
    store = rois_store(run_dir)
    n = int(objects["id"].size)
    for name in ("image", "mask"):
        create_volume(f"{store}/{name}", (n, size, size), "uint8", (1, size, size), overwrite=overwrite, inputs=inputs,
                      attrs={"description": f"aligned ROI {name} crops; row i is roi_id i"})
    return store


def _gather_index(out: Path, objects: dict[str, np.ndarray], grid: BlockGrid, n: int) -> dict[str, np.ndarray]:
    """The index rows the blocks left in the scratch, in ``roi_id`` order (all ``n`` of them)."""
    owners = np.unique(owner_blocks(objects["centroid"], grid))
    parts = Scratch(str(out / ".scratch")).need_arrays_many([f"index/{b}" for b in owners.tolist()])
    cols: dict[str, list[np.ndarray]] = {c: [] for c in INDEX_COLUMNS}
    for z in parts:
        for c in INDEX_COLUMNS:
            cols[c].append(z[c])
    merged = {c: np.concatenate(v) for c, v in cols.items()}
    order = np.argsort(merged["roi_id"])
    merged = {c: v[order] for c, v in merged.items()}
    if not np.array_equal(merged["roi_id"], np.arange(n)):
        raise StorageError(f"the ROI index of {out} is incomplete ({merged['roi_id'].size} of {n} rows)", "run again with --overwrite")
    return merged


def _write_index(path: Path, cols: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"roi_id": pa.int64(), "object_id": pa.uint64(), "z": pa.int64(), "y": pa.int64(), "x": pa.int64(), "area": pa.int64(),
             "angle": pa.float64(), "score": pa.float64(), "voxels": pa.int64(), "flipped": pa.bool_()}
    table = pa.table({c: pa.array(cols[c], type=types[c]) for c in INDEX_COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue().to_pybytes())
