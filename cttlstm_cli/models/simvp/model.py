"""SimVP (``arch: simvp``): encode every frame, translate the stacked frames at once, decode every frame.

Not recurrent: one forward reads the T context frames and writes T future frames. Longer horizons feed
the prediction back in blocks of T (10 -> 30: three forwards); shorter ones keep the first F frames.
The translator is SimVP v2's gSTA: MetaFormer blocks whose token mixer is a gated large-kernel
attention, ``σ(g) ⊙ f`` with ``[f, g]`` a 1x1 convolution of a 21x21 depthwise receptive field.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.interface import VideoModel
from cttlstm_cli.models.layers.simvp import FrameDecoder, FrameEncoder, LargeKernelConv, MetaFormerBlock, Translator
from cttlstm_cli.models.registry import register_model
from cttlstm_cli.models.simvp.config import SimVPConfig
from cttlstm_cli.models.simvp.flops import analytic_macs, gsta_mixer_macs


class GatedAttention(nn.Module):
    """gSTA's token mixer: 1x1 conv, GELU, the gated large-kernel attention, 1x1 conv, plus a shortcut."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.act = nn.GELU()
        self.spatial = LargeKernelConv(channels, kernel)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.proj_in(x))
        f, g = self.gate(self.spatial(y)).chunk(2, dim=1)
        return self.proj_out(torch.sigmoid(g) * f) + x


class SimVPBase(VideoModel):
    """The SimVP skeleton: encoder, a translator the subclass builds (:meth:`make_block`), decoder.
    Shared by SimVP (gSTA) and TAU, which differ in the translator's token mixer and in the loss."""

    config: SimVPConfig

    def __init__(self, config: SimVPConfig, image_channels: int = 1) -> None:
        super().__init__(config, image_channels)
        c = config
        self.encoder = FrameEncoder(image_channels, c.hidden_spatial, c.spatial_blocks, c.spatial_kernel)
        self.translator = Translator(c.frames * c.hidden_spatial, c.hidden_temporal, c.temporal_blocks, self.make_block, c.drop_path)
        self.decoder = FrameDecoder(c.hidden_spatial, image_channels, c.spatial_blocks, c.spatial_kernel)

    def make_block(self, channels: int, drop_path: float) -> nn.Module:
        """One translator block of ``channels`` channels."""
        return MetaFormerBlock(channels, GatedAttention(channels, self.config.attention_kernel), self.config.mlp_ratio, drop_path)

    def mixer_macs(self, channels: int, pixels: int) -> int:
        """Multiply-accumulates of one :meth:`make_block`'s token mixer of ``channels`` channels on one
        sample's ``pixels`` feature pixels: the one part of the analytic count a subclass's translator changes."""
        return gsta_mixer_macs(self.config, channels, pixels)

    def analytic_macs(self, height: int, width: int) -> int:
        """Per predicted frame (a T-th of one forward of T frames); :mod:`.flops` holds the count."""
        return analytic_macs(self.config, self.image_channels, height, width, self.mixer_macs)

    @property
    def downsampling(self) -> int:
        return 2 ** (self.config.spatial_blocks // 2)

    downsampling_key = "model.spatial_blocks"

    @property
    def fixed_context(self) -> int:
        return self.config.frames

    def check_data(self, height: int, width: int, context_frames: int) -> None:
        super().check_data(height, width, context_frames)
        if context_frames != self.config.frames:
            raise CttlstmError(
                f"{self.name} reads model.frames = {self.config.frames} frames at once, but data.input_frames is "
                f"{context_frames}; make them equal"
            )

    def block(self, frames: Tensor) -> Tensor:
        """One forward: T frames ``[B, T, C, H, W]`` in, the T frames after them out."""
        b, t, c, h, w = frames.shape
        features, skip = self.encoder(frames.reshape(b * t, c, h, w))
        _, ch, fh, fw = features.shape
        mixed = self.translator(features.reshape(b, t * ch, fh, fw)).reshape(b * t, ch, fh, fw)
        return self.decoder(mixed, skip).reshape(b, t, c, h, w)

    def training_targets(self, clips: Tensor, context_frames: int) -> Tensor:
        return clips[:, context_frames:]

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> Tensor:
        """Predict ``future_frames`` frames from the last T context frames, in blocks of T.

        The training form (``context_frames`` given) returns the same predictions (the outputs are the
        F future frames, :meth:`training_targets`); scheduled sampling does not apply: no prediction is
        an input of a later one within a block, and later blocks read the model's own output, as at test time."""
        if classify:
            raise ValueError(f"{self.name} has no activity classifier")
        t = self.config.frames
        context = frames[:, :context_frames] if context_frames is not None else frames
        if context.shape[1] < t:
            raise ValueError(f"{self.name} needs {t} context frames, got {context.shape[1]}")
        x = context[:, -t:]
        outputs = []
        for _ in range(math.ceil(future_frames / t)):
            x = self.block(x)
            outputs.append(x)
        return torch.cat(outputs, dim=1)[:, :future_frames]


@register_model("simvp")
class SimVP(SimVPBase):
    """SimVP with the gSTA translator; trained on the recipe's prediction loss (MSE in its paper)."""

    config_class = SimVPConfig


__all__ = ["GatedAttention", "SimVP", "SimVPBase"]
