"""Recurrent cells: ConvLSTM, Conv-TT-LSTM and the classic-TTD ConvLSTM.

Every cell is a pure step function over explicit state tensors::

    state = cell.init_state(batch, height, width, device, dtype)
    hidden, state = cell(x, state)

Nothing is stored on the module between steps, so the same step can be driven by
the training loop, a compiled graph or a streaming predictor. Gate channels are
split in the order i, f, o, g (design §1).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.ctt import ConvTensorTrain, CTTForm, TTPadding

CellState = tuple[Tensor, ...]


def lstm_update(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the LSTM update to pre-activation gates ``[i; f; o; g]``; returns ``(h, c)``."""
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


class ConvLSTMCell(nn.Module):
    """ConvLSTM: one conv over ``[x ; h_{t-1}]`` gives all four gates. State ``(c, h)``."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2)

    def init_state(self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> CellState:
        zeros = torch.zeros(batch, self.hidden_channels, height, width, device=device, dtype=dtype)
        return (zeros, zeros)

    def forward(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, h = state
        h, c = lstm_update(self.gates(torch.cat([x, h], dim=1)), c)
        return h, (c, h)


class ConvTTLSTMCell(nn.Module):
    """Conv-TT-LSTM (paper Eq. 11). State ``(c, h_{t-M}, ..., h_{t-1})``, oldest first."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        order: int,
        steps: int,
        rank: int,
        kernel_size: int,
        tt_padding: TTPadding = "composed",
        form: CTTForm = "sequential",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.steps = steps
        self.tt = ConvTensorTrain(hidden_channels, order, steps, rank, kernel_size, tt_padding, form)
        # X first, then T: the layout of the authors' gate conv.
        self.gates = nn.Conv2d(in_channels + rank, 4 * hidden_channels, kernel_size, padding=kernel_size // 2)

    def init_state(self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> CellState:
        zeros = torch.zeros(batch, self.hidden_channels, height, width, device=device, dtype=dtype)
        return (zeros,) * (self.steps + 1)

    def forward(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, *history = state
        t = self.tt(history)
        h, c = lstm_update(self.gates(torch.cat([x, t], dim=1)), c)
        return h, (c, *history[1:], h)


def balanced_factors(n: int, parts: int) -> tuple[int, ...]:
    """Split ``n`` into ``parts`` integer factors as equal as possible (largest first)."""
    primes: list[int] = []
    rest, p = n, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    factors = [1] * parts
    for q in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= q
    return tuple(sorted(factors, reverse=True))


class TTConv2d(nn.Module):
    """A conv whose ``[C_out, C_in, k, k]`` kernel is stored as a classic tensor train.

    Following Garipov et al. (paper Eq. 13), ``order`` N factors: a spatial core
    ``[k*k, R]`` and N - 1 cores ``[T_j, S_j, R, R]`` (the last with rank 1 on its
    right) with ``prod T_j = C_out`` and ``prod S_j = C_in``, each split as evenly
    as its prime factors allow. The dense kernel is rebuilt on
    every call; it is tiny next to the activations.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int, order: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        if order < 2:
            raise ValueError(f"a tensor-train kernel needs order >= 2, got {order}")
        self.out_factors = balanced_factors(out_channels, order - 1)
        self.in_factors = balanced_factors(in_channels, order - 1)
        ranks = [rank] * (order - 1) + [1]
        self.spatial = nn.Parameter(torch.empty(kernel_size * kernel_size, rank))
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(t, s, ranks[j], ranks[j + 1]))
            for j, (t, s) in enumerate(zip(self.out_factors, self.in_factors))
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Scale the cores so the rebuilt kernel has roughly Kaiming-uniform variance.
        fan_in = self.in_channels * self.kernel_size**2
        target = 1.0 / (3.0 * fan_in)
        per_core = target ** (1.0 / (len(self.cores) + 1))
        nn.init.normal_(self.spatial, std=math.sqrt(per_core))
        for core in self.cores:
            nn.init.normal_(core, std=math.sqrt(per_core / core.shape[2]))

    def weight(self) -> Tensor:
        """The dense kernel ``[C_out, C_in, k, k]``."""
        w = self.spatial  # [kk, r]
        for core in self.cores:  # w: [kk, T.., S.., r] -> absorb one (T, S) pair
            w = torch.tensordot(w, core, dims=([w.dim() - 1], [2]))  # [..., T, S, r']
            w = w.movedim(-3, 1 + (w.dim() - 4) // 2)
        # w: [kk, T_1..T_d, S_1..S_d, 1]
        k = self.kernel_size
        w = w.reshape(k, k, self.out_channels, self.in_channels)
        return w.permute(2, 3, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.kernel_size // 2)


class TTDConvLSTMCell(nn.Module):
    """ConvLSTM whose input-to-state kernel is a classic tensor train (paper Eq. 12)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, rank: int, order: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.input_gates = TTConv2d(in_channels, 4 * hidden_channels, kernel_size, rank, order)
        self.state_gates = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=False)

    init_state = ConvLSTMCell.init_state

    def forward(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, h = state
        h, c = lstm_update(self.input_gates(x) + self.state_gates(h), c)
        return h, (c, h)

