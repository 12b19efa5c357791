"""TAU (``arch: tau``): SimVP with temporal attention units, and the differential divergence loss.

A unit's attention is the product of a static attention over space (the large-kernel depthwise
convolutions then a 1x1 convolution) and a dynamic attention over channels (squeeze-and-excitation:
global average pool, two linear maps around a ReLU, a sigmoid); the unit returns attention ⊙ its input.
The objective adds ``alpha`` times the KL divergence between the softmax (temperature τ) of the
predicted and the true frame-to-frame differences of each sample.
"""

from __future__ import annotations

from torch import Tensor, nn

from cttlstm_cli.models.layers.simvp import LargeKernelConv, MetaFormerBlock
from cttlstm_cli.models.registry import register_model
from cttlstm_cli.models.simvp.model import SimVPBase
from cttlstm_cli.models.tau.config import TAUConfig


class TemporalAttention(nn.Module):
    """TAU's token mixer: 1x1 conv, GELU, the temporal attention unit, 1x1 conv, plus a shortcut."""

    def __init__(self, channels: int, kernel: int, reduction: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.spatial = LargeKernelConv(channels, kernel)
        self.static = nn.Conv2d(channels, channels, 1)
        # The squeeze keeps channels // max(channels // reduction, 4) units (16 for 512 or 640 channels).
        squeezed = channels // max(channels // reduction, 4)
        # The two linear maps as 1x1 convolutions of the pooled [B, C, 1, 1]: the same maps, on the conv kernels
        # whose results do not depend on where the batch sits in memory (bit-exact resume in a new process).
        self.excite = nn.Sequential(nn.Conv2d(channels, squeezed, 1, bias=False), nn.ReLU(),
                                    nn.Conv2d(squeezed, channels, 1, bias=False), nn.Sigmoid())
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def unit(self, x: Tensor) -> Tensor:
        """The temporal attention unit: (static ⊙ dynamic attention) ⊙ x."""
        static = self.static(self.spatial(x))
        dynamic = self.excite(x.mean(dim=(2, 3), keepdim=True))
        return dynamic * static * x

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(self.unit(self.act(self.proj_in(x)))) + x


def differential_divergence(predictions: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """KL(softmax(Δŷ / τ) ‖ softmax(Δy / τ)) of the frame-to-frame differences Δ, each sample's flattened
    over frames and pixels, averaged over the batch. Below 2 frames there is no difference: 0."""
    if predictions.shape[1] < 2:
        return predictions.new_zeros(())
    b = predictions.shape[0]
    pred = ((predictions[:, 1:] - predictions[:, :-1]).reshape(b, -1) / temperature).log_softmax(dim=1)
    true = ((targets[:, 1:] - targets[:, :-1]).reshape(b, -1) / temperature).log_softmax(dim=1)
    return (pred.exp() * (pred - true)).sum(dim=1).mean()


@register_model("tau")
class TAU(SimVPBase):
    """SimVP's skeleton with temporal attention units (``make_block``) and the TAU objective (``loss``)."""

    config_class = TAUConfig
    config: TAUConfig

    def make_block(self, channels: int, drop_path: float) -> nn.Module:
        mixer = TemporalAttention(channels, self.config.attention_kernel, self.config.reduction)
        return MetaFormerBlock(channels, mixer, self.config.mlp_ratio, drop_path)

    def mixer_macs(self, channels: int, pixels: int) -> int:
        """The analytic count of :meth:`make_block`'s mixer (:mod:`.flops`); SimVP's skeleton counts the rest."""
        from cttlstm_cli.models.tau.flops import tau_mixer_macs

        return tau_mixer_macs(self.config, channels, pixels)

    def loss(self, outputs: Tensor, targets: Tensor, kind: str = "l1+l2") -> Tensor:
        """The recipe's prediction loss plus ``alpha`` times the differential divergence."""
        base = super().loss(outputs, targets, kind)
        if self.config.alpha == 0.0:
            return base
        return base + self.config.alpha * differential_divergence(outputs.float(), targets.float(), self.config.temperature)


__all__ = ["TAU", "TemporalAttention", "differential_divergence"]
