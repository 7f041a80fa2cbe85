"""Ingest sources: where the slices of a volume come from, read a z-range at a time.

A source is a small frozen pydantic model that stores paths and parameters only (plus the shape and
dtype found on the driver), so it pickles cheaply and travels to Ray workers; files are opened lazily,
on the first :meth:`read` in the process that reads, and closed by :meth:`close`.

``open_source`` turns what a user typed into a source:

=====================================  ==========================================================
``slices/`` or ``'slices/*.png'``      :class:`SliceStack`: one PNG/TIFF per z, in numeric order
``stack.tif`` (several pages)          :class:`TiffVolume`: one page per z
``file.h5:dataset``, ``file.h5.gz``    :class:`Hdf5Volume`: a 3D dataset, optionally through an id map
=====================================  ==========================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Annotated, Any, Literal

import h5py
import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from engine.errors import ConfigError, StorageError
from engine.storage.hdf5 import Hdf5File, IdMap, split_hdf5
from engine.storage.slices import find_images, inspect_image, read_image, to_planes

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]


class SourceBase(BaseModel):
    """What every source has: its (z, y, x) shape and the dtype of what :meth:`read` returns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: Shape3
    dtype: str
    _handle: Any = PrivateAttr(default=None)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = {"_handle": None}  # open files stay in the process that opened them
        return state

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        raise NotImplementedError

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0 <= z < z1`` as a ``(z1 - z0, y, x)`` array of :attr:`dtype`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (a later :meth:`read` reopens them)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def _check_range(self, z0: int, z1: int) -> None:
        if not 0 <= z0 < z1 <= self.shape[0]:
            raise ValueError(f"slices {z0}..{z1} are outside the {self.shape[0]} slices of {self.describe()}")


class SliceStack(SourceBase):
    """One single-plane PNG or TIFF per z, already in z order. Each file is decoded on its own."""

    kind: Literal["slices"] = "slices"
    files: tuple[str, ...]
    rgb_to_label: bool = False

    def describe(self) -> str:
        return f"{len(self.files)} slices {self.files[0]} … {os.path.basename(self.files[-1])}"

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        out = np.empty((z1 - z0, *self.shape[1:]), self.numpy_dtype)
        for i, path in enumerate(self.files[z0:z1]):
            plane = read_image(path, self.rgb_to_label)
            if plane.shape != out.shape[1:]:
                raise StorageError(
                    f"slice {z0 + i} ({path}) is {plane.shape} but the stack is {out.shape[1:]}",
                    "all slices must have the same size (did the file change during ingest?)",
                )
            out[i] = plane
        return out


class TiffVolume(SourceBase):
    """A multi-page TIFF, one page per z."""

    kind: Literal["tiff"] = "tiff"
    path: str
    samples: int = 1
    rgb_to_label: bool = False

    def describe(self) -> str:
        return f"multi-page TIFF {self.path}"

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        if self._handle is None:
            self._handle = tifffile.TiffFile(self.path)
        try:
            arr = self._handle.asarray(key=range(z0, z1), series=0)
        except (OSError, ValueError, IndexError) as err:
            raise StorageError(f"cannot read pages {z0}..{z1 - 1} of {self.path}: {err}", "check the file (re-export it)") from err
        arr = arr.reshape((z1 - z0, *self.shape[1:]) + ((self.samples,) if self.samples > 1 else ()))
        return to_planes(arr, self.samples, f"{self.path} (pages {z0}..{z1 - 1})", self.rgb_to_label).astype(self.dtype, copy=False)


class _OpenHdf5:
    def __init__(self, file: Hdf5File, ids: IdMap | None) -> None:
        self.file = file
        self.ids = ids

    def close(self) -> None:
        self.file.close()


class Hdf5Volume(SourceBase):
    """A 3D HDF5 dataset (``.h5.gz`` decompressed to a temporary file), optionally mapped through an
    Nx2 id table ``lut`` of the same file (then the dtype is uint64)."""

    kind: Literal["hdf5"] = "hdf5"
    path: str
    dataset: str
    lut: str | None = None

    def describe(self) -> str:
        text = f"{self.path}:{self.dataset}"
        return f"{text} mapped by {self.lut}" if self.lut else text

    def _open(self) -> _OpenHdf5:
        if self._handle is None:
            with contextlib.suppress(ImportError):
                import hdf5plugin  # noqa: F401 - registers extra compression filters when installed
            file = Hdf5File(self.path)
            try:
                ids = IdMap(file.file[self.lut][()], f"dataset {self.lut!r} of {self.path}") if self.lut else None
            except BaseException:
                file.close()
                raise
            self._handle = _OpenHdf5(file, ids)
        return self._handle  # type: ignore[no-any-return]

    def read(self, z0: int, z1: int) -> np.ndarray:
        self._check_range(z0, z1)
        handle = self._open()
        try:
            data = np.asarray(handle.file.file[self.dataset][z0:z1])
        except (OSError, KeyError) as err:
            raise StorageError(
                f"cannot read slices {z0}..{z1 - 1} of {self.path}:{self.dataset}: {err}",
                "check the file; if it uses a compression filter h5py lacks, pip install hdf5plugin",
            ) from err
        if handle.ids is not None:
            data = handle.ids(data)
        return data.astype(self.dtype, copy=False)


