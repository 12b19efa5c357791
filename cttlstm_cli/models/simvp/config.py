"""The recipe ``model`` section of the SimVP family (``arch: simvp``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cttlstm_cli.models.interface import ModelConfig, OddInt


class SimVPConfig(ModelConfig):
    """SimVP v2 with the gated spatiotemporal attention translator (gSTA; Tan et al., arXiv 2211.12509),
    on SimVP's per-frame encoder and decoder (Gao et al., CVPR 2022).

    The defaults are the Moving-MNIST configuration: hid_S 64, hid_T 512, N_S 4, N_T 8, MLP ratio 8,
    10 frames in and 10 out (46,769,665 parameters for one channel).
    """

    arch: Literal["simvp"] = "simvp"
    frames: int = Field(10, ge=1, le=1000, description="T: frames in and out of one forward (data.input_frames must equal it)")
    hidden_spatial: int = Field(64, ge=2, description="hid_S: channels of the per-frame encoder and decoder (even: GroupNorm of 2)")
    hidden_temporal: int = Field(512, ge=1, description="hid_T: channels of the translator's inner blocks")
    spatial_blocks: int = Field(4, ge=2, le=16, description="N_S: encoder (and decoder) blocks; every second one strides by 2")
    temporal_blocks: int = Field(8, ge=2, le=64, description="N_T: translator blocks")
    spatial_kernel: OddInt = Field(3, description="kernel of the encoder's and decoder's convolutions")
    attention_kernel: int = Field(21, ge=3, description="receptive field of the large-kernel attention (5x5 and a 7x7 dilated by 3 for 21)")
    mlp_ratio: float = Field(8.0, gt=0.0, le=64.0, description="expansion of the translator's MLP")
    drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth of the last translator block (rising linearly from 0 over the blocks)")

    @property
    def display_name(self) -> str:
        return "SimVP (gSTA)"
