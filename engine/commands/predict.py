"""``connectile predict CHECKPOINT IN OUT``: blended sliding-window inference over a whole volume, blockwise.

Examples::

    connectile predict runs/r1/checkpoints/step-001000 data.zarr/raw data.zarr/mito_prob   # window: the training crop
    connectile predict ckpt data.zarr/raw data.zarr/prob --window 16,128,128 --overlap 0.5 --tta flips --dtype float16
    connectile predict ckpt data.zarr/raw data.zarr/prob --backend serial --block 64,512,512
"""

from __future__ import annotations

import argparse

from engine.commands._command import OVERWRITE, RUNTIME, Command, Settings, Writes, arg
from engine.commands._common import runtime_kwargs
from engine.commands._flags import params_from_args
from engine.params import PredictParams


def run(args: argparse.Namespace) -> int:
    """Predict ``args.input`` into ``args.output`` and print a summary line."""
    from engine.ops.predict import predict_volume

    params = params_from_args(PredictParams, args)
    result = predict_volume(args.checkpoint, args.input, args.output, overwrite=args.overwrite, **params.settings(), **runtime_kwargs(args))
    print(
        f"predicted {args.input} -> {result.output}: {result.blocks} blocks of {result.block_shape}, {result.windows} windows "
        f"({result.windows_computed} computed, {100 * (result.redundancy - 1):.1f}% twice at block cuts) in {result.seconds:.1f} s "
        f"({result.voxels_per_second / 1e6:.2f} Mvoxel/s)"
    )
    return 0


add_parser = Command(
    "predict", run, help="model probabilities over a whole volume (blended sliding windows, blockwise on workers)",
    description=(
        "Run a trained checkpoint over IN with overlapping windows blended by Gaussian (or bump) weights, "
        "block by block on workers (one per GPU, else CPU workers), and write OUT as uint8 probabilities "
        "(round(255 p)) or floats. The result equals sliding-window inference over the whole volume in one "
        "process (MONAI's window layout and Gaussian weights) while memory stays bounded by the block."
    ),
    flags=(
        arg("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (config.json + model.safetensors)"),
        arg("input", metavar="IN", help="input volume (uint8 read as value/255), e.g. data.zarr/raw"),
        arg("output", metavar="OUT", help="output volume, e.g. data.zarr/mito_prob"),
        Settings(PredictParams, "prediction (the pipeline's predict stage takes the same settings)"), OVERWRITE, RUNTIME,
    ),
    writes=Writes("output", {"IN": "input", "CHECKPOINT": "checkpoint"}),
).add_parser
