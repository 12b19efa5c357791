"""The recipe ``model`` section of the TAU family (``arch: tau``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cttlstm_cli.models.simvp.config import SimVPConfig


class TAUConfig(SimVPConfig):
    """TAU (Tan et al., CVPR 2023): SimVP's encoder and decoder around temporal attention units, trained
    with the MSE plus ``alpha`` times the differential divergence at temperature ``temperature``.

    The defaults are the Moving-MNIST configuration (44,656,001 parameters for one channel).
    """

    arch: Literal["tau"] = "tau"  # type: ignore[assignment]
    reduction: int = Field(16, ge=1, description="squeeze-and-excitation reduction of the dynamic attention")
    alpha: float = Field(0.1, ge=0.0, description="weight of the differential divergence in the loss")
    temperature: float = Field(0.1, gt=0.0, description="softmax temperature of the differential divergence")

    @property
    def display_name(self) -> str:
        return "TAU"
