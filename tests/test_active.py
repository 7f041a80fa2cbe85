"""Active learning: ROI alignment and extraction, query suggestion, triplet loss, oracle rounds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.active.query import k_center_greedy, suggest
from engine.active.rois import align_roi, principal_axis


# -- PCA alignment ---------------------------------------------------------------------------------
def _ellipse(angle_deg: float, a: float = 22.0, b: float = 7.0, n: int = 96) -> np.ndarray:
    """A filled ellipse whose long axis (semi-axis ``a``) points ``angle_deg`` from +y towards +x."""
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    y, x = yy - n / 2 + 0.3, xx - n / 2 - 0.2
    t = math.radians(angle_deg)
    u = y * math.cos(t) + x * math.sin(t)  # along the long axis
    v = -y * math.sin(t) + x * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _moments(mask: np.ndarray) -> tuple[float, float, float]:
    ys, xs = np.nonzero(mask)
    c = np.cov(np.stack([ys, xs]).astype(np.float64))
    return c[0, 0], c[1, 1], c[0, 1]


@pytest.mark.parametrize("angle", [0.0, 25.0, 60.0, 90.0, 135.0, -40.0])
def test_pca_alignment_turns_a_rotated_ellipse_upright(angle: float) -> None:
    mask = _ellipse(angle)
    axis = principal_axis(mask)
    # the angle found is the drawing angle, modulo 180 degrees
    diff = (axis.angle - angle + 90.0) % 180.0 - 90.0
    assert abs(diff) < 1.0, (axis.angle, angle)
    image = np.where(mask, 200, 40).astype(np.uint8)
    roi = align_roi(image, mask, (axis.cy, axis.cx), axis.angle, size=64)
    vy, vx, cyx = _moments(roi.mask)
    assert vy > 5 * vx, (vy, vx)  # upright: long along y (a/b = 3 gives variance ratio 9)
    assert abs(cyx) < 0.05 * vy  # and not tilted
    assert roi.mask.sum() == pytest.approx(mask.sum(), rel=0.05)  # nothing cut off or lost
    # the image turned with the mask; the object sits in the centre
    assert ((roi.image > 120) == roi.mask.astype(bool)).mean() > 0.98
    ys, xs = np.nonzero(roi.mask)
    assert abs(ys.mean() - 31.5) < 1.0 and abs(xs.mean() - 31.5) < 1.0


def test_unaligned_crop_of_a_tilted_ellipse_is_not_upright() -> None:
    """The check above can fail: without the rotation, a tilted ellipse stays tilted."""
    mask = _ellipse(45.0)
    axis = principal_axis(mask)
    roi = align_roi(mask.astype(np.uint8), mask, (axis.cy, axis.cx), 0.0, size=64)
    vy, _, cyx = _moments(roi.mask)
    assert abs(cyx) > 0.5 * vy


def test_synapse_pre_side_goes_left() -> None:
    mask = _ellipse(30.0, a=20.0, b=10.0)
    axis = principal_axis(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    # the pre-synaptic half: one side of the long axis
    t = math.radians(axis.angle)
    side = -(yy - axis.cy) * math.sin(t) + (xx - axis.cx) * math.cos(t)
    for pre_sign in (1, -1):
        pre = mask & (pre_sign * side > 0)
        image = np.where(pre, 250, np.where(mask, 120, 20)).astype(np.uint8)
        roi = align_roi(image, mask, (axis.cy, axis.cx), axis.angle, size=64, pre=pre)
        bright = roi.image > 200
        rest = roi.mask.astype(bool) & ~bright
        assert np.nonzero(bright)[1].mean() < np.nonzero(rest)[1].mean()
        vy, vx, _ = _moments(roi.mask)
        assert vy > 2 * vx  # still upright after the flip
    # exactly one of the two cases needed the 180-degree turn
    flips = [align_roi(mask.astype(np.uint8), mask, (axis.cy, axis.cx), axis.angle, 64, pre=mask & (s * side > 0)).flipped for s in (1, -1)]
    assert sorted(flips) == [False, True]


# -- query suggestion ------------------------------------------------------------------------------
def _blobs(n: int, centres: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=10.0, size=(centres, dim))
    return c[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))


@pytest.mark.parametrize(("n_clusters", "n_sub", "q"), [(8, 4, 1), (5, 3, 1), (4, 2, 3), (16, 8, 1)])
def test_hierarchical_returns_exactly_n_times_m_queries_none_reviewed(n_clusters: int, n_sub: int, q: int) -> None:
    n = 600
    fm, fi = _blobs(n, 10, 6, 1), _blobs(n, 30, 32, 2)
    reviewed = set(np.random.default_rng(3).choice(n, 150, replace=False).tolist())
    s = suggest("hierarchical", fm, fi, n_clusters=n_clusters, n_sub=n_sub, per_cluster=q, reviewed=reviewed, seed=0)
    ids = s.roi_id.tolist()
    assert len(ids) == n_clusters * n_sub * q
    assert len(set(ids)) == len(ids)
    assert not set(ids) & reviewed
    assert s.rank.tolist() == list(range(len(ids)))
    # display order: grouped by cluster, then sub-cluster, then distance to the centre
    key = list(zip(s.cluster.tolist(), s.subcluster.tolist(), s.distance.tolist(), strict=True))
    assert key == sorted(key)
    # every candidate has a cluster, reviewed ROIs are not candidates
    assert s.assignment is not None and s.assignment.size == n - len(reviewed)
    assert not set(s.candidates.tolist()) & reviewed


def test_hierarchical_fills_up_when_clusters_are_too_small() -> None:
    """Many identical points: k-means cannot make N*M distinct clusters, the rest is filled diversely."""
    fm = np.repeat(np.eye(3), 20, axis=0)  # 3 distinct mask features
    fi = np.repeat(np.eye(4), 15, axis=0)  # 4 distinct image features
    s = suggest("hierarchical", fm, fi, n_clusters=5, n_sub=4, per_cluster=1, reviewed={0, 1})
    assert len(s) == 20 and len(set(s.roi_id.tolist())) == 20 and not {0, 1} & set(s.roi_id.tolist())


def test_hierarchical_picks_one_per_true_cluster() -> None:
    """Features with a known two-level structure: each (mask, image) cluster gives exactly one query."""
    rng = np.random.default_rng(0)
    mask_c = rng.integers(0, 4, 400)
    image_c = rng.integers(0, 3, 400)
    fm = np.eye(4)[mask_c] * 20 + rng.normal(scale=0.5, size=(400, 4))
    fi = np.eye(12)[mask_c * 3 + image_c] * 20 + rng.normal(scale=0.5, size=(400, 12))
    s = suggest("hierarchical", fm, fi, n_clusters=4, n_sub=3, per_cluster=1)
    got = sorted(zip(mask_c[s.roi_id].tolist(), image_c[s.roi_id].tolist(), strict=True))
    assert got == [(a, b) for a in range(4) for b in range(3)]


@pytest.mark.parametrize("method", ["late-fusion", "mask", "image", "random", "coreset", "uncertainty"])
def test_baselines_respect_budget_and_reviewed(method: str) -> None:
    n = 300
    fm, fi = _blobs(n, 6, 4, 5), _blobs(n, 12, 16, 6)
    scores = np.random.default_rng(7).uniform(0.5, 1.0, n)
    reviewed = set(range(0, n, 3))
    s = suggest(method, fm, fi, n_clusters=4, n_sub=5, budget=20, reviewed=reviewed, scores=scores)
    ids = s.roi_id.tolist()
    assert len(ids) == 20 and len(set(ids)) == 20 and not set(ids) & reviewed
    if method == "uncertainty":  # the 20 unreviewed scores nearest 0.5
        cand = np.array(sorted(set(range(n)) - reviewed))
        assert sorted(ids) == sorted(cand[np.argsort(scores[cand])[:20]].tolist())


def test_k_center_greedy_is_farthest_first() -> None:
    x = np.array([[0.0], [1.0], [10.0], [4.0], [6.0]])
    # from the chosen point 0: 10 is farthest; then 4 or 6 (distance 4 from 0 or 10): 4 (first maximum), then 6 ...
    assert k_center_greedy(x, 3, start=[0]).tolist() == [2, 3, 4]


def test_unknown_method_is_one_clear_error() -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown query method 'best'.*use one of hierarchical"):
        suggest("best", np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="needs the mean predicted probability"):
        suggest("uncertainty", np.zeros((4, 2)), np.zeros((4, 2)), scores=np.full(4, np.nan), budget=2)


# -- triplet loss ----------------------------------------------------------------------------------
def test_triplet_loss_matches_eq2_by_hand() -> None:
    import torch

    from engine.active.triplet import triplet_loss

    # d_P = 1, d_N = 2: softmax = (e / (e + e^2), e^2 / (e + e^2)) = (1 / (1 + e), e / (1 + e))
    #   = (0.2689414, 0.7310586); L = 0.2689414^2 + (0.7310586 - 1)^2 = 2 * 0.0723295 = 0.1446590
    # d_P = 3, d_N = 0: softmax = (e^3 / (e^3 + 1), 1 / (e^3 + 1)) = (0.9525741, 0.0474259);
    #   L = 0.9073975 + 0.9073975 = 1.8147951 (a wrong triplet costs much more)
    loss = triplet_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]))
    assert float(loss) == pytest.approx((0.1446590 + 1.8147951) / 2, abs=1e-6)
    assert float(triplet_loss(torch.tensor([1.0]), torch.tensor([2.0]))) == pytest.approx(0.1446590, abs=1e-6)


def test_triplet_tuning_separates_answers() -> None:
    """After tuning on a few answered crops, accepted crops lie nearer each other than rejected ones."""
    import torch

    from engine.active.features import VaeConfig, encode, train_vae
    from engine.active.triplet import TripletConfig, triplet_finetune

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    crops, labels = [], []
    for i in range(32):  # accepted: a bright disc; rejected: a bright bar; both at random places
        ok = i % 2 == 0
        cy, cx = rng.integers(5, 11, 2)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < 10) if ok else (abs(yy - cy) < 1) & (abs(xx - cx) < 5)
        crops.append((shape * 180 + rng.integers(0, 60, (16, 16))).astype(np.uint8))
        labels.append(ok)
    x, acc = np.stack(crops), np.array(labels)
    model = train_vae(x, VaeConfig(latent_dim=8, hidden_dims=(8, 16), input_size=16, epochs=1, batch_size=16), device="cpu")

    def margin(f: np.ndarray) -> float:
        d = np.linalg.norm(f[:, None] - f[None], axis=-1)
        same = (acc[:, None] == acc[None]) & ~np.eye(len(acc), dtype=bool)
        return float(d[~same & ~np.eye(len(acc), dtype=bool)].mean() / d[same].mean())

    before = margin(encode(model, x))
    losses = triplet_finetune(model, x, acc, TripletConfig(steps=40, batch_size=16, lr=1e-3))
    after = margin(encode(model, x))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after > before + 0.2, (before, after)


# -- ROI extraction on a synthetic volume ------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_mito(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from engine.ops.label import label_volume
    from engine.synth import synthesize

    d = tmp_path_factory.mktemp("active")
    synthesize(d / "s.zarr", (16, 512, 512), seed=4, chunks=(16, 128, 128), progress=False, mito_probability=1.0)
    label_volume(f"{d}/s.zarr/mito", f"{d}/s.zarr/mito_cc", table=d / "mito.parquet", block=(16, 256, 256), chunks=(16, 128, 128), progress=False)
    label_volume(f"{d}/s.zarr/synapses", f"{d}/s.zarr/syn_cc", threshold=0.0, table=d / "syn.parquet", block=(16, 256, 256), chunks=(16, 128, 128),
                 progress=False)
    return {"dir": str(d), "raw": f"{d}/s.zarr/raw", "mito": f"{d}/s.zarr/mito", "labels": f"{d}/s.zarr/mito_cc", "table": str(d / "mito.parquet"),
            "syn": f"{d}/s.zarr/synapses", "syn_labels": f"{d}/s.zarr/syn_cc", "syn_table": str(d / "syn.parquet")}


def test_rois_on_ray_equal_a_single_process_reference(synth_mito: dict[str, str], ray_cluster: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from engine.active.rois import read_crops, read_index
    from engine.ops.rois import extract_rois
    from engine.storage import open_volume

    s = synth_mito
    ray = extract_rois(tmp_path / "ray", s["labels"], s["raw"], s["table"], size=48, block=(16, 128, 256), backend="ray", workers=2, address=ray_cluster,
                       progress=False)
    ref = extract_rois(tmp_path / "ser", s["labels"], s["raw"], s["table"], size=48, block=(16, 512, 512), backend="serial", progress=False)
    assert ray.rois == ref.rois > 10
    a, b = read_index(tmp_path / "ray"), read_index(tmp_path / "ser")
    for c in a:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    for which in ("image", "mask"):
        np.testing.assert_array_equal(read_crops(tmp_path / "ray", which), read_crops(tmp_path / "ser", which))
    # the contract: column types, row i is roi_id i
    schema = pq.read_schema(str(tmp_path / "ray" / "rois" / "index.parquet"))
    types = {f.name: str(f.type) for f in schema}
    assert {k: types[k] for k in ("roi_id", "object_id", "z", "y", "x", "area", "angle", "score")} == {
        "roi_id": "int64", "object_id": "uint64", "z": "int64", "y": "int64", "x": "int64", "area": "int64", "angle": "double", "score": "double"}
    assert a["roi_id"].tolist() == list(range(ray.rois))
    # against a direct computation: slice of largest area, its area, the centre pixel inside the object
    labels = open_volume(s["labels"]).read(open_volume(s["labels"]).box)
    masks = read_crops(tmp_path / "ray", "mask")
    for i in range(ray.rois):
        obj = labels == a["object_id"][i]
        areas = obj.sum(axis=(1, 2))
        assert a["z"][i] == int(np.argmax(areas)) and a["area"][i] == areas.max() and a["voxels"][i] == obj.sum()
        assert masks[i].sum() == pytest.approx(areas.max(), rel=0.15, abs=3)  # rotation by nearest neighbour keeps the area
        vy, vx, _ = _moments(masks[i]) if masks[i].sum() > 3 else (1.0, 0.0, 0.0)
        assert vy >= vx - 1e-9  # upright


def test_synapse_rois_put_the_presynaptic_side_left(synth_mito: dict[str, str], tmp_path: Path) -> None:
    from engine.active.rois import read_crops, read_index
    from engine.ops.rois import extract_rois

    s = synth_mito
    r = extract_rois(tmp_path / "syn", s["syn_labels"], s["raw"], s["syn_table"], pre=s["syn"], pre_value=1, size=48, progress=False)
    # align the polarity volume itself as the "image": then pre (1) must lie left of post (2)
    extract_rois(tmp_path / "pol", s["syn_labels"], s["syn"], s["syn_table"], pre=s["syn"], pre_value=1, size=48, progress=False)
    pol, idx = read_crops(tmp_path / "pol", "image"), read_index(tmp_path / "syn")
    assert r.rois >= 5
    checked = 0
    for i in range(r.rois):
        pre_x, post_x = np.nonzero(pol[i] == 1)[1], np.nonzero(pol[i] == 2)[1]
        if pre_x.size > 20 and post_x.size > 20:  # tiny ones are a few interpolated pixels
            assert pre_x.mean() < post_x.mean(), i
            checked += 1
    assert checked >= 3 and idx["flipped"].any()


def test_rois_refuse_a_table_of_another_volume(synth_mito: dict[str, str], tmp_path: Path) -> None:
    from engine.errors import StorageError
    from engine.ops.rois import extract_rois

    s = synth_mito
    with pytest.raises(StorageError, match="does not belong to this label volume"):
        extract_rois(tmp_path / "x", s["syn_labels"], s["raw"], s["table"], size=32, progress=False)
    assert not (tmp_path / "x" / "rois" / "index.parquet").exists()


# -- an oracle round -------------------------------------------------------------------------------
def test_an_oracle_round_raises_roi_accuracy(synth_mito: dict[str, str], tmp_path: Path) -> None:
    """A simplified round: a weak pixel classifier (trained on the surroundings of two mitochondria)
    predicts; its objects become ROIs; two-stream queries are answered by the ground truth; the
    classifier is refit with the reviewed ROIs (rejected ones as background) and predicts again.
    ROI accuracy (fraction of predicted objects that match a true mitochondrion) must rise, and the
    number of true objects found must not fall."""
    import cc3d
    import torch

    from engine.active.features import FeatureConfig, VaeConfig
    from engine.active.finetune import review_targets
    from engine.active.oracle import answer_round, objects_correct
    from engine.active.pixel import PixelClassifier, filter_bank
    from engine.active.rounds import QueryConfig, run_query
    from engine.active.triplet import TripletConfig
    from engine.ops.label import label_volume
    from engine.ops.rois import extract_rois
    from engine.storage import create_volume, open_volume

    torch.set_num_threads(1)
    s = synth_mito
    raw_v = open_volume(s["raw"])
    gt = open_volume(s["mito"]).read(raw_v.box)
    feats = filter_bank(raw_v.read(raw_v.box))
    # the initial labels: the full depth around the two first large mitochondria
    comp = cc3d.connected_components(gt > 0)
    stats = cc3d.statistics(comp)
    region = np.zeros(gt.shape, bool)
    for i in (np.flatnonzero(stats["voxel_counts"][1:] > 200) + 1)[:2]:
        _, ys, xs = stats["bounding_boxes"][i]
        region[:, max(0, ys.start - 30) : ys.stop + 30, max(0, xs.start - 30) : xs.stop + 30] = True
    lab_idx, lab_y = np.flatnonzero(region.ravel()), gt.ravel()[region.ravel()] > 0

    def predict(idx: np.ndarray, y: np.ndarray, tag: str) -> tuple[float, int]:
        p = PixelClassifier().fit(feats, idx, y).predict(feats, gt.shape)
        pv = create_volume(f"{tmp_path}/p.zarr/prob{tag}", gt.shape, "uint8", (16, 128, 128), voxel_size=open_volume(s["raw"]).voxel_size)
        pv.write(pv.box, np.rint(p * 255).astype(np.uint8))
        label_volume(pv.url, f"{tmp_path}/p.zarr/cc{tag}", threshold=0.5, min_size=20, table=tmp_path / f"t{tag}.parquet", block=(16, 256, 256),
                     chunks=(16, 128, 128), progress=False)
        ok = objects_correct(f"{tmp_path}/p.zarr/cc{tag}", tmp_path / f"t{tag}.parquet", s["mito"])
        return float(ok.mean()), int(ok.sum())

    acc0, true0 = predict(lab_idx, lab_y, "0")
    run = tmp_path / "run"
    extract_rois(run, f"{tmp_path}/p.zarr/cc0", s["raw"], tmp_path / "t0.parquet", size=32, block=(16, 512, 512), progress=False)
    tiny = VaeConfig(latent_dim=4, hidden_dims=(8, 16), input_size=32, epochs=3, batch_size=16)
    cfg = QueryConfig(n_clusters=8, n_sub=2, features=FeatureConfig(image_patches=128, mask=tiny, image=tiny.model_copy(update={"latent_dim": 16})),
                      triplet=TripletConfig(steps=5))
    q = run_query(run, cfg, progress=False)
    assert q.round == 1 and q.queries == 16
    again = run_query(run, cfg, progress=False)  # resume: the round has its queries, nothing is redone
    assert again.already_done and again.path == q.path
    answers = answer_round(run, 1, s["mito"])
    assert 0 < sum(answers.values()) < len(answers)  # both kinds of answers: the round has something to learn
    t = review_targets(run, answers)
    idx = np.concatenate([lab_idx, np.flatnonzero(t.known.ravel())])
    y = np.concatenate([lab_y, t.target.ravel()[t.known.ravel()]])
    acc1, true1 = predict(idx, y, "1")
    assert acc1 >= acc0 + 0.04, (acc0, acc1)
    assert true1 >= true0 - 1, (true0, true1)
    # the next round suggests none of the reviewed ROIs
    q2 = run_query(run, cfg.model_copy(update={"active": False}), progress=False)
    from engine.active.query import read_queries

    assert q2.round == 2 and not set(read_queries(q2.path)["roi_id"].tolist()) & set(answers)


# -- the commands ----------------------------------------------------------------------------------
def test_query_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["query", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no ROIs in" in err and "run connectile rois first" in err
    assert main(["query", str(tmp_path / "none"), "--set", "features.mask.latnt_dim=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "latnt_dim" in err
    assert not (tmp_path / "none").exists()


def test_rois_command_refuses_a_missing_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    code = main(["rois", str(tmp_path / "run"), "--labels", str(tmp_path / "no.zarr/cc"), "--image", str(tmp_path / "no.zarr/raw"),
                 "--table", str(tmp_path / "t.parquet"), "--backend", "serial", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "no.zarr/cc" in err
    assert not (tmp_path / "run" / "rois" / "index.parquet").exists()


def test_roi_op_pickles() -> None:
    import pickle

    from engine.ops.rois import RoiOp

    op = RoiOp(labels="a.zarr/cc", image="a.zarr/raw", out="run/rois", objects_digest="x", shape=(4, 8, 8), block=(4, 8, 8), pre="a.zarr/syn")
    back = pickle.loads(pickle.dumps(op))
    assert back == op and back.params() == op.params()


def test_rois_command_and_query_stage_share_the_settings_and_their_defaults(synth_mito: dict[str, str], tmp_path: Path) -> None:
    """Issue 15: ``connectile rois``, the pipeline's query stage (its ROI crops) and :func:`extract_rois` take
    one declaration of the settings (:class:`~engine.params.RoisParams`): the same defaults (the stage had
    64-pixel crops and 32,256,256 blocks; both now take the paper's 128 pixels), the same crops."""
    import argparse
    import inspect

    from engine.active.rois import read_crops, read_index
    from engine.cli import main
    from engine.commands import rois as command
    from engine.commands._flags import flag
    from engine.ops.rois import extract_rois
    from engine.params import RoisParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.query import QuerySection, QueryStage

    defaults = RoisParams().settings()
    assert QuerySection().settings() == defaults
    sig = inspect.signature(extract_rois).parameters
    assert {k: sig[k].default for k in defaults if k in sig} == {k: defaults[k] for k in defaults if k in sig} and len(sig) > 6
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["rois"].format_help() for name in defaults)
    s = synth_mito
    assert main(["rois", str(tmp_path / "cli"), "--labels", s["labels"], "--image", s["raw"], "--table", s["table"], "--backend", "serial", "--no-progress"]) == 0
    vae = {"hidden_dims": [8, 16], "input_size": 16, "epochs": 1, "batch_size": 16}
    query = {"n_clusters": 2, "n_sub": 1, "n_init": 1, "features": {"mask": {"latent_dim": 4, **vae}, "image": {"latent_dim": 4, **vae}, "image_patches": 16}}
    ctx = StageContext(run_dir=tmp_path / "run", stage="query[1]", runtime=RuntimeSection(backend="serial", progress=False), round=1)
    section = QuerySection(labels=s["labels"], image=s["raw"], table=s["table"], query=query)  # type: ignore[arg-type]
    run_dir = Path(QueryStage().run(ctx, section)["rois"])
    a, b = read_index(tmp_path / "cli"), read_index(run_dir)
    assert len(a["roi_id"]) > 10
    for c in a:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    for which in ("image", "mask"):
        crops = read_crops(tmp_path / "cli", which)
        assert crops.shape[-2:] == (defaults["size"], defaults["size"])
        np.testing.assert_array_equal(crops, read_crops(run_dir, which))


