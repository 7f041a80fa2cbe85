"""The query step of a round in a run directory: :func:`run_query` (what ``connectile query`` does).

1. the ROI features (:mod:`engine.active.features`), computed once per run when missing;
2. for ``hierarchical`` with ``active: true`` from round 2 on: triplet tuning of E_u on the answers of
   the earlier rounds (:mod:`engine.active.triplet`), saved in the new round's folder;
3. the queries among ROIs without an answer (:mod:`engine.active.query`), written once per round as
   ``rounds/round-NN/queries.parquet`` with ``query.json`` (the parameters) and ``queries.png``.

Which round: the last one when it has no queries yet; a new one when the last is finished; the same
command run again on a round whose queries exist with the same parameters does nothing (resume).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from engine.active.features import FeatureConfig, compute_features, load_features
from engine.active.query import Suggestion, save_preview, suggest, write_queries
from engine.active.rois import existing_rounds, read_crops, read_index, round_dir
from engine.active.triplet import TripletConfig, active_finetune
from engine.config import Config
from engine.errors import ConfigError, ResumeMismatch
from engine.params import QueryParams
from engine.storage.safety import write_json_atomic, write_npy_atomic

log = logging.getLogger(__name__)


class QueryConfig(QueryParams, Config):
    """Everything ``connectile query`` can be told (YAML via ``--config``, ``--set key=value``): the
    settings of :class:`~engine.params.QueryParams` (its flags) and the two VAE streams and the triplet
    tuning."""

    features: FeatureConfig = Field(default_factory=FeatureConfig)
    triplet: TripletConfig = Field(default_factory=TripletConfig)


@dataclass
class QueryResult:
    round: int
    path: str
    queries: int
    method: str
    candidates: int
    reviewed: int
    image_stream_round: int
    already_done: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_queries(run_dir: str | os.PathLike[str], k: int) -> bool:
    return (round_dir(run_dir, k) / "queries.parquet").exists()


def next_round(run_dir: str | os.PathLike[str]) -> int:
    """The round whose queries come next (see the module docstring); the last round when its review
    is still open (the caller then resumes or refuses)."""
    from engine.active.answers import round_finished

    rounds = existing_rounds(run_dir)
    if not rounds:
        return 1
    last = rounds[-1]
    if not _has_queries(run_dir, last):
        return last
    return last + 1 if round_finished(round_dir(run_dir, last)) else last


def run_query(
    run_dir: str | os.PathLike[str],
    cfg: QueryConfig | None = None,
    *,
    round_number: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> QueryResult:
    """Suggest the queries of a round (see the module docstring) and return what was done."""
    from engine.active.answers import answers_path, reviewed_roi_ids

    t0 = time.perf_counter()
    cfg = cfg or QueryConfig()
    index = read_index(run_dir)
    k = next_round(run_dir) if round_number is None else int(round_number)
    if k < 1:
        raise ConfigError(f"--round must be >= 1, got {k}")
    out = round_dir(run_dir, k)
    params = cfg.model_dump(mode="json")
    qpath = out / "queries.parquet"
    if qpath.exists():
        saved = json.loads((out / "query.json").read_text()) if (out / "query.json").exists() else {}
        if saved.get("params") == params and not overwrite:
            log.info("round %d of %s has its queries already", k, run_dir)
            return QueryResult(**{**saved["result"], "already_done": True})
        if answers_path(out).exists():
            raise ResumeMismatch(f"round {k} of {run_dir} has queries and answers already",
                                 "finish it and run connectile query again for the next round")
        if not overwrite:
            raise ResumeMismatch(f"round {k} of {run_dir} has queries made with other parameters ({out / 'query.json'})",
                                 f"pass --overwrite to suggest them again, or finish round {k} first")
    compute_features(run_dir, cfg.features, progress=progress)
    if cfg.method == "hierarchical" and cfg.active and k > 1:
        active_finetune(run_dir, k, cfg.triplet, cfg.features.device)
    feats = load_features(run_dir, before_round=k + 1)
    reviewed = reviewed_roi_ids(Path(run_dir)) | set(exclude)  # ``exclude``: answered elsewhere (an earlier round's same objects)
    s = suggest(cfg.method, feats["mask"], feats["image"], n_clusters=cfg.n_clusters, n_sub=cfg.n_sub, per_cluster=cfg.per_cluster,
                budget=cfg.budget, reviewed=reviewed, scores=index["score"], seed=cfg.seed, n_init=cfg.n_init)
    if len(s) == 0:
        raise ConfigError(f"every ROI of {run_dir} has been reviewed: nothing left to suggest", "the active learning of this run is complete")
    out.mkdir(parents=True, exist_ok=True)
    write_queries(qpath, s)
    write_npy_atomic(out / "clusters.npy", _clusters_of_all(s, index["roi_id"].size))
    _preview(run_dir, s, out / "queries.png")
    result = QueryResult(round=k, path=str(qpath), queries=len(s), method=cfg.method, candidates=int(s.candidates.size), reviewed=len(reviewed),
                         image_stream_round=int(feats["image_round"]), seconds=time.perf_counter() - t0)
    write_json_atomic(out / "query.json", {"params": params, "result": result.to_dict()})
    log.info("round %d: %d %s queries among %d candidates (%d reviewed before)", k, len(s), cfg.method, s.candidates.size, len(reviewed))
    return result


def _clusters_of_all(s: Suggestion, n: int) -> np.ndarray:
    """The cluster of every ROI (-1: none or reviewed before), for label propagation."""
    from engine.active.propagation import full_clusters

    c = full_clusters(s.assignment, s.candidates, n)
    return np.full(n, -1, np.int64) if c is None else c


def _preview(run_dir: str | os.PathLike[str], s: Suggestion, path: Path, max_tiles: int = 64) -> None:
    ids = s.roi_id[:max_tiles]
    save_preview(read_crops(run_dir, "image", ids), read_crops(run_dir, "mask", ids), s, path, max_tiles)
