"""The recipe ``model`` section of the 3D-CNN activity classifier (``arch: cnn3d``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cttlstm_cli.models.interface import ModelConfig


class CNN3DConfig(ModelConfig):
    """3D convolutions over the observed frames, then the paper's activity classifier head.

    The defaults mirror the Conv-TT-LSTM activity model layer for layer (recipes/ssv2.yaml): a
    two-layer stride-2 encoder (32, 64 channels), four blocks of two layers of 64 channels with
    5x5 spatial kernels, where that model has recurrent cells and this one 3D convolutions.
    """

    arch: Literal["cnn3d"] = "cnn3d"
    encoder_channels: list[int] = Field(default_factory=lambda: [32, 64], description="stride-2 (spatial) 3D conv encoder")
    blocks: list[int] = Field(default_factory=lambda: [2, 2, 2, 2], min_length=1, description="3D conv layers per block")
    channels: list[int] = Field(default_factory=lambda: [64, 64, 64, 64], min_length=1, description="channels per block")
    kernel: int = Field(5, ge=1, description="spatial kernel size (odd)")
    temporal_kernel: int = Field(3, ge=1, description="temporal kernel size (odd)")
    classes: int = Field(..., ge=2, description="activity classes")

    @property
    def display_name(self) -> str:
        return "3D-CNN"

    @property
    def num_classes(self) -> int | None:
        return self.classes

    @field_validator("kernel", "temporal_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"must be odd for 'same' padding, got {v}")
        return v

    @field_validator("blocks", "channels", "encoder_channels")
    @classmethod
    def _positive_entries(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every entry must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CNN3DConfig:
        if len(self.blocks) != len(self.channels):
            raise ValueError(f"model.blocks ({len(self.blocks)} blocks) and model.channels ({len(self.channels)} widths) differ in length")
        return self
