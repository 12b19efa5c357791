"""Evaluation: frame-quality metrics, their conventions, and LPIPS.

``metrics`` is plain torch. LPIPS (``load_lpips``, ``LpipsMetric``) pulls in the ``lpips``
package and torchvision, so those names are imported only on first use.
"""

from __future__ import annotations

from cttlstm_cli.evaluation.metrics import (
    CONVENTIONS,
    DEFAULT_METRICS,
    METRIC_NAMES,
    OPENSTL,
    PAPER,
    PSNR_CAP_DB,
    STANDARD,
    Convention,
    MetricAccumulator,
    MetricReport,
    clamp01,
    compute_metrics,
    get_convention,
    mae,
    mse,
    parse_metrics,
    psnr,
    ssim,
)

__all__ = [
    "CONVENTIONS",
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "OPENSTL",
    "PAPER",
    "PSNR_CAP_DB",
    "STANDARD",
    "Convention",
    "MetricAccumulator",
    "MetricReport",
    "clamp01",
    "compute_metrics",
    "get_convention",
    "mae",
    "mse",
    "parse_metrics",
    "psnr",
    "ssim",
]
