"""The training core: one loop that every training method plugs into (segmentation and semi-supervised
training, SimSiam, SimCLR, local contrastive pretraining, the VAEs and triplet tuning of active learning).

A method is a :class:`Method`: it holds its model(s) and ``optimizer`` and says how to make the batch of a
step (:meth:`Method.batch`), what the loss of a batch is and which scalars to log (:meth:`Method.loss`),
and what a checkpoint holds (:meth:`Method.write` / :meth:`Method.read`, :meth:`Method.state`). The core
(:func:`fit`) owns the rest, the same for every method:

- the optimisation step (:func:`run_step`: zero the gradients, backward, ``optimizer.step``);
- checkpoints ``OUT/checkpoints/step-XXXXXX/`` written into a temporary folder and renamed
  (:func:`engine.learn.checkpoints.write_checkpoint`), every ``checkpoint_every`` steps and at the end; the
  core adds ``optimizer.pt`` (optimizer state, step, elapsed time, the torch random state and the method's
  :meth:`~Method.state`, e.g. its numpy generator), so a run resumed from its newest checkpoint ends with
  the same weights as an uninterrupted one;
- ``OUT/history.jsonl`` (one record per logged step, truncated to the checkpoint on resume), TensorBoard
  scalars (``OUT/tensorboard``, ``train/<name>``) and a tqdm bar;
- an optional time budget (:mod:`engine.learn.budget`): the loop stops before a step once the budget is
  spent, with a checkpoint of the step it reached;
- data-parallel training: under an initialised process group (Ray Train sets one up) the method wraps its
  model with :func:`wrap_ddp`, rank 0 alone writes; see :mod:`engine.learn.distributed`.

Without an output folder the loop keeps its records in memory only (no checkpoints, files or TensorBoard).

The methods, their entry points and where their runs live:

- segmentation and semi-supervised training: :func:`engine.learn.train` (:class:`~engine.learn.Trainer`),
  in ``OUT``; Ray Train with ``ray.num_workers``;
- SimSiam: :func:`engine.learn.simsiam.train_simsiam`, in ``OUT``; Ray Train with ``ray.num_workers``;
- SimCLR and local contrastive pretraining: :func:`engine.learn.contrastive.pretrain`, in
  ``OUT/pretrain/<stage>``, on the Ray Train workers of the training run; SimCLR alone
  (:func:`engine.learn.simclr.pretrain_simclr`) in ``loop.output`` where given;
- the VAEs: :func:`engine.active.features.fit_vae`, in ``RUN/features/train-<stream>-<key>``;
- triplet tuning: :func:`engine.active.triplet.triplet_finetune`, in ``RUN/rounds/round-NN/triplet-<key>``.
  These two are small and run in the process of ``connectile query`` (no Ray entry point).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError
from engine.learn.budget import Clock
from engine.learn.checkpoints import OPTIMIZER, latest_checkpoint, read_optimizer_file, write_checkpoint
from engine.learn.history import append_history, truncate_history

log = logging.getLogger(__name__)

MODULES = "modules.pt"
META = "config.json"


class Method:
    """A training method's plug-in (see the module docstring). Subclasses set ``optimizer`` and implement
    :meth:`batch` and :meth:`loss`; the rest has defaults. ``step_count`` and ``elapsed`` are the core's."""

    name = "train"
    optimizer: torch.optim.Optimizer
    device = torch.device("cpu")
    step_count = 0
    elapsed = 0.0

    def batch(self, step: int) -> Any:
        """The input of ``step`` (on this worker)."""
        raise NotImplementedError

    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss to minimise and the other scalars to log (floats or 0-d tensors)."""
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Before the loss of ``step`` (seeds, learning rate, train/eval mode)."""

    def after_step(self, step: int) -> None:
        """After the optimizer step of ``step`` (a scheduler, a moving average)."""

    def learning_rate(self, step: int) -> float | None:
        """The learning rate of ``step`` to log (None: not logged)."""
        return None

    def evaluate(self, step: int) -> dict[str, float]:
        """Scores after ``step`` (logged as ``val/<name>``); {} when none are due."""
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """What the default :meth:`write` and :meth:`read` keep."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed (the method's settings, JSON)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Further state to resume exactly (tensors and plain values), kept in ``optimizer.pt``."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    def write(self, folder: Path) -> None:
        """Write the method's files into a checkpoint folder (by default the :meth:`modules`' weights
        in ``modules.pt`` and ``config.json``)."""
        torch.save({k: {n: t.detach().cpu() for n, t in bare(m).state_dict().items()} for k, m in self.modules().items()}, folder / MODULES)
        (folder / META).write_text(json.dumps({"method": self.name, "step": self.step_count, "config": self.describe()}, indent=1, default=str))

    def read(self, folder: Path) -> None:
        """Read what :meth:`write` wrote; a checkpoint of other settings is refused in one line."""
        meta = json.loads((folder / META).read_text())
        if meta.get("method") != self.name or meta.get("config") != json.loads(json.dumps(self.describe(), default=str)):
            raise ConfigError(f"cannot resume from {folder}: it was written by another {meta.get('method')} run (other settings)",
                              f"restore the settings it was trained with, or delete {folder.parent.parent} to start over")
        saved = torch.load(folder / MODULES, map_location=self.device, weights_only=True)
        for k, m in self.modules().items():
            bare(m).load_state_dict(saved[k], strict=True)

    def on_checkpoint(self, step: int, records: list[dict[str, Any]]) -> None:
        """After a checkpoint of ``step`` (exports, plots); ``records`` is the run's history so far."""


