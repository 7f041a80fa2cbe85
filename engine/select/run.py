"""``connectile select`` as a function: embeddings in, chosen boxes, curves and plots out.

Writes into the output folder:

- ``selection.json``: the boxes of the chosen method (``{"start": [z, y, x], "stop": [z, y, x]}`` in
  voxels, the labelled boxes of training), with method, seed, gains and coverage;
- ``selection_<method>.json`` for every method run (coverage and the baselines);
- ``coverage.png`` (covered fraction against sub-volumes, every method) and ``picks.png``;
- ``config.yaml``: the resolved configuration.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config
from engine.errors import ConfigError
from engine.params import SelectMethod, SelectParams
from engine.select.baselines import kcenter_select, kmeans_select, random_select
from engine.select.candidates import Windows
from engine.select.greedy import Selection, greedy_select
from engine.select.knn import approx_knn, exact_knn, knn_recall
from engine.select.patches import PatchGrid
from engine.storage.safety import write_atomic, write_json_atomic

log = logging.getLogger(__name__)

Method = SelectMethod


class SelectConfig(SelectParams, Config):
    """Parameters of coverage selection: :class:`~engine.params.SelectParams` (declared once; the command's
    flags and the ``selection`` stage's ``params`` are the same model), validated on assignment too."""


#: ``k: auto``: never below the paper's 30, never above this (the balls are N x k ids)
K_AUTO_MIN, K_AUTO_MAX = 30, 512


def resolve_k(cfg: SelectParams, n: int) -> int:
    """The kNN ball size for ``n`` patches: ``cfg.k``, or for ``auto`` the smallest ball with which the
    budget's picks could together cover the pool, ``ceil(n / (budget x patches per window))``, within
    ``[K_AUTO_MIN, K_AUTO_MAX]`` and at most ``n``. Below that the balls of the picks rarely overlap, so
    every pick gains the same and coverage chooses nothing (benchmarks/RESULTS.md, ninth session).

    >>> resolve_k(SelectParams(k="auto", budget=8, window=(1, 2, 2)), 6000)
    188
    >>> resolve_k(SelectParams(k="auto", budget=8, window=(1, 2, 2)), 20), resolve_k(SelectParams(k=10), 6000)
    (20, 10)
    """
    if cfg.k != "auto":
        return cfg.k
    per_pick = int(np.prod(cfg.window)) * cfg.budget
    return int(min(n, max(K_AUTO_MIN, min(K_AUTO_MAX, -(-n // per_pick)))))


def compute_balls(emb: np.ndarray, cfg: SelectConfig, *, ray: bool = False, progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """kNN balls by the configured method, with how they were made (and the measured recall)."""
    n = emb.shape[0]
    k = resolve_k(cfg, n)
    if k > n:
        raise ConfigError(f"k (--k) is {k}, more than the {n} patches", "use a smaller k, or embed with a smaller stride")
    method = cfg.knn if cfg.knn != "auto" else ("exact" if n <= cfg.exact_max else "approx")
    t = time.perf_counter()
    info: dict[str, Any] = {"knn": method, "k": k, "include_self": cfg.include_self}
    if method == "exact":
        balls = exact_knn(emb, k, include_self=cfg.include_self, progress=progress)
    else:
        if ray:
            from engine.select.distributed import distributed_knn

            balls = distributed_knn(emb, k, workers=cfg.workers, nlist=cfg.nlist, nprobe=cfg.nprobe, seed=cfg.seed, include_self=cfg.include_self,
                                    target_recall=cfg.target_recall)
        else:
            balls = approx_knn(emb, k, nlist=cfg.nlist, nprobe=cfg.nprobe, seed=cfg.seed, include_self=cfg.include_self, target_recall=cfg.target_recall)
        info["recall"] = knn_recall(emb, balls, sample=cfg.recall_sample, seed=cfg.seed, include_self=cfg.include_self)
        log.info("approximate kNN recall@%d on %d patches: %.3f", k, cfg.recall_sample, info["recall"])
    info["knn_seconds"] = time.perf_counter() - t
    return balls, info


def select(grid: PatchGrid, emb: np.ndarray, cfg: SelectConfig, *, progress: bool = False) -> tuple[list[Selection], dict[str, Any]]:
    """Run every configured method; the first is the chosen one."""
    windows = Windows(grid, cfg.window, cfg.step)
    ray = cfg.backend == "ray"
    k = resolve_k(cfg, emb.shape[0])
    if cfg.k == "auto":
        log.info("k auto: %d (%d patches, %d picks of %d patches)", k, emb.shape[0], cfg.budget, int(np.prod(cfg.window)))
        cfg = cfg.model_copy(update={"k": k})
    balls, info = compute_balls(emb, cfg, ray=ray, progress=progress)
    ties = cfg.seed if cfg.ties == "seeded" else None  # the order of coverage ties (engine.select.coverage.tie_key)
    out: list[Selection] = []
    for method in cfg.methods:
        t = time.perf_counter()
        if method == "coverage":
            shards = None
            if ray:
                from engine.select.distributed import RayShards

                shards = RayShards(windows, balls, workers=cfg.workers, seed=ties)
            sel = greedy_select(windows, balls, cfg.budget, shards=shards, progress=progress, seed=ties)
            if shards is not None:
                shards.close()
        elif method == "random":
            sel = random_select(windows, balls, cfg.budget, cfg.seed)
        elif method == "kcenter":
            sel = kcenter_select(windows, balls, emb, cfg.budget, cfg.seed)
        elif method == "kmeans":
            sel = kmeans_select(windows, balls, emb, cfg.budget, cfg.seed)
        else:
            from engine.select.greedy import coverage_curve
            from engine.select.hierarchical import hierarchical_select

            def knn(x: np.ndarray, k: int) -> np.ndarray:
                sub = cfg.model_copy(update={"k": k})
                return compute_balls(x, sub)[0]

            sel = hierarchical_select(grid, emb, cfg.window, cfg.budget, k, knn, factor=cfg.factor, regions_per_pick=cfg.regions_per_pick, step=cfg.step, seed=ties)
            sel.gains, sel.coverage = coverage_curve(windows, balls, sel.picks)  # scored on the whole grid
        sel.seed = cfg.seed
        sel.extra["seconds"] = time.perf_counter() - t
        log.info("%s: %d sub-volumes cover %d of %d patches", method, len(sel.picks), sel.coverage[-1] if sel.coverage else 0, sel.total)
        out.append(sel)
    return out, info


def write_outputs(
    out_dir: str | os.PathLike[str], grid: PatchGrid, emb: np.ndarray, selections: list[Selection], info: dict[str, Any], cfg: SelectConfig, attrs: dict[str, Any]
) -> Path:
    """selection*.json, coverage.png, picks.png and config.yaml in ``out_dir``; returns selection.json."""
    from engine.select.plot import plot_coverage, plot_picks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {"volume": attrs.get("volume", ""), "voxel_size": attrs.get("voxel_size", [1.0, 1.0, 1.0]), "grid": grid.to_attrs(), **info,
              "window": list(cfg.window), "budget": cfg.budget}
    for sel in selections:
        doc = {**sel.to_json(), "scores": sel.coverage, **common}
        write_json_atomic(out / f"selection_{sel.method}.json", doc)
    chosen = {**selections[0].to_json(), "scores": selections[0].coverage, **common,
              "baselines": {s.method: {"boxes": [b.to_dict() for b in s.boxes], "coverage": s.coverage} for s in selections[1:]}}
    path = out / "selection.json"
    write_json_atomic(path, chosen)
    write_atomic(out / "config.yaml", cfg.to_yaml())
    plot_coverage(selections, out / "coverage.png")
    plot_picks(grid, emb, selections, out / "picks.png")
    return path
