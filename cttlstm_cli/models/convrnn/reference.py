"""The literal per-step algorithms of the conv-RNN cells: the oracle for the fast path.

:class:`ReferenceConvRNN` runs a :class:`~cttlstm_cli.models.convrnn.model.ConvRNN`'s own
parameters (shared, not copied) the way the paper writes the cells, one frame at a time:

* ConvLSTM: one conv over the channel concatenation ``[x ; h_{t-1}]`` gives the four gates;
* Conv-TT-LSTM (Eq. 11): keeps the M past hidden states themselves, ``(c, h_{t-M}, ..., h_{t-1})``,
  re-runs the CTT module over them every step, then one gate conv over ``[x ; T]``;
* classic-TTD ConvLSTM (Eq. 12): already a sum of two convolutions.

Eager PyTorch convolutions only (no NNPACK, no layer-major prefix), so the tests and
``benchmarks/bench_step.py`` compare the fast path against an independent computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cttlstm_cli.models.convrnn.cells import CellState, ConvLSTMCell, ConvTTLSTMCell, RecurrentCell, TTDConvLSTMCell
from cttlstm_cli.models.convrnn.model import ConvRNN, NetworkState
from cttlstm_cli.models.interface import ReferenceModel
from cttlstm_cli.models.layers import lstm_update


def _gates_over_concat(cell: RecurrentCell, x: Tensor, state_input: Tensor) -> Tensor:
    """The paper's single gate conv over ``[x ; state_input]`` (our two convs, joined)."""
    weight = torch.cat([cell.input_conv.weight, cell.state_conv.weight], dim=1)
    return F.conv2d(torch.cat([x, state_input], dim=1), weight, cell.input_conv.bias, padding=weight.shape[-1] // 2)


def reference_step(cell: RecurrentCell, x: Tensor, state: CellState) -> tuple[Tensor, CellState]:
    """One step of ``cell`` by the paper's equations, on the reference state layout."""
    if isinstance(cell, TTDConvLSTMCell):
        c, h = state
        h, c = lstm_update(cell.input_conv(x) + cell.state_conv(h), c)
        return h, (c, h)
    if isinstance(cell, ConvTTLSTMCell):
        c, *history = state
        h, c = lstm_update(_gates_over_concat(cell, x, cell.tt(history)), c)
        return h, (c, *history[1:], h)
    if isinstance(cell, ConvLSTMCell):
        c, h = state
        h, c = lstm_update(_gates_over_concat(cell, x, h), c)
        return h, (c, h)
    raise TypeError(f"no reference algorithm for {type(cell).__name__}")


def reference_init_state(cell: RecurrentCell, zeros: Tensor) -> CellState:
    """The reference state of ``cell``: ``(c, h)``, or ``(c, h_{t-M}, ..., h_{t-1})`` for Conv-TT-LSTM."""
    if isinstance(cell, ConvTTLSTMCell):
        return (zeros,) * (cell.history + 1)
    return (zeros, zeros)


class ReferenceConvRNN(ReferenceModel):
    """A :class:`ConvRNN` run step by step with the literal algorithms; same forward contract.

    The wrapped network's parameters are this module's parameters (``network.*``), so an
    optimizer or a gradient check sees the very tensors the fast path uses.
    """

    network: ConvRNN

    def __init__(self, network: ConvRNN) -> None:
        super().__init__(network)

    def init_state(
        self, batch: int, height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> NetworkState:
        ref = self.network.head.weight
        down = self.downsampling
        states = []
        for cell in self.network.cells.values():
            zeros = torch.zeros(batch, cell.hidden_channels, height // down, width // down, device=device or ref.device, dtype=dtype or ref.dtype)
            states.append(reference_init_state(cell, zeros))
        return tuple(states)

    def step(self, frame: Tensor, state: NetworkState) -> tuple[Tensor, NetworkState]:
        return self.network.through_stack(frame, state, reference_step)

    def classify(self, state: NetworkState) -> Tensor:
        return self.network.classify(state)


def reference_model(network: ConvRNN) -> ReferenceConvRNN:
    """The reference implementation over ``network``'s parameters (for benchmarks and tests)."""
    return ReferenceConvRNN(network)
