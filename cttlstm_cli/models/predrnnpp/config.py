"""The recipe ``model`` section of the PredRNN++ family (``arch: predrnnpp``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cttlstm_cli.models.interface import ModelConfig, OddInt, PositiveInts


class PredRNNPPConfig(ModelConfig):
    """PredRNN++ (Wang et al., ICML 2018): stacked causal LSTMs, a gradient highway unit between
    layers 1 and 2, and space-to-depth patches around the stack.

    The defaults are the authors' Moving-MNIST configuration: hidden widths 128, 64, 64, 64,
    5x5 filters, 4x4 patches, layer normalisation on.
    """

    arch: Literal["predrnnpp"] = "predrnnpp"
    hidden: PositiveInts = Field(
        default_factory=lambda: [128, 64, 64, 64],
        description="hidden channels of each causal LSTM layer, bottom first (at least 2)",
    )
    kernel: OddInt = Field(5, description="spatial size of the k x k convolutions (odd)")
    patch: int = Field(4, ge=1, description="frames are cut into patch x patch pieces stacked as channels")
    layer_norm: bool = Field(True, description="normalise every gate pre-activation over (C, H, W) per sample")

    @property
    def display_name(self) -> str:
        return "PredRNN++"

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if len(v) < 2:
            raise ValueError(f"needs at least two layers (the gradient highway sits between layers 1 and 2), got {v}")
        return v
