"""Entry point of a training run: in this process (``ray.num_workers: 0``) or data-parallel on Ray Train
(``ray.train.torch.TorchTrainer``, one worker per GPU or CPU slot, gradients averaged by DDP).

Every worker draws its own crops (``rank`` enters the batch seed), so the global batch is
``batch_size * num_workers``; rank 0 writes checkpoints, logs and validation. The loop is the training
core's (:mod:`engine.learn.core`); a time budget (``budget``) stops all workers at the same step. All workers start from
the same initial weights (seeded) and resume from the same checkpoint (the output directory must be
shared by the workers, as it is on one node or a shared file system).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from engine.learn.budget import BudgetSpent, Clock, start
from engine.learn.config import RayConfig, TrainConfig

log = logging.getLogger(__name__)


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: ``config["entry"]`` (``"module:function"``) is called with the
    payload, this worker's rank and its device; what it returns is reported."""
    import ray.train
    import ray.train.torch

    module, name = config["entry"].split(":")
    function = getattr(importlib.import_module(module), name)
    result = function(config["payload"], ray.train.get_context().get_world_rank(), ray.train.torch.get_device())
    ray.train.report(dict(result or {}))


def run_workers(entry: str, payload: dict[str, Any], ray_cfg: RayConfig, storage: Path) -> None:
    """Run a training method data-parallel on Ray Train: ``ray_cfg.num_workers`` workers (one process
    group, DDP) each call ``entry(payload, rank, device)``, a function that runs the method on the
    training core (:mod:`engine.learn.core`). Ray's own files go to ``storage``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from engine.runtime import connect

    connect(ray_cfg.address, dashboard=False)
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"entry": entry, "payload": payload},
        scaling_config=ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu),
        run_config=RunConfig(name="train", storage_path=str(storage.resolve())),
    )
    trainer.fit()


def _train_worker(payload: dict[str, Any], rank: int, device: Any) -> dict[str, float]:
    """One worker of :func:`train`."""
    import torch

    from engine.learn.semi import build_trainer

    cfg = TrainConfig.model_validate(payload["cfg"])
    if rank != 0:
        cfg = cfg.model_copy(update={"progress": False})
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    summary = build_trainer(cfg, rank=rank, world_size=world, device=device).fit(resume=payload["resume"])
    return {"step": summary["step"], "elapsed": summary["elapsed"], **summary["last"]}


def _pretrained(cfg: TrainConfig, clock: Clock | None) -> bool:
    """Run the contrastive pretraining (in this process, or on the Ray Train workers of ``cfg.ray``);
    False where the time budget stopped it."""
    from engine.learn.contrastive import pretrain, pretrain_done

    if cfg.ray.num_workers == 0:
        try:
            pretrain(cfg, clock=clock)
        except BudgetSpent as err:
            log.warning("%s", err)
            return False
        return True
    run_workers("engine.learn.contrastive:_pretrain_worker", {"cfg": cfg.model_dump(mode="json")}, cfg.ray, Path(cfg.output) / "pretrain" / "ray")
    return pretrain_done(cfg)


def train(cfg: TrainConfig, *, resume: bool = True) -> dict[str, Any]:
    """Run the training that ``cfg`` describes; returns ``{"step", "elapsed", "last", "output"}``.

    ``resume=False`` starts over: the run's checkpoints, history and logs are deleted first.
    """
    out = Path(cfg.output)
    if not resume:
        from engine.storage.safety import remove

        for name in ("checkpoints", "tensorboard", "history.jsonl", "loss.png", "ray", "pretrain"):
            remove(out / name, "run-files")  # guarded: never a root, a home or the current folder
    clock = start(cfg.budget)  # one budget for pretraining and training
    if cfg.contrastive is not None and not _pretrained(cfg, clock):  # stage(s) before training for segmentation
        return {"step": 0, "elapsed": 0.0, "last": {}, "output": str(out), "stopped": "budget"}
    if cfg.ray.num_workers == 0:
        from engine.learn.semi import build_trainer

        return build_trainer(cfg).fit(resume=resume, clock=clock)
    if clock is not None and cfg.budget is not None:  # each worker gets what pretraining left
        cfg = cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"seconds": max(1e-3, cfg.budget.seconds - clock.used())})})

    run_workers("engine.learn.distributed:_train_worker", {"cfg": cfg.model_dump(mode="json"), "resume": resume}, cfg.ray, out / "ray")
    # the workers' reports are not always kept in the result (Ray Train v2); the run's own record is
    from engine.learn.history import read_history

    losses = [r for r in read_history(out / "history.jsonl") if "loss" in r]
    last = {k: v for k, v in losses[-1].items() if k not in ("step", "time", "lr")} if losses else {}
    step = int(losses[-1]["step"]) if losses else 0
    return {"step": step, "elapsed": float(losses[-1]["time"]) if losses else 0.0, "last": last, "output": str(out), "stopped": None if step >= cfg.steps else "budget"}
