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

from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, model_validator

from engine.config import Config
from engine.learn.budget import TimeBudget
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


class UnlabelledData(Config):
    """An unlabelled raw volume for semi-supervised training (``roi`` restricts it to one box)."""

    raw: str
    roi: BoxSpec | None = None
    raw_scale: float | None = None


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
    unlabelled: list[UnlabelledData] = []


class TargetConfig(Config):
    """How targets come from the label volume.

    - ``mask``: foreground where the label is one of ``label_ids`` (or any non-zero label if empty);
      Lucchi++ style 0/255 labels work as they are.
    - ``polarity``: 3 channels pre, post, union from ``pre_ids`` and ``post_ids``.
    - ``affinity``: one channel per ``model.affinity_offsets``: 1 where a voxel and its neighbour at
      ``-offset`` carry the same non-zero label; ``widen_boundaries`` first erodes objects by one voxel
      in-plane where they touch another label (the papers' targets).

    ``ignore_ids`` are labels that mean "unknown" (masked out of the loss). ``weights`` gives labels known
    less surely a loss weight of their own (e.g. answers propagated from a reviewed object to the
    unreviewed members of its cluster, or the previous model's own prediction as an anchor); every other
    label counts 1.
    """

    kind: Literal["mask", "polarity", "affinity"] = "mask"
    label_ids: list[int] = []
    pre_ids: list[int] = [1]
    post_ids: list[int] = [2]
    ignore_ids: list[int] = []
    weights: dict[int, NonNegativeFloat] = Field(default={}, description="loss weight of the voxels of a label id (others: 1)")
    widen_boundaries: bool = True

    @model_validator(mode="before")
    @classmethod
    def _weak_ids(cls, data: Any) -> Any:
        """Checkpoints written before 2026-12-07 give one weight to a list of ids (``weak_ids``, ``weak_weight``).

        >>> TargetConfig.model_validate({"weak_ids": [2, 3], "weak_weight": 0.5}).weights
        {2: 0.5, 3: 0.5}
        """
        if isinstance(data, dict) and ("weak_ids" in data or "weak_weight" in data):
            data = dict(data)
            ids, w = data.pop("weak_ids", []), data.pop("weak_weight", 1.0)
            data["weights"] = dict.fromkeys(ids, w) | dict(data.get("weights") or {})
        return data


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


class SemiConfig(Config):
    """Semi-supervised training by spatial mixing in a Siamese network (see :mod:`engine.learn.semi`).

    Mixing masks are constant along z: a ``box`` (y, x) pasted at a random place, or (inter-mixing, with
    probability ``1 - p_box``) 2 of the 4 in-plane quadrants. Three terms, each with a weight and a
    per-sample probability of being drawn: ``labelled_mix`` (two labelled crops; images and targets
    mixed alike), ``unlabelled`` (two unlabelled crops; the prediction on the perturbed mix is pulled by
    MSE toward the stop-gradient prediction on the clean mix, or on the two clean crops mixed when
    ``unlabelled_target: mixed_predictions``), ``inter`` (labelled with unlabelled: BCE to the labelled
    targets where the mask is 1, MSE to the stop-gradient prediction of the clean unlabelled crop
    elsewhere). The teacher is the same network under no-grad (``siamese``) or an EMA copy (``ema``).
    The semi-supervised terms start after ``warmup_steps`` supervised steps and ramp up linearly over
    ``rampup_steps``. The perturbation is photometric only (intensity, noise, blur), so it keeps geometry.
    """

    teacher: Literal["siamese", "ema"] = "siamese"
    ema_decay: float = Field(default=0.999, ge=0.0, lt=1.0)
    warmup_steps: int = Field(default=0, ge=0)
    rampup_steps: int = Field(default=0, ge=0)
    box: list[int] = [90, 90]
    p_box: float = Field(default=0.5, ge=0.0, le=1.0)
    labelled_mix: float = Field(default=1.0, ge=0.0)
    unlabelled: float = Field(default=0.2, ge=0.0)
    inter: float = Field(default=0.2, ge=0.0)
    p_labelled_mix: float = Field(default=0.5, ge=0.0, le=1.0)
    p_unlabelled: float = Field(default=1.0, ge=0.0, le=1.0)
    p_inter: float = Field(default=1.0, ge=0.0, le=1.0)
    unlabelled_target: Literal["clean_mix", "mixed_predictions"] = "clean_mix"
    perturb_intensity: float = Field(default=1.0, ge=0.0, le=1.0)
    perturb_noise: float = Field(default=0.5, ge=0.0, le=1.0)
    perturb_blur: float = Field(default=0.3, ge=0.0, le=1.0)
    noise_sigma: float = 0.05
    blur_sigma: float = 1.5

    @model_validator(mode="after")
    def _check(self) -> SemiConfig:
        if len(self.box) != 2 or any(b < 1 for b in self.box):
            raise ValueError(f"semi.box must be 2 positive in-plane sizes (y, x), got {self.box}")
        return self


