"""The settings of the blockwise operations, declared once (issue 15): one :class:`~engine.config.Params`
model per operation. Each is the op's configuration, the pipeline stage's section (which derives from it
and adds the stage's wiring) and the source of the command's flags (:mod:`engine.commands._flags`, help
from the field descriptions). Every default lives here.

This module imports no torch, TensorStore or SciPy (nor engine.ops, whose package imports every op): the command line builds its parser from these models
for every command it knows, so it must stay cheap to import (a test checks).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from engine.config import Params
from engine.geometry import Triple
from engine.infer.options import Amp, BlendMode, TtaMode, TtaReduce

#: the paper's patch grid for anisotropic serial-section data (z, y, x voxels), and for isotropic data
#: (FIB-SEM: the same in-plane footprint, cubic); engine.select.patches picks one by the voxel size
ANISOTROPIC_PATCH: Triple = (18, 160, 160)
ANISOTROPIC_STRIDE: Triple = (8, 40, 40)
ISOTROPIC_PATCH: Triple = (64, 64, 64)
ISOTROPIC_STRIDE: Triple = (16, 16, 16)

# -- ingest -----------------------------------------------------------------------------------------
IngestFormat = Literal["zarr", "zarr3", "n5"]
#: ingest's storage chunks (each clipped to the volume)
INGEST_CHUNKS: Triple = (64, 256, 256)


class IngestLayout(Params):
    """The volume an ingest writes: the layout the pipeline's ``ingest`` stage gives raw and labels alike."""

    voxel_size: tuple[float, float, float] | None = Field(
        default=None, description="voxel size in nm z,y,x, stored as metadata", examples=[(40, 4, 4)],
    )
    chunks: Triple = Field(default=INGEST_CHUNKS, description="storage chunks z,y,x, clipped to the volume")
    format: IngestFormat = Field(default="zarr", description="output format")


class IngestConversion(Params):
    """How an ingest turns the source's values into voxels (the ``ingest`` stage's ``labels_*`` settings)."""

    binarize: bool = Field(default=False, description="store nonzero as 1 (uint8), e.g. for binary masks")
    lut: str | bool | None = Field(
        default=None, description="HDF5 Nx2 (supervoxel, body) dataset to map ids through (default: 'transforms' beside the dataset, "
        "if any; false / --no-lut: keep the ids as they are)",
    )
    rgb_to_label: bool = Field(default=False, description="turn each colour of RGB(A) slices into one label id")
    dtype: str | None = Field(default=None, description="output dtype (default: the source's; uint8 with binarize, uint64 through a lut)")


class IngestParams(IngestConversion, IngestLayout):  # pydantic lists the last base's fields first: layout, then conversion
    """What ``connectile ingest`` and :func:`~engine.ops.ingest.ingest` write: the layout and the conversion."""


# -- synth ------------------------------------------------------------------------------------------
class SynthLayout(Params):
    """How ``connectile synth``, the pipeline's ``synth`` stage and :func:`~engine.synth.synthesize` store
    the volume (what it holds is :class:`~engine.synth.SynthParams`: the stage's ``params``, the command's
    generator flags and ``--set``)."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"block"})

    chunks: Triple = Field(default=(32, 128, 128), description="storage chunks z,y,x")
    block: Triple | None = Field(default=None, description="voxels computed per block z,y,x, a multiple of the chunks (default: one chunk)")
    format: Literal["zarr", "zarr3", "n5"] = Field(default="zarr", description="storage format")


# -- downsample -------------------------------------------------------------------------------------
DownsampleMethod = Literal["mean", "mode"]
DownsampleKernel = Literal["tensorstore", "numpy"]
DOWNSAMPLE_BLOCK: Triple = (128, 256, 256)


class DownsampleParams(Params):
    """What ``connectile downsample`` and :func:`~engine.ops.downsample.build_pyramid` build (the
    pyramid's settings; ``factor`` is build_pyramid's ``factors=[factor]``)."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"block", "kernel"})

    method: Literal["auto", "mean", "mode"] = Field(default="auto", description="auto: mode for uint32/uint64 labels, else mean")
    levels: int | None = Field(default=None, ge=0, description="number of levels after s0 (default: until every axis is at most min_size)")
    min_size: int = Field(default=64, ge=1, description="stop when every axis is at most this many voxels long")
    factor: Triple | None = Field(
        default=None, description="the same factor z,y,x at every level (default: 2, axes much finer than the coarsest first)", examples=[(1, 2, 2)],
    )
    chunks: Triple | None = Field(default=None, description="storage chunks z,y,x of the levels (default: those of the input)", examples=[(64, 64, 64)])
    block: Triple = Field(default=DOWNSAMPLE_BLOCK, description="output voxels per block z,y,x")
    kernel: DownsampleKernel = Field(default="tensorstore", description="per-block kernel; identical results")


# -- embed ------------------------------------------------------------------------------------------
#: patches per block along (z, y, x) of the patch grid (and the zarr chunks of the embeddings)
EMBED_BLOCK: Triple = (2, 8, 8)


