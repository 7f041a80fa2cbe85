"""Serve the local stores of a view and build the state that reads them over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.storage import parse_url
from engine.view.discover import RunView
from engine.view.files import RUN_MOUNT, FileServer, run_token
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


def served_run_url(serve_url: str, run_dir: str | Path) -> str:
    """The URL under which ``connectile view RUN --port PORT`` serves the run folder, for ``serve_url``
    ``http://127.0.0.1:PORT``: ``http://127.0.0.1:PORT/TOKEN/run`` (the run's kept token)."""
    return f"{serve_url.rstrip('/')}/{run_token(run_dir)}/{RUN_MOUNT}"


def serve_view(view: RunView, *, host: str = "127.0.0.1", port: int = 0) -> tuple[FileServer, dict[str, Any]]:
    """Start the token-protected CORS file server for the view's local stores (mounted ``m0``, ``m1``
    ...) and its run folder (mounted ``run``, with the run's kept token, so that the report's link
    works); returns it and the neuroglancer state."""
    mounts: dict[str, Path] = {RUN_MOUNT: Path(view.run_dir)}
    where: dict[int, tuple[str, str]] = {}
    for i, layer in enumerate(view.layers):
        loc = parse_url(layer.source_path)
        if not loc.is_local_file:
            continue
        root, rel = store_root(loc.path)
        name = next((k for k, v in mounts.items() if v == root and k != RUN_MOUNT), None)
        if name is None:
            name = f"m{len(mounts) - 1}"
            mounts[name] = root
        where[i] = (name, rel)
    server = FileServer(mounts, host=host, port=port, token=run_token(view.run_dir))
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
