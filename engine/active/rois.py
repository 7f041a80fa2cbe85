"""ROIs for active learning: one aligned 2D crop (image and predicted mask) per object.

For every object of a prediction (a connected component of the label volume) we take the z-slice in
which it has the largest area, rotate the crop about the object's centre in that slice so that the
first principal axis of its mask is vertical, and cut a ``size x size`` patch (default 128, as in the
paper). For synapses, a second rotation by 180 degrees puts the pre-synaptic side on the left.

The rotation: output pixel ``o`` (row, column) samples the input at ``c + R (o - c_out)`` where ``c``
is the object's centre, ``c_out = ((S - 1) / 2, (S - 1) / 2)`` and ``R`` turns the output's vertical
axis onto the principal axis ``(cos a, sin a)`` (in (y, x)); ``a`` is the ``angle`` column of the
index (degrees, measured from +y towards +x, in (-90, 90], plus 180 when a synapse was flipped).

>>> import numpy as np
>>> yy, xx = np.mgrid[:64, :64]
>>> ellipse = ((xx - 32) / 20.0) ** 2 + ((yy - 32) / 6.0) ** 2 <= 1   # lying flat
>>> a = principal_axis(ellipse)
>>> round(abs(a.angle))
90
>>> roi = align_roi(ellipse.astype(np.uint8) * 200, ellipse, (a.cy, a.cx), a.angle, size=48)
>>> ys, xs = np.nonzero(roi.mask)
>>> bool(ys.std() > 2 * xs.std())   # now upright
True

The run-directory contract (shared with the review page)::

    RUN/rois/rois.zarr/image   (N, S, S) uint8   aligned image crops, row i is roi_id i
    RUN/rois/rois.zarr/mask    (N, S, S) uint8   1 where the object is, 0 elsewhere
    RUN/rois/index.parquet     roi_id (int64, 0..N-1), object_id (uint64), z, y, x (int64, centre of the
                               ROI's slice in volume voxels), area (int64, voxels of that slice), angle
                               (float64, degrees), score (float64, mean predicted probability inside the
                               object, NaN if unknown), voxels (int64, object size), flipped (bool)
    RUN/rois/rois.json         how the ROIs were made (volumes, table, size)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import StorageError
from engine.params import ROI_SIZE

DEFAULT_SIZE = ROI_SIZE
INDEX_COLUMNS = ("roi_id", "object_id", "z", "y", "x", "area", "angle", "score", "voxels", "flipped")


# -- run-directory paths -------------------------------------------------------------------------
def rois_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "rois"


def rois_store(run_dir: str | os.PathLike[str]) -> str:
    """The zarr group holding ``image`` and ``mask``."""
    return str(rois_dir(run_dir) / "rois.zarr")


def index_path(run_dir: str | os.PathLike[str]) -> Path:
    return rois_dir(run_dir) / "index.parquet"


def round_dir(run_dir: str | os.PathLike[str], number: int) -> Path:
    """``RUN/rounds/round-NN`` (NN from 01)."""
    if number < 1:
        raise ValueError(f"round numbers start at 1, got {number}")
    return Path(run_dir) / "rounds" / f"round-{number:02d}"


def existing_rounds(run_dir: str | os.PathLike[str]) -> list[int]:
    """The numbers of the round folders present, in order."""
    base = Path(run_dir) / "rounds"
    out = []
    if base.is_dir():
        for p in base.iterdir():
            if p.is_dir() and p.name.startswith("round-") and p.name[6:].isdigit():
                out.append(int(p.name[6:]))
    return sorted(out)


# -- geometry of one ROI -------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Centre (``cy``, ``cx``) of a 2D mask and the angle (degrees from +y towards +x, in (-90, 90])
    of its first principal axis."""

    cy: float
    cx: float
    angle: float


