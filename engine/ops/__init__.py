"""Blockwise operations. Each module defines one or a few :class:`~engine.runtime.BlockOp` subclasses;
importing this package registers them all in :data:`engine.runtime.OPS` by their ``kind``."""

from engine.ops.faults import FaultyGaussian
from engine.ops.filters import GaussianFilter
from engine.ops.noop import NoOp

__all__ = ["FaultyGaussian", "GaussianFilter", "NoOp"]
