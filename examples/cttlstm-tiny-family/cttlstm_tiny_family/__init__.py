"""A tiny convolutional GRU as a cttlstm model family, registered as ``tinygru``.

One recurrent layer: ``z, r`` gates and a candidate state from 3x3 convs over ``[x ; h]``,
and a 1x1 head that predicts the change from the current frame to the next.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from cttlstm_cli.models import ModelConfig, RecurrentVideoModel, register_model


class TinyGRUConfig(ModelConfig):
    """The recipe's ``model`` section for ``arch: tinygru``."""

    arch: Literal["tinygru"] = "tinygru"
    hidden: int = Field(16, ge=1, description="hidden channels")
    kernel: int = Field(3, ge=1, description="odd kernel size")

    @property
    def display_name(self) -> str:
        return f"TinyGRU-{self.hidden}"


@register_model("tinygru")
class TinyGRU(RecurrentVideoModel):
    """Frame ``x_t`` and state ``h`` in, ``x_t + head(h_t)`` out."""

    config_class = TinyGRUConfig

    def __init__(self, config: TinyGRUConfig, image_channels: int = 1) -> None:
        super().__init__(config, image_channels)
        pad = config.kernel // 2
        self.gates = nn.Conv2d(image_channels + config.hidden, 2 * config.hidden, config.kernel, padding=pad)
        self.candidate = nn.Conv2d(image_channels + config.hidden, config.hidden, config.kernel, padding=pad)
        self.head = nn.Conv2d(config.hidden, image_channels, 1)

    def init_state(self, batch, height, width, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch, self.config.hidden, height, width, device=device, dtype=dtype)

    def step(self, frame: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        z, r = torch.sigmoid(self.gates(torch.cat([frame, state], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([frame, r * state], dim=1)))
        h = (1 - z) * state + z * candidate
        return frame + self.head(h), h
