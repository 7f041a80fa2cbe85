"""Parameters of the synthetic EM volume (:class:`SynthParams`).

Lengths are in nanometres and describe the tissue, not the voxels, so that a volume looks the same
at any voxel size; only ``misalign_shift`` is in voxels. Each field carries its description
(``SynthParams.model_fields[name].description``); ``docs/synth.md`` has them as a table. The fields
and their defaults::

    seed                   0
    voxel_size             40,8,8
    neuron_spacing         260
    neuron_stretch         8
    neuron_jitter          0.8
    neuron_size_variation  0.5
    dendrite_probability   0.7
    dendrite_spacing       1000
    dendrite_radius        220,420
    boundary_wobble        50
    wobble_scale           150
    meander                120
    meander_scale          1500
    membrane_thickness     22
    mito_probability       0.5
    mito_radius            40,100
    mito_length            250,800
    mito_squeeze           False
    synapse_probability    0.6
    synapse_radius         110,200
    er                     0
    dark_cells             0
    dark_cell_level        0.55
    bodies                 0
    body_regions           0.4
    body_region_scale      1500
    body_radius            60,120
    body_darkness          0.6
    noise                  0.06
    blur                   7
    texture                1
    illumination           0
    illumination_scale     1500
    misalign               0
    misalign_shift         12
    misalign_mode          slip
    misalign_labels        False
    missing                0
    missing_value          0

Neurons: ``neuron_*`` shape the many small neurites (axons), ``dendrite_*`` the few thick ones,
``boundary_wobble``/``meander`` bend them, ``membrane_thickness`` draws their boundaries. Organelles:
``mito_*``, ``synapse_*`` and ``er`` (intracellular membranes); ``dark_cells``; ``body*`` (dark,
mitochondrion-sized bodies that only some regions hold: confounders for mitochondrion segmentation). Imaging: ``noise``,
``blur``, ``texture``, ``illumination``; section defects:
``misalign*`` (the raw image of a section is shifted; labels too only with ``misalign_labels``) and
``missing*`` (the raw section is uniform; labels are kept).

>>> p = SynthParams(seed=3, mito_probability=0.5)
>>> p.voxel_size
(40.0, 8.0, 8.0)
>>> SynthParams.build(neuron_spacing=-1)
Traceback (most recent call last):
...
engine.errors.ConfigError: synth parameter neuron_spacing: Input should be greater than 0 (got -1); give a valid value (see docs/synth.md)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import ConfigError

Range = tuple[float, float]


class SynthParams(BaseModel):
    """What the synthetic volume contains and how it is imaged (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=0, ge=0, lt=2**63, description="Random seed: the same seed and parameters give byte-identical volumes.")
    voxel_size: tuple[float, float, float] = Field(
        default=(40.0, 8.0, 8.0), description="Voxel size in nm (z, y, x); z is the section thickness and usually the coarsest."
    )

    # -- neurons -------------------------------------------------------------------------------
    neuron_spacing: float = Field(
        default=260.0, gt=0, description="Mean distance in nm between neighbouring small neurites (axons) across the section plane."
    )
    neuron_stretch: float = Field(
        default=8.0, ge=1.0, le=50.0, description="How much longer than wide neurites are along z (the sectioning axis); 1 gives round cells."
    )
    neuron_jitter: float = Field(default=0.8, ge=0.0, le=0.9, description="Irregularity of neurite positions: 0 is a regular grid, 0.9 nearly random.")
    neuron_size_variation: float = Field(
        default=0.5, ge=0.0, le=0.6, description="Spread of neurite calibres, as a fraction of neuron_spacing (power-diagram weights)."
    )
    dendrite_probability: float = Field(
        default=0.7, ge=0.0, le=1.0, description="Chance that a coarse cell of size dendrite_spacing holds a thick dendrite."
    )
    dendrite_spacing: float = Field(default=1000.0, gt=0, description="Spacing in nm of the coarse grid on which thick dendrites sit.")
    dendrite_radius: Range = Field(default=(220.0, 420.0), description="Range of dendrite radii in nm (min, max).")
    boundary_wobble: float = Field(default=50.0, ge=0.0, description="Amplitude in nm of the small-scale waviness of cell boundaries.")
    wobble_scale: float = Field(default=150.0, gt=0, description="Length scale in nm of the boundary waviness.")
    meander: float = Field(default=120.0, ge=0.0, description="Amplitude in nm of the slow sideways drift of neurites from section to section.")
    meander_scale: float = Field(default=1500.0, gt=0, description="Length scale in nm of the meander (in z and across).")
    membrane_thickness: float = Field(
        default=22.0, gt=0, description="Thickness in nm of the dark band between two cells (two membranes and the cleft)."
    )

    # -- organelles ----------------------------------------------------------------------------
    mito_probability: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Chance that a mitochondrion is tried in an axon (dendrites try three); rejected if it would cross a membrane."
    )
    mito_radius: Range = Field(default=(40.0, 100.0), description="Range of mitochondrion cross-section semi-axes in nm (min, max).")
    mito_length: Range = Field(default=(250.0, 800.0), description="Range of mitochondrion lengths in nm along the neurite (min, max).")
    mito_squeeze: bool = Field(
        default=False,
        description="Keep every tried mitochondrion, cut off just inside its cell's membrane where it would cross it (False: keep only those that fit with a gap).",
    )
    synapse_probability: float = Field(
        default=0.6, ge=0.0, le=1.0, description="Chance that an axon tries a synapse onto a neighbour (dendrites preferred); it is kept where a synapse fits."
    )
    synapse_radius: Range = Field(default=(110.0, 200.0), description="Range of synapse (postsynaptic density) radii in nm (min, max).")
    er: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of the cytoplasm with endoplasmic reticulum: thin dark tubules that look like cell membranes but lie inside a cell (0: none).",
    )
    dark_cells: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Chance that a neuron is a dark cell (dense, dark cytoplasm, as EM staining gives some cells)."
    )
    dark_cell_level: float = Field(default=0.55, gt=0.0, le=1.0, description="Brightness of a dark cell's cytoplasm, as a fraction of a normal cell's.")
    bodies: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Chance that a neuron inside a body region holds a dark body (lysosome-like: mitochondrion-sized, dense, no cristae; not a mitochondrion in the labels; 0: none).",
    )
    body_regions: float = Field(default=0.4, ge=0.0, le=1.0, description="About the share of the volume (regions of size body_region_scale) that holds dark bodies.")
    body_region_scale: float = Field(default=1500.0, gt=0, description="Length scale in nm of the body regions (in-plane; four times longer along z).")
    body_radius: Range = Field(default=(60.0, 120.0), description="Range of dark body radii in nm (min, max); bodies are a little longer along z.")
    body_darkness: float = Field(
        default=0.6, ge=0.0, le=0.9, description="Darkness of a dark body's interior (0: as the cytoplasm, 1: black; a mitochondrion's is about 0.45)."
    )

    # -- imaging -------------------------------------------------------------------------------
    noise: float = Field(default=0.06, ge=0.0, le=1.0, description="Standard deviation of the pixel noise, as a fraction of the full intensity range.")
    blur: float = Field(default=7.0, ge=0.0, description="Sigma in nm of the in-plane Gaussian blur (point spread of the microscope).")
    texture: float = Field(default=1.0, ge=0.0, le=3.0, description="Strength of the cytoplasm texture and section-to-section brightness changes (0: none).")
    illumination: float = Field(
        default=0.0, ge=0.0, le=0.9,
        description="Amplitude of slow, uneven brightness and contrast across the volume (staining and beam inhomogeneity), as a fraction (0: none).",
    )
    illumination_scale: float = Field(default=1500.0, gt=0, description="Length scale in nm of the uneven illumination (in-plane; four times longer along z).")
    misalign: float = Field(default=0.0, ge=0.0, le=1.0, description="Chance per section of an xy misalignment of the raw image (see misalign_mode).")
    misalign_shift: int = Field(default=12, ge=0, le=10000, description="Largest misalignment shift in voxels, per axis.")
    misalign_mode: Literal["slip", "step"] = Field(
        default="slip", description="'slip': a misaligned section alone is shifted; 'step': the shift persists in all following sections and adds up."
    )
    misalign_labels: bool = Field(
        default=False, description="Shift the labels with the raw image (True), or keep labels in true tissue coordinates (False)."
    )
    missing: float = Field(default=0.0, ge=0.0, le=1.0, description="Chance per section that the raw section is missing (filled with missing_value).")
    missing_value: int = Field(default=0, ge=0, le=255, description="Raw value of missing sections.")

    @field_validator("voxel_size")
    @classmethod
    def _positive_voxels(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"voxel sizes must be positive, got {v}")
        return v

    @field_validator("dendrite_radius", "mito_radius", "mito_length", "synapse_radius", "body_radius")
    @classmethod
    def _range(cls, v: Range) -> Range:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"a range must be (min, max) with 0 < min <= max, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SynthParams:
        if self.dendrite_spacing < 2.0 * self.neuron_spacing:
            raise ValueError(f"dendrite_spacing ({self.dendrite_spacing}) must be at least twice neuron_spacing ({self.neuron_spacing})")
        if self.dendrite_radius[1] > 0.45 * self.dendrite_spacing:
            raise ValueError(f"dendrite_radius max ({self.dendrite_radius[1]}) must be at most 0.45 * dendrite_spacing")
        return self

    @classmethod
    def build(cls, **values: Any) -> SynthParams:
        """Validate ``values`` into parameters; a bad one raises a one-line :class:`ConfigError`."""
        try:
            return cls(**values)
        except ValidationError as err:
            raise config_error(err) from None


def config_error(err: ValidationError, what: str = "synth parameter") -> ConfigError:
    """A one-line :class:`ConfigError` for the first problem of a pydantic validation error."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(model)"
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    given = first.get("input")
    if first.get("type") == "extra_forbidden":
        return ConfigError(f"unknown {what} {loc!r}", "check the spelling (see docs/synth.md for the parameters)")
    shown = "" if isinstance(given, dict) or "got" in msg else f" (got {given!r})"
    return ConfigError(f"{what} {loc}: {msg}{shown}", "give a valid value (see docs/synth.md)")
