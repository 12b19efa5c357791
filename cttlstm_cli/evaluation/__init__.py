"""Evaluation: frame-quality metrics, their conventions, and LPIPS.

``metrics`` is plain torch. LPIPS (``load_lpips``, ``LpipsMetric``) pulls in the ``lpips``
package and torchvision, so those names are imported only on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from cttlstm_cli.evaluation.lpips import LpipsMetric, load_alexnet_weights, load_lpips

_LAZY = {"LpipsMetric", "load_lpips", "load_alexnet_weights", "default_weight_paths"}


def __getattr__(name: str) -> Any:
    # The lpips package imports torchvision (slow, and fragile beside a CPU-only torch).
    if name in _LAZY:
        from cttlstm_cli.evaluation import lpips as _lpips

        return getattr(_lpips, name)
    raise AttributeError(name)


__all__ = [
    "CONVENTIONS",
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "OPENSTL",
    "PAPER",
    "PSNR_CAP_DB",
    "STANDARD",
    "Convention",
    "LpipsMetric",
    "MetricAccumulator",
    "MetricReport",
    "clamp01",
    "compute_metrics",
    "default_weight_paths",
    "get_convention",
    "load_alexnet_weights",
    "load_lpips",
    "mae",
    "mse",
    "parse_metrics",
    "psnr",
    "ssim",
]
