"""Synthetic EM-like volumes with ground truth, deterministic and blockwise.

``connectile synth out.zarr --shape 64,256,256 --seed 1`` (or :func:`synthesize`) writes ``raw``
(uint8), ``neurons`` (uint64, dense), ``mito`` (uint64) and ``synapses`` (uint8: 1 pre, 2 post) into
the group ``out.zarr``. Every voxel is a pure function of its global coordinates, the seed and the
parameters (:class:`SynthParams`), so any block can be computed alone and the result is
byte-identical whatever the block layout (:func:`synth_box`, :class:`SynthOp`).

Modules: :mod:`~engine.synth.params` (parameters), :mod:`~engine.synth.fields` (hashes and noise),
:mod:`~engine.synth.sites` and :mod:`~engine.synth.neurons` (cells and membranes),
:mod:`~engine.synth.mito`, :mod:`~engine.synth.synapses`, :mod:`~engine.synth.render` (the image and
labels of a box), :mod:`~engine.synth.op` (the block op and driver), :mod:`~engine.synth.preview`.
See ``docs/synth.md`` for the parameters and a preview.
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.synth.op import SynthOp, synthesize
    from engine.synth.params import SynthParams
    from engine.synth.preview import save_preview
    from engine.synth.render import OUTPUTS, synth_box

#: public name -> the module that defines it; imported on first use, so that the command line (which
#: reads :class:`SynthParams` for its flags) does not import TensorStore and the renderer to start
_WHERE = {
    "SynthOp": "engine.synth.op", "synthesize": "engine.synth.op", "SynthParams": "engine.synth.params",
    "save_preview": "engine.synth.preview", "OUTPUTS": "engine.synth.render", "synth_box": "engine.synth.render",
}

__all__ = ["OUTPUTS", "SynthOp", "SynthParams", "save_preview", "synth_box", "synthesize"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
