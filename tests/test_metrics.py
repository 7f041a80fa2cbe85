"""Metrics against scikit-image / scipy where they have the same metric, else against a brute-force
reference or a case worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment
from scipy.spatial import distance
from skimage.metrics import adapted_rand_error, variation_of_information

from engine.metrics import adapted_rand, contingency, cremi_distances, dice, jaccard, match_instances, voc, voi


def labels(seed: int, shape: tuple[int, ...] = (6, 14, 15), n: int = 9, zero: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = gaussian_filter(rng.random(shape), 1.5)
    out = np.digitize(smooth, np.quantile(smooth, np.linspace(0, 1, n + 1)[1:-1])) + 1
    out[rng.random(shape) < zero] = 0
    return out.astype(np.uint64)


@pytest.mark.parametrize("seed", range(4))
def test_voi_and_adapted_rand_equal_skimage(seed: int) -> None:
    gt, seg = labels(seed), labels(seed + 100, n=5 + seed, zero=0.05)
    split, merge = voi(seg, gt)
    want = variation_of_information(gt.astype(np.int64), seg.astype(np.int64), ignore_labels=[0])
    np.testing.assert_allclose([split, merge], want, atol=1e-10)
    r = adapted_rand(seg, gt)
    are, sk_prec, sk_rec = adapted_rand_error(gt.astype(np.int64), seg.astype(np.int64))
    np.testing.assert_allclose(r.error, are, atol=1e-12)
    # scikit-image swaps precision and recall relative to its own docs (and SNEMI3D)
    np.testing.assert_allclose([r.precision, r.recall], [sk_rec, sk_prec], atol=1e-12)


def test_voi_and_rand_by_hand() -> None:
    gt = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    merged = np.array([7, 7, 7, 7, 7, 7, 7, 7, 3, 4])  # both objects in one; gt background ignored
    assert voi(merged, gt) == (0.0, 1.0)  # H(gt | seg) = 1 bit
    r = adapted_rand(merged, gt)
    # pairs (ordered, without self-pairs): together in both 2*4*3 = 24, in seg 8*7 = 56, in gt 24
    assert (r.precision, r.recall) == (24 / 56, 1.0)
    assert r.error == pytest.approx(1 - 2 * 24 / (56 + 24))
    assert voi(gt, gt) == (0.0, 0.0) and adapted_rand(gt, gt).error == 0.0


def test_contingency_matches_dense_counts() -> None:
    a, b = labels(1), labels(2, n=4)
    t = contingency(a, b, ignore_b=(0,))
    dense = {}
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist(), strict=True):
        if y != 0:
            dense[(x, y)] = dense.get((x, y), 0) + 1
    got = {(int(t.a_ids[r]), int(t.b_ids[c])): int(n) for r, c, n in zip(t.rows, t.cols, t.counts, strict=True)}
    assert got == dense


@pytest.mark.parametrize("seed", range(3))
def test_overlap_scores_equal_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p, g = rng.random((5, 6, 7)) > 0.6, rng.random((5, 6, 7)) > 0.5
    assert jaccard(p, g) == pytest.approx(1 - distance.jaccard(p.ravel(), g.ravel()))
    assert dice(p, g) == pytest.approx(1 - distance.dice(p.ravel(), g.ravel()))
    assert voc(p, g) == pytest.approx(0.5 * (jaccard(p, g) + jaccard(~p, ~g)))
    m = rng.random(p.shape) > 0.3
    assert jaccard(p, g, m) == pytest.approx(1 - distance.jaccard(p[m], g[m]))
    empty = np.zeros(3, bool)
    assert jaccard(empty, empty) == dice(empty, empty) == 1.0


def brute_mean_distance(a: np.ndarray, b: np.ndarray, vs: tuple[float, float, float]) -> float:
    """Mean over voxels of ``a`` of the distance to the nearest voxel of ``b``, all pairs."""
    pa, pb = np.argwhere(a) * np.array(vs), np.argwhere(b) * np.array(vs)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(d.min(axis=1).mean())


@pytest.mark.parametrize("seed", range(3))
def test_cremi_distances_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt, pred = rng.random((5, 9, 8)) > 0.93, rng.random((5, 9, 8)) > 0.9
    vs = (40.0, 4.0, 4.0)
    d = cremi_distances(pred, gt, vs)
    assert d.adgt == pytest.approx(brute_mean_distance(gt, pred, vs))
    assert d.adf == pytest.approx(brute_mean_distance(pred, gt, vs))
    assert d.score == pytest.approx((d.adgt + d.adf) / 2)
    none = np.zeros_like(gt)
    assert cremi_distances(none, gt, vs).adgt == float("inf") and cremi_distances(none, none, vs).score == 0.0


def brute_matching(pred: np.ndarray, gt: np.ndarray, thr: float) -> int:
    """StarDist's way: IoU of every pair, an assignment maximising summed IoU (below thr counts 0)."""
    p_ids, g_ids = np.unique(pred[pred > 0]), np.unique(gt[gt > 0])
    iou = np.zeros((p_ids.size, g_ids.size))
    for (i, p), (j, g) in itertools.product(enumerate(p_ids), enumerate(g_ids)):
        a, b = pred == p, gt == g
        iou[i, j] = (a & b).sum() / (a | b).sum()
    iou[iou < thr] = 0
    r, c = linear_sum_assignment(iou, maximize=True)
    return int((iou[r, c] >= thr).sum())


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5, 0.7])
def test_matching_equals_brute_force(thr: float) -> None:
    for seed in range(3):
        gt, pred = labels(seed, n=8, zero=0.3), labels(seed + 50, n=10, zero=0.2)
        m = match_instances(pred, gt, thr)
        assert m.tp == brute_matching(pred, gt, thr)
        assert m.tp + m.fp == np.unique(pred[pred > 0]).size and m.tp + m.fn == np.unique(gt[gt > 0]).size
        assert m.f1 == pytest.approx(2 * m.precision * m.recall / (m.precision + m.recall) if m.tp else 0.0)


def test_matching_tie_at_one_half() -> None:
    gt = np.array([1, 1, 0])
    pred = np.array([4, 5, 0])  # both predictions have IoU exactly 0.5 with the one object
    m = match_instances(pred, gt, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0) and m.mean_matched_iou == 0.5
    assert match_instances(gt, gt).f1 == 1.0
