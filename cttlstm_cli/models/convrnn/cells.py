"""Recurrent cells of the conv-RNN family: ConvLSTM, Conv-TT-LSTM and the classic-TTD ConvLSTM.

Every cell is a pure step function over explicit state tensors::

    state = cell.init_state(batch, height, width, device, dtype)
    hidden, state = cell(x, state)

Nothing is stored on the module between steps, so the same step can be driven by
the training loop, a compiled graph or a streaming predictor. Gate channels are
split in the order i, f, o, g (design §1). These are the fast forms; the literal
per-step algorithms of the paper are in :mod:`cttlstm_cli.models.convrnn.reference`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cttlstm_cli.models.layers import ConvTensorTrain, TTConv2d, apply_conv, lstm_update
from cttlstm_cli.models.layers.ctt import CTTForm, TTPadding

CellState = tuple[Tensor, ...]


class RecurrentCell(nn.Module):
    """Shared protocol of the cells.

    Gate pre-activations are ``W * x + U(state)``, split in two:
    :meth:`input_gates` (``W * x`` plus the gate bias) can run on many time steps in
    one batched convolution when the inputs are known in advance, and
    :meth:`recurrent_step` adds the state part and applies the LSTM update.
    ``input_conv`` and ``state_conv`` together are the paper's single gate conv over the
    channel concatenation ``[x ; state]``.
    """

    hidden_channels: int
    input_conv: nn.Module

    def input_gates(self, x: Tensor) -> Tensor:
        """``W * x`` plus the gate bias, for any number of stacked steps."""
        return apply_conv(self.input_conv, x)

    def forward(self, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        return self.recurrent_step(self.input_gates(x), state)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
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
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> CellState:
        zeros = self._zeros(batch, self.hidden_channels, height, width, device, dtype)
        return (zeros, zeros)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, h = state
        h, c = lstm_update(input_gates + apply_conv(self.state_conv, h), c)
        return h, (c, h)


class ConvTTLSTMCell(RecurrentCell):
    """Conv-TT-LSTM (paper Eq. 11).

    The state keeps, instead of each of the M past hidden states, its projection through
    all preprocessing kernels (:meth:`ConvTensorTrain.project`, N*K tensors each), and the
    newest h last: ``(c, *p_{t-M}, ..., *p_{t-1}, h_{t-1})``. So ``state[-1]`` is the newest
    hidden state, as for every cell.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        order: int,
        history: int,
        rank: int,
        kernel_size: int,
        tt_padding: TTPadding = "composed",
        form: CTTForm = "sequential",
        ctt_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.history = history
        # The CTT module's own kernel may differ from the gates' (the paper's Table 4 ablation uses 1x1).
        self.tt = ConvTensorTrain(hidden_channels, order, history, rank, ctt_kernel_size or kernel_size, tt_padding, form)
        pad = kernel_size // 2
        # Together: the gate conv over [x ; T] (x first, as in the authors' layout).
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.state_conv = nn.Conv2d(rank, 4 * hidden_channels, kernel_size, padding=pad, bias=False)
        self._init_as_one_conv()

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> CellState:
        c = self._zeros(batch, self.hidden_channels, height, width, device, dtype)
        tt = self.tt
        piece = self._zeros(batch, tt.rank, height, width, device, dtype)
        return (c,) + (piece,) * (self.history * tt.order * tt.window) + (c,)

    def recurrent_step(self, input_gates: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        c, *flat, _ = state
        per_state = self.tt.order * self.tt.window
        projections = [flat[m * per_state : (m + 1) * per_state] for m in range(self.history)]
        t = self.tt.from_projections(projections)
        h, c = lstm_update(input_gates + apply_conv(self.state_conv, t), c)
        return h, (c, *flat[per_state:], *self.tt.project(h), h)


class TTDConvLSTMCell(ConvLSTMCell):
    """ConvLSTM whose input-to-state kernel is a classic tensor train (paper Eq. 12)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int, rank: int, order: int = 3) -> None:
        nn.Module.__init__(self)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.input_conv = TTConv2d(in_channels, 4 * hidden_channels, kernel_size, rank, order)
        self.state_conv = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2, bias=False)
