"""Analytic multiply-accumulate and parameter counts of PredRNN (checked against torch's counter)."""

from __future__ import annotations

from cttlstm_cli.models.layers.patches import patch_channels
from cttlstm_cli.models.predrnn.config import PredRNNConfig


def layer_inputs(cfg: PredRNNConfig, image_channels: int) -> list[int]:
    """Input channels of each layer: the patched frame for layer 1, the layer below's H above it."""
    return [patch_channels(image_channels, cfg.patch) if k == 0 else cfg.hidden[k - 1] for k in range(len(cfg.hidden))]


def weights_per_pixel(cfg: PredRNNConfig, image_channels: int) -> int:
    """Every weight of the stack and the head, each applied once per patched pixel per step."""
    k2 = cfg.kernel * cfg.kernel
    total = 0
    for c_in, n in zip(layer_inputs(cfg, image_channels), cfg.hidden):
        total += k2 * c_in * 7 * n  # W_x: the seven gates over X
        total += k2 * n * 4 * n  # W_h: g, i, f, o over H
        total += k2 * n * 3 * n  # W_m: g', i', f' over M
        total += k2 * 2 * n * n  # W_o over [C, M]
        total += 2 * n * n  # W_1x1 over [C, M]
    return total + cfg.hidden[-1] * patch_channels(image_channels, cfg.patch)  # 1x1 head


def analytic_macs(cfg: PredRNNConfig, image_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one network step for one sample on ``height`` x ``width`` frames."""
    return (height // cfg.patch) * (width // cfg.patch) * weights_per_pixel(cfg, image_channels)


def parameter_count(cfg: PredRNNConfig, image_channels: int) -> int:
    """Trainable parameters of PredRNN for ``cfg`` (no convolution has a bias)."""
    return weights_per_pixel(cfg, image_channels)
