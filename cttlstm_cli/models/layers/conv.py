"""The convolution the fast path runs: oneDNN by default, NNPACK's FFT kernels where they win.

On the CPU, PyTorch sends an fp32 ``conv2d`` to oneDNN's direct kernels. For the 5x5 convs
of this model with 16 or more input channels, NNPACK's tiled-FFT kernels do the same work in
about half the time (measured in docs/performance.md) and are, if anything, closer to the
float64 result. PyTorch itself only picks NNPACK for batches of 16 and more and then runs the
backward on its slowest path, so :func:`conv2d` calls NNPACK explicitly for the forward and
the input gradient (which is another such convolution) and leaves the weight gradient to
oneDNN.

Everything else (GPU, autocast, channels_last, ``torch.compile``, 1x1 or strided convs, thin
inputs) takes plain :func:`torch.nn.functional.conv2d`. Set ``CTTLSTM_CPU_CONV=onednn`` (or
call :func:`set_cpu_conv`) to turn NNPACK off. The reference implementation never uses this
module: it stays the plain eager algorithm.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

CpuConv = Literal["auto", "onednn"]

#: NNPACK lost to oneDNN below this many input channels in every shape we measured
MIN_NNPACK_CHANNELS = 16
#: ... and below this many output pixels (batch x height x width) it gained too little to
#: pay for the extra Python-level autograd node (per-step convs at batch 2 and 32x32)
MIN_NNPACK_PIXELS = 16384

_cpu_conv: CpuConv = "auto"


def set_cpu_conv(choice: CpuConv) -> None:
    """Pick the fp32 CPU convolution of the fast path: ``auto`` (NNPACK where it wins) or ``onednn``."""
    global _cpu_conv
    if choice not in ("auto", "onednn"):
        raise ValueError(f"unknown CPU convolution {choice!r}; expected auto or onednn")
    _cpu_conv = choice


@functools.cache
def nnpack_available() -> bool:
    """Whether this build and CPU have NNPACK (the probe also initialises it, which it needs)."""
    probe = getattr(torch, "_nnpack_available", None)
    return bool(probe and probe())


def _nnpack_enabled() -> bool:
    choice = os.environ.get("CTTLSTM_CPU_CONV", _cpu_conv)
    return choice != "onednn" and nnpack_available()


def _nnpack_eligible(x: Tensor, weight: Tensor) -> bool:
    """Whether NNPACK can and may run this conv or its input gradient at all."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and x.shape[0] * x.shape[2] * x.shape[3] >= MIN_NNPACK_PIXELS
        and weight.shape[1] == x.shape[1]
        and 3 <= weight.shape[-1] == weight.shape[-2] <= 16
        and x.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and _nnpack_enabled()
    )


def _nnpack_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    try:
        zeros = bias if bias is not None else weight.new_zeros(weight.shape[0])
        return torch._nnpack_spatial_convolution(x, weight.contiguous(), zeros, [padding, padding])
    except RuntimeError:  # NNPACK can refuse a shape or a CPU at run time; the result is the same
        return F.conv2d(x, weight, bias, padding=padding)


def _wide_input_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """NNPACK for inputs of at least ``MIN_NNPACK_CHANNELS`` channels, oneDNN for thinner ones."""
    if x.shape[1] >= MIN_NNPACK_CHANNELS:
        return _nnpack_conv(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)


class _NnpackConv2d(torch.autograd.Function):
    """Stride-1 conv whose forward and input gradient run on NNPACK where they have enough
    input channels (oneDNN otherwise); the weight gradient always runs on oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return _wide_input_conv(x, weight, bias, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        p, k = ctx.padding, weight.shape[-1]
        grad = grad.contiguous()
        grad_x = None
        if need_x:
            # The input gradient of a stride-1 conv is the conv of the output gradient with the
            # flipped, transposed kernel and the complementary padding.
            grad_x = _wide_input_conv(grad, weight.transpose(0, 1).flip(-1, -2), None, k - 1 - p)
        grad_w = grad_b = None
        if need_w or need_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                [1, 1], [p, p], [1, 1], False, [0, 0], 1, [False, need_w, need_b and ctx.has_bias],
            )
        return grad_x, grad_w, grad_b, None


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (stride 1), on the fastest kernel this CPU has."""
    k = weight.shape[-1]
    wide = max(weight.shape[0], weight.shape[1]) >= MIN_NNPACK_CHANNELS
    # The input gradient is a conv with padding k - 1 - p: NNPACK needs both paddings < k.
    if wide and 0 <= padding <= k - 1 and _nnpack_eligible(x, weight):
        return _NnpackConv2d.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)


def apply_conv(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a padded stride-1 ``nn.Conv2d`` through :func:`conv2d` (any other module as it is)."""
    if isinstance(module, nn.Conv2d):
        return conv2d(x, module.weight, module.bias, module.padding[0])
    return module(x)
