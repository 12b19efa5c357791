"""PredRNN-V2 (``arch: predrnnv2``; Wang et al., TPAMI 2022, arXiv 2103.09504).

PredRNN's network unchanged (:mod:`cttlstm_cli.models.predrnn`), trained differently:

* **memory decoupling.** One 1x1 convolution without bias, the adapter (n -> n), shared by every
  layer, maps each layer's memory increments ``ΔC = i ⊙ g`` and ``ΔM = i' ⊙ g'`` at each step; each
  result, per sample and channel, is L2-normalised over the pixels, and the loss adds
  ``β · mean over layers and steps of mean over samples and channels of |Σ_pixels a ⊙ b|``, the
  absolute cosine between the two, so that the two memories learn different things. The adapter
  changes no prediction: it exists for this term alone.
* **reverse scheduled sampling** (:meth:`PredRNNV2.teacher_forcing`): during training the context
  inputs after the first are also, at random, the model's own previous predictions; the probability
  of the ground truth rises from 0.5 to 1 (exponentially, between ``sampling_start`` and
  ``sampling_end``), while that of the future inputs falls linearly from 0.5 to 0. The encoder thus
  learns first from its own outputs, then from the ground truth it is given at test time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.interface import Sampling
from cttlstm_cli.models.layers import apply_conv
from cttlstm_cli.models.predrnn.model import PredRNN
from cttlstm_cli.models.predrnnv2.config import PredRNNV2Config
from cttlstm_cli.models.registry import register_model


class MemoryDecoupling:
    """The decoupling term of a training forward, for :class:`PredRNNV2` and its literal reference, which
    differ only in :meth:`similarity`.

    The training forward (``context_frames`` given, in training mode) keeps its term in ``decoupling``,
    and :meth:`loss` adds ``β`` times it and clears it. The term reaches the loss this way, beside the
    outputs rather than in them, so that the forward contract stays that of every family. It is safe
    because the trainer calls ``loss`` on the unwrapped model right after each forward
    (``training/step.py::model_loss``): through DDP (whose wrapper runs this very module's forward, and
    sees the adapter used in the graph the loss differentiates), and once per micro-batch, each chunk's
    forward followed by its own loss. A forward in evaluation mode (validation, evaluate, predict) leaves
    no term, so validation scores the prediction loss alone.
    """

    decoupling: Tensor | None = None
    config: PredRNNV2Config
    training: bool

    def stack(self) -> PredRNN:
        """The network whose layers report their increments (:attr:`PredRNN.increments`)."""
        raise NotImplementedError

    def similarity(self, delta_c: Tensor, delta_m: Tensor) -> Tensor:
        """The term of one layer at one step, from its increments ``[B, n, h, w]``."""
        raise NotImplementedError

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor | Sampling = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """PredRNN's forward; the training form also leaves the decoupling term in :attr:`decoupling`."""
        terms: list[Tensor] = []
        network = self.stack()
        if self.training and context_frames is not None:
            network.increments = lambda _layer, delta_c, delta_m: terms.append(self.similarity(delta_c, delta_m))
        try:
            out = super().forward(  # type: ignore[misc]
                frames, future_frames, context_frames, teacher_forcing, generator, classify
            )
        finally:
            network.increments = None
        self.decoupling = torch.stack(terms).mean() if terms else None
        return out

    def loss(self, outputs: Tensor, targets: Tensor, kind: str = "l1+l2") -> Tensor:
        """The recipe's prediction loss plus ``decoupling_weight`` times the last training forward's term."""
        loss = super().loss(outputs, targets, kind)  # type: ignore[misc]
        term, self.decoupling = self.decoupling, None  # one forward's term serves one loss
        return loss if term is None else loss + self.config.decoupling_weight * term


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 or wider: under bf16 autocast, sums over thousands of pixels need the precision."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@register_model("predrnnv2")
class PredRNNV2(MemoryDecoupling, PredRNN):
    """PredRNN with the shared adapter of the decoupling loss and reverse scheduled sampling; see the
    module docstring."""

    config_class = PredRNNV2Config
    config: PredRNNV2Config

    def __init__(self, cfg: PredRNNV2Config, image_channels: int = 1) -> None:
        super().__init__(cfg, image_channels)
        n = cfg.hidden[0]  # every layer has this width (the config refuses others)
        self.adapter = nn.Conv2d(n, n, 1, bias=False)

    def stack(self) -> PredRNN:
        return self

    def similarity(self, delta_c: Tensor, delta_m: Tensor) -> Tensor:
        """Mean over samples and channels of ``|cos|`` between the adapted ``ΔC`` and ``ΔM`` over the pixels
        (one adapter convolution for both)."""
        adapted = _at_least_float32(apply_conv(self.adapter, torch.cat([delta_c, delta_m])).flatten(2))
        a, b = F.normalize(adapted, dim=2).chunk(2)
        return (a * b).sum(dim=2).abs().mean()

    def teacher_forcing(self, step: int, ratio: float) -> Sampling:
        """Reverse scheduled sampling at optimizer step ``step`` (the recipe's ``ratio`` is not used).

        With p = ``sampling_probability``, s = ``sampling_start``, e = ``sampling_end``, α = ``sampling_alpha``:
        the context inputs after the first are the ground truth with probability p before s,
        ``1 − (1 − p)·exp(−(step − s)/α)`` from s, and 1 from e; the future inputs with probability p
        before s, falling linearly to 0 at e, and 0 after.
        """
        cfg = self.config
        p, start, end = cfg.sampling_probability, cfg.sampling_start, cfg.sampling_end
        if step < start:
            return Sampling(future=p, context=p)
        if step >= end:
            return Sampling(future=0.0, context=1.0)
        future = p * (end - step) / (end - start)
        context = 1.0 - (1.0 - p) * math.exp(-(step - start) / cfg.sampling_alpha)
        return Sampling(future=future, context=context)
