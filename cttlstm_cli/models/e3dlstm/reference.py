"""The literal per-step algorithm of E3D-LSTM: the oracle for the fast path.

:class:`ReferenceE3DLSTM` runs an :class:`~cttlstm_cli.models.e3dlstm.model.E3DLSTM`'s own parameters
(shared, not copied) the way the paper writes them, one frame at a time and one equation at a time:

* the window is a list of the last ``window`` frames (zero frames before the first), each cut into
  patches by an explicit reshape;
* every gate is its own convolution per source, ``W_xr * X_t + W_hr * H_{t-1} + b_r`` and so on (the
  slices of the fused convolutions), each over an explicitly zero-padded input;
* RECALL is ``softmax(R_t . C^T) . C`` per sample, with the memories as a matrix of positions;
* the LayerNorm is written out (mean and biased variance over channels, depth, height and width);
* the state keeps every past cell state; the recall reads the last tau of them.

Nothing is batched over time, so the tests compare the fast path's ``prefix`` against an
independent computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cttlstm_cli.models.e3dlstm.cells import E3DLSTMCell
from cttlstm_cli.models.e3dlstm.model import E3DLSTM
from cttlstm_cli.models.interface import ReferenceModel

#: (frames of the window, oldest first; M; per layer (H, [every C so far, C_{-1} first]))
ReferenceState = tuple[list[Tensor], Tensor, list[tuple[Tensor, list[Tensor]]]]


def patches(frame: Tensor, p: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C*p*p, H/p, W/p]``, channel index ``c*p*p + i*p + j`` for pixel (i, j) of a patch."""
    b, c, h, w = frame.shape
    return frame.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def unpatches(features: Tensor, p: int, channels: int) -> Tensor:
    """The inverse of :func:`patches`."""
    b, _, h, w = features.shape
    return features.reshape(b, channels, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, channels, h * p, w * p)


def conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``weight * x``: causal in time inside the window, 'same' in space, by explicit zero padding."""
    kt, kh, kw = weight.shape[2:]
    return F.conv3d(F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)), weight, bias)


def layer_norm(x: Tensor, gain: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over everything but the batch, with a gain and a bias per channel."""
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2, 3, 4), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gain.view(1, -1, 1, 1, 1) + bias.view(1, -1, 1, 1, 1)


def recall(r: Tensor, memories: list[Tensor]) -> Tensor:
    """softmax(R_t . C_{t-tau:t-1}^T) . C_{t-tau:t-1}, sample by sample."""
    out = []
    for b in range(r.shape[0]):
        query = r[b].reshape(r.shape[1], -1).T  # positions x channels
        memory = torch.cat([c[b].reshape(c.shape[1], -1).T for c in memories])  # tau*positions x channels
        out.append((torch.softmax(query @ memory.T, dim=1) @ memory).T.reshape(r.shape[1:]))
    return torch.stack(out)


def reference_cell(
    cell: E3DLSTMCell, x: Tensor, h: Tensor, history: list[Tensor], m: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Paper Eq. 3-4 for one layer: returns (H_t, C_t, M_t^k)."""
    ch = cell.hidden_channels

    def w(conv: torch.nn.Conv3d, gate: int) -> Tensor:
        return conv.weight[gate * ch : (gate + 1) * ch]

    def b(gate: int) -> Tensor:
        return cell.conv_x.bias[gate * ch : (gate + 1) * ch]  # type: ignore[index]

    wx, wh, wm = cell.conv_x, cell.conv_h, cell.conv_m
    r = torch.sigmoid(conv(x, w(wx, 0), b(0)) + conv(h, w(wh, 0)))
    i = torch.sigmoid(conv(x, w(wx, 1), b(1)) + conv(h, w(wh, 1)))
    g = torch.tanh(conv(x, w(wx, 2), b(2)) + conv(h, w(wh, 2)))
    memories = history[-cell.memory_steps :]
    c = i * g + layer_norm(history[-1] + recall(r, memories), cell.norm.weight, cell.norm.bias, cell.norm.eps)
    i_m = torch.sigmoid(conv(x, w(wx, 3), b(3)) + conv(m, w(wm, 0)))
    g_m = torch.tanh(conv(x, w(wx, 4), b(4)) + conv(m, w(wm, 1)))
    f_m = torch.sigmoid(conv(x, w(wx, 5), b(5)) + conv(m, w(wm, 2)))
    m = i_m * g_m + f_m * m
    w_co, w_mo = cell.conv_o.weight[:, :ch], cell.conv_o.weight[:, ch:]
    o = torch.sigmoid(conv(x, w(wx, 6), b(6)) + conv(h, w(wh, 3)) + conv(c, w_co) + conv(m, w_mo))
    h = o * torch.tanh(F.conv3d(torch.cat([c, m], dim=1), cell.conv_last.weight))
    return h, c, m


class ReferenceE3DLSTM(ReferenceModel):
    """An :class:`E3DLSTM` run step by step with the literal algorithm; same forward contract.

    The wrapped network's parameters are this module's parameters (``network.*``).
    """

    network: E3DLSTM

    def __init__(self, network: E3DLSTM) -> None:
        super().__init__(network)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ReferenceState:
        cfg = self.config
        ref = self.network.encoder.weight
        kw = {"device": device or ref.device, "dtype": dtype or ref.dtype}
        frames = [torch.zeros(batch, self.image_channels, height, width, **kw) for _ in range(cfg.window)]
        zeros = torch.zeros(batch, cfg.hidden[0], cfg.window, height // cfg.patch, width // cfg.patch, **kw)
        return frames, zeros, [(zeros, [zeros]) for _ in cfg.hidden]

    def step(self, frame: Tensor, state: ReferenceState) -> tuple[Tensor, ReferenceState]:
        net, cfg = self.network, self.config
        frames, m, layers = state
        frames = [*frames[1:], frame]
        window = torch.stack([patches(f, cfg.patch) for f in frames], dim=2)
        x = conv(window, net.encoder.weight, net.encoder.bias)
        new_layers = []
        for cell, (h, history) in zip(net.cells, layers):
            x, c, m = reference_cell(cell, x, h, history, m)
            new_layers.append((x, [*history, c]))
        out = F.conv3d(x, net.decoder.weight, net.decoder.bias, stride=net.decoder.stride)[:, :, 0]
        return unpatches(out, cfg.patch, self.image_channels), (frames, m, new_layers)

    def classify(self, state: ReferenceState) -> Tensor:
        return self.network.classifier(state[2][-1][0].mean(dim=2))  # type: ignore[misc]


def reference_model(network: E3DLSTM) -> ReferenceE3DLSTM:
    """The reference implementation over ``network``'s parameters (for benchmarks and tests)."""
    return ReferenceE3DLSTM(network)
