"""Kept so that older imports keep working: the object-table format lives in
:mod:`engine.storage.object_table`."""

from engine.storage.object_table import COLUMNS, ObjectTableWriter, read_object_table

__all__ = ["COLUMNS", "ObjectTableWriter", "read_object_table"]
