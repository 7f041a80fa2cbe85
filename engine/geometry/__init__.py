"""Boxes and block grids (z, y, x; half-open)."""

from engine.geometry.box import Box, Coord, Triple, dict_voxels
from engine.geometry.grid import FITS, Block, BlockGrid, Connectivity, Contact, Fit

__all__ = ["FITS", "Block", "BlockGrid", "Box", "Connectivity", "Contact", "Coord", "Fit", "Triple", "dict_voxels"]
