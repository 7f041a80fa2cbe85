"""Volumes on TensorStore (zarr v2/v3, n5, precomputed; file, memory, gs, s3) and ingest."""

from engine.storage.create import VolumeMeta, create_volume
from engine.storage.urls import Location, parse_url
from engine.storage.volume import (
    FORMATS,
    Format,
    Volume,
    check_write_alignment,
    detect_format,
    open_volume,
)

__all__ = [
    "FORMATS",
    "Format",
    "Location",
    "Volume",
    "VolumeMeta",
    "check_write_alignment",
    "create_volume",
    "detect_format",
    "open_volume",
    "parse_url",
]