def bare(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    module: nn.Module = getattr(model, "module", model)
    return module


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This worker's rank (0 outside a process group)."""
    return int(torch.distributed.get_rank()) if distributed() else 0


def wrap_ddp(model: nn.Module, device: torch.device, unused: bool = False) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under an initialised process group, else itself.
    ``unused``: some parameters take no part in the loss (a U-Net whose encoder alone is trained)."""
    if not distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)


@dataclass
class LoopOptions:
    """How :func:`fit` runs a method."""

    steps: int
    output: Path | None = None
    resume: bool = True
    checkpoint_every: int = 0  # 0: only at the end
    keep: int = 3
    log_every: int = 1
    progress: bool = False
    clock: Clock | None = None
    is_main: bool = True


@dataclass
class LoopResult:
    step: int
    elapsed: float
    last: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # "budget" when the time budget ended the loop early

    def losses(self) -> list[float]:
        return [float(r["loss"]) for r in self.records if "loss" in r]


def run_step(method: Method, batch: Any, step: int) -> dict[str, float]:
    """One optimisation step of ``method`` on ``batch``; returns the loss and the logged scalars."""
    method.before_step(step)
    loss, parts = method.loss(batch, step)
    method.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    method.optimizer.step()
    method.after_step(step)
    return {"loss": float(loss.detach()), **{k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in parts.items()}}


def save(method: Method, output: Path, keep: int = 3) -> Path:
    """Write the checkpoint of ``method`` at its current step (see the module docstring)."""

    def write(folder: Path) -> None:
        method.write(folder)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        blob = {"optimizer": method.optimizer.state_dict(), "step": method.step_count, "elapsed": float(method.elapsed), "rng": rng, "method": method.state()}
        torch.save(blob, folder / OPTIMIZER)

    return write_checkpoint(output, method.step_count, write, keep)


def resume(method: Method, output: Path) -> bool:
    """Load the newest checkpoint of ``output`` into ``method``, if any; True if one was loaded."""
    ck = latest_checkpoint(output)
    if ck is None:
        return False
    method.read(ck)
    blob = read_optimizer_file(ck, method.device)
    method.optimizer.load_state_dict(blob["optimizer"])
    method.step_count, method.elapsed = int(blob["step"]), float(blob.get("elapsed", 0.0))
    rng = blob.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    method.load_state(blob.get("method", {}))
    log.info("resumed from %s (step %d)", ck, method.step_count)
    return True


class _Outputs:
    """History, TensorBoard and the progress bar of one :func:`fit` call."""

    def __init__(self, method: Method, opts: LoopOptions) -> None:
        self.opts, self.method = opts, method
        write = opts.output is not None and opts.is_main
        self.history = opts.output / "history.jsonl" if write and opts.output is not None else None
        self.records = truncate_history(self.history, method.step_count) if self.history is not None else []
        self.writer: Any = None
        if write and opts.output is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(opts.output / "tensorboard"), purge_step=method.step_count or None)
        self.bar: Any = None
        if opts.progress and opts.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=opts.steps, initial=method.step_count, desc=method.name, unit="step")

    def record(self, step: int, values: dict[str, float], prefix: str) -> None:
        rec: dict[str, Any] = {"step": step, "time": round(self.method.elapsed, 3), **values}
        self.records.append(rec)
        if self.history is not None:
            append_history(self.history, rec)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def fit(method: Method, opts: LoopOptions) -> LoopResult:
    """Train ``method`` to ``opts.steps`` (see the module docstring); returns what the run reached."""
    writes = opts.output is not None and opts.is_main
    if writes and opts.output is not None:
        opts.output.mkdir(parents=True, exist_ok=True)
    if opts.resume and opts.output is not None:
        resume(method, opts.output)
    out = _Outputs(method, opts)
    last: dict[str, float] = {}
    stopped = None
    saved = method.step_count
    try:
        while method.step_count < opts.steps:
            if opts.clock is not None and _spent(opts.clock, method.device):
                stopped = "budget"
                log.warning("%s: time budget of %g %s seconds spent at step %d of %d", method.name, opts.clock.budget.seconds, opts.clock.budget.clock, method.step_count, opts.steps)
                break
            t0 = time.perf_counter()
            step = method.step_count
            last = run_step(method, method.batch(step), step)
            method.elapsed += time.perf_counter() - t0
            method.step_count = step = step + 1
            if out.bar is not None:
                out.bar.update(1)
                out.bar.set_postfix(loss=f"{last['loss']:.4f}")
            if step % opts.log_every == 0 or step == opts.steps:
                lr = method.learning_rate(step - 1)
                out.record(step, last if lr is None else {"lr": lr, **last}, "train")
            scores = method.evaluate(step) if opts.is_main else {}
            if scores:
                out.record(step, scores, "val")
                log.info("step %d: validation %s", step, scores)
            if writes and ((opts.checkpoint_every and step % opts.checkpoint_every == 0) or step == opts.steps):
                _checkpoint(method, opts, out.records)
                saved = step
        if stopped and writes and saved != method.step_count:
            _checkpoint(method, opts, out.records)
    finally:
        out.close()
    return LoopResult(method.step_count, method.elapsed, last, out.records, stopped)


def _spent(clock: Clock, device: torch.device) -> bool:
    """Whether the budget is spent; under a process group, on any worker (they all stop at one step)."""
    flag = clock.spent()
    if not distributed():
        return flag
    t = torch.tensor([float(flag)], device=device if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _checkpoint(method: Method, opts: LoopOptions, records: list[dict[str, Any]]) -> None:
    assert opts.output is not None
    save(method, opts.output, opts.keep)
    method.on_checkpoint(method.step_count, records)
