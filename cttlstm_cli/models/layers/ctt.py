"""The convolutional tensor-train (CTT) module of Conv-TT-LSTM (paper Eqs. 8-10).

Given the last M hidden states of a layer, the module

1. groups them into N overlapping windows of ``K = M - N + 1`` states (oldest first)
   and maps each window to R channels with its own k x k conv ``P_i`` (Eq. 10);
2. combines the N results with a tensor train of N - 1 convolutional cores
   ``G_0 .. G_{N-2}`` (R -> R, k x k): ``T_0 = U_0``, ``T_i = U_i + G_{i-1} * T_{i-1}``.

The oldest window passes through all N - 1 cores, the newest through none, so the
receptive field grows with the time gap (the paper's requirement 2).

Two border semantics exist, and they differ only within ``(N-1)*(k//2)`` pixels of
the frame edge:

``composed`` (the default; paper Eq. 9 taken literally)
    each composed kernel ``K(i)`` is applied to the zero-padded ``U_i``. The
    sequential form (Algorithm 2) evaluates this on a canvas widened by the
    receptive margin, the parallel form (Algorithm 1) builds every ``K(i)``
    explicitly and applies them in one convolution; the two agree everywhere.
``stepwise``
    every core zero-pads its own input, as the authors' released implementation
    does. Their checkpoints are imported with this setting so that they predict
    exactly what they predicted in the authors' code. Only the sequential form
    can evaluate it (zeroing between cores is not a convolution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.layers.conv import conv2d

TTPadding = Literal["composed", "stepwise"]
CTTForm = Literal["sequential", "parallel"]
ConvFn = Callable[..., Tensor]


def compose_convs(
    first_weight: Tensor, first_bias: Tensor, second_weight: Tensor, second_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """Return the single conv equal to ``second(first(x))`` on an unbounded canvas.

    Weights are PyTorch cross-correlation kernels ``[out, in, k, k]`` (odd k);
    the result has kernel size ``k1 + k2 - 1``. The composed bias is
    ``b2 + sum(W2) . b1`` because the first conv's bias is a constant field.
    """
    k2 = second_weight.shape[-1]
    # Correlating twice is correlating once with the (true) convolution of the
    # kernels; conv2d over the first kernel, batched by its input channel, gives it.
    composed = F.conv2d(first_weight.transpose(0, 1), second_weight.flip(-1, -2), padding=k2 - 1)
    composed = composed.transpose(0, 1)
    bias = second_bias + second_weight.sum(dim=(2, 3)) @ first_bias
    return composed, bias


class ConvTensorTrain(nn.Module):
    """Preprocessing convs plus the tensor train of cores; see the module docstring."""

    def __init__(
        self,
        hidden_channels: int,
        order: int,
        history: int,
        rank: int,
        kernel_size: int,
        tt_padding: TTPadding = "composed",
        form: CTTForm = "sequential",
    ) -> None:
        super().__init__()
        if history < order:
            raise ValueError(f"history ({history}) must be >= order ({order})")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel size must be odd, got {kernel_size}")
        self.order = order
        self.history = history
        self.rank = rank
        self.kernel_size = kernel_size
        self.window = history - order + 1
        self.tt_padding: TTPadding = tt_padding
        pad = kernel_size // 2
        self.preprocess = nn.ModuleList(
            nn.Conv2d(self.window * hidden_channels, rank, kernel_size, padding=pad) for _ in range(order)
        )
        self.cores = nn.ModuleList(nn.Conv2d(rank, rank, kernel_size, padding=pad) for _ in range(order - 1))
        self.form: CTTForm = "sequential"
        self.set_form(form)

    def set_form(self, form: CTTForm) -> None:
        """Choose Algorithm 2 (``sequential``) or Algorithm 1 (``parallel``)."""
        if form not in ("sequential", "parallel"):
            raise ValueError(f"unknown CTT form {form!r}")
        if form == "parallel" and self.tt_padding == "stepwise" and self.order > 2:
            raise ValueError("the parallel CTT form needs tt_padding='composed' (stepwise zeroing is not a convolution)")
        self.form = form

    @property
    def margin(self) -> int:
        """Pixels beyond the frame edge that the oldest window's composed kernel reaches."""
        return (self.order - 1) * (self.kernel_size // 2)

    def preprocessed(self, history: Sequence[Tensor]) -> list[Tensor]:
        """``U_i = P_i * [window_i]`` for the N windows of ``history`` (M states, oldest first)."""
        if len(history) != self.history:
            raise ValueError(f"expected {self.history} past states, got {len(history)}")
        k = self.window
        return [conv(torch.cat(list(history[i : i + k]), dim=1)) for i, conv in enumerate(self.preprocess)]

    def forward(self, history: Sequence[Tensor]) -> Tensor:
        """Map the M most recent hidden states (oldest first) to the R-channel ``T_{N-1}``."""
        return self.combine(self.preprocessed(history))

    def combine(self, u: Sequence[Tensor], conv: ConvFn = F.conv2d) -> Tensor:
        """The tensor train over preprocessed windows, by the selected algorithm.

        ``conv`` computes the convolutions (``F.conv2d`` signature); the fast path passes
        :func:`~cttlstm_cli.models.conv.conv2d`, the reference the plain one.
        """
        if self.form == "parallel":
            return self.parallel(u, conv)
        return self.sequential(u, conv)

    # The fast path never re-convolves old hidden states: P_i * window_i is linear in the
    # window, so each new state meets all N*K slices of the preprocessing kernels once,
    # in one convolution, and the results ride along in the recurrent state.

    def project(self, hidden: Tensor) -> tuple[Tensor, ...]:
        """All ``N*K`` preprocessing-kernel slices applied to one new hidden state (no bias).

        Returns ``N*K`` tensors ``[B, R, H, W]``, window i then window position j.
        Returned split (not as one tensor sliced later) because split's backward is one
        concatenation, while every slice's backward zero-fills a full-size gradient.
        """
        c = hidden.shape[1]
        weight = torch.cat(
            [conv.weight[:, j * c : (j + 1) * c] for conv in self.preprocess for j in range(self.window)], dim=0
        )
        return conv2d(hidden, weight, padding=self.kernel_size // 2).split(self.rank, dim=1)

    def from_projections(self, projections: Sequence[Sequence[Tensor]]) -> Tensor:
        """``T_{N-1}`` from the :meth:`project` outputs of the last M hidden states (oldest first)."""
        k = self.window
        u = []
        for i, conv in enumerate(self.preprocess):
            acc = projections[i][i * k] + conv.bias[None, :, None, None]
            for j in range(1, k):
                acc = acc + projections[i + j][i * k + j]
            u.append(acc)
        return self.combine(u, conv2d)

    def sequential(self, u: Sequence[Tensor], conv: ConvFn = F.conv2d) -> Tensor:
        """Algorithm 2: the linear-time recursion over the cores."""
        if self.tt_padding == "stepwise":
            t = u[0]
            for core, u_i in zip(self.cores, u[1:]):
                t = u_i + conv(t, core.weight, core.bias, padding=core.padding[0])
            return t
        pad = self.kernel_size // 2
        m = self.margin
        t = F.pad(u[0], (m, m, m, m))
        for i, (core, u_i) in enumerate(zip(self.cores, u[1:]), start=1):
            # Valid convs shrink the widened canvas by one core's reach per step,
            # so U_i is widened by exactly what is left and the last T is frame-sized.
            r = m - i * pad
            # The newest U needs no widening; F.pad would still copy it (and its gradient).
            t = conv(t, core.weight, core.bias) + (F.pad(u_i, (r, r, r, r)) if r else u_i)
        return t

    def composed_kernels(self) -> tuple[Tensor, Tensor]:
        """Every ``K(i)`` of Eq. 8, centred in one ``[R, N*R, S, S]`` kernel, and the summed bias.

        ``S = (N-1)(k-1) + 1``; the newest window's kernel is the identity.
        """
        n, r = self.order, self.rank
        size = (n - 1) * (self.kernel_size - 1) + 1
        ref = self.cores[0].weight if n > 1 else self.preprocess[0].weight
        identity = torch.zeros(r, r, 1, 1, dtype=ref.dtype, device=ref.device)
        identity[:, :, 0, 0] = torch.eye(r, dtype=ref.dtype, device=ref.device)
        kernels: list[Tensor] = [identity]
        weight = identity
        bias = torch.zeros(r, dtype=ref.dtype, device=ref.device)
        # Walk from the newest window back: the chain of window i is G_{N-2} o ... o G_i.
        # Every core's bias enters T once, so the bias of the longest chain is the total.
        for core in reversed(self.cores):
            weight, bias = compose_convs(core.weight, core.bias, weight, bias)
            kernels.append(weight)
        kernels.reverse()  # oldest window first, matching the channel order of cat(U)
        full = [F.pad(k, [(size - k.shape[-1]) // 2] * 4) for k in kernels]
        return torch.cat(full, dim=1), bias

    def parallel(self, u: Sequence[Tensor], conv: ConvFn = F.conv2d) -> Tensor:
        """Algorithm 1: all composed kernels applied at once to the stacked ``U_i``."""
        weight, bias = self.composed_kernels()
        return conv(torch.cat(list(u), dim=1), weight, bias, padding=weight.shape[-1] // 2)