def _by_voxel_size(patch: tuple[int, ...], other: tuple[int, ...]) -> str:
    return f"by voxel size: {','.join(map(str, patch))} where z is at least twice the in-plane size, else {','.join(map(str, other))}"


class EmbedParams(Params):
    """How ``connectile embed``, the pipeline's ``embed`` stage and :func:`~engine.ops.embed.embed_volume`
    embed the patches of a volume (the stage's encoder training is its own: ``steps``, ``crop``, ...)."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"block", "batch", "threads"})

    patch: Triple | None = Field(default=None, description=f"patch size in voxels z,y,x (default {_by_voxel_size(ANISOTROPIC_PATCH, ISOTROPIC_PATCH)})")
    stride: Triple | None = Field(default=None, description=f"patch stride in voxels z,y,x (default {_by_voxel_size(ANISOTROPIC_STRIDE, ISOTROPIC_STRIDE)})")
    dtype: Literal["float32", "float16"] = Field(default="float32", description="stored dtype of the embeddings")
    block: Triple = Field(default=EMBED_BLOCK, description="patches per block and zarr chunk z,y,x (capped at the patch grid)")
    batch: int = Field(default=32, ge=1, description="patches per forward pass of the encoder")
    threads: int = Field(default=1, ge=1, description="torch threads per worker")


# -- embed-train (SimSiam) ---------------------------------------------------------------------------
Perturbation = Literal["intensity", "noise", "blur", "cutout", "misalign", "elastic", "flip"]
#: the EM perturbations a SimSiam view draws one of (engine.learn.augment)
PERTURBATIONS: tuple[Perturbation, ...] = ("intensity", "noise", "blur", "cutout", "misalign", "elastic", "flip")


class SimSiamParams(Params):
    """How ``connectile embed-train`` and :func:`~engine.learn.simsiam.train_simsiam` train the patch
    encoder (SimSiam). :class:`~engine.learn.simsiam.SimSiamConfig` derives from it and adds the run's
    wiring (``volume``, ``out``) and the nested models (``model``, ``budget``, ``ray``), set in YAML
    (``--config``, ``--set model.filters=[8,16]``)."""

    patch: Triple | None = Field(
        default=None, description=f"patch size in voxels z,y,x (default {_by_voxel_size(ANISOTROPIC_PATCH, ISOTROPIC_PATCH)})",
        examples=[ANISOTROPIC_PATCH],
    )
    steps: int = Field(default=2000, ge=1, description="training steps")
    batch: int = Field(default=8, ge=2, description="patches per step")
    lr: float = Field(default=0.05, gt=0.0, description="learning rate (SGD: scaled by batch/256)")
    momentum: float = Field(default=0.9, ge=0.0, description="SGD momentum")
    weight_decay: float = Field(default=1e-4, ge=0.0, description="weight decay")
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="optimizer")
    seed: int = Field(default=0, description="random seed (initial weights and patches)")
    threads: int = Field(default=2, description="torch threads (at least 1)")
    device: str = Field(default="auto", description="auto, cpu or cuda (or cuda:N)")
    checkpoint_every: int = Field(default=500, description="steps between checkpoints (0: only at the end; a second run continues from the newest)")
    projector_hidden: int = Field(default=512, ge=1, description="hidden width of the projector MLP")
    projector_out: int = Field(default=128, ge=1, description="output width of the projector (and the predictor)")
    predictor_hidden: int = Field(default=512, ge=1, description="hidden width of the predictor MLP")
    perturbations: list[Perturbation] = Field(
        default=list(PERTURBATIONS), min_length=1, description=f"perturbations a view draws one of, comma-separated ({', '.join(PERTURBATIONS)})",
    )


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


# -- select -----------------------------------------------------------------------------------------
SelectMethod = Literal["coverage", "random", "kcenter", "kmeans", "hierarchical"]


class SelectParams(Params):
    """What ``connectile select``, the pipeline's ``selection`` stage (its ``params``) and
    :func:`~engine.select.run.select` compute (defaults: the paper's)."""

    budget: int = Field(default=4, ge=1, description="sub-volumes to pick")
    k: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=30, description="kNN ball size, the patch itself included (auto: large enough that the budget's picks could cover every "
        "patch, N / (budget x patches per window), at least 30; where the balls of the picks cannot overlap, every coverage gain ties)",
    )
    include_self: bool = Field(default=True, description="a patch's kNN ball holds the patch itself")
    window: Triple = Field(default=(1, 9, 9), description="window of patches per sub-volume z,y,x")
    step: Triple = Field(default=(1, 1, 1), description="window positions every STEP patches z,y,x")
    methods: list[SelectMethod] = Field(
        default=["coverage", "random", "kcenter", "kmeans"], min_length=1,
        description="methods to run, comma-separated (coverage, random, kcenter, kmeans, hierarchical); the first is chosen",
    )
    seed: int = Field(default=0, description="seed of the baselines and the approximate index")
    ties: Literal["first", "seeded"] = Field(
        default="first",
        description="coverage ties between equal gains: the lowest candidate id (first, the authors' argmax) or a seeded random order "
        "(seeded: where gains saturate -- small k, small windows, small budget -- first puts every pick in the first sections)",
    )
    knn: Literal["auto", "exact", "approx"] = Field(default="auto", description="kNN search (auto: exact up to exact_max patches)")
    exact_max: int = Field(default=50_000, ge=1, description="auto: exact kNN up to this many patches")
    nlist: int | None = Field(default=None, ge=1, description="lists of the approximate index (default: 4 sqrt(N))")
    nprobe: int = Field(default=16, ge=1, description="lists searched by the approximate index")
    target_recall: float | None = Field(
        default=0.95, gt=0, le=1, description="approx: raise nprobe until the sampled recall reaches this (null: nprobe as given)",
    )
    recall_sample: int = Field(default=500, ge=1, description="patches whose approximate kNN is checked against the exact one")
    backend: Literal["local", "ray"] = Field(default="local", description="score candidates in this process or on Ray actors")
    workers: int = Field(default=2, ge=1, description="Ray actors (backend ray)")
    factor: Triple = Field(default=(1, 4, 4), description="hierarchical: patches per region cell z,y,x")
    regions_per_pick: int = Field(default=2, ge=1, description="hierarchical: regions searched per pick")


