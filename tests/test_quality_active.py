"""The helpers of benchmarks/quality_active.py: slab-wise filter-bank features, per-slice
binarisation of cardona_vnc's mixed-mode label PNGs, and the mean ± std tables over seeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qa() -> Any:
    spec = importlib.util.spec_from_file_location("quality_active", REPO / "benchmarks" / "quality_active.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["quality_active"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_features_by_slab_match_the_whole_volume(qa: Any) -> None:
    from engine.active.pixel import filter_bank

    raw = np.random.default_rng(0).integers(0, 256, (5, 24, 20), dtype=np.uint8)
    whole = filter_bank(raw)
    by3 = qa.features_by_slab(raw, np.dtype("float32"), slab=3)  # 5 slices in slabs of 3: a short last slab
    assert by3.shape == whole.shape and by3.dtype == np.float32
    np.testing.assert_allclose(by3, whole, rtol=1e-6, atol=1e-6)
    half = qa.features_by_slab(raw, np.dtype("float16"), slab=2)
    assert half.dtype == np.float16 and half.nbytes * 2 == whole.nbytes
    np.testing.assert_allclose(half.astype(np.float32), whole, rtol=2e-3, atol=2e-3)


def test_binarise_reads_both_png_modes(qa: Any, tmp_path: Path) -> None:
    from PIL import Image

    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 255
    a[4, 4] = 6  # anti-aliasing residue in an 'L' slice: background
    a[5, 0] = 200
    Image.fromarray(a).save(tmp_path / "l.png")
    Image.fromarray(a > 127).convert("1").save(tmp_path / "one.png")
    with Image.open(tmp_path / "l.png") as im_l, Image.open(tmp_path / "one.png") as im_1:
        assert (im_l.mode, im_1.mode) == ("L", "1")
        want = a > 127
        np.testing.assert_array_equal(qa.binarise(im_l), want)
        np.testing.assert_array_equal(qa.binarise(im_1), want)


def test_summary_tables_mean_and_std_over_seeds(qa: Any) -> None:
    rows_a = [{"seed": s, "ratio": 0.05, "initial": 0.5, "method": "random", "accuracy": acc, "budget": 4} for s, acc in ((0, 0.6), (1, 0.8))]
    rows_b = [{"seed": s, "round": r, "base": 0.4, "method": "mask", "budget": 3, "test_accuracy": 0.5 + 0.1 * r + 0.2 * s, "test_true": 3 + s, "test_rois": 10}
              for s in (0, 1) for r in (1, 2)]
    text = qa.summary(rows_a, rows_b)
    assert "| 5.0% | 0.700 ± 0.100 (4) |" in text  # mean of 0.6, 0.8; population std 0.1
    assert "| mask | 3 | 0.700 ± 0.100 | 0.800 ± 0.100 | 3.5 / 10.0 |" in text
    assert "initial accuracy 0.500 ± 0.000" in text and "base test accuracy 0.400 ± 0.000" in text
    # a seed whose refit proposed nothing: left out of the mean, counted after a dagger, also in round 2
    rows_b.append({"seed": 2, "round": 1, "base": 0.4, "method": "mask", "budget": 3, "test_accuracy": float("nan"), "no_proposals": True})
    assert "| mask | 3 | 0.700 ± 0.100 †1 | 0.800 ± 0.100 †1 | 3.5 / 10.0 |" in qa.summary([], rows_b)


@pytest.mark.realdata
def test_cardona_synapse_folder_matches_the_merged_labels(qa: Any, shared_data: Path, tmp_path: Path) -> None:
    """The binary synapse PNGs (modes '1' and 'L' mixed) binarised per slice equal value 223 of the merged labels."""
    from PIL import Image

    from engine.storage import open_volume
    from engine.storage.slices import natural_sorted

    raw_url, gt_url, binary = qa.cardona(tmp_path, "synapses", 4)
    assert binary
    gt = open_volume(gt_url)
    g = gt.read(gt.box)
    assert g.shape == (20, 256, 256) == open_volume(raw_url).spatial_shape
    d = shared_data / "cardona_vnc" / "stack1" / "labels"
    merged = np.stack([np.asarray(Image.open(p))[::4, ::4] == 223 for p in natural_sorted([str(p) for p in d.iterdir() if p.suffix == ".png"])])
    np.testing.assert_array_equal(g > 0, merged)
    assert 0 < g.mean() < 0.05
