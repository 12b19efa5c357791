"""The recipe ``model`` section of the conv-RNN family (``arch: convrnn``, the default)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, model_validator

from cttlstm_cli.errors import RecipeNotice
from cttlstm_cli.models.interface import ModelConfig, OddInt, PositiveInts

CellType = Literal["convttlstm", "convlstm", "convlstm_ttd"]
CELL_NAMES: dict[str, str] = {
    "convttlstm": "Conv-TT-LSTM",
    "convlstm": "ConvLSTM",
    "convlstm_ttd": "ConvLSTM (classic TTD)",
}


def skip_source(position: int, skip_stride: int | None) -> int | None:
    """Block whose output joins the input of block ``position`` (the head is position B)."""
    if skip_stride is None or position < skip_stride + 1:
        return None
    return position - 1 - skip_stride


class ConvRNNConfig(ModelConfig):
    """Stacked convolutional recurrent cells with skips (design §1-2).

    Keys written before the rename still load, with a notice: ``steps`` is ``history`` (M), and
    ``order`` is ``ctt_order`` (N) for Conv-TT-LSTM or ``ttd_order`` for the classic-TTD cell.
    """

    arch: Literal["convrnn"] = "convrnn"
    cell: CellType = "convttlstm"
    ctt_order: int = Field(3, ge=1, description="N, the order of the convolutional tensor train (Conv-TT-LSTM)")
    history: int = Field(3, ge=1, description="M, past hidden states fed to the CTT module (M >= N)")
    ttd_order: int = Field(3, ge=2, description="tensor-train cores of the classic-TTD input kernel (convlstm_ttd)")
    rank: int = Field(8, ge=1, description="R, channels of every tensor-train core")
    kernel: OddInt = Field(5, description="k, spatial kernel size (odd)")
    ctt_kernel: OddInt | None = Field(
        None, description="kernel of the CTT module (preprocessing convs and cores); null: model.kernel (1: the paper's Table 4 ablation)"
    )
    blocks: PositiveInts = Field(default_factory=lambda: [3, 3, 3, 3], min_length=1, description="layers per block")
    channels: PositiveInts = Field(default_factory=lambda: [32, 48, 48, 32], min_length=1, description="hidden channels per block")
    skip_stride: int | None = Field(2, ge=1, description="block p >= s+1 also takes block p-1-s's output; null: no skips")
    tt_padding: Literal["composed", "stepwise"] = "composed"
    ctt_form: Literal["auto", "sequential", "parallel"] = "auto"
    encoder_channels: PositiveInts = Field(
        default_factory=list, description="stride-2 conv encoder (mirrored by the decoder) around the recurrent stack; [] for none"
    )
    classes: int | None = Field(None, ge=2, description="attach the activity classifier with this many classes")

    @property
    def display_name(self) -> str:
        return CELL_NAMES[self.cell]

    @property
    def num_classes(self) -> int | None:
        return self.classes

    @property
    def ctt_kernel_size(self) -> int:
        """The CTT module's kernel: ``ctt_kernel``, or the gates' ``kernel``."""
        return self.ctt_kernel or self.kernel

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not ({"steps", "order"} & raw.keys()):
            return raw
        raw = dict(raw)
        if "steps" in raw:
            _rename(raw, "steps", "history", "M, the past hidden states of the CTT module")
        if "order" in raw:
            new = "ttd_order" if raw.get("cell") == "convlstm_ttd" else "ctt_order"
            _rename(raw, "order", new, "the classic-TTD kernel's cores" if new == "ttd_order" else "N, the CTT order")
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ConvRNNConfig:
        if self.history < self.ctt_order:
            raise ValueError(f"model.history (M={self.history}) must be >= model.ctt_order (N={self.ctt_order})")
        if len(self.blocks) != len(self.channels):
            raise ValueError(f"model.blocks ({len(self.blocks)} blocks) and model.channels ({len(self.channels)} widths) differ in length")
        return self


def _rename(raw: dict[str, Any], old: str, new: str, meaning: str) -> None:
    if new in raw:
        raise ValueError(f"model.{old} is the old name of model.{new}; give only one of them")
    raw[new] = raw.pop(old)
    warnings.warn(RecipeNotice(f"model.{old} is now model.{new} ({meaning}); the old key still works"), stacklevel=2)
