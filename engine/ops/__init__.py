"""Blockwise operations. Each module defines one or a few :class:`~engine.runtime.BlockOp` subclasses;
importing this package registers them all in :data:`engine.runtime.OPS` by their ``kind``."""

from engine.ops.faults import FaultyGaussian
from engine.ops.filters import GaussianFilter
from engine.ops.label import label_volume
from engine.ops.label_passes import FacePairsOp, GpuLocalLabelOp, LocalLabelOp, RelabelOp
from engine.ops.noop import NoOp
from engine.ops.segment import FragmentsOp, SegmentEdgesOp, segment_volume

__all__ = [
    "FacePairsOp",
    "FaultyGaussian",
    "FragmentsOp",
    "GaussianFilter",
    "GpuLocalLabelOp",
    "LocalLabelOp",
    "NoOp",
    "RelabelOp",
    "SegmentEdgesOp",
    "label_volume",
    "segment_volume",
]
