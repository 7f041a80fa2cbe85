"""Semi-supervised training from a config: the batch function, the loss terms and the warm-up schedule.

:func:`build_trainer` is what ``connectile train`` runs for every config: without ``semi`` and
``contrastive`` it is the plain supervised :class:`~engine.learn.Trainer`; with ``semi`` it adds the
spatial-mixing terms of :mod:`engine.learn.consistency` and :class:`SemiBatch` as its ``batch_fn``; with
``contrastive`` it starts from the weights of the contrastive pretraining (:mod:`engine.learn.contrastive`).

Supervised warm-up then semi-supervised tuning is one run: until ``semi.warmup_steps`` the batch holds
only the labelled crops and the semi-supervised terms are 0; after it, every step also draws the mixes.

Data-parallel exactness: every sample of a batch is a function of ``(seed, step, global index)``, with
global index ``rank * batch_size + i``; so ``W`` workers with batch ``B / W`` see the same samples (and the
same random mixing masks) as one worker with batch ``B``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import ConfigError, StorageError
from engine.geometry import Box
from engine.learn.augment import flips, photometric
from engine.learn.config import AugmentConfig, SemiConfig, TrainConfig
from engine.learn.consistency import InterMixLoss, LabelledMixLoss, SampleSupervisedLoss, Teacher, UnlabelledMixLoss
from engine.learn.losses import LossTerm
from engine.learn.mixing import box_mask, inter_mask, mix, seam_weight
from engine.learn.sampler import CropSampler
from engine.learn.trainer import Trainer
from engine.storage import open_volume
from engine.values import to_unit

log = logging.getLogger(__name__)

_FLIPS = AugmentConfig(flip=True, transpose=True, rot90=True)


def perturb(image: np.ndarray, cfg: SemiConfig, rng: np.random.Generator) -> np.ndarray:
    """A photometric perturbation (intensity, blur, noise, each with its probability: :func:`~engine.learn.augment.photometric`) that keeps geometry."""
    out = photometric(
        image, rng, p_intensity=cfg.perturb_intensity, p_blur=cfg.perturb_blur, p_noise=cfg.perturb_noise, blur_sigma=cfg.blur_sigma, noise_sigma=cfg.noise_sigma,
    )
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class _Unlabelled:
    box: Box
    scale: float | None
    url: str
    data: np.ndarray | None


class UnlabelledSource:
    """Random crops from the unlabelled volumes of ``data.unlabelled`` (float32 in [0, 1], random flips,
    transposes and in-plane rotations), volumes picked in proportion to their size."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.crop: tuple[int, int, int] = (int(cfg.crop[0]), int(cfg.crop[1]), int(cfg.crop[2]))
        self.items: list[_Unlabelled] = []
        for spec in cfg.data.unlabelled:
            vol = open_volume(spec.raw)
            if len(vol.shape) != 3:
                raise StorageError(f"unlabelled volume {spec.raw} has shape {vol.shape}; it must be a single-channel 3D volume", "check data.unlabelled")
            box = vol.box
            if spec.roi is not None:
                roi = Box(tuple(spec.roi.start), tuple(spec.roi.stop))
                if not box.contains(roi):
                    raise ConfigError(f"data.unlabelled roi {roi} is outside the volume {box} of {spec.raw}", "keep it inside the volume")
                box = roi
            if any(c > n for c, n in zip(self.crop, box.shape, strict=True)):
                raise ConfigError(f"crop {list(self.crop)} is larger than the unlabelled data {list(box.shape)} of {spec.raw}", "use a smaller crop or a larger roi")
            data = vol.read(box) if cfg.data.cache else None
            self.items.append(_Unlabelled(box, spec.raw_scale, spec.raw, data))
        sizes = np.array([np.prod(it.box.shape) for it in self.items], np.float64)
        self.p = sizes / sizes.sum() if len(sizes) else sizes

    def __len__(self) -> int:
        return len(self.items)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One crop ``(Z, Y, X)``."""
        it = self.items[int(rng.choice(len(self.items), p=self.p))]
        start = [int(rng.integers(lo, hi - c + 1)) for lo, hi, c in zip(it.box.start, it.box.stop, self.crop, strict=True)]
        crop_box = Box(tuple(start), tuple(s + c for s, c in zip(start, self.crop, strict=True)))
        if it.data is not None:
            raw = it.data[crop_box.to_slices(relative_to=it.box)]
        else:
            raw = open_volume(it.url).read(crop_box)
        image = to_unit(raw, it.scale)
        dummy = np.zeros(image.shape, np.uint8)
        image, _, _ = flips(image, dummy, dummy.astype(bool), rng, _FLIPS)
        return np.ascontiguousarray(image, dtype=np.float32)


class SemiBatch:
    """The ``batch_fn`` of semi-supervised training: ``(step, rank) -> batch`` (see the module docstring).

    Entries, each ``(B, ...)`` float32: ``raw``, ``target``, ``weight`` (labelled crops); after the
    warm-up also ``lmix_raw``, ``lmix_target``, ``lmix_weight``, ``lmix_mask``, ``lmix_on`` (labelled +
    labelled), ``umix_clean``, ``umix_pert``, ``umix_mask``, ``umix_on`` (and ``umix_a``, ``umix_b`` for
    ``unlabelled_target: mixed_predictions``), ``imix_raw``, ``imix_u``, ``imix_target``, ``imix_weight``,
    ``imix_mask``, ``imix_on`` (labelled + unlabelled). For affinity targets the weights of the mixes are
    0 on voxel pairs split by the mask's edge (:func:`~engine.learn.mixing.seam_weight`). Image entries are ``(B, 1, Z, Y, X)``, masks
    ``(B, 1, Z, Y, X)``, on/off draws ``(B,)``. Entries of a term with weight 0 are left out.
    """

    def __init__(self, cfg: TrainConfig, sampler: CropSampler, unlabelled: UnlabelledSource | None = None) -> None:
        if cfg.semi is None:
            raise ConfigError("SemiBatch needs a 'semi' section in the training config")
        self.cfg, self.semi, self.sampler = cfg, cfg.semi, sampler
        self.unlabelled = unlabelled if unlabelled is not None else UnlabelledSource(cfg)
        if (self.semi.unlabelled or self.semi.inter) and not len(self.unlabelled):
            raise ConfigError("semi-supervised terms 'unlabelled' and 'inter' need unlabelled volumes", "add data.unlabelled")

    def _seams(self, mask: np.ndarray) -> np.ndarray | float:
        """Affinity targets: 0 on the in-plane voxel pairs split by the mask's edge (1 for other heads)."""
        if self.cfg.target.kind != "affinity":
            return 1.0
        return seam_weight(mask, self.cfg.model.affinity_offsets)

    def item(self, seed: int, step: int, index: int) -> dict[str, np.ndarray]:
        """The entries of the sample of global ``index`` at ``step`` (numpy, without the batch axis)."""
        s, cfg = self.semi, self.cfg
        raw, target, weight = self.sampler.sample(np.random.default_rng([seed, step, index, 1]))
        out: dict[str, np.ndarray] = {"raw": raw, "target": target, "weight": weight}
        if step < s.warmup_steps:
            return out
        rng = np.random.default_rng([seed, step, index, 2])
        shape = tuple(cfg.crop)
        if s.labelled_mix:
            raw2, target2, weight2 = self.sampler.sample(rng)
            m = box_mask(shape, s.box, rng)
            out |= {
                "lmix_raw": mix(raw, raw2, m),
                "lmix_target": mix(target, target2, m),
                "lmix_weight": mix(weight, weight2, m) * self._seams(m),
                "lmix_mask": m[None],
                "lmix_on": np.array(rng.random() < s.p_labelled_mix, np.float32),
            }
        if s.unlabelled:
            a, b = self.unlabelled.draw(rng), self.unlabelled.draw(rng)
            m = box_mask(shape, s.box, rng)
            clean = mix(a, b, m)
            out |= {"umix_clean": clean[None], "umix_pert": perturb(clean, s, rng)[None], "umix_mask": m[None], "umix_on": np.array(rng.random() < s.p_unlabelled, np.float32)}
            if s.unlabelled_target == "mixed_predictions":
                out |= {"umix_a": a[None], "umix_b": b[None]}
        if s.inter:
            u = self.unlabelled.draw(rng)[None]
            m = inter_mask(shape, s.box, s.p_box, rng)
            out |= {
                "imix_raw": mix(raw, u, m),
                "imix_u": u,
                "imix_target": target,
                "imix_weight": weight * self._seams(m),
                "imix_mask": m[None],
                "imix_on": np.array(rng.random() < s.p_inter, np.float32),
            }
        return out

    def __call__(self, step: int, rank: int = 0) -> dict[str, torch.Tensor]:
        b = self.cfg.batch_size
        items = [self.item(self.cfg.seed, step, rank * b + i) for i in range(b)]
        return {k: torch.from_numpy(np.stack([np.asarray(it[k], np.float32) for it in items])) for k in items[0]}


