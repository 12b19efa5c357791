"""The literal TAU: the oracle for the fast path and for the differential divergence.

The network is SimVP's literal reference (:mod:`cttlstm_cli.models.simvp.reference`) with TAU's token mixer
written from the paper: ``proj_out((static ⊙ dynamic) ⊙ y) + x`` with ``y = GELU(proj_in(x))``, the static
attention the 1x1 map of the large-kernel view of ``y``, and the dynamic attention a squeeze-and-excitation
spelled out (the mean over pixels, the two linear maps as matrix products of their weights around a ReLU,
a sigmoid). The loss adds α times :func:`reference_divergence`, the divergence computed from its definition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cttlstm_cli.models.losses import prediction_loss
from cttlstm_cli.models.simvp.reference import ReferenceSimVP, gelu, large_kernel, pointwise, sigmoid
from cttlstm_cli.models.tau.model import TAU, TemporalAttention


def temporal_attention(x: Tensor, mixer: TemporalAttention) -> Tensor:
    """TAU's mixer: the temporal attention unit on GELU(proj_in(x)), then proj_out, plus the shortcut."""
    y = gelu(pointwise(x, mixer.proj_in))
    static = pointwise(large_kernel(y, mixer.spatial), mixer.static)
    squeeze, excite = mixer.excite[0].weight[:, :, 0, 0], mixer.excite[2].weight[:, :, 0, 0]  # [c/r, c], [c, c/r]
    pooled = y.sum(dim=(2, 3)) / (y.shape[2] * y.shape[3])  # [B, c]: each channel's mean over the pixels
    dynamic = sigmoid(torch.clamp(pooled @ squeeze.T, min=0.0) @ excite.T)[:, :, None, None]
    return pointwise((static * dynamic) * y, mixer.proj_out) + x


def reference_divergence(predictions: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """KL(p_pred ‖ p_true) = Σ p_pred (log p_pred − log p_true), averaged over the batch, where p is the
    softmax at ``temperature`` of a clip's frame-to-frame differences Δ_t = y_{t+1} − y_t, flattened per
    sample. With fewer than 2 frames there is no difference: 0."""
    b, frames = predictions.shape[:2]
    if frames < 2:
        return predictions.new_zeros(())

    def log_softmax(clip: Tensor) -> Tensor:
        z = torch.stack([clip[:, t + 1] - clip[:, t] for t in range(frames - 1)], dim=1).reshape(b, -1) / temperature
        shifted = z - z.max(dim=1, keepdim=True).values  # the softmax is unchanged; exp cannot overflow
        return shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))

    log_pred, log_true = log_softmax(predictions), log_softmax(targets)
    return (torch.exp(log_pred) * (log_pred - log_true)).sum(dim=1).sum() / b


class ReferenceTAU(ReferenceSimVP):
    """A :class:`TAU` run by the literal equations, over its own parameters."""

    network: TAU

    def mixer(self, x: Tensor, mixer: nn.Module) -> Tensor:
        return temporal_attention(x, mixer)

    def loss(self, outputs: Tensor, targets: Tensor, kind: str = "l1+l2") -> Tensor:
        """The prediction loss plus α times the divergence, both on float32 as the fast path computes them."""
        cfg = self.network.config
        outputs, targets = outputs.float(), targets.float()
        divergence = reference_divergence(outputs, targets, cfg.temperature)
        return prediction_loss(outputs, targets, kind) + cfg.alpha * divergence


def reference_model(network: TAU) -> ReferenceTAU:
    """The reference implementation over ``network``'s parameters (for tests and benchmarks)."""
    return ReferenceTAU(network)


__all__ = ["ReferenceTAU", "reference_divergence", "reference_model", "temporal_attention"]
