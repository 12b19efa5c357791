"""Exact multiply-accumulates of one conv-RNN step: the paper's FLOPs (Table 2).

The paper counts *multiplications for one-step prediction per sample*: the multiply-accumulates
of every convolution (and of rebuilding tensor-train kernels) when the whole network advances
one frame. The tests check this count against torch's FLOP counter.
"""

from __future__ import annotations

from cttlstm_cli.models.convrnn.config import ConvRNNConfig, skip_source
from cttlstm_cli.models.layers import TTConv2d


def _tt_kernel_macs(layer: TTConv2d) -> int:
    """Multiplications to rebuild a TT kernel from its cores (a chain of tensordots)."""
    macs, elements = 0, layer.kernel_size**2
    for core in layer.cores:
        t, s, r_in, r_out = core.shape
        elements *= t * s
        macs += elements * r_out * r_in
    return macs


def analytic_macs(cfg: ConvRNNConfig, image_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one network step for one sample, from the configuration alone."""
    total = 0
    enc = cfg.encoder_channels
    for i, (c_in, c_out) in enumerate(zip([image_channels, *enc], enc), start=1):
        total += (height >> i) * (width >> i) * c_in * c_out * 16  # 4x4 stride-2 convs
    height, width = height >> len(enc), width >> len(enc)
    area, k2 = height * width, cfg.kernel**2
    widths = cfg.channels
    for b, (layers, hidden) in enumerate(zip(cfg.blocks, widths)):
        for l in range(layers):
            if l > 0:
                c_in = hidden
            else:
                c_in = (enc[-1] if enc else image_channels) if b == 0 else widths[b - 1]
                src = skip_source(b, cfg.skip_stride)
                c_in += widths[src] if src is not None else 0
            if cfg.cell == "convlstm":
                total += area * 4 * hidden * (c_in + hidden) * k2
            elif cfg.cell == "convlstm_ttd":
                total += area * 4 * hidden * (c_in + hidden) * k2
                total += _tt_kernel_macs(TTConv2d(c_in, 4 * hidden, cfg.kernel, cfg.rank, cfg.ttd_order))
            else:
                window = cfg.history - cfg.ctt_order + 1
                r, n = cfg.rank, cfg.ctt_order
                total += n * area * r * window * hidden * cfg.ctt_kernel_size**2  # preprocessing
                total += area * 4 * hidden * (c_in + r) * k2  # gates
                total += _ctt_core_macs(cfg, height, width)
    src = skip_source(len(widths), cfg.skip_stride)
    features = widths[-1] + (widths[src] if src is not None else 0)
    for i, c_out in enumerate(reversed(enc)):  # transposed convs: every input pixel meets a 4x4 kernel
        total += (height << i) * (width << i) * features * c_out * 16
        features = c_out
    full = (height << len(enc)) * (width << len(enc))
    return total + full * image_channels * features


def _ctt_core_macs(cfg: ConvRNNConfig, height: int, width: int) -> int:
    r, n, k = cfg.rank, cfg.ctt_order, cfg.ctt_kernel_size
    pad = k // 2
    if n == 1:
        return 0
    if cfg.ctt_form == "parallel":
        size = (n - 1) * (k - 1) + 1
        build, kernel = 0, 1
        for _ in range(n - 1):  # composing kernels is itself a small convolution (batched over R)
            kernel_out = kernel + k - 1
            build += r**3 * kernel**2 * kernel_out**2
            kernel = kernel_out
        return height * width * r * n * r * size**2 + build
    if cfg.tt_padding == "stepwise":
        return (n - 1) * height * width * r * r * k * k
    margin = (n - 1) * pad
    # Valid convs on the widened canvas: output i is widened by margin - i*pad.
    return sum((height + 2 * (margin - i * pad)) * (width + 2 * (margin - i * pad)) for i in range(1, n)) * r * r * k * k
