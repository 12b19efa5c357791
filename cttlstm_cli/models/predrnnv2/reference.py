"""The literal per-step PredRNN-V2: PredRNN's reference (one convolution per equation term, one frame at a
time) with the decoupling term written out term by term; the oracle of the fast path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cttlstm_cli.models.predrnn.model import PredRNN
from cttlstm_cli.models.predrnn.reference import ReferencePredRNN
from cttlstm_cli.models.predrnnv2.model import MemoryDecoupling, PredRNNV2

#: the smallest norm divided by, as ``F.normalize``'s default (an all-zero increment has cosine 0)
EPS = 1e-12


class ReferencePredRNNV2(MemoryDecoupling, ReferencePredRNN):
    """A :class:`PredRNNV2` run step by step with the literal equations, over its own parameters."""

    network: PredRNNV2

    def stack(self) -> PredRNN:
        return self.network

    def similarity(self, delta_c: Tensor, delta_m: Tensor) -> Tensor:
        """``a = W_adapter * ΔC``, ``b = W_adapter * ΔM`` as ``[B, n, h·w]``; each divided by its L2 norm over
        the pixels; the cosine of each sample and channel ``Σ_pixels a·b``; the mean of its absolute value."""
        weight = self.network.adapter.weight
        batch, channels = delta_c.shape[:2]
        a = F.conv2d(delta_c, weight).reshape(batch, channels, -1)
        b = F.conv2d(delta_m, weight).reshape(batch, channels, -1)
        a = a / torch.linalg.vector_norm(a, dim=2, keepdim=True).clamp_min(EPS)
        b = b / torch.linalg.vector_norm(b, dim=2, keepdim=True).clamp_min(EPS)
        cosine = (a * b).sum(dim=2)  # [B, n]
        return cosine.abs().mean()


def reference_model(network: PredRNNV2) -> ReferencePredRNNV2:
    """The reference implementation over ``network``'s parameters (for benchmarks and tests)."""
    return ReferencePredRNNV2(network)
