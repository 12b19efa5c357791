"""The 3D-CNN baseline of the paper's early activity recognition (Tables 1 and 3), ``arch: cnn3d``.

The paper compares Conv-TT-LSTM with a 3D-CNN but gives no architecture for it; this is the
toolkit's definition (docs/models/cnn3d.md). The observed frames ``[B, T, C, H, W]`` are
convolved as one volume ``[B, C, T, H, W]``:

1. an encoder of 4x4 stride-(1, 2, 2) 3D convs with LeakyReLU(0.2), as the Conv-TT-LSTM activity
   model's 2D encoder, over ``temporal_kernel`` frames;
2. ``sum(blocks)`` 3D convs with ReLU, kernel ``temporal_kernel x kernel x kernel``, 'same' padding,
   where that model has its recurrent layers;
3. the mean over time, then the same classifier head as that model
   (:func:`~cttlstm_cli.models.layers.heads.activity_classifier`).

It classifies and predicts no frames (``predicts_frames`` is False): training minimises the
cross-entropy alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.cnn3d.config import CNN3DConfig
from cttlstm_cli.models.interface import VideoModel
from cttlstm_cli.models.layers.heads import activity_classifier
from cttlstm_cli.models.registry import register_model


@register_model("cnn3d")
class CNN3D(VideoModel):
    """3D-conv encoder and layers over the observed clip, temporal mean, activity classifier."""

    config_class = CNN3DConfig
    config: CNN3DConfig

    def __init__(self, config: CNN3DConfig, image_channels: int = 1) -> None:
        super().__init__(config, image_channels)
        t = config.temporal_kernel
        encoder: list[nn.Module] = []
        width = image_channels
        for out in config.encoder_channels:
            encoder += [nn.Conv3d(width, out, (t, 4, 4), stride=(1, 2, 2), padding=(t // 2, 1, 1)), nn.LeakyReLU(0.2)]
            width = out
        self.encoder = nn.Sequential(*encoder)
        layers: list[nn.Module] = []
        k = config.kernel
        for count, out in zip(config.blocks, config.channels):
            for _ in range(count):
                layers += [nn.Conv3d(width, out, (t, k, k), padding=(t // 2, k // 2, k // 2)), nn.ReLU()]
                width = out
        self.layers = nn.Sequential(*layers)
        self.classifier = activity_classifier(width, config.classes)

    downsampling_key = "model.encoder_channels"

    @property
    def downsampling(self) -> int:
        return 2 ** len(self.config.encoder_channels)

    @property
    def predicts_frames(self) -> bool:
        return False

    def forward(
        self,
        frames: Tensor,
        future_frames: int = 10,
        context_frames: int | None = None,
        teacher_forcing: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        classify: bool = False,
    ) -> tuple[None, Tensor]:
        """``(None, logits)`` for the observed frames (the first ``context_frames``, or all of them)."""
        if not classify:
            raise CttlstmError("3D-CNN classifies activities and predicts no frames (call it with classify=True)")
        observed = frames if context_frames is None else frames[:, :context_frames]
        features = self.layers(self.encoder(observed.transpose(1, 2)))  # [B, C', T, H', W']
        return None, self.classifier(features.mean(dim=2))
