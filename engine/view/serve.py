"""Serve the local stores of a view and build the state that reads them over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.storage import parse_url
from engine.view.discover import RunView
from engine.view.files import FileServer
from engine.view.state import Layer, build_state


def store_root(path: str) -> tuple[Path, str]:
    """The folder to mount for a local array or group, and the path inside it: the outermost
    ``*.zarr`` / ``*.n5`` folder (so group metadata is reachable), else the array's parent folder."""
    p = Path(path).resolve()
    for i, part in enumerate(p.parts):
        if part.endswith((".zarr", ".n5")) and i < len(p.parts) - 1:
            root = Path(*p.parts[: i + 1])
            return root, p.relative_to(root).as_posix()
    return p.parent, p.name


def serve_view(view: RunView, *, host: str = "127.0.0.1", port: int = 0) -> tuple[FileServer, dict[str, Any]]:
    """Start a CORS file server for the view's local stores; returns it and the neuroglancer state."""
    mounts: dict[str, Path] = {}
    where: dict[int, tuple[str, str]] = {}
    for i, layer in enumerate(view.layers):
        loc = parse_url(layer.source_path)
        if not loc.is_local_file:
            continue
        root, rel = store_root(loc.path)
        name = next((k for k, v in mounts.items() if v == root), None)
        if name is None:
            name = f"m{len(mounts)}"
            mounts[name] = root
        where[i] = (name, rel)
    server = FileServer(mounts, host=host, port=port)
    index = {id(layer): i for i, layer in enumerate(view.layers)}

    def url_of(layer: Layer) -> str | None:
        got = where.get(index[id(layer)])
        return server.url(*got) if got is not None else None

    first = view.layers[0] if view.layers else None
    state = build_state(
        view.layers,
        url_of=url_of,
        boxes=view.boxes,
        points=view.points,
        voxel_size=first.voxel_size if first else None,
        shape=first.shape[-3:] if first else None,
    )
    return server, state
