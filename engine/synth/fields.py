"""Deterministic functions of global integer coordinates: hashes, uniforms, value noise.

Everything the synthetic generator draws at random comes from here, as a pure function of
``(seed, stream, coordinates)``: no global RNG state, so any block of a volume can be computed on
its own and the result is byte-identical whatever the block layout. Only exact arithmetic is used
(integer hashing, ``+ - * /``, ``floor``): no transcendental functions, whose last bit may depend on
the SIMD path numpy takes for an array of a given length.

>>> import numpy as np
>>> a = uniform(7, 1, np.arange(5))
>>> bool(np.array_equal(a, uniform(7, 1, np.arange(5))))
True
>>> bool(np.array_equal(a[2:], uniform(7, 1, np.arange(2, 5))))
True
>>> float(a.min()) >= 0.0 and float(a.max()) < 1.0
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective scramble of uint64 values (wraps on overflow)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _C1
        x = (x ^ (x >> np.uint64(27))) * _C2
        return x ^ (x >> np.uint64(31))


def _as_u64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)


def hash_coords(seed: int, stream: int, *coords: Any) -> np.ndarray:
    """A uint64 hash of integer coordinates (arrays broadcast against each other).

    ``stream`` separates independent uses (site positions, noise, decisions...) of the same seed.
    Negative coordinates are fine (two's complement).
    """
    with np.errstate(over="ignore"):
        h = mix64(np.asarray(_as_u64(seed) * _GOLD + _as_u64(stream)))
        for c in coords:
            h = mix64(h ^ (_as_u64(c) + _GOLD))
    return np.asarray(h)


def uniform(seed: int, stream: int, *coords: Any) -> np.ndarray:
    """Uniform float64 values in [0, 1), one per (broadcast) coordinate."""
    h = hash_coords(seed, stream, *coords)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal_like(seed: int, stream: int, *coords: Any) -> np.ndarray:
    """Roughly standard-normal float32 values: the sum of four 16-bit uniforms from one hash,
    centred and scaled (Irwin-Hall), so one hash per value and no transcendental functions."""
    h = hash_coords(seed, stream, *coords)
    mask = np.uint64(0xFFFF)
    total = (h & mask).astype(np.float32)
    for shift in (16, 32, 48):
        total += ((h >> np.uint64(shift)) & mask).astype(np.float32)
    # four U(0, 65536): mean 131070, standard deviation 65536 * sqrt(4 / 12)
    return (total - np.float32(131070.0)) * np.float32(1.0 / 37837.23)


def smoothstep(f: np.ndarray) -> np.ndarray:
    """3f^2 - 2f^3 (zero slope at 0 and 1), elementwise."""
    return f * f * (3.0 - 2.0 * f)


def value_noise(seed: int, stream: int, coords: Sequence[np.ndarray]) -> np.ndarray:
    """Smooth value noise in [-1, 1] on the grid spanned by 1-D coordinate arrays (lattice units).

    Random values sit on the integer lattice and are interpolated with smoothstep weights, one axis
    at a time (x first, then y, then z), so the cost is that of a few passes over the output grid.
    The value at a grid point depends only on its coordinates, never on the extent of the grid.

    >>> import numpy as np
    >>> z, y = np.arange(4) / 3.0, np.arange(6) / 3.0
    >>> n = value_noise(1, 2, [z, y])
    >>> n.shape, bool(np.array_equal(n[1:, 2:], value_noise(1, 2, [z[1:], y[2:]])))
    ((4, 6), True)
    """
    axes = [np.asarray(c, dtype=np.float64) for c in coords]
    floors = [np.floor(a) for a in axes]
    lows = [int(f.min()) if f.size else 0 for f in floors]
    highs = [int(f.max()) + 2 if f.size else 1 for f in floors]
    lattice = np.meshgrid(*(np.arange(lo, hi) for lo, hi in zip(lows, highs, strict=True)), indexing="ij", sparse=True)
    values = (uniform(seed, stream, *lattice) * 2.0 - 1.0).astype(np.float32)
    values = np.broadcast_to(values, tuple(hi - lo for lo, hi in zip(lows, highs, strict=True)))
    for ax in reversed(range(len(axes))):
        idx = (floors[ax] - lows[ax]).astype(np.intp)
        w = smoothstep(axes[ax] - floors[ax]).astype(np.float32)
        shape = [1] * len(axes)
        shape[ax] = w.size
        w = w.reshape(shape)
        values = np.take(values, idx, axis=ax) * (np.float32(1.0) - w) + np.take(values, idx + 1, axis=ax) * w
    return np.asarray(values, dtype=np.float32)


def fbm(seed: int, stream: int, coords: Sequence[np.ndarray], octaves: int = 2, gain: float = 0.5) -> np.ndarray:
    """A few octaves of :func:`value_noise` (each at twice the frequency), normalised to about [-1, 1]."""
    total = np.zeros(tuple(len(c) for c in coords), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        scale = float(2**octave)
        total += np.float32(amp) * value_noise(seed, stream * 16 + octave, [np.asarray(c) * scale for c in coords])
        norm += amp
        amp *= gain
    return total * np.float32(1.0 / norm)
