"""Image slices: find them (a folder, a glob or one file) in numeric order, inspect and decode them.

Slices sort *naturally*: runs of digits compare as numbers, so ``2.png`` comes before ``10.png`` and
``iso.2600.png`` … ``iso.2849.png`` stay in order whatever their padding.

>>> sorted(["10.png", "2.png", "1.png"], key=natural_key)
['1.png', '2.png', '10.png']

Every slice is decoded on its own, so a folder may mix PIL modes (binary masks saved partly as
mode ``'1'`` and partly as ``'L'``): a ``'1'`` slice reads as 0/255 like an ``'L'`` mask. Colour
slices (RGB, RGBA, LA) read as gray when their colour channels are equal; colour label maps need
``rgb_to_label``, which turns each colour into one id (``r << 16 | g << 8 | b`` for 8-bit colour;
fully transparent pixels are 0).
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from engine.errors import StorageError

log = logging.getLogger(__name__)

PNG_EXTENSIONS = (".png",)
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = PNG_EXTENSIONS + TIFF_EXTENSIONS

_DIGITS = re.compile(r"(\d+)")
_GLOB_MAGIC = re.compile(r"[*?[]")

#: PIL mode -> (sample dtype, samples per pixel); mode '1' reads as bool and is stored as uint8.
_PIL_MODES: dict[str, tuple[str, int]] = {
    "1": ("uint8", 1),
    "L": ("uint8", 1),
    "P": ("uint8", 1),
    "LA": ("uint8", 2),
    "PA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "I;16": ("uint16", 1),
    "I;16L": ("uint16", 1),
    "I;16B": ("uint16", 1),
    "I": ("int32", 1),
    "F": ("float32", 1),
}


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that compares runs of digits as numbers (``a2`` < ``a10``), text case-insensitively."""
    parts = _DIGITS.split(text)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))


def natural_sorted(paths: list[str]) -> list[str]:
    """``paths`` in natural order (ties broken by the exact text, so the order is total)."""
    return sorted(paths, key=lambda p: (natural_key(p), p))


def is_tiff(path: str) -> bool:
    return path.lower().endswith(TIFF_EXTENSIONS)


def _is_image(path: str) -> bool:
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def find_images(src: str) -> list[str]:
    """The image files that ``src`` names (a folder, a glob or one file), in natural order.

    Raises :class:`StorageError` when nothing is there, when nothing there is a PNG or TIFF, or when
    PNG and TIFF files are mixed (which of them are the slices is then ambiguous).
    """
    if _GLOB_MAGIC.search(src):
        matches = [p for p in glob.glob(src, recursive=True) if os.path.isfile(p)]
        if not matches:
            raise StorageError(f"no files match {src}", "check the pattern (and quote it so that the shell does not expand it)")
        files = [p for p in matches if _is_image(p)]
        if not files:
            raise StorageError(f"none of the {len(matches)} files matching {src} is a PNG or TIFF image", "point the pattern at .png or .tif files")
        where = src
    elif os.path.isdir(src):
        files = [os.path.join(src, n) for n in os.listdir(src) if _is_image(n) and os.path.isfile(os.path.join(src, n))]
        if not files:
            raise StorageError(
                f"folder {src} holds no PNG or TIFF slices",
                f"point to a folder of .png/.tif slices or to a glob such as {os.path.join(src, '*.png')}",
            )
        where = f"folder {src}"
    elif os.path.isfile(src):
        if not _is_image(src):
            raise StorageError(
                f"cannot ingest {src}: not a PNG, TIFF or HDF5 file",
                "give a folder or glob of PNG/TIFF slices, a multi-page TIFF, or FILE.h5[:DATASET]",
            )
        return [src]
    else:
        raise StorageError(f"source {src} does not exist", "check the path (a folder, a glob, a TIFF or FILE.h5[:DATASET])")
    kinds = {"PNG" if f.lower().endswith(PNG_EXTENSIONS) else "TIFF" for f in files}
    if len(kinds) > 1:
        base = src if os.path.isdir(src) else os.path.dirname(src) or "."
        raise StorageError(
            f"{where} holds both PNG and TIFF files, so which are the slices is unclear",
            f"pick one kind with a glob such as {os.path.join(base, '*.png')}",
        )
    files = natural_sorted(files)
    warn_on_gaps(files)
    return files


