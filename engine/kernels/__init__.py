"""Segmentation algorithms that need no runtime: per-block labelling kernels, stitching of block
labels (face equivalences, union-find over boundary labels, consecutive ids) and object statistics.

The blockwise operations that use them live in :mod:`engine.ops.label`.
"""

from engine.kernels.components import Device, foreground, gpu_available, label_block
from engine.kernels.objects import ObjectStats, block_stats
from engine.kernels.stitch import Faces, Resolution, block_faces, block_lut, face_pairs, resolve

__all__ = [
    "Device",
    "Faces",
    "ObjectStats",
    "Resolution",
    "block_faces",
    "block_lut",
    "block_stats",
    "face_pairs",
    "foreground",
    "gpu_available",
    "label_block",
    "resolve",
]
