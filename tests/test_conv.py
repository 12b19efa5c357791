"""The fast path's convolution (NNPACK forward and input gradient on the CPU) equals F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cttlstm_cli.models.layers import conv
from cttlstm_cli.models.layers.conv import conv2d, nnpack_available, set_cpu_conv


def took_nnpack(y: torch.Tensor) -> bool:
    return "NnpackConv2d" in type(y.grad_fn).__name__


def reference_grads(x, w, b, padding, grad):
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = F.conv2d(x64, w64, b64, padding=padding)
    return (y, *torch.autograd.grad(y, (x64, w64, b64), grad.double()))


@pytest.mark.parametrize(
    "batch, c_in, c_out, size, kernel, padding",
    [
        (20, 24, 64, 32, 5, 2),  # wide input: NNPACK forward and input gradient
        (20, 8, 48, 32, 5, 2),  # thin input: oneDNN forward, NNPACK input gradient
        (16, 16, 8, 36, 5, 0),  # valid conv (the CTT cores on the widened canvas)
        (20, 32, 24, 30, 3, 1),
    ],
)
def test_conv2d_equals_float64_reference(batch, c_in, c_out, size, kernel, padding) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, c_in, size, size, requires_grad=True)
    w = (torch.randn(c_out, c_in, kernel, kernel) / (c_in * kernel * kernel) ** 0.5).requires_grad_()
    b = torch.randn(c_out, requires_grad=True)
    y = conv2d(x, w, b, padding)
    assert took_nnpack(y) == nnpack_available()
    grad = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, w, b), grad))
    for name, a, r in zip(["output", "input grad", "weight grad", "bias grad"], got, reference_grads(x, w, b, padding, grad)):
        assert a.shape == r.shape, name
        assert (a.double() - r).abs().max() / r.abs().max() <= 1e-5, name


def test_small_or_thin_convs_and_other_settings_use_plain_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(2, 48, 32, 32, requires_grad=True), torch.randn(24, 48, 5, 5)
    assert not took_nnpack(conv2d(x, w, None, 2))  # 2 x 32 x 32 pixels: below MIN_NNPACK_PIXELS
    big = torch.randn(20, 48, 32, 32, requires_grad=True)
    assert not took_nnpack(conv2d(big, torch.randn(8, 48, 1, 1)))  # 1x1 kernel
    assert not took_nnpack(conv2d(torch.randn(20, 4, 32, 32, requires_grad=True), torch.randn(8, 4, 5, 5), None, 2))
    assert not took_nnpack(conv2d(big.double(), torch.randn(24, 48, 5, 5, dtype=torch.float64), None, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv2d(big, torch.randn(24, 48, 5, 5), None, 2)
    assert out.dtype == torch.bfloat16 and not took_nnpack(out)
    monkeypatch.setattr(conv, "_cpu_conv", "auto")
    set_cpu_conv("onednn")
    assert not took_nnpack(conv2d(big, torch.randn(24, 48, 5, 5), None, 2))
    set_cpu_conv("auto")
    assert took_nnpack(conv2d(big, torch.randn(24, 48, 5, 5), None, 2)) == nnpack_available()
    monkeypatch.setenv("CTTLSTM_CPU_CONV", "onednn")
    assert not took_nnpack(conv2d(big, torch.randn(24, 48, 5, 5), None, 2))
    with pytest.raises(ValueError, match="unknown CPU convolution"):
        set_cpu_conv("fft")  # type: ignore[arg-type]


def test_a_refusal_by_nnpack_falls_back_to_the_default_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    x = torch.randn(20, 24, 32, 32, requires_grad=True)
    w, b = torch.randn(48, 24, 5, 5, requires_grad=True), torch.randn(48, requires_grad=True)
    y = conv2d(x, w, b, 2)
    grad = torch.randn_like(y)
    got = (y, *torch.autograd.grad(y, (x, w, b), grad))
    for a, r in zip(got, reference_grads(x, w, b, 2, grad)):
        assert (a.double() - r).abs().max() / r.abs().max() <= 1e-5
