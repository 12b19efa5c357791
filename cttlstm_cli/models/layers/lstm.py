"""The ConvLSTM gate update shared by every LSTM-style cell."""

from __future__ import annotations

import torch
from torch import Tensor


def lstm_update(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the LSTM update to pre-activation gates ``[i; f; o; g]`` (channel dim 1); returns ``(h, c)``."""
    i, f, o, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c
