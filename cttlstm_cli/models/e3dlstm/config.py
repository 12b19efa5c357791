"""The recipe ``model`` section of the E3D-LSTM family (``arch: e3dlstm``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from cttlstm_cli.models.interface import ModelConfig


class E3DLSTMConfig(ModelConfig):
    """Eidetic 3D LSTM (Wang et al., ICLR 2019): stacked 3D-convolutional LSTMs over sliding windows of
    frames, with the eidetic memory (a recall gate attending over the last ``memory_steps`` cell states)
    and the spatio-temporal memory M zigzagging through the stack (docs/models/e3dlstm.md)."""

    arch: Literal["e3dlstm"] = "e3dlstm"
    hidden: list[int] = Field(
        default_factory=lambda: [64, 64, 64, 64], min_length=1, description="hidden channels of every layer (all equal)"
    )
    kernel: tuple[int, int, int] = Field((2, 5, 5), description="3D kernel [time, height, width]; height and width odd")
    window: int = Field(2, ge=1, description="frames each step reads (the temporal depth of every 3D state)")
    memory_steps: int = Field(
        19, ge=1, description="tau, the past cell states the recall gate attends over (19: all of a 10 -> 10 clip)"
    )
    patch: int = Field(4, ge=1, description="space-to-depth patch size; frame height and width must be multiples")
    classes: int | None = Field(
        None, ge=2, description="activity classes of the classifier on the top layer's hidden state; null: none"
    )

    @property
    def display_name(self) -> str:
        return "E3D-LSTM"

    @property
    def num_classes(self) -> int | None:
        return self.classes

    @field_validator("hidden")
    @classmethod
    def _equal_positive_widths(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("every entry must be >= 1")
        # M flows from each layer into the next and from the top back to the bottom: one width for all.
        if len(set(v)) != 1:
            raise ValueError("all layers must have the same width (the spatio-temporal memory M flows through each)")
        return v

    @field_validator("kernel")
    @classmethod
    def _odd_spatial_kernel(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(x < 1 for x in v):
            raise ValueError("every entry must be >= 1")
        if v[1] % 2 != 1 or v[2] % 2 != 1:
            raise ValueError("height and width must be odd for 'same' padding")
        return v

    @model_validator(mode="after")
    def _kernel_fits_window(self) -> E3DLSTMConfig:
        if self.kernel[0] > self.window:
            raise ValueError(
                f"model.kernel's temporal depth ({self.kernel[0]}) exceeds model.window ({self.window}): "
                "the extra taps would see only padding"
            )
        return self