class SimCLRConfig(Config):
    """Optional global SimCLR stage before local contrastive pretraining: the U-Net's encoder + global
    average pooling + an MLP projector (``hidden`` -> ``dim``), NT-Xent at ``temperature`` on two augmented
    views of crops from the raw and unlabelled volumes."""

    steps: int = Field(default=200, ge=1)
    batch_size: int = Field(default=8, ge=2)
    temperature: float = Field(default=0.5, gt=0.0)
    dim: int = Field(default=128, ge=1)
    hidden: int = Field(default=512, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)


class ContrastiveConfig(Config):
    """Supervised local contrastive pretraining (Hu et al. 2021) before training for segmentation.

    Per-voxel embeddings (``dim``, L2-normalised, a 1x1 convolution on the decoder's last features) of two
    intensity-only views; for an anchor, positives are all other voxels with the same label. Voxels are
    subsampled every ``stride`` (z, y, x) and the loss is taken inside non-overlapping ``block`` tiles (in
    input voxels; ``null``: the whole crop), averaged over blocks that hold an anchor. ``labels``:
    ``target`` contrasts the mask target (foreground vs background), ``instances`` the label ids
    (neurons). Background voxels (label 0) are anchors only with ``background_anchors``.
    """

    steps: int = Field(default=500, ge=1)
    batch_size: int | None = None
    temperature: float = Field(default=0.1, gt=0.0)
    dim: int = Field(default=128, ge=1)
    stride: list[int] = [1, 4, 4]
    block: list[int] | None = None
    labels: Literal["target", "instances"] = "target"
    background_anchors: bool = False
    lr: float | None = None
    simclr: SimCLRConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ContrastiveConfig:
        if len(self.stride) != 3 or any(s < 1 for s in self.stride):
            raise ValueError(f"contrastive.stride must be 3 positive steps (z, y, x), got {self.stride}")
        if self.block is not None and (len(self.block) != 3 or any(b < 1 for b in self.block)):
            raise ValueError(f"contrastive.block must be 3 positive sizes (z, y, x) or null, got {self.block}")
        return self


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
    semi: SemiConfig | None = None
    contrastive: ContrastiveConfig | None = None
    budget: TimeBudget | None = Field(default=None, description="stop (with a checkpoint) once this much time is used; the next run continues")
    init: str | None = Field(default=None, description="start from these weights, not random ones: a checkpoint folder or a finished "
                             "training's output (its newest checkpoint), e.g. a model trained on another volume; its model settings "
                             "must be this run's. The optimiser and schedule start afresh")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if len(self.crop) != 3 or any(c < 1 for c in self.crop):
            raise ValueError(f"crop must be 3 positive sizes z, y, x, got {self.crop}")
        if self.target.kind != self.model.head:
            raise ValueError(f"target.kind {self.target.kind!r} does not match model.head {self.model.head!r}; set both alike")
        if self.model.dims == 2 and self.crop[0] < 2 * self.model.context_slices + 1:
            raise ValueError(f"a 2.5D model with context_slices={self.model.context_slices} needs crop z >= {2 * self.model.context_slices + 1}")
        if self.semi is not None and (self.semi.unlabelled or self.semi.inter) and not self.data.unlabelled:
            raise ValueError("semi-supervised terms 'unlabelled' and 'inter' need unlabelled volumes: add data.unlabelled or set their weights to 0")
        return self
