"""Wrap a ``torch.nn.Module`` for inference: device, output activation, mixed precision, channels-last,
batch norms folded into the convolutions before them.

On a GPU, ``amp="bf16"`` (or ``"fp16"``) runs the forward pass under ``torch.autocast``; it is off by
default (the float32 path is the exact one). ``channels_last`` stores activations as NDHWC, which
cuDNN's and oneDNN's 3D convolutions prefer. ``fold_norms`` folds each eval-mode batch norm into the
convolution that feeds it (:func:`fold_batchnorm`): one pass over the activations less per layer, the
same function up to float rounding (a few 1e-7 on the logits). With the fold, channels-last was ~15%
less CPU time per window than the plain model on the 2-core test machine (benchmarks/RESULTS.md).
On the CPU with channels-last, each 1x1x1 ``Conv3d`` (the residual and decoder projections, the head)
runs as one matrix product over the NDHWC view (:func:`pointwise_as_matmul`): torch sends 1x1x1 3D
convolutions to its generic ``slow_conv3d`` path, 5-17x slower than the GEMM for the same numbers; the
base U-Net's window then costs ~22% less CPU time. cuDNN handles 1x1x1 convolutions well, so GPUs keep
the convolutions.
"""

from __future__ import annotations

import copy
import itertools
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from engine.errors import ConfigError
from engine.infer.options import ACTIVATIONS, AMPS, Activation, Amp

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device if one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA device is visible", "use --device cpu or auto")
    return torch.device(device)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(conv, _CONVS) and isinstance(norm, nn.modules.batchnorm._BatchNorm) and not conv.training and not norm.training
        and norm.track_running_stats and norm.running_mean is not None and norm.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of the eval-mode ``model`` with each batch norm folded into the convolution feeding it
    (the norm becomes ``Identity``), and how many were folded. Only pairs whose data flow is known are
    folded: consecutive entries of an ``nn.Sequential`` and the ``conv1/norm1``, ``conv2/norm2`` pairs
    of :class:`engine.models.blocks.ResidualBlock`; anything else is left as it is.

    >>> m = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.ReLU()).eval()
    >>> f, n = fold_batchnorm(m)
    >>> n, type(f[1]).__name__
    (1, 'Identity')
    """
    from engine.models.blocks import ResidualBlock

    model = copy.deepcopy(model)
    folded = 0
    for mod in model.modules():
        pairs: list[tuple[str, str]] = []
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            pairs = list(itertools.pairwise(names))
        elif isinstance(mod, ResidualBlock):
            pairs = [("conv1", "norm1"), ("conv2", "norm2")]
        for c, n in pairs:
            conv, norm = mod._modules[c], mod._modules[n]
            if conv is not None and norm is not None and _foldable(conv, norm):
                mod._modules[c] = fuse_conv_bn_eval(conv, norm)  # type: ignore[arg-type,type-var]
                mod._modules[n] = nn.Identity()
                folded += 1
    return model, folded


class PointwiseMatmul(nn.Module):
    """A 1x1x1 ``Conv3d`` computed as ``linear`` over the channels-last (NDHWC) view of its input.

    With a channels-last input the permutes are views, the product is one GEMM, and the output is
    channels-last again; with a contiguous NCDHW input it is still correct (``linear`` copies).

    >>> conv = nn.Conv3d(3, 2, 1).eval()
    >>> x = torch.randn(1, 3, 2, 4, 4)
    >>> bool(torch.allclose(PointwiseMatmul(conv)(x), conv(x), atol=1e-6))
    True
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.permute(0, 2, 3, 4, 1), self.weight, self.bias).permute(0, 4, 1, 2, 3)


def _pointwise(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 1) and m.stride == (1, 1, 1) and m.groups == 1
        and m.dilation == (1, 1, 1) and all(p == 0 for p in m.padding) and m.padding_mode == "zeros"  # type: ignore[union-attr]
    )


