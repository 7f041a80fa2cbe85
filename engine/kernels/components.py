"""Per-block labelling kernels: threshold, then connected components on CPU (cc3d) or GPU (CuPy).

>>> import numpy as np
>>> mask = np.zeros((1, 3, 5), bool); mask[0, :, 0] = mask[0, 1, 2:] = True
>>> labels, n = label_block(mask, 6)
>>> n, labels[0].tolist()
(2, [[1, 0, 0, 0, 0], [1, 0, 2, 2, 2], [1, 0, 0, 0, 0]])
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Literal

import numpy as np

from engine.errors import ConfigError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "gpu"]
CONNECTIVITIES = (6, 18, 26)
#: scipy/cupyx structure rank for each connectivity (generate_binary_structure(3, rank))
_RANK = {6: 1, 18: 2, 26: 3}


def check_connectivity(connectivity: int) -> int:
    if connectivity not in CONNECTIVITIES:
        raise ConfigError(f"connectivity must be 6, 18 or 26 for 3D volumes; got {connectivity}", "use --connectivity 6, 18 or 26")
    return int(connectivity)


def foreground(data: np.ndarray, threshold: float | None) -> np.ndarray:
    """What to label: ``data > threshold`` for probabilities (uint8 read as ``v / 255``, floats as
    they are), else the data itself (a binary or label volume; 0 is background).

    >>> foreground(np.array([0, 127, 128, 255], np.uint8), 0.5).tolist()
    [False, False, True, True]
    """
    if threshold is None:
        return data
    if data.dtype == np.uint8:
        # v / 255 > t  <=>  v > 255 t  <=>  v > floor(255 t) for the integers v: compared as uint8, ~10x
        # faster than the float comparison (which casts every voxel to float64): 0.05 against 0.6 ms a 128^3 block
        level = math.floor(np.float64(threshold) * 255.0)
        if level < 0:
            return np.ones(data.shape, bool)
        if level >= 255:
            return np.zeros(data.shape, bool)
        return data > np.uint8(level)
    return data > threshold


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy  # type: ignore[import-not-found]

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        return False


def label_block(data: np.ndarray, connectivity: int, device: Device = "cpu") -> tuple[np.ndarray, int]:
    """Connected components of one block: ``(labels uint32 1..n, n)``.

    ``data`` is a boolean mask or a label volume (voxels join only where their values are equal).
    ``device='gpu'`` (or ``'auto'`` with a GPU) uses ``cupyx.scipy.ndimage.label`` for masks; label
    volumes always use cc3d.
    """
    check_connectivity(connectivity)
    if device != "cpu" and data.dtype == bool and (device == "gpu" or gpu_available()):
        return _label_gpu(data, connectivity)
    labels, n = _cc3d(data, connectivity)
    return labels, n


def _cc3d(data: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    import cc3d

    kernel: Any = cc3d.connected_components  # its stubs want a Literal connectivity
    labels, n = kernel(data, connectivity=connectivity, return_N=True, out_dtype=np.uint32)
    return labels, int(n)


def _label_gpu(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:  # pragma: no cover - needs a GPU
    """The GPU kernel (UNTESTED on the development machines, which have no GPU; ``tests/test_label.py``
    compares it with cc3d where a GPU is present). The numbering may differ from cc3d's; the
    partition into components is the same."""
    if not gpu_available():
        raise ConfigError("device 'gpu' was asked for but no GPU is visible (or CuPy is not installed)", "use --device cpu or auto")
    import cupy  # type: ignore[import-not-found]
    from cupyx.scipy import ndimage as cnd  # type: ignore[import-not-found]

    structure = cnd.generate_binary_structure(3, _RANK[connectivity])
    out: Any = cupy.empty(mask.shape, dtype=cupy.int32)
    n = cnd.label(cupy.asarray(mask), structure=structure, output=out)
    return cupy.asnumpy(out).astype(np.uint32, copy=False), int(n)
