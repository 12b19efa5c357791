"""The causal LSTM (paper Eq. 1) and the gradient highway unit (paper Eq. 2), fast forms.

Causal LSTM, layer k at time t, input ``X`` (the layer below's output), with ``*`` a convolution::

    (g, i, f)    = (tanh, σ, σ)(W1 * [X, H^k_{t-1}, C^k_{t-1}])
    C^k_t        = f ⊙ C^k_{t-1} + i ⊙ g
    (g', i', f') = (tanh, σ, σ)(W2 * [X, C^k_t, M^{k-1}_t])
    M^k_t        = f' ⊙ tanh(W3 * M^{k-1}_t) + i' ⊙ g'
    o            = tanh(W4 * [X, C^k_t, M^k_t])
    H^k_t        = o ⊙ tanh(W5 * [C^k_t, M^k_t])

W1, W2, W4 are k x k; W3 and W5 are 1 x 1 (they change the number of channels). The temporal
memory C is updated first and the spatio-temporal memory M second, from the new C: the cascade
that gives the cell its name.

Each of W1, W2, W4 is one convolution over a channel concatenation; here it is split by input.
``input_conv`` holds the shares of all three that read ``X`` (and their biases), so a layer
whose inputs are known in advance convolves them for many time steps at once; the rest
(``temporal_conv``, ``spatial_conv``, ``output_conv``) read the cell's own memories. The literal
form, one convolution per equation, is :mod:`cttlstm_cli.models.predrnnpp.reference`.

Gradient highway unit, input ``X`` (layer 1's hidden state), state ``Z``::

    P   = tanh(W_px * X + W_pz * Z_{t-1})
    S   = σ(W_sx * X + W_sz * Z_{t-1})
    Z_t = S ⊙ P + (1 - S) ⊙ Z_{t-1}

Cells are pure functions of explicit state tensors: nothing is stored on the modules between steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cttlstm_cli.models.layers import apply_conv


def _norm(channels: int, layer_norm: bool) -> nn.Module:
    """Layer normalisation of a gate pre-activation over (C, H, W) per sample, with a per-channel
    scale and shift; the identity when ``layer_norm`` is off."""
    return nn.GroupNorm(1, channels, eps=1e-5) if layer_norm else nn.Identity()


def _uniform_as_one_conv(fan_in: int, *tensors: Tensor) -> None:
    """Initialise the pieces of one split convolution as PyTorch initialises a single conv:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the joint fan-in of all pieces."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        for t in tensors:
            t.uniform_(-bound, bound)


class CausalLSTMCell(nn.Module):
    """Causal LSTM (paper Eq. 1); see the module docstring. ``forward`` returns ``(H, C, M)``.

    ``memory_channels`` is the width of the incoming ``M^{k-1}_t`` (the layer below's width, or the
    top layer's for layer 1, whose M comes from the top of the previous time step).
    """

    def __init__(
        self, in_channels: int, hidden_channels: int, memory_channels: int, kernel_size: int, layer_norm: bool
    ) -> None:
        super().__init__()
        n, pad = hidden_channels, kernel_size // 2
        self.in_channels, self.hidden_channels, self.memory_channels = in_channels, hidden_channels, memory_channels
        self.kernel_size = kernel_size
        # X's share of W1 (g, i, f), W2 (g', i', f') and W4 (o), in that order, with the three biases.
        self.input_conv = nn.Conv2d(in_channels, 7 * n, kernel_size, padding=pad)
        # W1's share over [H_{t-1}; C_{t-1}], W2's over [C_t; M^{k-1}_t], W3 (1x1), W4's over [C_t; M_t], W5 (1x1).
        self.temporal_conv = nn.Conv2d(2 * n, 3 * n, kernel_size, padding=pad, bias=False)
        self.spatial_conv = nn.Conv2d(n + memory_channels, 3 * n, kernel_size, padding=pad, bias=False)
        self.memory_conv = nn.Conv2d(memory_channels, n, 1)
        self.output_conv = nn.Conv2d(2 * n, n, kernel_size, padding=pad, bias=False)
        self.hidden_conv = nn.Conv2d(2 * n, n, 1)
        self.norm_temporal = _norm(3 * n, layer_norm)
        self.norm_spatial = _norm(3 * n, layer_norm)
        self.norm_output = _norm(n, layer_norm)
        k2 = kernel_size * kernel_size
        w, b = self.input_conv.weight, self.input_conv.bias
        rows = (slice(0, 3 * n), slice(3 * n, 6 * n), slice(6 * n, 7 * n))
        fan_ins = (in_channels + 2 * n, in_channels + n + memory_channels, in_channels + 2 * n)
        for r, fan_in, rest in zip(rows, fan_ins, (self.temporal_conv, self.spatial_conv, self.output_conv)):
            _uniform_as_one_conv(fan_in * k2, w[r], b[r], rest.weight)

    def input_gates(self, x: Tensor) -> Tensor:
        """X's share of the W1, W2 and W4 pre-activations plus their biases, for any number of stacked steps."""
        return apply_conv(self.input_conv, x)

    def forward(self, input_gates: Tensor, h: Tensor, c: Tensor, m_below: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step from :meth:`input_gates` of ``X``, ``H^k_{t-1}``, ``C^k_{t-1}`` and ``M^{k-1}_t``."""
        n = self.hidden_channels
        x_temporal, x_spatial, x_output = input_gates.split([3 * n, 3 * n, n], dim=1)
        temporal = x_temporal + apply_conv(self.temporal_conv, torch.cat([h, c], dim=1))
        g, i, f = self.norm_temporal(temporal).chunk(3, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        spatial = x_spatial + apply_conv(self.spatial_conv, torch.cat([c, m_below], dim=1))
        g, i, f = self.norm_spatial(spatial).chunk(3, dim=1)
        m = torch.sigmoid(f) * torch.tanh(apply_conv(self.memory_conv, m_below)) + torch.sigmoid(i) * torch.tanh(g)
        memories = torch.cat([c, m], dim=1)  # read by both W4 and W5
        o = torch.tanh(self.norm_output(x_output + apply_conv(self.output_conv, memories)))
        h = o * torch.tanh(apply_conv(self.hidden_conv, memories))
        return h, c, m


class GradientHighwayUnit(nn.Module):
    """Gradient highway unit (paper Eq. 2); see the module docstring. ``forward(x, z)`` returns ``Z_t``."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, layer_norm: bool) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.in_channels, self.channels, self.kernel_size = in_channels, channels, kernel_size
        self.input_conv = nn.Conv2d(in_channels, 2 * channels, kernel_size, padding=pad)  # [W_px; W_sx] and the biases
        self.state_conv = nn.Conv2d(channels, 2 * channels, kernel_size, padding=pad, bias=False)  # [W_pz; W_sz]
        self.norm = _norm(2 * channels, layer_norm)
        k2 = kernel_size * kernel_size
        fan_in = (in_channels + channels) * k2
        _uniform_as_one_conv(fan_in, self.input_conv.weight, self.input_conv.bias, self.state_conv.weight)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        p, s = self.norm(apply_conv(self.input_conv, x) + apply_conv(self.state_conv, z)).chunk(2, dim=1)
        s = torch.sigmoid(s)
        return s * torch.tanh(p) + (1 - s) * z