def test_query_command_and_query_stage_share_the_settings_and_their_defaults(synth_mito: dict[str, str], tmp_path: Path) -> None:
    """Issue 15: ``connectile query`` and the pipeline's query stage (``rounds.query.query``) take one
    declaration of the settings (:class:`~engine.params.QueryParams` in :class:`QueryConfig`): the same
    defaults (the stage had 4 x 2 clusters and small VAEs; both now take the paper's), every setting a
    flag (``--clusters``/``--sub`` as before), the same queries from the same settings."""
    import argparse

    import yaml

    from engine.active.query import read_queries
    from engine.active.rounds import QueryConfig
    from engine.cli import main
    from engine.commands import query as command
    from engine.commands._flags import flag
    from engine.params import QueryParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.query import QuerySection, QueryStage

    defaults = QueryParams().settings()
    assert QuerySection().query == QueryConfig() and QueryConfig().settings() == defaults
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    text = sub.choices["query"].format_help()
    assert all(flag(name) in text for name in defaults) and "--clusters" in text and "--sub" in text
    vae = {"hidden_dims": [8, 16], "input_size": 16, "epochs": 1, "batch_size": 16}
    tiny = {"n_init": 1, "features": {"mask": {"latent_dim": 4, **vae}, "image": {"latent_dim": 4, **vae}, "image_patches": 16}}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({**tiny, "n_clusters": 9}))
    s = synth_mito
    cli = tmp_path / "cli"
    assert main(["rois", str(cli), "--labels", s["labels"], "--image", s["raw"], "--table", s["table"], "--size", "32", "--backend", "serial", "--no-progress"]) == 0
    assert main(["query", str(cli), "--config", str(tmp_path / "q.yaml"), "--clusters", "3", "--sub", "1", "--no-progress"]) == 0  # flags over --config
    ctx = StageContext(run_dir=tmp_path / "run", stage="query[1]", runtime=RuntimeSection(backend="serial", progress=False), round=1)
    section = QuerySection(labels=s["labels"], image=s["raw"], table=s["table"], size=32, query={**tiny, "n_clusters": 3, "n_sub": 1})  # type: ignore[arg-type]
    run_dir = Path(QueryStage().run(ctx, section)["rois"])
    a, b = (read_queries(d / "rounds" / "round-01" / "queries.parquet") for d in (cli, run_dir))
    assert len(a["roi_id"]) == 3 and a["method"][0] == "hierarchical"
    for c in a:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)


