"""Neuroglancer views of a run: a JSON state (image, prediction and segmentation layers, the selected
sub-volumes as boxes, the queried ROIs as points) and a CORS file server for the local zarr stores."""

from engine.view.discover import RunView, discover_run
from engine.view.files import FileServer, ViewError
from engine.view.serve import serve_view
from engine.view.state import Layer, build_state, neuroglancer_link, volume_layer

__all__ = ["FileServer", "Layer", "RunView", "ViewError", "build_state", "discover_run", "neuroglancer_link", "serve_view", "volume_layer"]
