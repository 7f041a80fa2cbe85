"""Active clustering: fine-tune the image encoder E_u on reviewed ROIs with the triplet loss of eq. (2).

For a sample ``x`` with a positive anchor ``x_P`` (same answer) and a negative anchor ``x_N`` (the other
answer), with ``d_P = |phi(x) - phi(x_P)|_2`` and ``d_N = |phi(x) - phi(x_N)|_2`` (eq. (1)), eq. (2) of
the paper (after Hoffer and Ailon) is::

    L = || ( e^d_P / (e^d_P + e^d_N) ,  e^d_N / (e^d_P + e^d_N) - 1 ) ||_2^2

``phi`` is the VAE mean. Only the encoder (convolutions and the mean layer) is tuned; batch norm keeps
its running statistics (eval mode), the decoder is untouched.

>>> import torch
>>> round(float(triplet_loss(torch.tensor([0.0]), torch.tensor([0.0]))), 4)   # (1/2)^2 + (1/2 - 1)^2
0.5
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from engine.config import Config
from engine.learn.budget import BudgetSpent, TimeBudget
from engine.storage.safety import remove, write_json_atomic, write_npy_atomic

if TYPE_CHECKING:
    import torch

    from engine.models.vae import VAE

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 50


class TripletConfig(Config):
    """How E_u is fine-tuned after a round."""

    steps: int = Field(default=200, ge=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    seed: int = 0
    budget: TimeBudget | None = Field(default=None, description="stop tuning (with a checkpoint) once this much time is used; the next run continues")


def triplet_loss(d_p: torch.Tensor, d_n: torch.Tensor) -> torch.Tensor:
    """Eq. (2), averaged over the batch: ``softmax(d_P, d_N)`` pulled towards ``(0, 1)``."""
    import torch

    p = torch.softmax(torch.stack([d_p, d_n], dim=-1), dim=-1)
    return ((p[..., 0]) ** 2 + (p[..., 1] - 1.0) ** 2).mean()


def sample_triplets(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` triplets (x, positive anchor, negative anchor) of indices into ``labels`` (bool): the
    positive anchor has x's label (another sample where there is one), the negative the other label."""
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("triplets need both accepted and rejected samples")
    x = rng.integers(0, labels.size, n)
    same = np.where(labels[x], 1, 0)
    a_p = np.empty(n, np.int64)
    a_n = np.empty(n, np.int64)
    for i in range(n):
        group, other = (pos, neg) if same[i] else (neg, pos)
        if group.size > 1:
            j = group[rng.integers(0, group.size - 1)]
            a_p[i] = j if j != x[i] else group[-1]
        else:
            a_p[i] = group[0]
        a_n[i] = other[rng.integers(0, other.size)]
    return x, a_p, a_n


def triplet_finetune(model: VAE, crops: np.ndarray, accepted: np.ndarray, cfg: TripletConfig | None = None, *, output: Path | None = None) -> list[float]:
    """Fine-tune ``model``'s encoder in place on ``crops`` ((n, S, S) uint8) with answers ``accepted``
    (n bools). Returns the loss of every step. Does nothing (with a log line) without both answers.

    Runs on the training core (:mod:`engine.learn.core`): with ``output``, checkpoints there (every 50
    steps and at the end) and a second call resumes; ``cfg.budget`` stops it early (fewer losses)."""
    return _finetune(model, crops, accepted, cfg or TripletConfig(), output)[0]


def _finetune(model: VAE, crops: np.ndarray, accepted: np.ndarray, cfg: TripletConfig, output: Path | None) -> tuple[list[float], str | None]:
    """:func:`triplet_finetune`; also says whether the time budget stopped it (``"budget"``)."""
    from engine.active.features import to_tensor
    from engine.active.training import TripletMethod
    from engine.learn.budget import start
    from engine.learn.core import LoopOptions, fit

    labels = np.asarray(accepted, bool)
    if labels.all() or not labels.any():
        log.info("triplet tuning skipped: the answers hold only %s", "accepted" if labels.any() else "rejected")
        return [], None
    method = TripletMethod(model, to_tensor(crops, model.size).to(next(model.parameters()).device), labels, cfg)
    result = fit(method, LoopOptions(steps=cfg.steps, output=output, checkpoint_every=CHECKPOINT_EVERY, keep=1, clock=start(cfg.budget)))
    return result.losses(), result.stopped


def active_finetune(run_dir: str | os.PathLike[str], round_number: int, cfg: TripletConfig | None = None, device: str = "auto") -> dict[str, Any]:
    """Before the queries of round ``round_number``: fine-tune the newest E_u on every answer of the
    earlier rounds, re-encode all ROI images, and save ``image_vae.pt``/``image.npy`` in that round's
    folder. Returns a summary (steps, answers, loss before/after). Resumes: done once per round."""
    from engine.active.answers import all_answers
    from engine.active.features import encode, latest_image_stream, load_vae, save_vae
    from engine.active.rois import read_crops, round_dir

    cfg = cfg or TripletConfig()
    out = round_dir(run_dir, round_number)
    done = out / "triplet.json"
    if done.exists() and (out / "image.npy").exists():
        summary: dict[str, Any] = json.loads(done.read_text())
        return summary
    answers = all_answers(Path(run_dir))
    src, _ = latest_image_stream(run_dir, before_round=round_number)
    summary = {"round": round_number, "from": str(src), "answers": len(answers), "steps": 0, "loss_first": None, "loss_last": None}
    ids = np.asarray(sorted(answers), np.int64)
    acc = np.asarray([answers[i] for i in ids.tolist()], bool)
    if ids.size == 0 or acc.all() or not acc.any():
        log.info("round %d: no triplet tuning (%d answers, %d accepted)", round_number, ids.size, int(acc.sum()))
        return summary
    t0 = time.perf_counter()
    model = load_vae(src / "image_vae.pt", device)
    key = json.dumps({"from": str(src), "ids": ids.tolist(), "accepted": acc.tolist(), "config": cfg.model_dump(mode="json", exclude={"budget"})})
    training = out / f"triplet-{hashlib.sha1(key.encode()).hexdigest()[:12]}"  # checkpoints of these answers only
    losses, stopped = _finetune(model, read_crops(run_dir, "image", ids), acc, cfg, training)
    if stopped:
        raise BudgetSpent(f"round {round_number}: triplet tuning stopped at its time budget after {len(losses)} of {cfg.steps} steps",
                          "run the round again to continue from its checkpoint, or raise triplet.budget.seconds")
    feats = encode(model, read_crops(run_dir, "image"))
    out.mkdir(parents=True, exist_ok=True)
    save_vae(model, out / "image_vae.pt")
    write_npy_atomic(out / "image.npy", feats)
    summary.update(steps=len(losses), loss_first=losses[0] if losses else None, loss_last=float(np.mean(losses[-10:])) if losses else None,
                   seconds=time.perf_counter() - t0, config=cfg.model_dump(mode="json"))
    write_json_atomic(done, summary)
    remove(training / "checkpoints", "run-files")  # history and TensorBoard stay
    log.info("round %d: E_u tuned on %d answers (%d accepted), triplet loss %.3f -> %.3f", round_number, ids.size, int(acc.sum()),
             summary["loss_first"] or 0.0, summary["loss_last"] or 0.0)
    return summary
