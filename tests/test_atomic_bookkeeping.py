"""Bookkeeping files that resume and later commands read are replaced by write-then-rename (issue 16,
point 5): a crash or a full disk while writing leaves the old file or the new one, never half of one.

The behaviour is tested where it is cheap to produce: a hard link to the old file (the "witness") keeps
the old bytes when the file is replaced by a rename, and would show new or half-written bytes were the
file written in place. The other writers, whose runs train models, are held to the same rule by reading
their source: none writes a file in place.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.storage import create_volume
from engine.storage.safety import write_atomic, write_json_atomic, write_npy_atomic

REPO = Path(__file__).resolve().parents[1]

#: Modules whose files resume (or the next command) reads back.
BOOKKEEPING = [
    "engine/active/features.py",  # features.json, mask.npy, image.npy
    "engine/active/triplet.py",  # triplet.json, image.npy
    "engine/active/rounds.py",  # query.json, clusters.npy
    "engine/select/run.py",  # selection*.json, config.yaml
    "engine/select/export.py",  # manifest.json (import-labels reads it)
    "engine/learn/contrastive.py",  # loss.json
    "engine/learn/simsiam.py",  # loss.json, config.yaml
]


def _in_place_writes(path: Path) -> list[str]:
    """Calls that write a file in place: ``.write_text``/``.write_bytes``, ``np.save``/``np.savez``,
    ``json.dump`` and ``open(..., "w"/"wb"/"a")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
        mode = next((k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)), mode)
        if (
            name in ("write_text", "write_bytes")
            or (owner in ("np", "numpy") and name in ("save", "savez", "savez_compressed"))
            or (owner == "json" and name == "dump")
            or (name == "open" and isinstance(mode, str) and any(c in mode for c in "wax"))
        ):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


@pytest.mark.parametrize("module", BOOKKEEPING)
def test_bookkeeping_modules_write_no_file_in_place(module: str) -> None:
    assert _in_place_writes(REPO / module) == []


def test_the_source_check_finds_in_place_writes(tmp_path: Path) -> None:
    """The check above can fail: each kind of in-place write is found."""
    src = tmp_path / "m.py"
    src.write_text(
        "import json, numpy as np\n"
        "def f(p, a):\n"
        "    p.write_text('x')\n"
        "    np.save(p, a)\n"
        "    json.dump({}, open(p, 'w'))\n"
        "    with open(p, mode='ab') as fh:\n"
        "        fh.write(b'')\n"
        "    open(p).read()\n"  # reading is fine
    )
    assert sorted(f.split(" ", 1)[0] for f in _in_place_writes(src)) == ["m.py:3", "m.py:4", "m.py:5", "m.py:5", "m.py:6"]  # (5: dump and open)


def _witness(path: Path) -> Path:
    """A hard link to ``path``: it keeps the old bytes only if ``path`` is replaced, not rewritten."""
    link = path.with_name(path.name + ".witness")
    os.link(path, link)
    return link


def test_write_helpers_replace_the_file(tmp_path: Path) -> None:
    for write, new, read in (
        (lambda p: write_atomic(p, "new"), "new", Path.read_text),
        (lambda p: write_json_atomic(p, {"a": 2}), {"a": 2}, lambda p: json.loads(p.read_text())),
        (lambda p: write_npy_atomic(p, np.arange(3)), [0, 1, 2], lambda p: np.load(p).tolist()),
    ):
        path = tmp_path / "f"
        path.write_bytes(b"old")
        witness = _witness(path)
        write(path)
        assert witness.read_bytes() == b"old" and read(path) == new
        path.unlink()
        witness.unlink()


def test_export_replaces_its_manifest(tmp_path: Path) -> None:
    """``export-labels`` run again with another selection: manifest.json is replaced, not rewritten."""
    from engine.select.export import export_crops

    v = create_volume(str(tmp_path / "d.zarr/raw"), (8, 32, 32), "uint8", (8, 16, 16))
    v.write(v.box, np.arange(8 * 32 * 32, dtype=np.uint32).reshape(8, 32, 32).astype(np.uint8))
    sel = tmp_path / "selection.json"
    sel.write_text(json.dumps({"boxes": [{"start": [0, 0, 0], "stop": [4, 16, 16]}]}))
    manifest = export_crops(v.url, sel, tmp_path / "crops", tiff=False)
    old = manifest.read_bytes()
    witness = _witness(manifest)
    sel.write_text(json.dumps({"boxes": [{"start": [0, 0, 0], "stop": [4, 16, 16]}, {"start": [4, 16, 16], "stop": [8, 32, 32]}]}))
    assert export_crops(v.url, sel, tmp_path / "crops", tiff=False) == manifest
    assert witness.read_bytes() == old
    assert len(json.loads(manifest.read_text())["crops"]) == 2
