"""The spatio-temporal LSTM (PredRNN, paper Eq. 3), fast form.

Layer k at step t, input ``X`` (the patched frame, or the layer below's H), ``*`` a convolution::

    g, i, f     = tanh, σ, σ(W_x * X + W_h * H^k_{t-1})        (f with the forget bias)
    C^k_t       = f ⊙ C^k_{t-1} + i ⊙ g
    g', i', f'  = tanh, σ, σ(W'_x * X + W_m * M^{k-1}_t)       (f' with the forget bias)
    M^k_t       = f' ⊙ M^{k-1}_t + i' ⊙ g'
    o           = σ(W_xo * X + W_ho * H^k_{t-1} + W_o * [C^k_t, M^k_t])
    H^k_t       = o ⊙ tanh(W_1x1 * [C^k_t, M^k_t])

No convolution has a bias (the forget bias is a constant), as in the published configuration.
``input_conv`` holds every share that reads X (seven gates), so known inputs are convolved for
many steps at once; ``hidden_conv`` the four that read H (g, i, f, o); ``memory_conv`` the three
that read M. The literal form, one convolution per equation term, is :mod:`.reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cttlstm_cli.models.layers import apply_conv


class SpatioTemporalLSTMCell(nn.Module):
    """ST-LSTM (see the module docstring). ``forward`` returns ``(H, C, M, ΔC, ΔM)``: the increments
    ``i ⊙ g`` and ``i' ⊙ g'`` are what PredRNN-V2's decoupling loss reads."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, forget_bias: float) -> None:
        super().__init__()
        n, pad = hidden_channels, kernel_size // 2
        self.in_channels, self.hidden_channels, self.kernel_size = in_channels, hidden_channels, kernel_size
        self.forget_bias = forget_bias
        self.input_conv = nn.Conv2d(in_channels, 7 * n, kernel_size, padding=pad, bias=False)  # g i f g' i' f' o
        self.hidden_conv = nn.Conv2d(n, 4 * n, kernel_size, padding=pad, bias=False)  # g i f o
        self.memory_conv = nn.Conv2d(n, 3 * n, kernel_size, padding=pad, bias=False)  # g' i' f'
        self.output_conv = nn.Conv2d(2 * n, n, kernel_size, padding=pad, bias=False)  # W_o over [C, M]
        self.fuse_conv = nn.Conv2d(2 * n, n, 1, bias=False)  # W_1x1 over [C, M]

    def input_gates(self, x: Tensor) -> Tensor:
        """X's share of all seven pre-activations, for any number of stacked steps."""
        return apply_conv(self.input_conv, x)

    def forward(
        self, input_gates: Tensor, h: Tensor, c: Tensor, m: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step from :meth:`input_gates` of X, ``H^k_{t-1}``, ``C^k_{t-1}`` and ``M^{k-1}_t``."""
        n, bias = self.hidden_channels, self.forget_bias
        xg, xi, xf, xg2, xi2, xf2, xo = input_gates.split(n, dim=1)
        hg, hi, hf, ho = apply_conv(self.hidden_conv, h).split(n, dim=1)
        mg, mi, mf = apply_conv(self.memory_conv, m).split(n, dim=1)
        delta_c = torch.sigmoid(xi + hi) * torch.tanh(xg + hg)
        c = torch.sigmoid(xf + hf + bias) * c + delta_c
        delta_m = torch.sigmoid(xi2 + mi) * torch.tanh(xg2 + mg)
        m = torch.sigmoid(xf2 + mf + bias) * m + delta_m
        memories = torch.cat([c, m], dim=1)
        o = torch.sigmoid(xo + ho + apply_conv(self.output_conv, memories))
        h = o * torch.tanh(apply_conv(self.fuse_conv, memories))
        return h, c, m, delta_c, delta_m