def warn_on_gaps(files: list[str]) -> None:
    """Log a warning when the last number in the file names skips values (a slice may be missing)."""
    numbers = []
    for f in files:
        found = _DIGITS.findall(os.path.basename(f))
        if not found:
            return
        numbers.append(int(found[-1]))
    for a, b in itertools.pairwise(numbers):
        if b != a + 1:
            log.warning("slice numbers jump from %s to %s (%s): a slice may be missing", a, b, os.path.dirname(files[0]) or ".")
            return


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says: planes, plane shape (y, x), sample dtype, samples/pixel."""

    path: str
    depth: int
    plane: tuple[int, int]
    dtype: np.dtype[Any]
    samples: int

    def plane_dtype(self, rgb_to_label: bool) -> np.dtype[Any]:
        """The dtype of a decoded plane (see :func:`to_planes`)."""
        return plane_dtype(self.dtype, self.samples, rgb_to_label)


def plane_dtype(dtype: np.dtype[Any], samples: int, rgb_to_label: bool) -> np.dtype[Any]:
    """dtype of planes decoded from ``samples`` channels of ``dtype``."""
    dt = np.dtype(np.uint8) if dtype == np.bool_ else np.dtype(dtype)
    colours = 3 if samples >= 3 else 1
    if rgb_to_label and colours == 3:
        if dt.kind != "u":
            raise StorageError(f"cannot map {dt} colour channels to label ids", "rgb_to_label needs 8- or 16-bit unsigned colour")
        return np.dtype(np.uint32 if colours * dt.itemsize * 8 <= 32 else np.uint64)
    return dt


def _corrupt(path: str, err: BaseException) -> StorageError:
    return StorageError(f"cannot read image {path}: {err}", "re-export the file, or remove it from the slices")


def inspect_image(path: str, rgb_to_label: bool = False) -> ImageInfo:
    """Read the header of a PNG or TIFF (not its pixels)."""
    try:
        if is_tiff(path):
            return _inspect_tiff(path)
        with Image.open(path) as im:
            mode = im.mode
            if mode not in _PIL_MODES:
                raise StorageError(f"image {path} has PIL mode {mode!r}, which ingest does not read", "convert it to grayscale (L) or RGB")
            dtype, samples = _PIL_MODES[mode]
            if mode in ("P", "PA") and rgb_to_label:
                samples = 4  # a palette image is decoded through its palette to RGBA
            width, height = im.size
            return ImageInfo(path, 1, (height, width), np.dtype(dtype), samples)
    except StorageError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise _corrupt(path, err) from err


def _tiff_layout(path: str, shape: tuple[int, ...], axes: str) -> tuple[int, tuple[int, int], int]:
    """(depth, plane, samples) of a tifffile series; one leading axis (any letter) is z."""
    samples = 1
    if axes.endswith("S") and shape[-1] in (2, 3, 4):
        samples = shape[-1]
        shape, axes = shape[:-1], axes[:-1]
    lead = [s for s in shape[:-2] if s != 1]
    if len(shape) < 2 or len(lead) > 1:
        raise StorageError(
            f"TIFF {path} holds an image of shape {shape} (axes {axes}), not z, y, x",
            "save it as one z, y, x stack (one channel, optionally RGB) or as one file per slice",
        )
    return (lead[0] if lead else 1), (int(shape[-2]), int(shape[-1])), samples


def _inspect_tiff(path: str) -> ImageInfo:
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image data")
        series = tif.series[0]
        depth, plane, samples = _tiff_layout(path, tuple(series.shape), series.axes)
        if depth > 1 and len(series.pages) != depth:
            raise StorageError(
                f"TIFF {path} stores {depth} planes in {len(series.pages)} pages", "save it with one plane per page (or one file per slice)"
            )
        return ImageInfo(path, depth, plane, np.dtype(series.dtype), samples)


def read_image(path: str, rgb_to_label: bool = False) -> np.ndarray:
    """Decode one single-plane image file into a 2D (y, x) array (see :func:`to_planes`)."""
    try:
        if is_tiff(path):
            arr = tifffile.imread(path, key=0)
        else:
            with Image.open(path) as im:
                # a palette image is decoded through its palette when its colours are the labels
                arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "PA") and rgb_to_label else im)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise _corrupt(path, err) from err
    samples = arr.shape[-1] if arr.ndim == 3 else 1
    return to_planes(arr, samples, path, rgb_to_label)


def to_planes(arr: np.ndarray, samples: int, where: str, rgb_to_label: bool = False) -> np.ndarray:
    """Turn decoded pixels (``(..., y, x)``, or ``(..., y, x, samples)`` when ``samples`` > 1) into
    one value per pixel.

    Booleans (mode ``'1'``, bilevel TIFF) become 0/255 like an 8-bit mask. With colour samples:
    ``rgb_to_label`` packs the colour channels into one id (alpha 0 gives 0); otherwise the planes
    must be gray stored as colour (equal channels), else :class:`StorageError`.

    >>> to_planes(np.array([[True, False]]), 1, "mask.png")
    array([[255,   0]], dtype=uint8)
    >>> rgb = np.array([[[1, 2, 3], [0, 0, 0]]], dtype=np.uint8)
    >>> to_planes(rgb, 3, "labels.png", rgb_to_label=True)
    array([[66051,     0]], dtype=uint32)
    """
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    if samples == 1:
        return arr
    has_alpha = samples in (2, 4)
    colour = arr[..., : samples - 1] if has_alpha else arr
    if rgb_to_label and colour.shape[-1] == 3:
        out_dtype = plane_dtype(arr.dtype, samples, True)
        bits = arr.dtype.itemsize * 8
        c = colour.astype(out_dtype)
        ids = (c[..., 0] << (2 * bits)) | (c[..., 1] << bits) | c[..., 2]
        if has_alpha:
            ids[arr[..., -1] == 0] = 0
        return ids
    if rgb_to_label and has_alpha:  # gray + alpha: the gray value is the label
        gray = colour[..., 0].copy()
        gray[arr[..., -1] == 0] = 0
        return gray
    if not np.array_equal(colour, np.broadcast_to(colour[..., :1], colour.shape)):
        raise StorageError(
            f"{where} is a colour image whose channels differ",
            "pass --rgb-to-label (rgb_to_label=True) to turn each colour into a label id, or convert the slices to grayscale",
        )
    return np.ascontiguousarray(colour[..., 0])
