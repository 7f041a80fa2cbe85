"""A small pixel classifier (filter bank + logistic regression): the weak base model of the active
learning protocols and tests, where a U-Net would take minutes to train on CPU.

Features per voxel, computed per z-slice: the intensity, Gaussian smoothings (sigma 1, 2, 4), their
squares (2, 4), Laplacians of Gaussian (2, 4, 6) and gradient magnitudes (1, 2). The classifier is
balanced between classes (recall matters more than precision for ROI proposals, as in the paper).
Fine-tuning on reviewed ROIs refits it on the initial labels plus the ROI targets
(:mod:`engine.active.finetune`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.values import to_unit


def filter_bank(raw: np.ndarray) -> np.ndarray:
    """(voxels, 13) float32 features of a (z, y, x) uint8 or float volume."""
    from scipy import ndimage as ndi

    x = to_unit(raw)
    f = [x]
    f += [ndi.gaussian_filter(x, (0, s, s)) for s in (1, 2, 4)]
    f += [ndi.gaussian_filter(x, (0, s, s)) ** 2 for s in (2, 4)]
    f += [ndi.gaussian_laplace(x, (0, s, s)) for s in (2, 4, 6)]
    f += [ndi.gaussian_gradient_magnitude(x, (0, s, s)) for s in (1, 2)]
    return np.stack(f, -1).reshape(-1, len(f))


class PixelClassifier:
    """``fit(features, index, labels)`` on voxels ``index`` (flat), ``predict(features, shape)`` -> probabilities."""

    def __init__(self, max_iter: int = 300, seed: int = 0) -> None:
        self.max_iter, self.seed = max_iter, seed
        self.model: Any = None

    def fit(self, feats: np.ndarray, index: np.ndarray, labels: np.ndarray) -> PixelClassifier:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(max_iter=self.max_iter, class_weight="balanced", random_state=self.seed).fit(feats[index], labels)
        return self

    def predict(self, feats: np.ndarray, shape: tuple[int, ...], batch: int = 1 << 21) -> np.ndarray:
        assert self.model is not None, "fit first"
        out = np.empty(feats.shape[0], np.float32)
        for i in range(0, feats.shape[0], batch):
            out[i : i + batch] = self.model.predict_proba(feats[i : i + batch])[:, 1]
        return out.reshape(shape)
