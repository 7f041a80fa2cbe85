"""EM augmentations on numpy crops: image ``(Z, Y, X)`` float32 in [0, 1], labels ``(Z, Y, X)`` and a
boolean ``known`` mask of the same shape.

Geometric augmentations (flips, yx transpose, rot90, elastic warp, misalignment) move the image, the
labels and the known mask alike; photometric ones (intensity, noise, blur, missing sections) touch only the image. Targets are computed *after* augmentation, so direction-dependent targets
(affinities) stay right. All randomness comes from the ``numpy.random.Generator`` passed in.

>>> from engine.learn.config import AugmentConfig
>>> rng = np.random.default_rng(0)
>>> img = np.random.default_rng(1).random((4, 8, 8), dtype=np.float32)
>>> lab = (img > 0.5).astype(np.uint8); known = np.ones(img.shape, bool)
>>> a, b, k = augment(img, lab, known, AugmentConfig(), rng)
>>> a.shape, b.shape, k.dtype.name, bool(a.min() >= 0 and a.max() <= 1)
((4, 8, 8), (4, 8, 8), 'bool', True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from engine.learn.config import AugmentConfig  # annotations only: this module loads without torch

Crops = tuple[np.ndarray, np.ndarray, np.ndarray]


def _all(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, labels: np.ndarray, known: np.ndarray) -> Crops:
    return fn(image), fn(labels), fn(known)


def flips(image: np.ndarray, labels: np.ndarray, known: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> Crops:
    """Random flips along z, y, x; transpose of y and x; rot90 in the yx plane (square crops for odd turns)."""
    if cfg.flip:
        axes = tuple(int(a) for a in np.flatnonzero(rng.random(3) < 0.5))
        if axes:
            image, labels, known = _all(lambda a: np.flip(a, axes), image, labels, known)
    square = image.shape[1] == image.shape[2]
    if cfg.transpose and square and rng.random() < 0.5:
        image, labels, known = _all(lambda a: np.swapaxes(a, 1, 2), image, labels, known)
    if cfg.rot90:
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        if k:
            image, labels, known = _all(lambda a: np.rot90(a, k, axes=(1, 2)), image, labels, known)
    return image, labels, known


def intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random contrast (x0.8-1.2), brightness (+-0.1) and gamma (2^[-0.5, 0.5]), clipped to [0, 1]."""
    out = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    out = np.clip(out, 0.0, 1.0) ** (2.0 ** rng.uniform(-0.5, 0.5))
    return out.astype(np.float32)


def noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive Gaussian noise with standard deviation up to ``sigma``."""
    return np.clip(image + rng.normal(0.0, rng.uniform(0, sigma), image.shape), 0.0, 1.0).astype(np.float32)


def blur(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """In-plane Gaussian blur of a random subset of sections (at least one)."""
    out = image.copy()
    n = image.shape[0]
    picks = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
    for z in picks:
        out[z] = ndimage.gaussian_filter(image[z], rng.uniform(0.5, sigma))
    return out


def photometric(
    image: np.ndarray, rng: np.random.Generator, *, p_intensity: float, p_blur: float, p_noise: float, blur_sigma: float, noise_sigma: float,
) -> np.ndarray:
    """Intensity, blur, then noise, each drawn with its probability (one uniform draw per step, then the
    step's own draws): the photometric chain of :func:`augment` and of the semi-supervised perturbation
    (:func:`engine.learn.semi.perturb`)."""
    out = image
    if rng.random() < p_intensity:
        out = intensity(out, rng)
    if rng.random() < p_blur:
        out = blur(np.ascontiguousarray(out), rng, blur_sigma)
    if rng.random() < p_noise:
        out = noise(out, rng, noise_sigma)
    return out


def missing_section(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One section replaced by its mean (a lost or blank section); the labels keep it."""
    out = image.copy()
    z = int(rng.integers(image.shape[0]))
    out[z] = float(image[z].mean())
    return out


def _shift(a: np.ndarray, dy: int, dx: int, fill: object) -> np.ndarray:
    out = np.full_like(a, fill)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def misalign(image: np.ndarray, labels: np.ndarray, known: np.ndarray, rng: np.random.Generator, max_shift: int) -> Crops:
    """Misalignment: every section from a random z on shifts in-plane (translation), or one section alone
    slips. Image, labels and known mask move together (the data are misaligned, the objects are not cut);
    the uncovered border becomes unknown."""
    if image.shape[0] < 2 or max_shift < 1:
        return image, labels, known
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    z = int(rng.integers(1, image.shape[0]))
    sl = slice(z, None) if rng.random() < 0.5 else slice(z, z + 1)
    image, labels, known = image.copy(), labels.copy(), known.copy()
    image[sl] = _shift(image[sl], dy, dx, float(image.mean()))
    labels[sl] = _shift(labels[sl], dy, dx, 0)
    known[sl] = _shift(known[sl], dy, dx, False)
    return image, labels, known


def elastic(image: np.ndarray, labels: np.ndarray, known: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> Crops:
    """A smooth random in-plane displacement (the same for every section): linear interpolation for the
    image, nearest neighbour for labels and the known mask; voxels pulled from outside become unknown."""
    _, h, w = image.shape
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha * sigma
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha * sigma
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])
    inside = (coords[0] >= 0) & (coords[0] <= h - 1) & (coords[1] >= 0) & (coords[1] <= w - 1)
    out_i = np.empty_like(image)
    out_l = np.empty_like(labels)
    out_k = np.empty_like(known)
    for z in range(image.shape[0]):
        out_i[z] = ndimage.map_coordinates(image[z], coords, order=1, mode="reflect")
        out_l[z] = ndimage.map_coordinates(labels[z], coords, order=0, mode="nearest")
        out_k[z] = ndimage.map_coordinates(known[z].astype(np.uint8), coords, order=0, mode="constant", cval=0).astype(bool) & inside
    return out_i, out_l, out_k


def augment(image: np.ndarray, labels: np.ndarray, known: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> Crops:
    """All augmentations of ``cfg`` in a fixed order, each drawn with its probability; contiguous copies out."""
    image, labels, known = flips(image, labels, known, rng, cfg)
    if rng.random() < cfg.elastic:
        image, labels, known = elastic(np.ascontiguousarray(image), np.ascontiguousarray(labels), np.ascontiguousarray(known), rng, cfg.elastic_alpha, cfg.elastic_sigma)
    if rng.random() < cfg.misalign:
        image, labels, known = misalign(image, labels, known, rng, cfg.misalign_max)
    image = photometric(image, rng, p_intensity=cfg.intensity, p_blur=cfg.blur, p_noise=cfg.noise, blur_sigma=cfg.blur_sigma, noise_sigma=cfg.noise_sigma)
    if rng.random() < cfg.missing_section:
        image = missing_section(image, rng)
    return (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels), np.ascontiguousarray(known))