# -- query ------------------------------------------------------------------------------------------
QueryMethod = Literal["hierarchical", "late-fusion", "mask", "image", "random", "coreset", "uncertainty"]


class QueryParams(Params):
    """What ``connectile query``, the pipeline's query stages (``rounds.query.query``) and
    :func:`~engine.active.rounds.run_query` suggest (defaults: the paper's). The VAE streams' and the
    triplet tuning's settings (``features``, ``triplet``) are nested models of
    :class:`~engine.active.rounds.QueryConfig`, set in YAML (``--config``, ``--set features.image.epochs=5``)."""

    method: QueryMethod = Field(default="hierarchical", description="query method")
    n_clusters: int = Field(default=64, ge=1, description="N: k-means clusters on the mask features (the paper's best: 64)")
    n_sub: int = Field(default=4, ge=1, description="M: sub-clusters on the image features inside each (the paper's best: 4)")
    per_cluster: int = Field(default=1, ge=1, description="Q: representatives per (sub-)cluster")
    budget: int | None = Field(default=None, ge=1, description="queries of the baselines (default: N*M*Q)")
    active: bool = Field(default=True, description="fine-tune the image VAE with the triplet loss on earlier answers (hierarchical only)")
    seed: int = Field(default=0, description="random seed")
    n_init: int = Field(default=3, ge=1, description="k-means restarts")


# -- rois -------------------------------------------------------------------------------------------
#: the aligned ROI crop's side in pixels (the paper's 128)
ROI_SIZE = 128
ROIS_BLOCK: Triple = (64, 512, 512)


class RoisParams(Params):
    """What ``connectile rois``, the pipeline's ``query`` stages (``rounds.query``: their ROI crops) and
    :func:`~engine.ops.rois.extract_rois` extract."""

    unhashed: ClassVar[frozenset[str]] = frozenset({"block"})

    size: int = Field(default=ROI_SIZE, ge=8, description="side of the aligned ROI crops in pixels")
    min_voxels: int = Field(default=0, ge=0, description="leave out objects smaller than this many voxels")
    pre_value: int = Field(default=1, description="value of the pre-synaptic voxels in the pre volume (synapses: pre side put on the left)")
    block: Triple = Field(default=ROIS_BLOCK, description="voxels per block z,y,x")


# -- segment ----------------------------------------------------------------------------------------
Agglomeration = Literal["threshold", "mean"]
#: an edge's score from the affinities across it (engine.kernels.watershed)
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


# -- affinities -------------------------------------------------------------------------------------
#: the affinities' storage chunks (z, y, x; one block each, capped at the volume)
AFFINITIES_CHUNKS: Triple = (32, 64, 64)


class AffinitiesParams(Params):
    """What the pipeline's ``affinities`` stage and :class:`~engine.pipeline.stages.affinities.LabelAffinitiesOp`
    write: nearest-neighbour affinities (3, z, y, x) of a label volume."""

    chunks: Triple = Field(default=AFFINITIES_CHUNKS, description="storage chunks z,y,x, one block each (capped at the volume)")


__all__ = ["AffinitiesParams", "Agglomeration", "DownsampleKernel", "DownsampleMethod", "DownsampleParams", "EmbedParams", "IngestConversion", "IngestFormat", "IngestLayout", "IngestParams", "LabelDtype", "LabelParams", "Perturbation", "PredictDtype", "PredictParams", "QueryMethod", "QueryParams", "RoisParams", "Scoring", "SegmentParams", "SelectMethod", "SelectParams", "SimSiamParams", "SynthLayout", "Triple"]
