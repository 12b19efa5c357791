"""The recipe ``model`` section of the PredRNN-V2 family (``arch: predrnnv2``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cttlstm_cli.models.predrnn.config import PredRNNConfig


class PredRNNV2Config(PredRNNConfig):
    """PredRNN-V2 (Wang et al., TPAMI 2022): PredRNN's network and fields, plus the memory-decoupling loss
    and reverse scheduled sampling.

    The defaults are the published Moving-MNIST configuration: PredRNN's four layers of 128, 5x5 filters
    and 4x4 patches with the 128 -> 128 adapter (23,855,104 parameters for one channel), decoupling
    weight 0.1, and both sampling schedules starting at 0.5, changing from iteration 25,000 and reaching
    their end values at 50,000 (the context's exponentially, with alpha 5,000; the future's linearly).
    """

    arch: Literal["predrnnv2"] = "predrnnv2"  # type: ignore[assignment]
    # PredRNN's linear schedule, replaced here by the two schedules below; refused when set.
    sampling_steps: None = Field(  # type: ignore[assignment]
        None, description="not used: PredRNN-V2 samples by its reverse schedule (sampling_start, ...)"
    )
    decoupling_weight: float = Field(
        0.1, ge=0.0, le=1000.0, description="beta: the weight of the memory-decoupling loss added to train.loss"
    )
    sampling_start: int = Field(
        25_000, ge=0, le=10**9, description="optimizer step at which both sampling probabilities start to change"
    )
    sampling_end: int = Field(
        50_000,
        ge=1,
        le=10**9,
        description="optimizer step from which every context input and no future input is the ground truth",
    )
    sampling_alpha: float = Field(
        5_000.0, gt=0.0, le=1e9, description="steps of the context probability's exponential approach to 1"
    )
    sampling_probability: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="ground-truth probability of the context and the future inputs before sampling_start",
    )

    @property
    def display_name(self) -> str:
        return "PredRNN-V2"

    @field_validator("sampling_steps", mode="before")
    @classmethod
    def _no_linear_schedule(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(
                "PredRNN-V2 has no linear schedule: "
                "set sampling_start, sampling_end, sampling_alpha and sampling_probability"
            )
        return v

    @model_validator(mode="after")
    def _end_after_start(self) -> PredRNNV2Config:
        if self.sampling_end <= self.sampling_start:
            raise ValueError(
                f"sampling_end ({self.sampling_end}) must come after sampling_start ({self.sampling_start})"
            )
        return self
