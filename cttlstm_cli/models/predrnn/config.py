"""The recipe ``model`` section of the PredRNN family (``arch: predrnn``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cttlstm_cli.models.interface import ModelConfig, OddInt, PositiveInts


class PredRNNConfig(ModelConfig):
    """PredRNN (Wang et al., NeurIPS 2017): stacked spatio-temporal LSTMs whose memory M zigzags
    through the layers, on space-to-depth patches.

    The defaults are the Moving-MNIST configuration: four layers of 128, 5x5 filters, 4x4 patches
    (23,838,720 parameters for one channel), scheduled sampling from 1 to 0 over 50,000 iterations.
    """

    arch: Literal["predrnn"] = "predrnn"
    hidden: PositiveInts = Field(
        default_factory=lambda: [128, 128, 128, 128],
        description="hidden channels of each ST-LSTM layer, bottom first (all equal: M passes through every layer)",
    )
    kernel: OddInt = Field(5, description="spatial size of the k x k convolutions (odd)")
    patch: int = Field(4, ge=1, description="frames are cut into patch x patch pieces stacked as channels")
    forget_bias: float = Field(1.0, description="constant added to both forget-gate pre-activations")
    sampling_steps: int | None = Field(
        50_000,
        ge=1,
        le=10**9,
        description="scheduled sampling: the ground-truth ratio falls linearly from 1 to 0 over this many "
        "optimizer steps; null: the recipe's plateau schedule (train.scheduled_sampling)",
    )

    @property
    def display_name(self) -> str:
        return "PredRNN"

    @field_validator("hidden")
    @classmethod
    def _equal_widths(cls, v: list[int]) -> list[int]:
        if len(set(v)) != 1:
            raise ValueError(f"every layer must have the same width (the memory M zigzags through all of them), got {v}")
        return v
