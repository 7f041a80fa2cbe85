"""The network's configuration: one strict :class:`ModelConfig` that :func:`~engine.models.build_model` reads.

The defaults are the base model of the papers (Zhang et al. 2024; Lin et al. 2020): a residual 3D U-Net
with squeeze-and-excitation, filters 28-36-48-64-80, anisotropic early stages for EM sections that are
thicker than their pixels are wide.

>>> cfg = ModelConfig(head="affinity", affinity_offsets=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 3]])
>>> cfg.out_channels
4
>>> ModelConfig(dims=2, context_slices=2).network_in_channels
5
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from engine.config import Config

Head = Literal["mask", "polarity", "affinity"]

#: Output channels of the heads that do not depend on offsets.
HEAD_CHANNELS: dict[str, int] = {"mask": 1, "polarity": 3}


def head_channels(head: str, affinity_offsets: list[list[int]]) -> int:
    """Output channels of ``head``: mask 1, polarity 3 (pre, post, union), affinity one per offset."""
    return len(affinity_offsets) if head == "affinity" else HEAD_CHANNELS[head]


class ModelConfig(Config):
    """The U-Net (and its encoder): shape, heads and normalisation.

    ``anisotropic_stages`` is how many of the first resolution levels use (1,3,3) convolutions and are
    followed by (1,2,2) max pooling; the later levels use (3,3,3) convolutions and (2,2,2) pooling.
    A value at or above the number of levels makes every level anisotropic. Use 0 for isotropic data (FIB-SEM at equal z and xy pixel size). With ``dims: 2`` every level is 2D
    and ``context_slices`` neighbouring sections on each side are stacked as channels (2.5D): the model
    predicts the centre section. ``input_stride: 2`` makes the first convolution strided in-plane and
    upsamples the logits back (bilinear): about 4x less compute for objects much larger than a pixel
    (mitochondria at 5 nm), at the price of in-plane detail.
    """

    dims: Literal[2, 3] = 3
    in_channels: int = 1
    filters: list[int] = [28, 36, 48, 64, 80]
    anisotropic_stages: int = 3
    head: Head = "mask"
    affinity_offsets: list[list[int]] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    out_channels: int | None = None
    context_slices: int = 0
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    activation: Literal["elu", "relu", "leaky_relu"] = "elu"
    dropout: float = 0.0
    se_reduction: int = 4
    residual: bool = True
    se: bool = True
    input_kernel_xy: int = 5
    input_stride: int = 1

    @model_validator(mode="before")
    @classmethod
    def _derive_out_channels(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("out_channels") is None:
            head = data.get("head", "mask")
            offsets = data.get("affinity_offsets", [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
            if head in ("mask", "polarity", "affinity") and isinstance(offsets, list):
                data = {**data, "out_channels": head_channels(head, offsets)}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if not self.filters or any(f < 1 for f in self.filters):
            raise ValueError(f"filters must be a non-empty list of positive widths, got {self.filters}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be at least 1, got {self.in_channels}")
        if self.anisotropic_stages < 0:
            raise ValueError(f"anisotropic_stages must be >= 0 (0 for isotropic data), got {self.anisotropic_stages}")
        if self.context_slices < 0 or (self.context_slices and self.dims != 2):
            raise ValueError("context_slices (2.5D) must be >= 0 and needs dims: 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.se_reduction < 1:
            raise ValueError(f"se_reduction must be at least 1, got {self.se_reduction}")
        if self.input_kernel_xy < 1 or self.input_kernel_xy % 2 == 0:
            raise ValueError(f"input_kernel_xy must be odd and positive, got {self.input_kernel_xy}")
        if self.head == "affinity" and (not self.affinity_offsets or any(len(o) != 3 or not any(o) for o in self.affinity_offsets)):
            raise ValueError(f"affinity_offsets must be non-zero [z, y, x] offsets, got {self.affinity_offsets}")
        if self.input_stride not in (1, 2, 4):
            raise ValueError(f"input_stride must be 1, 2 or 4, got {self.input_stride}")
        expected = head_channels(self.head, self.affinity_offsets)
        if self.out_channels != expected:
            raise ValueError(f"out_channels {self.out_channels} does not match head {self.head!r} ({expected} channels); leave it out")
        return self

    @property
    def network_in_channels(self) -> int:
        """Channels the first convolution sees: ``in_channels`` times the sections of a 2.5D stack."""
        return self.in_channels * (2 * self.context_slices + 1)

    @property
    def levels(self) -> int:
        """Resolution levels of the U-Net (the length of ``filters``)."""
        return len(self.filters)

    def pooling(self) -> list[tuple[int, int, int]]:
        """The (z, y, x) pooling factor after each level but the last."""
        if self.dims == 2:
            return [(1, 2, 2)] * (self.levels - 1)
        return [(1, 2, 2) if i < self.anisotropic_stages else (2, 2, 2) for i in range(self.levels - 1)]

    def divisor(self) -> tuple[int, int, int]:
        """The total (z, y, x) downsampling: input sizes divisible by it come out the same size."""
        z, y, x = 1, self.input_stride, self.input_stride
        for pz, py, px in self.pooling():
            z, y, x = z * pz, y * py, x * px
        return (z, y, x)
