"""The settings of the blockwise operations, declared once (issue 15): one :class:`~engine.config.Params`
model per operation. Each is the op's configuration, the pipeline stage's section (which derives from it
and adds the stage's wiring) and the source of the command's flags (:mod:`engine.commands._flags`, help
from the field descriptions). Every default lives here.

This module imports no torch, TensorStore or SciPy (nor engine.ops, whose package imports every op): the command line builds its parser from these models
for every command it knows, so it must stay cheap to import (a test checks).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from engine.config import Params
from engine.infer.options import Amp, BlendMode, TtaMode, TtaReduce

Triple = tuple[int, int, int]

# -- predict ---------------------------------------------------------------------------------------
PredictDtype = Literal["uint8", "float16", "float32"]
#: the window of a checkpoint that records no training crop
DEFAULT_WINDOW: Triple = (16, 128, 128)
#: predict's write block target (rounded to the stride grid and the chunks) and output chunks (capped at the volume)
PREDICT_BLOCK: Triple = (64, 256, 256)
PREDICT_CHUNKS: Triple = (16, 128, 128)


class PredictParams(Params):
    """What ``connectile predict``, the pipeline's ``predict`` stage (``rounds.predict``) and
    :class:`~engine.ops.predict.PredictOp` compute and how."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"block", "batch_size", "device", "threads", "share_borders"})

    window: Triple | None = Field(
        default=None, description="window (model input) size z,y,x; a 2.5D model also reads its context sections around it "
        f"(default: the checkpoint's training crop, less a 2.5D model's context sections; {','.join(map(str, DEFAULT_WINDOW))} without one)",
    )
    overlap: float = Field(default=0.5, ge=0.0, lt=1.0, description="overlap of neighbouring windows, in [0, 1)")
    blend: BlendMode = Field(default="gaussian", description="window weights")
    sigma_scale: float = Field(default=0.125, gt=0.0, description="Gaussian weights' sigma as a share of the window")
    tta: TtaMode = Field(default="none", description="test-time augmentation")
    tta_reduce: TtaReduce = Field(default="mean", description="how augmented outputs combine")
    dtype: PredictDtype = Field(default="uint8", description="output type (uint8: round(255 p))")
    chunks: Triple | None = Field(
        default=None, description=f"output storage chunks z,y,x ({','.join(map(str, PREDICT_CHUNKS))} capped at the volume where not given)",
    )
    amp: Amp = Field(default="none", description="mixed precision of the forward pass (GPU)")
    block: Triple = Field(default=PREDICT_BLOCK, description="voxels per block z,y,x, rounded to the window stride and chunks")
    batch_size: int | None = Field(default=None, ge=1, description="windows per forward pass (none: 1 on CPU, 8 on GPU)")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the model runs")
    threads: int | None = Field(default=None, ge=1, description="torch threads per worker (none: torch's choice; Ray workers get one per CPU they hold)")
    share_borders: bool = Field(
        default=True, description="compute each window once and sum the block borders in a second pass (--no-share-borders: each block "
        "computes every window over its write box, windows at block cuts twice, one pass)",
    )


# -- label ------------------------------------------------------------------------------------------
LabelDtype = Literal["uint64", "uint32"]
LABEL_BLOCK: Triple = (128, 128, 128)
LABEL_CHUNKS: Triple = (64, 64, 64)


class LabelParams(Params):
    """What ``connectile label``, the pipeline's ``label`` stages (``label``, ``rounds.label``) and
    :func:`~engine.ops.label.label_volume` compute."""

    threshold: float | None = Field(
        default=None, description="foreground where probability > T (uint8 read as value/255); leave out for binary or label volumes",
    )
    connectivity: Literal[6, 18, 26] = Field(default=26, description="voxel neighbourhood")
    min_size: int = Field(default=0, ge=0, description="remove objects smaller than this many voxels, measured whole (0 keeps all)")
    dtype: LabelDtype = Field(default="uint64", description="output ids (uint32 halves the output; an error if the objects do not fit)")
    block: Triple = Field(default=LABEL_BLOCK, description="voxels per block z,y,x, rounded up to whole chunks")
    chunks: Triple = Field(default=LABEL_CHUNKS, description="output storage chunks z,y,x (capped at the volume)")


# -- segment ----------------------------------------------------------------------------------------
Agglomeration = Literal["threshold", "mean"]
#: an edge's score from the affinities across it (engine.segment.watershed)
Scoring = Literal["mean", "quantile"]


class SegmentParams(Params):
    """What ``connectile segment``, the pipeline's ``segment`` stage and
    :func:`~engine.ops.segment.segment_volume` compute."""

    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="merge fragments whose edge score reaches this")
    scoring: Scoring = Field(default="mean", description="edge score from the affinities across it")
    quantile: float = Field(default=0.5, ge=0.0, le=1.0, description="the quantile for --scoring quantile")
    agglomeration: Agglomeration = Field(
        default="threshold", description="threshold: merge every edge scoring >= threshold; mean: hierarchical mean-affinity agglomeration down to it",
    )
    per_section: bool = Field(default=False, description="fragments per z-section (anisotropic data)")
    seed_threshold: float = Field(default=0.5, description="watershed seeds only where every neighbour affinity is above this")
    fg_threshold: float = Field(default=0.0, description="fragments cover the voxels whose mean neighbour affinity is above this (background elsewhere)")
    seed_sigma: float = Field(default=1.0, ge=0.0, description="sigma (voxels) of the smoothing of the distance transform whose maxima seed the fragments")
    block: Triple = Field(default=LABEL_BLOCK, description="voxels per block z,y,x, rounded up to whole chunks")
    chunks: Triple = Field(default=LABEL_CHUNKS, description="output storage chunks z,y,x (capped at the volume)")


__all__ = ["Agglomeration", "LabelDtype", "LabelParams", "PredictDtype", "PredictParams", "Scoring", "SegmentParams", "Triple"]
