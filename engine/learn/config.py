"""The training run's configuration (:class:`TrainConfig`), loaded from YAML with :func:`engine.config.load_config`.

A minimal config::

    model: {dims: 2, filters: [28, 36, 48, 64, 80]}
    data: {raw: data.zarr/raw, labels: data.zarr/mito}
    crop: [1, 256, 256]
    steps: 2000
    output: runs/mito

Everything else has a default; an unknown or mistyped key is a one-line error that names it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.config import Config
from engine.models.config import ModelConfig


class BoxSpec(Config):
    """A half-open zyx box in voxels."""

    start: list[int]
    stop: list[int]

    @model_validator(mode="after")
    def _check(self) -> BoxSpec:
        if len(self.start) != 3 or len(self.stop) != 3:
            raise ValueError(f"a box needs 3 start and 3 stop coordinates (z, y, x), got {self.start} / {self.stop}")
        if any(a < 0 or b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"box start {self.start} must be >= 0 and below stop {self.stop}")
        return self


class DataConfig(Config):
    """Where the labelled data is: a raw volume, a label volume and optionally the labelled boxes.

    ``boxes`` is a JSON file with a list of ``{"start": [z, y, x], "stop": [z, y, x]}`` (what selective
    labelling writes): crops are drawn only there and voxels outside them count as unknown. ``roi``
    restricts the whole run to one box (e.g. the training slices of a volume). ``cache`` reads the
    labelled regions into memory once (fast); turn it off for regions larger than memory.
    """

    raw: str
    labels: str
    boxes: str | None = None
    roi: BoxSpec | None = None
    raw_scale: float | None = None
    cache: bool = True


class TargetConfig(Config):
    """How targets come from the label volume.

    - ``mask``: foreground where the label is one of ``label_ids`` (or any non-zero label if empty);
      Lucchi++ style 0/255 labels work as they are.
    - ``polarity``: 3 channels pre, post, union from ``pre_ids`` and ``post_ids``.
    - ``affinity``: one channel per ``model.affinity_offsets``: 1 where a voxel and its neighbour at
      ``-offset`` carry the same non-zero label; ``widen_boundaries`` first erodes objects by one voxel
      in-plane where they touch another label (the papers' targets).

    ``ignore_ids`` are labels that mean "unknown" (masked out of the loss).
    """

    kind: Literal["mask", "polarity", "affinity"] = "mask"
    label_ids: list[int] = []
    pre_ids: list[int] = [1]
    post_ids: list[int] = [2]
    ignore_ids: list[int] = []
    widen_boundaries: bool = True


class SamplingConfig(Config):
    """Foreground rebalancing and rejection of empty crops.

    A crop without foreground (no positive target voxel) is drawn again with probability
    ``reject_empty``; a crop with less than ``min_known`` of its voxels labelled (outside the labelled
    boxes) is always drawn again, up to ``max_tries`` draws. ``pos_weight: auto`` weights the BCE of
    foreground voxels by the background/foreground ratio of the labelled data (clamped to
    ``max_pos_weight``); a number sets it; ``none`` leaves BCE unweighted.
    """

    reject_empty: float = Field(default=0.9, ge=0.0, le=1.0)
    min_known: float = Field(default=0.25, ge=0.0, le=1.0)
    max_tries: int = Field(default=50, ge=1)
    pos_weight: Literal["auto", "none"] | float = "auto"
    max_pos_weight: float = 10.0


class AugmentConfig(Config):
    """EM augmentations; each number is the probability that the augmentation is applied to a crop.

    Geometric ones (flips, transposes, rot90, elastic, misalignment and slip) move image and labels alike;
    photometric ones (intensity, noise, blur, missing sections) touch only the image.
    """

    flip: bool = True
    transpose: bool = True
    rot90: bool = True
    intensity: float = Field(default=0.5, ge=0.0, le=1.0)
    noise: float = Field(default=0.3, ge=0.0, le=1.0)
    blur: float = Field(default=0.2, ge=0.0, le=1.0)
    missing_section: float = Field(default=0.1, ge=0.0, le=1.0)
    misalign: float = Field(default=0.1, ge=0.0, le=1.0)
    elastic: float = Field(default=0.2, ge=0.0, le=1.0)
    noise_sigma: float = 0.05
    blur_sigma: float = 1.5
    misalign_max: int = 8
    elastic_alpha: float = 6.0
    elastic_sigma: float = 10.0


class LossConfig(Config):
    """Supervised loss: ``bce`` x BCE-with-logits + ``dice`` x soft Dice, both masked where labels are unknown."""

    bce: float = 1.0
    dice: float = 1.0


class OptimizerConfig(Config):
    """Optimizer and learning-rate schedule (constant, or cosine decay to ``lr * min_lr_ratio``)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = 0.9
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.05


class ValidationConfig(Config):
    """Validation on held-out labelled data every ``every`` steps (rank 0 only).

    The prediction is made with sliding windows of ``window`` (default: the training crop) and thresholded
    at ``threshold``; IoU (Jaccard), VOC and Dice are logged, ``metric`` picks the one plotted.
    """

    raw: str
    labels: str
    roi: BoxSpec | None = None
    every: int = Field(default=500, ge=1)
    window: list[int] | None = None
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    threshold: float = 0.5
    metric: Literal["iou", "voc", "dice"] = "iou"


class RayConfig(Config):
    """Data-parallel training through Ray Train: ``num_workers: 0`` trains in this process."""

    num_workers: int = Field(default=0, ge=0)
    use_gpu: bool = False
    address: str | None = None


class TrainConfig(Config):
    """A training run (see the module docstring). ``batch_size`` is per worker."""

    model: ModelConfig = ModelConfig()
    data: DataConfig
    target: TargetConfig = TargetConfig()
    crop: list[int] = [18, 160, 160]
    batch_size: int = Field(default=2, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    steps: int = Field(default=1000, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    log_every: int = Field(default=10, ge=1)
    output: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(default=1, ge=1)
    validation: ValidationConfig | None = None
    ray: RayConfig = RayConfig()
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if len(self.crop) != 3 or any(c < 1 for c in self.crop):
            raise ValueError(f"crop must be 3 positive sizes z, y, x, got {self.crop}")
        if self.target.kind != self.model.head:
            raise ValueError(f"target.kind {self.target.kind!r} does not match model.head {self.model.head!r}; set both alike")
        if self.model.dims == 2 and self.crop[0] < 2 * self.model.context_slices + 1:
            raise ValueError(f"a 2.5D model with context_slices={self.model.context_slices} needs crop z >= {2 * self.model.context_slices + 1}")
        return self
