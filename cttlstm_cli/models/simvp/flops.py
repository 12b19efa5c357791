"""Analytic multiply-accumulate counts of the SimVP skeleton (SimVP-gSTA and TAU), checked against torch's
FLOP counter and counted as it counts: every convolution costs its output pixels × output channels ×
input channels per group × kernel area (dilation, padding and the bias cost nothing), and nothing
elementwise is counted (norms, activations, the gates' products, the layer scales, pooling, PixelShuffle).

A translator block's token mixer is the one part the families differ in: its count is a ``MixerMacs``
the model passes in (:meth:`~cttlstm_cli.models.simvp.model.SimVPBase.mixer_macs`); gSTA's is
:func:`gsta_mixer_macs` here, TAU's is in :mod:`cttlstm_cli.models.tau.flops`.
"""

from __future__ import annotations

from collections.abc import Callable

from cttlstm_cli.models.layers.simvp import large_kernel_sizes, sampling_pattern, translator_widths
from cttlstm_cli.models.simvp.config import SimVPConfig

#: ``mixer_macs(channels, pixels)``: multiply-accumulates of one token mixer of ``channels`` channels
#: on one sample's ``pixels`` feature pixels
MixerMacs = Callable[[int, int], int]


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output length along an axis of ``size`` of a convolution padded by ``kernel // 2`` (the encoder's)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def frame_macs(cfg: SimVPConfig, image_channels: int, height: int, width: int) -> tuple[int, int]:
    """Multiply-accumulates of encoding and decoding one frame of ``height`` x ``width``, and the number
    of pixels of its features (what the translator works on)."""
    k2, hidden = cfg.spatial_kernel**2, cfg.hidden_spatial
    pattern = sampling_pattern(cfg.spatial_blocks)
    macs, h, w = 0, height, width
    for i, down in enumerate(pattern):  # encoder: each block's convolution at its output size
        stride = 2 if down else 1
        h, w = conv_output_size(h, cfg.spatial_kernel, stride), conv_output_size(w, cfg.spatial_kernel, stride)
        macs += h * w * hidden * (image_channels if i == 0 else hidden) * k2
    features = h * w
    for up in reversed(pattern):  # decoder: at the input size; an up-sampling block's conv makes 4x the channels
        macs += h * w * (4 if up else 1) * hidden * hidden * k2
        h, w = (2 * h, 2 * w) if up else (h, w)
    return macs + h * w * hidden * image_channels, features  # the 1x1 readout


def mlp_macs(cfg: SimVPConfig, channels: int, pixels: int) -> int:
    """The MetaFormer MLP: 1x1 expansion to ``int(channels * ratio)``, depthwise 3x3, 1x1 projection."""
    inner = int(channels * cfg.mlp_ratio)
    return pixels * (channels * inner + 9 * inner + inner * channels)


def large_kernel_macs(cfg: SimVPConfig, channels: int, pixels: int) -> int:
    """The depthwise large-kernel attention both mixers share (5x5, then 7x7 dilated, for a kernel of 21)."""
    local, far = large_kernel_sizes(cfg.attention_kernel)
    return pixels * channels * (local**2 + far**2)


def gsta_mixer_macs(cfg: SimVPConfig, channels: int, pixels: int) -> int:
    """gSTA's token mixer: the 1x1 projection in, the large kernel, the 1x1 gate map to ``[f, g]`` (2d
    channels), the 1x1 projection out; ``σ(g) ⊙ f`` is elementwise."""
    one_by_one = channels * channels + 2 * channels * channels + channels * channels
    return pixels * one_by_one + large_kernel_macs(cfg, channels, pixels)


def translator_macs(cfg: SimVPConfig, pixels: int, mixer_macs: MixerMacs) -> int:
    """The translator on one sample: per block its mixer, its MLP and the 1x1 reduction after it (where
    the width changes)."""
    total = 0
    for channels, out in translator_widths(cfg.frames * cfg.hidden_spatial, cfg.hidden_temporal, cfg.temporal_blocks):
        total += mixer_macs(channels, pixels) + mlp_macs(cfg, channels, pixels)
        total += pixels * channels * out if channels != out else 0
    return total


def forward_macs(cfg: SimVPConfig, image_channels: int, height: int, width: int, mixer_macs: MixerMacs) -> int:
    """Multiply-accumulates of one forward of one sample: T frames encoded and decoded, one translation."""
    per_frame, pixels = frame_macs(cfg, image_channels, height, width)
    return cfg.frames * per_frame + translator_macs(cfg, pixels, mixer_macs)


def analytic_macs(cfg: SimVPConfig, image_channels: int, height: int, width: int, mixer_macs: MixerMacs) -> int:
    """Per predicted frame, as the interface counts a model with a fixed context of T frames: a T-th of
    :func:`forward_macs`, rounded down as :meth:`~cttlstm_cli.models.interface.VideoModel.counted_macs` does."""
    return forward_macs(cfg, image_channels, height, width, mixer_macs) // cfg.frames


__all__ = [
    "MixerMacs", "analytic_macs", "conv_output_size", "forward_macs", "frame_macs", "gsta_mixer_macs",
    "large_kernel_macs", "mlp_macs", "translator_macs",
]
