"""The literal per-step PredRNN: the oracle for the fast path.

Each gate is written as the paper's sum of separate convolutions (``W_xg * X + W_hg * H``, ...), each
kernel sliced out of the fast path's joint ones; patches by an explicit reshape and permutation.
Eager ``F.conv2d`` only, one frame at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cttlstm_cli.models.interface import ReferenceModel
from cttlstm_cli.models.predrnn.cells import SpatioTemporalLSTMCell
from cttlstm_cli.models.predrnn.model import NetworkState, PredRNN
from cttlstm_cli.models.predrnnpp.reference import reference_patches, reference_unpatch


def reference_cell_step(cell: SpatioTemporalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, ...]:
    """One ST-LSTM step by paper Eq. 3, one convolution per term."""
    n, pad, bias = cell.hidden_channels, cell.kernel_size // 2, cell.forget_bias

    def conv(weight: Tensor, gate: int, inp: Tensor) -> Tensor:
        return F.conv2d(inp, weight[gate * n : (gate + 1) * n], padding=pad)

    wx, wh, wm = cell.input_conv.weight, cell.hidden_conv.weight, cell.memory_conv.weight
    g = torch.tanh(conv(wx, 0, x) + conv(wh, 0, h))
    i = torch.sigmoid(conv(wx, 1, x) + conv(wh, 1, h))
    f = torch.sigmoid(conv(wx, 2, x) + conv(wh, 2, h) + bias)
    c_new = f * c + i * g
    g2 = torch.tanh(conv(wx, 3, x) + conv(wm, 0, m))
    i2 = torch.sigmoid(conv(wx, 4, x) + conv(wm, 1, m))
    f2 = torch.sigmoid(conv(wx, 5, x) + conv(wm, 2, m) + bias)
    m_new = f2 * m + i2 * g2
    wo = cell.output_conv.weight
    o = torch.sigmoid(
        conv(wx, 6, x) + conv(wh, 3, h) + F.conv2d(c_new, wo[:, :n], padding=pad) + F.conv2d(m_new, wo[:, n:], padding=pad)
    )
    h_new = o * torch.tanh(F.conv2d(torch.cat([c_new, m_new], dim=1), cell.fuse_conv.weight))
    return h_new, c_new, m_new, i * g, i2 * g2


class ReferencePredRNN(ReferenceModel):
    """A :class:`PredRNN` run step by step with the literal equations, over its own parameters."""

    network: PredRNN

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        return self.network.init_state(batch, height, width, device, dtype)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        net, patch = self.network, self.config.patch
        top, state = net.through_stack(reference_patches(frame, patch), state, reference_cell_step)
        return reference_unpatch(F.conv2d(top, net.head.weight), patch), state


def reference_model(network: PredRNN) -> ReferencePredRNN:
    """The reference implementation over ``network``'s parameters (for benchmarks and tests)."""
    return ReferencePredRNN(network)
