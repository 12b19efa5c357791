"""Exact multiply-accumulates of one PredRNN++ step, and the parameter count, from the configuration.

One step is one frame in, one frame out: the patch reshape (no arithmetic), every causal LSTM
layer (W1 .. W5), the gradient highway unit, and the 1x1 head, all at the patched resolution
``H/p x W/p``. Layer normalisation and the element-wise gate arithmetic are not convolutions and
are not counted (nor does torch's FLOP counter count them); the tests check this count against it.
"""

from __future__ import annotations

from cttlstm_cli.models.layers.patches import patch_channels
from cttlstm_cli.models.predrnnpp.config import PredRNNPPConfig


def layer_shapes(cfg: PredRNNPPConfig, image_channels: int) -> list[tuple[int, int, int]]:
    """``(input channels, hidden channels, incoming M channels)`` of every causal LSTM layer.

    Layer 1 reads the patches and the top layer's M of the previous step (the zigzag); layer 2
    reads the highway's Z (as wide as layer 1); every layer reads the M of the layer below.
    """
    widths = cfg.hidden
    shapes = []
    for k, n in enumerate(widths):
        c_in = patch_channels(image_channels, cfg.patch) if k == 0 else widths[k - 1]
        m_in = widths[-1] if k == 0 else widths[k - 1]
        shapes.append((c_in, n, m_in))
    return shapes


def analytic_macs(cfg: PredRNNPPConfig, image_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one network step for one sample on ``height`` x ``width`` frames."""
    area = (height // cfg.patch) * (width // cfg.patch)
    k2 = cfg.kernel * cfg.kernel
    per_pixel = 0
    for c_in, n, m_in in layer_shapes(cfg, image_channels):
        per_pixel += k2 * (c_in + 2 * n) * 3 * n  # W1 over [X, H, C]
        per_pixel += k2 * (c_in + n + m_in) * 3 * n  # W2 over [X, C, M^{k-1}]
        per_pixel += m_in * n  # W3, 1x1
        per_pixel += k2 * (c_in + 2 * n) * n  # W4 over [X, C, M]
        per_pixel += 2 * n * n  # W5, 1x1 over [C, M]
    z = cfg.hidden[0]
    per_pixel += k2 * (z + z) * 2 * z  # highway: [W_px; W_sx] over X and [W_pz; W_sz] over Z
    per_pixel += cfg.hidden[-1] * patch_channels(image_channels, cfg.patch)  # 1x1 head
    return area * per_pixel


def parameter_count(cfg: PredRNNPPConfig, image_channels: int) -> int:
    """Trainable parameters of :class:`~cttlstm_cli.models.predrnnpp.model.PredRNNPP` for ``cfg``."""
    k2 = cfg.kernel * cfg.kernel
    total = 0
    for c_in, n, m_in in layer_shapes(cfg, image_channels):
        total += k2 * (c_in + 2 * n) * 3 * n + 3 * n  # W1 and its bias
        total += k2 * (c_in + n + m_in) * 3 * n + 3 * n  # W2
        total += m_in * n + n  # W3
        total += k2 * (c_in + 2 * n) * n + n  # W4
        total += 2 * n * n + n  # W5
        total += 2 * (3 * n + 3 * n + n) if cfg.layer_norm else 0  # scale and shift of the W1, W2, W4 norms
    z = cfg.hidden[0]
    total += k2 * 2 * z * 2 * z + 2 * z + (2 * 2 * z if cfg.layer_norm else 0)  # highway
    patched = patch_channels(image_channels, cfg.patch)
    return total + cfg.hidden[-1] * patched + patched  # head
