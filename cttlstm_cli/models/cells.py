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

from cttlstm_cli.models.conv import conv2d
from cttlstm_cli.models.ctt import ConvTensorTrain, CTTForm, TTPadding

CellState = tuple[Tensor, ...]


def lstm_update(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the LSTM update to pre-activation gates ``[i; f; o; g]``; returns ``(h, c)``."""
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def fast_conv(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a padded stride-1 ``nn.Conv2d`` through :func:`conv2d` (other modules as they are)."""
    if isinstance(module, nn.Conv2d):
        return conv2d(x, module.weight, module.bias, module.padding[0])
    return module(x)


class RecurrentCell(nn.Module):
    """Shared protocol of the cells.

    Gate pre-activations are ``W * x + U(state)``. The fast path splits them:
    :meth:`input_gates` (``W * x`` plus the gate bias) can run on many time steps in
    one batched convolution when the inputs are known in advance, and
    :meth:`recurrent_step` adds the state part and applies the LSTM update.
    :meth:`reference_step` is the literal per-step algorithm of the paper (one conv
    over the channel concatenation), kept as the oracle for the fast path.
    """

    hidden_channels: int
    input_conv: nn.Module

    def input_gates(self, x: Tensor) -> Tensor:
        """``W * x`` plus the gate bias, for any number of stacked steps."""
        return fast_conv(self.input_conv, x)

    def forward(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        return self.recurrent_step(self.input_gates(x), state)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        raise NotImplementedError

    def reference_step(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        raise NotImplementedError

    def _init_as_one_conv(self) -> None:
        """Initialise the split gate convs exactly as PyTorch would the single conv over the
        channel concatenation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the joint fan-in."""
        parts = [self.input_conv.weight, self.state_conv.weight]
        fan_in = sum(w.shape[1] * w.shape[2] * w.shape[3] for w in parts)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for w in parts:
                w.uniform_(-bound, bound)
            self.input_conv.bias.uniform_(-bound, bound)

    def _zeros(self, batch: int, channels: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, channels, height, width, device=device, dtype=dtype)


class ConvLSTMCell(RecurrentCell):
    """ConvLSTM: one conv over ``[x ; h_{t-1}]`` gives all four gates. State ``(c, h)``."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        pad = kernel_size // 2
        # Together these are the gate conv over [x ; h] (input channels first).
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.state_conv = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False)
        self._init_as_one_conv()

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype, reference: bool = False
    ) -> CellState:
        zeros = self._zeros(batch, self.hidden_channels, height, width, device, dtype)
        return (zeros, zeros)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, h = state
        h, c = lstm_update(input_gates + fast_conv(self.state_conv, h), c)
        return h, (c, h)

    def reference_step(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, h = state
        weight = torch.cat([self.input_conv.weight, self.state_conv.weight], dim=1)
        gates = F.conv2d(torch.cat([x, h], dim=1), weight, self.input_conv.bias, padding=weight.shape[-1] // 2)
        h, c = lstm_update(gates, c)
        return h, (c, h)


class ConvTTLSTMCell(RecurrentCell):
    """Conv-TT-LSTM (paper Eq. 11).

    Reference state ``(c, h_{t-M}, ..., h_{t-1})``, oldest first. The fast path keeps,
    instead of each past h, its projection through all preprocessing kernels
    (:meth:`ConvTensorTrain.project`, N*K tensors each), and the newest h last:
    ``(c, *p_{t-M}, ..., *p_{t-1}, h_{t-1})``.
    In both, ``state[-1]`` is the newest hidden state, as for every cell.
    """

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
        pad = kernel_size // 2
        # Together: the gate conv over [x ; T] (x first, as in the authors' layout).
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.state_conv = nn.Conv2d(rank, 4 * hidden_channels, kernel_size, padding=pad, bias=False)
        self._init_as_one_conv()

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype, reference: bool = False
    ) -> CellState:
        c = self._zeros(batch, self.hidden_channels, height, width, device, dtype)
        if reference:
            return (c,) * (self.steps + 1)
        tt = self.tt
        piece = self._zeros(batch, tt.rank, height, width, device, dtype)
        return (c,) + (piece,) * (self.steps * tt.order * tt.window) + (c,)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, *flat, _ = state
        per_state = self.tt.order * self.tt.window
        projections = [flat[m * per_state : (m + 1) * per_state] for m in range(self.steps)]
        t = self.tt.from_projections(projections)
        h, c = lstm_update(input_gates + fast_conv(self.state_conv, t), c)
        return h, (c, *flat[per_state:], *self.tt.project(h), h)

    def reference_step(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, *history = state
        t = self.tt(history)
        weight = torch.cat([self.input_conv.weight, self.state_conv.weight], dim=1)
        gates = F.conv2d(torch.cat([x, t], dim=1), weight, self.input_conv.bias, padding=weight.shape[-1] // 2)
        h, c = lstm_update(gates, c)
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


class TTDConvLSTMCell(ConvLSTMCell):
    """ConvLSTM whose input-to-state kernel is a classic tensor train (paper Eq. 12)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, rank: int, order: int = 3) -> None:
        nn.Module.__init__(self)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.input_conv = TTConv2d(in_channels, 4 * hidden_channels, kernel_size, rank, order)
        self.state_conv = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def reference_step(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        # Eq. 12 is already a sum of two convolutions; there is no concatenated form.
        c, h = state
        h, c = lstm_update(self.input_conv(x) + self.state_conv(h), c)
        return h, (c, h)