def principal_axis(mask: np.ndarray) -> Axis:
    """PCA of the pixel coordinates of a 2D mask: its centre and the direction of largest spread.

    A round mask has no preferred direction: its angle is 0 (no rotation).
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("the mask is empty")
    cy, cx = float(ys.mean()), float(xs.mean())
    if ys.size < 2:
        return Axis(cy, cx, 0.0)
    cov = np.cov(np.stack([ys - cy, xs - cx]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    if evals[1] - evals[0] <= 1e-9 * max(evals[1], 1e-12):
        return Axis(cy, cx, 0.0)
    vy, vx = evecs[:, 1]  # eigenvector of the largest eigenvalue, (y, x)
    if vy < 0 or (vy == 0 and vx < 0):
        vy, vx = -vy, -vx
    angle = math.degrees(math.atan2(vx, vy))  # in (-90, 90]
    if angle <= -90.0:
        angle += 180.0
    return Axis(cy, cx, angle)


def rotation_sample(arr: np.ndarray, centre: tuple[float, float], angle: float, size: int, order: int, cval: float = 0.0) -> np.ndarray:
    """Sample a ``size x size`` patch of the 2D array ``arr`` centred on ``centre`` (row, column),
    its vertical axis along ``angle`` (see the module docstring). ``order`` 0 for labels, 1 for images."""
    from scipy.ndimage import affine_transform

    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c_out = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    offset = np.asarray(centre, np.float64) - rot @ c_out
    src = arr.astype(np.float32) if order > 0 else arr
    return np.asarray(affine_transform(src, rot, offset=offset, output_shape=(size, size), order=order, mode="constant", cval=cval))


@dataclass
class AlignedRoi:
    image: np.ndarray  # (S, S) uint8
    mask: np.ndarray  # (S, S) uint8, 0/1
    angle: float
    flipped: bool


def align_roi(
    image: np.ndarray,
    mask: np.ndarray,
    centre: tuple[float, float],
    angle: float,
    size: int = DEFAULT_SIZE,
    pre: np.ndarray | None = None,
) -> AlignedRoi:
    """Rotate and crop one ROI. ``image`` and ``mask`` are 2D windows of the same shape around the
    object, ``centre`` the object's centre in window coordinates and ``angle`` its principal axis
    (:func:`principal_axis`). With ``pre`` (a 2D boolean window: the pre-synaptic voxels), the crop
    is turned by 180 degrees when needed so that the pre-synaptic part of the object lies left of
    the rest."""
    if image.shape != mask.shape:
        raise ValueError(f"image window {image.shape} and mask window {mask.shape} differ")
    m = rotation_sample(mask.astype(np.uint8), centre, angle, size, order=0)
    flipped = False
    if pre is not None:
        p = rotation_sample((pre & mask.astype(bool)).astype(np.uint8), centre, angle, size, order=0)
        rest = m.astype(bool) & ~p.astype(bool)
        if p.any() and rest.any() and np.nonzero(p)[1].mean() > np.nonzero(rest)[1].mean():
            angle, flipped = angle + 180.0, True
            m = rotation_sample(mask.astype(np.uint8), centre, angle, size, order=0)
    img = rotation_sample(image, centre, angle, size, order=1)
    img_u8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return AlignedRoi(img_u8, (m > 0).astype(np.uint8), angle, flipped)


def window_radius(size: int) -> int:
    """Half the side of the window that holds every rotation of a ``size`` crop."""
    return math.ceil(size * math.sqrt(2) / 2.0) + 2


def to_uint8(data: np.ndarray) -> np.ndarray:
    """Image data as uint8: uint8 stays, floats in [0, 1] are scaled by 255, other integers clipped."""
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind == "f":
        return np.clip(np.rint(np.nan_to_num(data) * 255.0), 0, 255).astype(np.uint8)
    if data.dtype == bool:
        return data.astype(np.uint8) * 255
    return np.clip(data, 0, 255).astype(np.uint8)


# -- reading the results -------------------------------------------------------------------------
def read_index(run_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The ROI index of a run as numpy columns (sorted by ``roi_id``)."""
    import pyarrow.parquet as pq

    path = index_path(run_dir)
    if not path.exists():
        raise StorageError(f"no ROIs in {run_dir} ({path} is missing)", "run connectile rois first")
    table = pq.read_table(str(path))
    cols = {c: table.column(c).to_numpy() for c in table.column_names}
    order = np.argsort(cols["roi_id"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def read_crops(run_dir: str | os.PathLike[str], which: str, roi_ids: np.ndarray | None = None) -> np.ndarray:
    """The aligned crops ``which`` ('image' or 'mask') of the given ROIs (default: all), (n, S, S) uint8."""
    from engine.geometry import Box
    from engine.storage import open_volume

    vol = open_volume(f"{rois_store(run_dir)}/{which}")
    if roi_ids is None:
        return vol.read(vol.box)
    ids = np.asarray(roi_ids, np.int64)
    if ids.size == 0:
        return np.zeros((0, *vol.shape[1:]), np.uint8)
    lo, hi = int(ids.min()), int(ids.max()) + 1
    if hi - lo <= 4 * ids.size:  # one contiguous read
        block = vol.read(Box((lo, 0, 0), (hi, *vol.shape[1:])))
        return block[ids - lo]
    return np.stack([vol.read(Box((int(i), 0, 0), (int(i) + 1, *vol.shape[1:])))[0] for i in ids])


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = rois_dir(run_dir) / "rois.json"
    if not path.exists():
        raise StorageError(f"no ROIs in {run_dir} ({path} is missing)", "run connectile rois first")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta
