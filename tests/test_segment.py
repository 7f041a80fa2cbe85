"""Neurons from affinities: the blockwise pipeline equals the same pipeline on the whole volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.errors import StorageError
from engine.geometry import BlockGrid, Box
from engine.kernels.agglomerate import edge_sums, mean_agglomeration
from engine.kernels.watershed import block_contacts, block_edges, fragments
from engine.ops.label_passes import provisional_ids
from engine.ops.scratch import Scratch
from engine.ops.segment import segment_volume
from engine.storage import create_volume, open_volume

SHAPE = (8, 32, 36)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same labelling up to renumbering (0 stays 0)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    m = a != 0
    pairs = np.unique(np.stack([a[m].astype(np.uint64), b[m].astype(np.uint64)], axis=1), axis=0)
    return len(pairs) == len(np.unique(a[m])) == len(np.unique(b[m]))


def ground_truth_affinities(seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells (anisotropic, z 3x coarser) and their nearest-neighbour affinities plus noise."""
    rng = np.random.default_rng(seed)
    pts = rng.random((14, 3)) * np.array(SHAPE)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d = (3 * (zz[..., None] - pts[:, 0])) ** 2 + (yy[..., None] - pts[:, 1]) ** 2 + (xx[..., None] - pts[:, 2]) ** 2
    gt = (d.argmin(-1) + 1).astype(np.uint64)
    affs = np.ones((3, *SHAPE), np.float32)
    for ax in range(3):
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[ax], prev[ax] = slice(1, None), slice(0, -1)
        affs[ax][tuple(cur)] = gt[tuple(cur)] == gt[tuple(prev)]
    return gt, np.clip(affs + rng.normal(0, noise, affs.shape), 0, 1).astype(np.float32)


def write_affs(tmp_path: Path, affs: np.ndarray, chunks: tuple[int, int, int]) -> str:
    vol = create_volume(str(tmp_path / "s.zarr" / "affs"), affs.shape, "float32", chunks)
    vol.write(vol.box, affs)
    return vol.url


def test_per_section_slabs_equal_one_block(tmp_path: Path) -> None:
    _, affs = ground_truth_affinities(0)
    url = write_affs(tmp_path, affs, (2, 32, 36))
    outs = []
    for name, block in (("slabs", (2, 32, 36)), ("whole", SHAPE)):
        r = segment_volume(url, str(tmp_path / "s.zarr" / name), per_section=True, threshold=0.8, block=block, chunks=(2, 32, 36), progress=False)
        outs.append((r, open_volume(r.output).read(Box.from_shape(SHAPE))))
    (r1, a), (r2, b) = outs
    assert r1.blocks == 4 and r2.blocks == 1
    assert r1.local_objects == r2.local_objects and r1.objects == r2.objects
    assert same_partition(a, b)


def reference(fragments: np.ndarray, affs: np.ndarray, threshold: float, scoring: str, agglomeration: str = "threshold") -> np.ndarray:
    """The agglomeration on the whole volume at once: every edge scoring >= threshold merges, or
    hierarchical mean agglomeration over the whole volume's graph."""
    if agglomeration == "mean":
        ea, eb, es, ec = edge_sums(*block_contacts(fragments, affs))
        merges = mean_agglomeration(ea, eb, es, ec, threshold)
        a, b = merges[:, 0], merges[:, 1]
        keep = np.ones(len(a), bool)
    else:
        a, b, s = block_edges(fragments, affs, scoring)  # type: ignore[arg-type]
        keep = s >= threshold
    n = int(fragments.max()) + 1
    graph = coo_matrix((np.ones(int(keep.sum())), (a[keep].astype(np.int64), b[keep].astype(np.int64))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    out = (comp + 1).astype(np.uint64)[fragments]
    out[fragments == 0] = 0
    return out


@pytest.mark.parametrize(
    ("backend", "scoring", "agglomeration"),
    [("serial", "mean", "threshold"), ("serial", "quantile", "threshold"), ("serial", "mean", "mean"), ("ray", "mean", "mean")],
)
def test_blockwise_equals_whole_volume_agglomeration(tmp_path: Path, scoring: str, backend: str, agglomeration: str, request: pytest.FixtureRequest) -> None:
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    _, affs = ground_truth_affinities(1, noise=0.3 if agglomeration == "mean" else 0.1)
    block = (4, 12, 12)
    url = write_affs(tmp_path, affs, block)
    out = str(tmp_path / "s.zarr" / "seg")
    r = segment_volume(
        url, out, threshold=0.7, scoring=scoring, agglomeration=agglomeration, block=block, chunks=block, keep_scratch=True,  # type: ignore[arg-type]
        backend=backend, workers=2, progress=False,  # type: ignore[arg-type]
    )
    scratch = Scratch.beside(out, "segment-scratch")
    frag = provisional_ids(scratch, BlockGrid(Box.from_shape(SHAPE), write_shape=block))  # the blockwise fragments, provisional global ids
    got = open_volume(out).read(Box.from_shape(SHAPE))
    want = reference(frag, affs, 0.7, scoring, agglomeration)
    assert same_partition(got, want)
    assert r.objects == np.unique(want[want > 0]).size and r.objects < r.local_objects
    if agglomeration == "mean":  # re-scoring merged edges changes the outcome on these noisy affinities
        assert not same_partition(want, reference(frag, affs, 0.7, scoring, "threshold"))


def test_mean_agglomeration_by_hand_and_order_independent() -> None:
    # a chain 1-2-3-4 and a weak 1-4 link: scores 0.9, 0.6, 0.8, 0.1 (sums over 1, 2, 1, 1 pairs)
    a, b = np.array([1, 2, 3, 1]), np.array([2, 3, 4, 4])
    s, c = np.array([0.9, 1.2, 0.8, 0.1]), np.array([1, 2, 1, 1])
    # 0.9: {1,2}; 0.8: {3,4}; then {1,2}-{3,4} = (1.2 + 0.1) / 3 = 0.433
    assert mean_agglomeration(a, b, s, c, 0.5).tolist() == [[1, 2], [3, 4]]
    assert len(mean_agglomeration(a, b, s, c, 0.4)) == 3
    assert mean_agglomeration(a, b, s, c, 0.95).tolist() == []
    rng = np.random.default_rng(0)  # a bigger random graph: the merges do not depend on the edge order
    lo = rng.integers(1, 200, 2000)
    hi = lo + rng.integers(1, 20, 2000)
    ea, eb, es, ec = edge_sums(lo, hi, rng.random(2000))
    perm = rng.permutation(ea.size)
    m1 = mean_agglomeration(ea, eb, es, ec, 0.5)
    m2 = mean_agglomeration(ea[perm], eb[perm], es[perm], ec[perm], 0.5)
    assert m1.tolist() == m2.tolist() and len(m1) > 10


def test_quality_on_clean_affinities(tmp_path: Path) -> None:
    """Loose sanity bounds on synthetic affinities (the real scores are in benchmarks/RESULTS.md)."""
    from engine.metrics import adapted_rand, voi

    gt, affs = ground_truth_affinities(2, noise=0.05)
    url = write_affs(tmp_path, affs, (4, 16, 18))
    r = segment_volume(url, str(tmp_path / "s.zarr" / "seg"), threshold=0.9, block=(4, 16, 18), chunks=(4, 16, 18), progress=False)
    seg = open_volume(r.output).read(Box.from_shape(SHAPE))
    split, merge = voi(seg, gt)
    assert split + merge < 4.0 and adapted_rand(seg, gt).error < 0.9


def test_bad_affinities(tmp_path: Path) -> None:
    vol = create_volume(str(tmp_path / "s.zarr" / "x"), SHAPE, "float32", (4, 16, 18))
    with pytest.raises(StorageError, match=r"affinities are \(3, z, y, x\)"):
        segment_volume(vol.url, str(tmp_path / "s.zarr" / "seg"), progress=False)


def _pure(frag: np.ndarray, gt: np.ndarray) -> bool:
    """Every fragment lies inside one ground-truth object."""
    pairs = np.unique(np.stack([frag[frag > 0].astype(np.uint64), gt[frag > 0]], axis=1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0]))


def test_fragments_never_cross_a_clean_boundary() -> None:
    """A one-voxel-thin process has no seed of its own, and a lone voxel on a block face has no strong
    link inside its block: neither may be handed to the neighbouring neuron (a false merge later)."""
    gt = np.ones((6, 20, 20), np.uint64)
    gt[:, 10, 2:18] = 2  # a sheet one voxel thick: every voxel of it touches object 1
    gt[3, 5, 9:11] = 3  # two voxels, one each side of x = 10 (the block face below)
    affs = np.ones((3, *gt.shape), np.float32)
    for ax in range(3):
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[ax], prev[ax] = slice(1, None), slice(0, -1)
        affs[ax][tuple(cur)] = gt[tuple(cur)] == gt[tuple(prev)]
    frag, _ = fragments(affs)
    assert _pure(frag, gt) and (frag > 0).all()
    for half in (slice(0, 10), slice(10, 20)):  # two blocks split at x = 10
        f, _ = fragments(affs[:, :, :, half])
        assert _pure(f, gt[:, :, half])
    # the right block's voxel of object 3 links strongly only across the face: a fragment of its own
    assert f[3, 5, 0] > 0 and (f == f[3, 5, 0]).sum() == 1


def test_command_and_pipeline_stage_share_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """Issue 15: ``connectile segment``, the pipeline's ``segment`` stage and :func:`segment_volume` take
    one declaration of the settings (:class:`~engine.params.SegmentParams`): same defaults, same bytes; the
    stage now reaches the agglomeration (it could not before)."""
    import argparse
    import inspect

    from engine.cli import main
    from engine.commands import segment as command
    from engine.commands._flags import flag
    from engine.params import SegmentParams
    from engine.pipeline.stage import RuntimeSection, StageContext
    from engine.pipeline.stages.segment import SegmentSection, SegmentStage

    defaults = SegmentParams().settings()
    assert SegmentSection(input="x").settings() == defaults
    sig = inspect.signature(segment_volume).parameters
    assert {k: sig[k].default for k in defaults if k in sig} == {k: defaults[k] for k in defaults if k in sig} and len(sig) > 6
    sub = argparse.ArgumentParser().add_subparsers()
    command.add_parser(sub)
    assert all(flag(name) in sub.choices["segment"].format_help() for name in defaults)
    _, affs = ground_truth_affinities(3, noise=0.05)
    url = write_affs(tmp_path, affs, (4, 16, 18))
    cli = tmp_path / "cli.zarr" / "seg"
    assert main(["segment", url, str(cli), "--agglomeration", "mean", "--threshold", "0.6", "--backend", "serial", "--no-progress"]) == 0
    ctx = StageContext(run_dir=tmp_path / "run", stage="segment", runtime=RuntimeSection(backend="serial", progress=False))
    out = SegmentStage().run(ctx, SegmentSection(input=url, agglomeration="mean", threshold=0.6))["segmentation"]
    a, b = open_volume(str(cli)), open_volume(out)
    assert a.chunk_shape == b.chunk_shape and int(a.read(a.box).max()) > 3
    np.testing.assert_array_equal(a.read(a.box), b.read(b.box))
