"""Exact multiply-accumulates of one E3D-LSTM step for one sample (the paper's FLOPs convention).

Counted with a full memory (tau cell states, the steady state after the first tau - 1 steps): the
recall attention is the one part whose cost grows with the memory. Convolutions count every output
position of the window (D x h x w) times the kernel volume times the input and output channels; the
recall is two batched products, scores (N x tau*N x ch) and the weighted sum (the same), with
N = D*h*w. Element-wise gates, the softmax and the LayerNorm are not counted (nor are they by torch's
FLOP counter, which the tests check this count against). The classifier runs once per clip, not per
step, and is not part of the figure.
"""

from __future__ import annotations

from cttlstm_cli.models.e3dlstm.config import E3DLSTMConfig


def analytic_macs(cfg: E3DLSTMConfig, image_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one step with a full memory, from the configuration alone."""
    kt, kh, kw = cfg.kernel
    volume = kt * kh * kw
    patched = image_channels * cfg.patch**2
    area = (height // cfg.patch) * (width // cfg.patch)
    positions = cfg.window * area  # N, the rows of every 3D state
    total = positions * volume * patched * cfg.hidden[0]  # encoder
    for c_in, ch in zip([cfg.hidden[0], *cfg.hidden], cfg.hidden):
        total += positions * volume * ch * (7 * c_in)  # conv_x: r, i, g, i', g', f', o
        total += positions * volume * ch * (4 * ch + 3 * ch + 2 * ch)  # conv_h, conv_m, conv_o
        total += positions * 2 * ch * ch  # W_1x1x1 over [C ; M]
        total += 2 * positions * cfg.memory_steps * positions * ch  # recall: scores and weighted sum
    return total + area * cfg.window * cfg.hidden[-1] * patched  # decoder: one output per window
