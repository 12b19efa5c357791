"""Parameter count of PredRNN-V2: PredRNN's, plus the adapter. Its multiply-accumulates per step are
PredRNN's (:func:`cttlstm_cli.models.predrnn.flops.analytic_macs`): the adapter runs only in training."""

from __future__ import annotations

from cttlstm_cli.models.predrnn.flops import parameter_count as predrnn_parameter_count
from cttlstm_cli.models.predrnnv2.config import PredRNNV2Config


def parameter_count(cfg: PredRNNV2Config, image_channels: int) -> int:
    """Trainable parameters: PredRNN's stack and head, and the shared n x n adapter (1x1, no bias)."""
    return predrnn_parameter_count(cfg, image_channels) + cfg.hidden[0] ** 2