def semi_terms(cfg: TrainConfig, pos_weight: float | None, teacher: Teacher | None = None) -> list[LossTerm]:
    """The loss terms of a semi-supervised run: the supervised loss (per-sample means, see
    :class:`~engine.learn.consistency.SampleSupervisedLoss`) plus the three mixing terms (those with a
    non-zero weight), sharing one teacher. With every mixing weight 0 it is the supervised baseline."""
    s = cfg.semi
    assert s is not None
    teacher = teacher if teacher is not None else Teacher(s.teacher, s.ema_decay)
    sched = {"warmup_steps": s.warmup_steps, "rampup_steps": s.rampup_steps}
    terms: list[LossTerm] = [SampleSupervisedLoss(cfg.loss.bce, cfg.loss.dice, pos_weight)]
    if s.labelled_mix:
        terms.append(LabelledMixLoss(s.labelled_mix, teacher, bce=cfg.loss.bce, dice=cfg.loss.dice, pos_weight=pos_weight, **sched))
    if s.unlabelled:
        terms.append(UnlabelledMixLoss(s.unlabelled, teacher, **sched))
    if s.inter:
        terms.append(InterMixLoss(s.inter, teacher, pos_weight=pos_weight, **sched))
    return terms


class SemiTrainer(Trainer):
    """A :class:`~engine.learn.Trainer` that also keeps the EMA teacher's state in its checkpoints
    (``teacher.pt`` beside the weights), so resuming a run with an EMA teacher continues it exactly."""

    TEACHER = "teacher.pt"

    def __init__(self, cfg: TrainConfig, *, teacher: Teacher, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.teacher = teacher

    def write(self, folder: Path) -> None:
        super().write(folder)
        state = self.teacher.state_dict()
        if state:
            torch.save(state, folder / self.TEACHER)

    def read(self, folder: Path) -> None:
        super().read(folder)
        if (folder / self.TEACHER).is_file():
            self.teacher.load_state_dict(torch.load(folder / self.TEACHER, map_location=self.device, weights_only=True), self.model)
        elif self.teacher.kind == "ema" and _step_of(folder) > self.semi_start:
            log.warning("checkpoint %s has no EMA teacher state: the teacher restarts from the student's weights", folder)

    @property
    def semi_start(self) -> int:
        return self.cfg.semi.warmup_steps if self.cfg.semi is not None else 0


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-")[-1])


def build_trainer(cfg: TrainConfig, *, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> Trainer:
    """The :class:`~engine.learn.Trainer` for ``cfg``: plain supervised, or with the semi-supervised terms
    and batch function, starting from the contrastive pretraining's weights where the config asks for it
    (the pretraining must have run: :func:`engine.learn.contrastive.pretrain`)."""
    if cfg.semi is None:
        trainer = Trainer(cfg, rank=rank, world_size=world_size, device=device)
    else:
        sampler = CropSampler(cfg)
        teacher = Teacher(cfg.semi.teacher, cfg.semi.ema_decay)
        terms = semi_terms(cfg, sampler.pos_weight(), teacher)
        trainer = SemiTrainer(cfg, teacher=teacher, rank=rank, world_size=world_size, device=device, terms=terms, sampler=sampler, batch_fn=SemiBatch(cfg, sampler))
    if cfg.contrastive is not None:
        from engine.learn.contrastive import load_pretrained

        load_pretrained(trainer.model, cfg)
    return trainer
