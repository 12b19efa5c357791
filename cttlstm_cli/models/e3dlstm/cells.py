"""The E3D-LSTM cell (paper Eq. 3-4), its recall gate and the causal 3D convolution.

Every tensor inside the stack is a 3D feature map ``[B, channels, D, h, w]``: D is the window
(``model.window`` frames), h x w the frame divided by the patch size. Convolutions are causal in
time inside the window (``kt - 1`` zeros in front, none behind, so depth d sees window positions
d - kt + 1 .. d) and 'same' in space, so every state keeps the window's depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: one layer's state: its hidden state H_{t-1} and its memory (C_{t-tau}, ..., C_{t-1}), oldest first
LayerState = tuple[Tensor, tuple[Tensor, ...]]


def causal_conv3d(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """``conv`` (stride 1, spatial padding set on the module) with ``kt - 1`` zero frames in front of
    the window, so the output keeps the window's depth and depth d sees nothing after position d."""
    kt = conv.kernel_size[0]
    if kt > 1:
        x = F.pad(x, (0, 0, 0, 0, kt - 1, 0))
    return conv(x)


def make_conv3d(in_channels: int, out_channels: int, kernel: tuple[int, int, int], bias: bool) -> nn.Conv3d:
    """A conv for :func:`causal_conv3d`: 'same' spatial padding, temporal padding left to the caller."""
    return nn.Conv3d(in_channels, out_channels, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2), bias=bias)


def recall(query: Tensor, memories: tuple[Tensor, ...]) -> Tensor:
    """RECALL(R_t, C_{t-tau:t-1}) = softmax(R_t . C^T) . C (paper Eq. 3).

    Every position of the query ``[B, ch, D, h, w]`` (D*h*w rows of ``ch`` channels) attends over every
    position of every memory (tau*D*h*w rows): one batched matrix product for the scores, a softmax over
    the memory positions, and one for the weighted sum. No 1/sqrt(ch) scaling (the paper has none).
    """
    batch, channels = query.shape[:2]
    q = query.reshape(batch, channels, -1).transpose(1, 2)  # [B, N, ch]
    keys = torch.cat([m.reshape(batch, channels, -1) for m in memories], dim=2)  # [B, ch, tau*N]
    weights = torch.softmax(torch.bmm(q, keys), dim=-1)  # [B, N, tau*N]
    return torch.bmm(weights, keys.transpose(1, 2)).transpose(1, 2).reshape(query.shape)


class E3DLSTMCell(nn.Module):
    """One E3D-LSTM layer; the gates of each source are one fused convolution.

    * ``conv_x`` (X_t -> r, i, g, i', g', f', o; carries the seven gate biases),
    * ``conv_h`` (H_{t-1} -> r, i, g, o), ``conv_m`` (M^{k-1} -> i', g', f'),
    * ``conv_o`` ([C_t ; M_t] -> o: W_co and W_mo side by side),
    * ``norm`` (the LayerNorm of the eidetic update: over channels, depth, height and width, with a
      gain and a bias per channel), ``conv_last`` (W_1x1x1 over [C_t ; M_t]).
    """

    GATES_X = 7

    def __init__(self, in_channels: int, hidden_channels: int, kernel: tuple[int, int, int], memory_steps: int) -> None:
        super().__init__()
        h = hidden_channels
        self.hidden_channels = h
        self.memory_steps = memory_steps
        self.conv_x = make_conv3d(in_channels, self.GATES_X * h, kernel, bias=True)
        self.conv_h = make_conv3d(h, 4 * h, kernel, bias=False)
        self.conv_m = make_conv3d(h, 3 * h, kernel, bias=False)
        self.conv_o = make_conv3d(2 * h, h, kernel, bias=False)
        self.norm = nn.GroupNorm(1, h)  # one group: LayerNorm over (C, D, h, w), affine per channel
        self.conv_last = nn.Conv3d(2 * h, h, 1, bias=False)

    def input_gates(self, x: Tensor) -> Tensor:
        """The X_t part of all seven gates (with their biases); batched over time by the fast path."""
        return causal_conv3d(x, self.conv_x)

    def forward(
        self, x: Tensor | None, state: LayerState, m: Tensor, gates_x: Tensor | None = None
    ) -> tuple[Tensor, LayerState, Tensor]:
        """Advance by one step: input X_t (or its precomputed ``gates_x``), state (H_{t-1}, memories) and the
        incoming M^{k-1}; returns H_t, the new state (H_t, the last tau memories ending with C_t) and M^k."""
        h_prev, memories = state
        if gates_x is None:
            if x is None:
                raise ValueError("E3DLSTMCell needs its input x or its precomputed gates_x")
            gates_x = self.input_gates(x)
        xr, xi, xg, xi_m, xg_m, xf_m, xo = gates_x.chunk(self.GATES_X, dim=1)
        hr, hi, hg, ho = causal_conv3d(h_prev, self.conv_h).chunk(4, dim=1)
        mi, mg, mf = causal_conv3d(m, self.conv_m).chunk(3, dim=1)
        # Only the last tau memories count, whatever the state holds; the newest is C_{t-1}.
        memories = memories[-self.memory_steps :]
        r = torch.sigmoid(xr + hr)
        i = torch.sigmoid(xi + hi)
        g = torch.tanh(xg + hg)
        c = i * g + self.norm(memories[-1] + recall(r, memories))
        m = torch.sigmoid(xi_m + mi) * torch.tanh(xg_m + mg) + torch.sigmoid(xf_m + mf) * m
        cm = torch.cat([c, m], dim=1)
        o = torch.sigmoid(xo + ho + causal_conv3d(cm, self.conv_o))
        h = o * torch.tanh(self.conv_last(cm))
        return h, (h, (*memories, c)[-self.memory_steps :]), m
