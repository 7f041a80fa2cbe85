"""``connectile predict CHECKPOINT IN OUT``: blended sliding-window inference over a whole volume, blockwise.

Examples::

    connectile predict runs/r1/checkpoints/step-001000 data.zarr/raw data.zarr/mito_prob   # window: the training crop
    connectile predict ckpt data.zarr/raw data.zarr/prob --window 16,128,128 --overlap 0.5 --tta flips --dtype float16
    connectile predict ckpt data.zarr/raw data.zarr/prob --backend serial --block 64,512,512
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands._common import add_runtime_args, runtime_kwargs, triple

_WINDOW = "16,128,128"
_BLOCK = "64,256,256"


def add_parser(subparsers: Any) -> None:
    """Register ``connectile predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="model probabilities over a whole volume (blended sliding windows, blockwise on workers)",
        description=(
            "Run a trained checkpoint over IN with overlapping windows blended by Gaussian (or bump) weights, "
            "block by block on workers (one per GPU, else CPU workers), and write OUT as uint8 probabilities "
            "(round(255 p)) or floats. The result equals sliding-window inference over the whole volume in one "
            "process (MONAI's window layout and Gaussian weights) while memory stays bounded by the block."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("input", metavar="IN", help="input volume (uint8 read as value/255), e.g. data.zarr/raw")
    parser.add_argument("output", metavar="OUT", help="output volume, e.g. data.zarr/mito_prob")
    parser.add_argument(
        "--window", metavar="Z,Y,X", default=None,
        help="window (model input) size; a 2.5D model also reads its context sections around it "
        f"(default: the checkpoint's training crop, less a 2.5D model's context sections; {_WINDOW} without one)",
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows, in [0, 1) (default: %(default)s)")
    parser.add_argument("--blend", choices=("gaussian", "bump", "constant"), default="gaussian", help="window weights (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default: 1 on CPU, 8 on GPU)")
    parser.add_argument("--tta", choices=("none", "flips", "flips-transpose"), default="none", help="test-time augmentation (default: %(default)s)")
    parser.add_argument("--tta-reduce", choices=("mean", "min", "max"), default="mean", help="how augmented outputs combine (default: %(default)s)")
    parser.add_argument("--dtype", choices=("uint8", "float16", "float32"), default="uint8", help="output type (default: %(default)s)")
    parser.add_argument("--block", metavar="Z,Y,X", default=_BLOCK, help="voxels per block, rounded to the window stride and chunks (default: %(default)s)")
    parser.add_argument("--chunks", metavar="Z,Y,X", default=None, help="output storage chunks (default: 16,128,128 capped at the volume)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs (default: %(default)s)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision of the forward pass (GPU; default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's choice)")
    parser.add_argument(
        "--no-share-borders", dest="share_borders", action="store_false",
        help="let each block compute every window over its write box (windows at block cuts twice, one pass) instead of "
        "computing each window once and summing the block borders in a second pass",
    )
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict ``args.input`` into ``args.output`` and print a summary line."""
    from engine.commands._common import check_output
    from engine.ops.predict import DEFAULT_BLOCK, predict_volume

    check_output(args.output, {"IN": args.input, "CHECKPOINT": args.checkpoint})
    result = predict_volume(
        args.checkpoint,
        args.input,
        args.output,
        block=triple(args.block, "--block", int, _BLOCK) or DEFAULT_BLOCK,
        window=triple(args.window, "--window", int, _WINDOW),
        chunks=triple(args.chunks, "--chunks", int, "16,128,128"),
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch_size,
        tta=args.tta,
        tta_reduce=args.tta_reduce,
        dtype=args.dtype,
        device=args.device,
        amp=args.amp,
        threads=args.threads,
        overwrite=args.overwrite,
        share_borders=args.share_borders,
        **runtime_kwargs(args),
    )
    print(
        f"predicted {args.input} -> {result.output}: {result.blocks} blocks of {result.block_shape}, {result.windows} windows "
        f"({result.windows_computed} computed, {100 * (result.redundancy - 1):.1f}% twice at block cuts) in {result.seconds:.1f} s "
        f"({result.voxels_per_second / 1e6:.2f} Mvoxel/s)"
    )
    return 0