def pointwise_as_matmul(model: nn.Module) -> tuple[nn.Module, int]:
    """``model`` (changed in place) with every 1x1x1, stride-1, ungrouped ``Conv3d`` replaced by
    :class:`PointwiseMatmul`, and how many were replaced. The same function up to float rounding.

    >>> m, n = pointwise_as_matmul(nn.Sequential(nn.Conv3d(2, 4, 3), nn.Conv3d(4, 1, 1)))
    >>> n, type(m[1]).__name__
    (1, 'PointwiseMatmul')
    """
    replaced = 0
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if _pointwise(child):
                setattr(mod, name, PointwiseMatmul(child))  # type: ignore[arg-type]
                replaced += 1
    return model, replaced


def stack_sections(x: torch.Tensor, context: int) -> torch.Tensor:
    """``(B, C, Z + 2 context, Y, X)`` -> ``(B*Z, C*(2 context + 1), Y, X)``: the inner ``Z`` sections,
    each with its ``context`` neighbours on each side as channels (in :func:`fold_sections`' order, the
    neighbours taken from the halo, as training's forward pass keeps only the sections with all their
    neighbours in the crop).

    >>> stack_sections(torch.arange(5.0).reshape(1, 1, 5, 1, 1), 1).flatten(1).tolist()
    [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
    """
    from engine.models.unet import fold_sections

    b, z = x.shape[0], x.shape[2]
    keep = torch.tensor([i * z + j for i in range(b) for j in range(context, z - context)], device=x.device)
    return fold_sections(x, context)[keep]


class TorchPredictor:
    """Call ``model`` on a batch of windows and return float32 probabilities (after ``activation``).

    ``context_slices`` > 0 (a 2.5D model): a window of ``Z`` sections comes with ``context_slices``
    more on each side (:meth:`SlidingWindow` ``halo``); the model runs on the ``Z`` inner sections, each
    stacked with its neighbours (:func:`stack_sections`), and the output has ``Z`` sections.

    >>> p = TorchPredictor(torch.nn.Identity(), activation="none")
    >>> p(torch.ones(1, 1, 2, 2, 2)).sum().item()
    8.0
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        activation: Activation = "sigmoid",
        device: str | torch.device = "cpu",
        amp: Amp = "none",
        channels_last: bool = False,
        fold_norms: bool = True,
        compile: bool = False,  # noqa: A002 - mirrors torch.compile
        context_slices: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown output activation {activation!r}", f"use one of {', '.join(ACTIVATIONS)}")
        if amp not in AMPS:
            raise ConfigError(f"unknown mixed precision {amp!r}", f"use one of {', '.join(AMPS)}")
        self.device = torch.device(device)
        self.activation: Activation = activation
        self.amp: Amp = amp
        self.context_slices = int(context_slices)
        # channels-last 3D (NDHWC) only applies to 3D convolutions: a 2D or 2.5D model keeps its layout
        self.channels_last = channels_last and any(isinstance(m, torch.nn.Conv3d) for m in model.modules())
        model = model.to(self.device).eval()
        if fold_norms:
            model, folded = fold_batchnorm(model)
            if folded:
                log.debug("folded %d batch norm(s) into their convolutions", folded)
        elif self.channels_last:  # the layout and the swaps below work in place: not on the caller's model
            model = copy.deepcopy(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            if self.device.type == "cpu" and not compile:
                model, replaced = pointwise_as_matmul(model)
                if replaced:
                    log.debug("running %d 1x1x1 convolution(s) as matrix products", replaced)
        self.model: torch.nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32, non_blocking=True)
        if self.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            y = self._forward(x)
            if self.activation == "sigmoid":
                y = torch.sigmoid(y)
            elif self.activation == "softmax":
                y = torch.softmax(y, dim=1)
        return y.contiguous()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (float32) of a batch; a 2.5D model's inner sections only."""
        k = self.context_slices
        batch = x.shape[0]
        if k:
            x = stack_sections(x, k)
        if self.amp != "none":
            dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                y = self.model(x)
        else:
            y = self.model(x)
        y = y.float()
        if k:
            from engine.models.unet import unfold_sections

            y = unfold_sections(y, batch)
        return y
