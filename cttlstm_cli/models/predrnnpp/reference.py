"""The literal per-step PredRNN++: the oracle for the fast path.

:class:`ReferencePredRNNPP` runs a :class:`~cttlstm_cli.models.predrnnpp.model.PredRNNPP`'s own
parameters (shared, not copied) the way the paper writes them, one frame at a time:

* the patches are cut with an explicit reshape and permutation (not ``pixel_unshuffle``);
* each of W1, W2 and W4 (paper Eq. 1) is one convolution over the channel concatenation the
  equation names (``[X, H, C]``, ``[X, C, M^{k-1}]``, ``[X, C, M]``), its kernel joined from the
  fast path's pieces;
* the gradient highway (Eq. 2) is four convolutions, W_px, W_pz, W_sx, W_sz;
* layer normalisation is written out (mean and variance over C, H, W per sample).

Eager ``F.conv2d`` only, no batching over time, so the tests compare the fast path against an
independent computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.interface import ReferenceModel
from cttlstm_cli.models.predrnnpp.cells import CausalLSTMCell, GradientHighwayUnit
from cttlstm_cli.models.predrnnpp.model import NetworkState, PredRNNPP


def reference_patches(frame: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W] -> [B, C*p*p, H/p, W/p]``: channel ``c*p*p + i*p + j`` holds pixel (i, j) of every patch."""
    b, c, h, w = frame.shape
    x = frame.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * patch * patch, h // patch, w // patch)


def reference_unpatch(x: Tensor, patch: int) -> Tensor:
    """The inverse of :func:`reference_patches`."""
    b, cpp, hp, wp = x.shape
    c = cpp // (patch * patch)
    return x.reshape(b, c, patch, patch, hp, wp).permute(0, 1, 4, 2, 5, 3).reshape(b, c, hp * patch, wp * patch)


def reference_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """Layer normalisation over (C, H, W) per sample with per-channel scale and shift, or nothing."""
    if not isinstance(norm, nn.GroupNorm):
        return x
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]


def reference_cell_step(
    cell: CausalLSTMCell, x: Tensor, h: Tensor, c: Tensor, m_below: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One causal LSTM step by paper Eq. 1, one convolution per equation."""
    n, pad = cell.hidden_channels, cell.kernel_size // 2
    wx, bx = cell.input_conv.weight, cell.input_conv.bias
    w1 = torch.cat([wx[: 3 * n], cell.temporal_conv.weight], dim=1)
    w2 = torch.cat([wx[3 * n : 6 * n], cell.spatial_conv.weight], dim=1)
    w4 = torch.cat([wx[6 * n :], cell.output_conv.weight], dim=1)

    pre = F.conv2d(torch.cat([x, h, c], dim=1), w1, bx[: 3 * n], padding=pad)
    g, i, f = reference_norm(pre, cell.norm_temporal).chunk(3, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)

    pre = F.conv2d(torch.cat([x, c_new, m_below], dim=1), w2, bx[3 * n : 6 * n], padding=pad)
    g2, i2, f2 = reference_norm(pre, cell.norm_spatial).chunk(3, dim=1)
    w3 = F.conv2d(m_below, cell.memory_conv.weight, cell.memory_conv.bias)
    m_new = torch.sigmoid(f2) * torch.tanh(w3) + torch.sigmoid(i2) * torch.tanh(g2)

    pre = F.conv2d(torch.cat([x, c_new, m_new], dim=1), w4, bx[6 * n :], padding=pad)
    o = torch.tanh(reference_norm(pre, cell.norm_output))
    h_new = o * torch.tanh(F.conv2d(torch.cat([c_new, m_new], dim=1), cell.hidden_conv.weight, cell.hidden_conv.bias))
    return h_new, c_new, m_new


def reference_highway_step(ghu: GradientHighwayUnit, x: Tensor, z: Tensor) -> Tensor:
    """One gradient highway step by paper Eq. 2, four convolutions."""
    width, pad = ghu.channels, ghu.kernel_size // 2
    wx, bx, wz = ghu.input_conv.weight, ghu.input_conv.bias, ghu.state_conv.weight
    p = F.conv2d(x, wx[:width], bx[:width], padding=pad) + F.conv2d(z, wz[:width], padding=pad)
    s = F.conv2d(x, wx[width:], bx[width:], padding=pad) + F.conv2d(z, wz[width:], padding=pad)
    if isinstance(ghu.norm, nn.GroupNorm):  # one normalisation over both pre-activations, as the fast form
        p, s = reference_norm(torch.cat([p, s], dim=1), ghu.norm).chunk(2, dim=1)
    s = torch.sigmoid(s)
    return s * torch.tanh(p) + (1 - s) * z


class ReferencePredRNNPP(ReferenceModel):
    """A :class:`PredRNNPP` run step by step with the literal equations; same forward contract.

    The wrapped network's parameters are this module's parameters (``network.*``), so an
    optimizer or a gradient check sees the very tensors the fast path uses.
    """

    network: PredRNNPP

    def __init__(self, network: PredRNNPP) -> None:
        super().__init__(network)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        return self.network.init_state(batch, height, width, device, dtype)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        net, patch = self.network, self.config.patch
        x = reference_patches(frame, patch)
        top, state = net.through_stack(x, state, reference_cell_step, reference_highway_step)
        return reference_unpatch(F.conv2d(top, net.head.weight, net.head.bias), patch), state


def reference_model(network: PredRNNPP) -> ReferencePredRNNPP:
    """The reference implementation over ``network``'s parameters (for benchmarks and tests)."""
    return ReferencePredRNNPP(network)
