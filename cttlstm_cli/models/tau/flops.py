"""TAU's part of the analytic multiply-accumulate count: its token mixer. The rest of the network is
SimVP's skeleton, counted by :mod:`cttlstm_cli.models.simvp.flops` under the same convention (torch's
FLOP counter's: convolutions only, nothing elementwise)."""

from __future__ import annotations

from cttlstm_cli.models.simvp.flops import large_kernel_macs
from cttlstm_cli.models.tau.config import TAUConfig


def squeezed_channels(cfg: TAUConfig, channels: int) -> int:
    """Width of the squeeze-and-excitation's bottleneck, as :class:`~cttlstm_cli.models.tau.model.TemporalAttention`
    builds it: ``channels // max(channels // reduction, 4)`` (16 for 512 or 640 channels at reduction 16)."""
    return channels // max(channels // cfg.reduction, 4)


def tau_mixer_macs(cfg: TAUConfig, channels: int, pixels: int) -> int:
    """TAU's token mixer: per pixel the 1x1 projection in, the large kernel, the static attention's 1x1
    map and the 1x1 projection out; the dynamic attention's two linear maps run once per sample, on the
    pooled channels (its pooling and the products of the unit are elementwise, not counted)."""
    per_pixel = pixels * 3 * channels * channels + large_kernel_macs(cfg, channels, pixels)
    return per_pixel + 2 * channels * squeezed_channels(cfg, channels)


__all__ = ["squeezed_channels", "tau_mixer_macs"]
