"""The synthetic volume as a blockwise operation (:class:`SynthOp`) and a one-call driver
(:func:`synthesize`).

Outputs, as arrays of one group (``DST/raw`` …), all with the voxel size of the parameters:

========== ======= =====================================================================
name       dtype   content
========== ======= =====================================================================
raw        uint8   the EM-like image (membranes dark, cytoplasm light)
neurons    uint64  neuron id of every voxel (dense: membranes belong to a cell, no 0)
mito       uint64  mitochondrion id, 0 outside; ``mito_id // 8`` is its neuron's id
synapses   uint8   0 none, 1 presynaptic side, 2 postsynaptic side (density)
========== ======= =====================================================================
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from engine.errors import ConfigError
from engine.geometry import Block, BlockGrid, Box
from engine.params import SynthLayout
from engine.runtime.op import BlockOp
from engine.runtime.options import RuntimeOptions
from engine.storage import Volume, check_write_alignment, create_volume, open_volume
from engine.synth.params import SynthParams, config_error
from engine.synth.render import OUTPUTS, synth_box

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]
_DESCRIPTIONS = {
    "raw": "synthetic EM image (uint8)",
    "neurons": "neuron ids, dense (every voxel belongs to a neuron)",
    "mito": "mitochondrion ids (0 outside); mito_id // 8 is the neuron id",
    "synapses": "0 none, 1 presynaptic side, 2 postsynaptic side",
}


def _positive3(value: Any, what: str) -> Shape:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be three whole numbers (z, y, x), got {value!r}") from None
    if len(out) != 3 or any(v <= 0 for v in out):
        raise ValueError(f"{what} must be three positive numbers (z, y, x), got {value!r}")
    return (out[0], out[1], out[2])


class SynthOp(BlockOp):
    """Write the synthetic volume block by block: every block is :func:`synth_box` of its write box
    (no read box, no context), so blocks are independent and the result does not depend on the
    layout. ``prepare`` creates the four outputs under ``output`` (a group such as ``out.zarr``)."""

    kind: ClassVar[str] = "synth"
    output: str
    shape: Shape
    synth: SynthParams = Field(default_factory=SynthParams)
    chunks: Shape = (32, 128, 128)
    format: Literal["zarr", "zarr3", "n5"] = "zarr"
    overwrite: bool = Field(default=False, exclude=True)

    _volumes: dict[str, Volume] = PrivateAttr(default_factory=dict)

    @field_validator("shape", "chunks", mode="before")
    @classmethod
    def _three_positive(cls, v: Any) -> Shape:
        return _positive3(v, "shape and chunks")

    def url(self, name: str) -> str:
        """Where output ``name`` (raw, neurons, mito, synapses) lives."""
        return f"{self.output.rstrip('/')}/{name}"

    def prepare(self, grid: BlockGrid) -> None:
        """Check the grid and the size, create (or reopen) the four outputs."""
        full = Box.from_shape(self.shape)
        if not full.contains(grid.total):
            raise ConfigError(f"the grid covers {grid.total}, outside the volume of shape {self.shape}", "make the grid's total box fit the shape")
        vz, vy, vx = self.synth.voxel_size
        cells = max(self.shape[0] * vz / self.synth.neuron_stretch, self.shape[1] * vy, self.shape[2] * vx) / self.synth.neuron_spacing
        if cells > 2**15 - 64:
            raise ConfigError(
                f"a volume of {self.shape} voxels of {self.synth.voxel_size} nm is too large for the synthetic generator",
                "stay below about 30000 x neuron_spacing per axis",
            )
        for name, dtype in OUTPUTS.items():
            attrs: dict[str, Any] = {"description": _DESCRIPTIONS[name]}
            if name == "raw":
                attrs["synth"] = self.synth.model_dump(mode="json")
            vol = create_volume(
                self.url(name),
                self.shape,
                dtype,
                self.chunks,
                format=self.format,
                voxel_size=self.synth.voxel_size,
                attrs=attrs,
                overwrite=self.overwrite,
                layer_type="image" if name == "raw" else "segmentation",
            )
            check_write_alignment(vol, grid.write_shape, grid.total.start)
            if name == "raw" and not self.overwrite:
                made_with = open_volume(self.url(name)).attrs.get("synth")
                if made_with is not None and made_with != attrs["synth"]:
                    raise ConfigError(
                        f"{self.output} already holds a synthetic volume made with other parameters",
                        "pass overwrite (--overwrite) to replace it, or choose another output",
                    )

    def setup(self, grid: BlockGrid | None = None) -> None:
        """Open the outputs for writing."""
        self._volumes = {name: open_volume(self.url(name), mode="r+") for name in OUTPUTS}

    def process(self, block: Block) -> dict[str, float]:
        """Write all four outputs of ``block.write``; return voxel counts."""
        if not self._volumes:
            self.setup()
        out = synth_box(self.synth, block.write)
        for name, vol in self._volumes.items():
            vol.write(block.write, out[name])
        return {
            "voxels": float(block.write.size),
            "mito_voxels": float((out["mito"] != 0).sum()),
            "synapse_voxels": float((out["synapses"] != 0).sum()),
        }


#: the defaults of :func:`synthesize`'s layout (declared once, in :class:`~engine.params.SynthLayout`)
_D = SynthLayout()


def synthesize(
    dst: str | os.PathLike[str],
    shape: Any,
    seed: int | None = None,
    *,
    params: SynthParams | None = None,
    chunks: Any = _D.chunks,
    block: Any = _D.block,
    format: Literal["zarr", "zarr3", "n5"] = _D.format,  # noqa: A002 - matches create_volume
    **options: Any,
) -> dict[str, Volume]:
    """Write a synthetic EM volume with ground truth to the group ``dst`` and return its volumes.

    ``params`` (default :class:`SynthParams`) with ``seed`` and any generator settings among
    ``options`` (field names of :class:`SynthParams`) applied; the other ``options`` are the runtime
    options (:class:`~engine.runtime.options.RuntimeOptions`: backend -- ``serial`` by default --,
    workers, address, overwrite, progress, state_dir). ``block`` is the write shape of one block
    (default: ``chunks``), a multiple of ``chunks``. Bad values raise a one-line :class:`ConfigError`.

    Blocks run through :func:`engine.runtime.run_blockwise`: in this process by default
    (``backend="serial"``), or on Ray actors (``backend="ray"``); either way the run keeps
    done-markers in ``state_dir`` (default: beside the output), so an interrupted run resumes and a
    finished one returns at once.

    >>> import tempfile, os
    >>> vols = synthesize(os.path.join(tempfile.mkdtemp(), "s.zarr"), (4, 32, 32), seed=1, chunks=(4, 32, 32), progress=False)
    >>> sorted(vols), vols["raw"].voxel_size
    (['mito', 'neurons', 'raw', 'synapses'], (40.0, 8.0, 8.0))
    """
    runtime = {k: options.pop(k) for k in list(options) if k in RuntimeOptions.__annotations__}
    values = (params or SynthParams()).model_dump()
    if seed is not None:
        values["seed"] = seed
    values.update(options)
    p = SynthParams.build(**values)
    overwrite = bool(runtime.pop("overwrite", False))
    state_dir = runtime.pop("state_dir", None)
    try:
        op = SynthOp(output=os.fspath(dst), shape=shape, chunks=chunks, synth=p, format=format, overwrite=overwrite)
    except ValidationError as err:
        raise config_error(err, "synth option") from None
    try:
        write = op.chunks if block is None else _positive3(block, "block")
    except ValueError as err:
        raise ConfigError(str(err), "e.g. block=(64, 256, 256)") from None
    if any(w % c for w, c in zip(write, op.chunks, strict=True)):
        raise ConfigError(f"block {write} is not a multiple of chunks {op.chunks}", "give a block shape made of whole chunks")
    grid = BlockGrid(Box.from_shape(op.shape), write)
    log.info("synthesizing %s: shape %s, %d blocks of %s, seed %d", op.output, op.shape, grid.num_blocks, write, p.seed)
    from engine.runtime import default_state_dir, run_blockwise

    run_dir = state_dir if state_dir is not None else default_state_dir(op.url("raw"), "synth")
    summary = run_blockwise(op, grid, state_dir=run_dir, overwrite=overwrite, name="synth", **({"backend": "serial"} | runtime))
    totals = summary.stats
    log.info("synthesized %s: %.0f voxels, %.0f mitochondrion voxels, %.0f synapse voxels", op.output, totals.get("voxels", 0), totals.get("mito_voxels", 0), totals.get("synapse_voxels", 0))
    return {name: open_volume(op.url(name)) for name in OUTPUTS}