def test_least_sure_picks_the_unsure_windows_apart_from_the_labelled_ones(tmp_path: Path) -> None:
    """Boxes to paint: the windows of the highest entropy, never on a labelled box, never a neighbouring section's
    twin; a stored volume read a few sections at a time gives the array's picks; a deeper box scores the mean over
    its sections and stays above ``z_stop``."""
    from engine.active.uncertain import least_sure, window_entropy
    from engine.storage import create_volume

    prob = np.zeros((12, 256, 256))
    prob[3:6, 64:192, 64:192] = 0.5  # unsure in sections 3-5, one place
    prob[10, 0:128, 128:256] = 0.3  # less unsure elsewhere
    taken = [{"start": [5, 64, 64], "stop": [6, 192, 192]}]
    assert least_sure(prob, taken, 1, [1, 128, 128]) == [{"start": [10, 0, 128], "stop": [11, 128, 256]}]  # 3-5 lie within 2 of the box
    got = least_sure(prob, [{"start": [8, 0, 0], "stop": [9, 64, 64]}], 2, [1, 128, 128])
    assert got[0] == {"start": [3, 64, 64], "stop": [4, 192, 192]}
    assert got[1] == {"start": [10, 0, 128], "stop": [11, 128, 256]}  # not 4-5 (twins of the first pick); 10 is 2 from the box at 8, elsewhere
    # a box of 4 sections: the mean over them; none reaches past section 11 or, with z_stop, past section 4
    deep = least_sure(prob, [], 1, [4, 128, 128])
    assert deep == [{"start": [2, 64, 64], "stop": [6, 192, 192]}]  # sections 3-5 of the 4 unsure (2-5 and 3-6 tie: the first)
    assert least_sure(prob, [], 1, [4, 128, 128], z_stop=5) == [{"start": [1, 64, 64], "stop": [5, 192, 192]}]  # 3-4 of 1-4
    c, h = window_entropy(prob, [4, 128, 128], 64)
    assert c[:, 0].max() == 8 and h.max() == pytest.approx(0.75, abs=1e-4)  # three of four sections at 1 bit
    # the same picks from a stored uint8 volume, read 5 sections at a time
    vol = create_volume(str(tmp_path / "p.zarr" / "probability"), (1, 12, 256, 256), "uint8", (1, 4, 128, 128))
    vol.write(vol.box, np.round(prob * 255).astype(np.uint8)[None])
    c2, h2 = window_entropy(vol, [1, 128, 128], 64, slab=5)
    c1, h1 = window_entropy(np.round(prob * 255).astype(np.uint8), [1, 128, 128], 64)
    assert np.array_equal(c1, c2) and np.allclose(h1, h2) and c1[np.argmax(h1)].tolist() == [3, 64, 64]
    # the control: random windows under the same rules, the same for the same seed
    rand = least_sure(prob, taken, 6, [1, 128, 128], random_seed=[1, 0])
    assert rand == least_sure(prob, taken, 6, [1, 128, 128], random_seed=[1, 0]) != least_sure(prob, taken, 6, [1, 128, 128])
    assert len(rand) == 6 and not any(abs(b["start"][0] - 5) <= 2 and b["start"][1] < 192 and b["start"][1] + 128 > 64
                                      and b["start"][2] < 192 and b["start"][2] + 128 > 64 for b in rand)