Source = Annotated[SliceStack | TiffVolume | Hdf5Volume, Field(discriminator="kind")]


def open_source(src: str, *, lut: str | bool | None = None, rgb_to_label: bool = False) -> Source:
    """Find and check the source that ``src`` names (headers only; no pixel data is read).

    ``lut`` applies to HDF5 only: a dataset name, False for none, None to use a ``transforms``
    table found beside the dataset. Raises :class:`StorageError` (or :class:`ConfigError`) with one
    line naming the problem and the fix.
    """
    hdf5 = split_hdf5(src)
    if hdf5 is not None:
        return _open_hdf5(*hdf5, lut=lut)
    if isinstance(lut, str):
        raise ConfigError(f"--lut {lut} applies to HDF5 sources, but {src} is not one", "drop --lut")
    files = find_images(src)
    infos = [inspect_image(f, rgb_to_label) for f in files]
    first = infos[0]
    if len(files) == 1 and first.depth > 1:
        dtype = first.plane_dtype(rgb_to_label)
        tiff = TiffVolume(path=first.path, shape=(first.depth, *first.plane), dtype=dtype.name, samples=first.samples, rgb_to_label=rgb_to_label)
        if first.samples >= 3 and not rgb_to_label:
            tiff.read(0, 1)  # colour labels fail here, before any output exists
            tiff.close()
        log.info("found %s: %s %s", tiff.describe(), tiff.shape, tiff.dtype)
        return tiff
    for info in infos:
        if info.depth != 1:
            raise StorageError(
                f"{info.path} holds {info.depth} planes, but a stack of slices takes one image per file",
                "ingest a multi-page TIFF on its own (give its path as the source)",
            )
        if info.plane != first.plane:
            raise StorageError(
                f"slice {files.index(info.path)} ({info.path}) is {info.plane[0]}x{info.plane[1]} (y, x) "
                f"but slice 0 ({first.path}) is {first.plane[0]}x{first.plane[1]}",
                "all slices must have the same size: crop or pad them, or ingest them separately",
            )
    colour = next((i for i in infos if i.samples >= 3), None)
    if colour is not None and not rgb_to_label:
        read_image(colour.path)  # gray stored as colour passes; colour labels fail here, before any output exists
    dtype = np.result_type(*(i.plane_dtype(rgb_to_label) for i in infos))
    modes = sorted({(str(i.dtype), i.samples) for i in infos})
    if len(modes) > 1:
        log.info("slices mix pixel types %s: each is decoded on its own and stored as %s", modes, dtype)
    source = SliceStack(files=tuple(files), shape=(len(files), *first.plane), dtype=np.dtype(dtype).name, rgb_to_label=rgb_to_label)
    log.info("found %s: %s %s", source.describe(), source.shape, source.dtype)
    return source


def _open_hdf5(path: str, dataset: str | None, *, lut: str | bool | None) -> Hdf5Volume:
    file = Hdf5File(path)
    try:
        name = file.choose(dataset)
        ds: h5py.Dataset = file.file[name]
        if ds.ndim != 3:
            raise StorageError(f"dataset {name!r} of {path} has shape {tuple(ds.shape)}, not (z, y, x)", "name a 3D dataset")
        table = file.find_lut(name, lut)
        ids = IdMap(file.file[table][()], f"dataset {table!r} of {path}") if table else None
        if ids is not None and ds.dtype.kind not in "iu":
            raise StorageError(f"dataset {name!r} of {path} holds {ds.dtype}, not integer ids to map with {table!r}", "pass --no-lut")
        dtype = np.dtype(np.uint64) if ids is not None else (np.dtype(np.uint8) if ds.dtype == np.bool_ else np.dtype(ds.dtype))
        if dtype.kind not in "biuf":
            raise StorageError(f"dataset {name!r} of {path} has dtype {ds.dtype}, which ingest cannot store", "convert it to a numeric dtype")
        source = Hdf5Volume(path=path, dataset=name, lut=table, shape=tuple(int(s) for s in ds.shape), dtype=dtype.name)  # type: ignore[arg-type]
    except BaseException:
        file.close()
        raise
    source._handle = _OpenHdf5(file, ids)  # reuse what the driver opened when it reads itself
    log.info("found %s: %s %s", source.describe(), source.shape, source.dtype)
    return source
