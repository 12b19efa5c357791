"""The recipe ``model`` section of the 3D-CNN activity classifier (``arch: cnn3d``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cttlstm_cli.models.interface import ModelConfig, OddInt, PositiveInts


class CNN3DConfig(ModelConfig):
    """3D convolutions over the observed frames, then the paper's activity classifier head.

    The defaults mirror the Conv-TT-LSTM activity model layer for layer (recipes/ssv2.yaml): a
    two-layer stride-2 encoder (32, 64 channels), four blocks of two layers of 64 channels with
    5x5 spatial kernels, where that model has recurrent cells and this one 3D convolutions.
    """

    arch: Literal["cnn3d"] = "cnn3d"
    encoder_channels: PositiveInts = Field(default_factory=lambda: [32, 64], description="stride-2 (spatial) 3D conv encoder")
    blocks: PositiveInts = Field(default_factory=lambda: [2, 2, 2, 2], min_length=1, description="3D conv layers per block")
    channels: PositiveInts = Field(default_factory=lambda: [64, 64, 64, 64], min_length=1, description="channels per block")
    kernel: OddInt = Field(5, description="spatial kernel size (odd)")
    temporal_kernel: OddInt = Field(3, description="temporal kernel size (odd)")
    classes: int = Field(..., ge=2, description="activity classes")

    @property
    def display_name(self) -> str:
        return "3D-CNN"

    @property
    def num_classes(self) -> int | None:
        return self.classes

    @model_validator(mode="after")
    def _consistent(self) -> CNN3DConfig:
        if len(self.blocks) != len(self.channels):
            raise ValueError(f"model.blocks ({len(self.blocks)} blocks) and model.channels ({len(self.channels)} widths) differ in length")
        return self
