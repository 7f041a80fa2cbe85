"""Neuroglancer views of a run: a JSON state (image, prediction and segmentation layers, the selected
sub-volumes as boxes, the queried ROIs as points) and the token-protected CORS file server for the local
zarr stores and run folders (the one file server of Connectile)."""

from engine.view.discover import RunView, discover_run
from engine.view.files import FileServer, ViewError, run_token
from engine.view.serve import serve_view, served_run_url
from engine.view.state import Layer, build_state, neuroglancer_link, volume_layer

__all__ = ["FileServer", "Layer", "RunView", "ViewError", "build_state", "discover_run", "neuroglancer_link", "run_token", "serve_view", "served_run_url",
           "volume_layer"]
