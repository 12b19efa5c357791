"""Frame-quality metrics (MSE, MAE, PSNR, SSIM, LPIPS) and the conventions that make numbers comparable.

Everything here is batched torch: images are ``[N, C, H, W]`` tensors (CPU or GPU) and every
metric returns one value per image, ``[N]``. Published video-prediction numbers differ not only
in models but in *how* they were measured (see ``docs/metrics.md``); a :class:`Convention`
pins all of those choices down, and every :class:`MetricReport` names the one it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cttlstm_cli.errors import CttlstmError

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps the lpips/torchvision import lazy
    from cttlstm_cli.evaluation.lpips import LpipsMetric

METRIC_NAMES: tuple[str, ...] = ("mse", "mae", "psnr", "ssim", "lpips")
DEFAULT_METRICS: tuple[str, ...] = ("mse", "mae", "psnr", "ssim", "lpips")

# PSNR of two identical images is +inf. A single such frame would turn a whole per-frame mean
# into inf, so curves and headlines cap PSNR here. 100 dB means MSE = 1e-10 (data range 1),
# far below what any stored video can resolve (one uint8 step everywhere is already 48 dB),
# so the cap only ever touches frames that are identical for all practical purposes.
PSNR_CAP_DB = 100.0

# Metrics are accumulated in float64: SSIM's E[x²] − E[x]² cancels badly in float32, and sums
# over tens of thousands of frames should not drift.
_ACC_DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Per-image metrics
# --------------------------------------------------------------------------------------------


def clamp01(x: torch.Tensor) -> torch.Tensor:
    """Clamp predictions to [0, 1], the range PSNR, SSIM and LPIPS are computed in under every
    convention (and MSE/MAE too, except under ``openstl``: :attr:`Convention.clamp_errors`)."""
    return x.clamp(0.0, 1.0)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise CttlstmError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
    if pred.dim() != 4:
        raise CttlstmError(f"metrics expect images [N, C, H, W], got shape {tuple(pred.shape)}")


def _as_compute(x: torch.Tensor) -> torch.Tensor:
    return x.to(_ACC_DTYPE)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error over all pixels and channels, ``[N]``."""
    _check_pair(pred, target)
    return (_as_compute(pred) - _as_compute(target)).pow(2).mean(dim=(1, 2, 3))


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error over all pixels and channels, ``[N]``."""
    _check_pair(pred, target)
    return (_as_compute(pred) - _as_compute(target)).abs().mean(dim=(1, 2, 3))


def psnr(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, max_db: float | None = None
) -> torch.Tensor:
    """Per-image PSNR in dB, ``10·log10(data_range² / MSE)``, ``[N]``.

    Identical images have MSE 0 and PSNR ``+inf`` (as in scikit-image); pass ``max_db`` to cap
    instead (the accumulator uses :data:`PSNR_CAP_DB`).
    """
    err = mse(pred, target)
    with torch.no_grad():
        value = 10.0 * torch.log10(torch.as_tensor(data_range, dtype=err.dtype, device=err.device) ** 2 / err)
    if max_db is not None:
        value = value.clamp(max=max_db)
    return value


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image mean SSIM, identical to ``skimage.metrics.structural_similarity`` defaults, ``[N]``.

    That is: a ``win_size``×``win_size`` uniform window, ``K1``/``K2`` constants, sample
    (co)variances with the N/(N−1) correction (``use_sample_covariance=True``), the SSIM map
    cropped by ``(win_size−1)//2`` pixels on each side before averaging, and for several
    channels the mean over channels (``channel_axis``). Because of the crop only windows lying
    fully inside the image count, so a padding-free average pool gives exactly that region.
    """
    _check_pair(pred, target)
    if win_size % 2 != 1 or win_size < 3:
        raise CttlstmError(f"SSIM window size must be odd and >= 3, got {win_size}")
    if min(pred.shape[-2:]) < win_size:
        raise CttlstmError(f"SSIM needs images of at least {win_size}×{win_size}, got {tuple(pred.shape[-2:])}")
    x, y = _as_compute(pred), _as_compute(target)
    n, c, h, w = x.shape
    # One pooling call for all five moments: stack them along the channel axis.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    means = F.avg_pool2d(stacked, kernel_size=win_size, stride=1)
    ux, uy, uxx, uyy, uxy = means.split(c, dim=1)
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # Every channel's cropped map has the same size, so the mean over (C, H', W') equals the
    # mean over channels of per-channel means, which is what scikit-image computes.
    return s_map.mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------------------------
# Conventions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Convention:
    """How each metric is computed and scaled for a report.

    ``error_reduction`` is ``"mean"`` (per-pixel mean) or ``"sum"`` (per-frame sum over all
    pixels and channels) for MSE and MAE; ``error_scale`` and ``lpips_scale`` multiply the
    reported values; ``lpips_rescale`` says whether [0,1] frames are mapped to [−1,1] (what
    LPIPS was trained on) before LPIPS sees them. ``clamp_errors`` says whether MSE and MAE see
    the predictions clamped to [0, 1] (as PSNR, SSIM and LPIPS always do) or as the model made
    them: OpenSTL measures its errors before it clips.
    """

    name: str
    error_reduction: str
    error_scale: float
    psnr_data_range: float
    ssim_data_range: float
    lpips_rescale: bool
    lpips_scale: float
    clamp_errors: bool = True
    summary: str = field(default="", compare=False)

    def describe(self) -> str:
        """One line naming every choice, for reports and logs."""
        err = "per-pixel mean" if self.error_reduction == "mean" else "per-frame sum over pixels"
        scale = "" if self.error_scale == 1 else f" ×{self.error_scale:g}"
        lp_scale = "" if self.lpips_scale == 1 else f", ×{self.lpips_scale:g}"
        lp_in = "rescaled to [-1,1]" if self.lpips_rescale else "fed as [0,1] without rescaling"
        clamped = (
            "predictions clamped to [0,1]" if self.clamp_errors
            else "MSE/MAE on the unclamped predictions, clamped to [0,1] for PSNR, SSIM and LPIPS"
        )
        return (
            f"{self.name} convention: MSE/MAE {err}{scale}; PSNR data range {self.psnr_data_range:g}; "
            f"SSIM 7×7 uniform window, K1 0.01, K2 0.03, data range {self.ssim_data_range:g}; "
            f"LPIPS AlexNet v0.1, frames {lp_in}{lp_scale}; {clamped}"
        )

    def error_values(self, per_pixel_mean: torch.Tensor, pixels_per_frame: int) -> torch.Tensor:
        """Turn per-pixel-mean errors into this convention's reported MSE/MAE values."""
        if self.error_reduction == "sum":
            # Sum over pixels = mean × (C·H·W); computing it this way keeps the documented
            # relation to the paper's numbers exact up to float64 rounding.
            per_pixel_mean = per_pixel_mean * pixels_per_frame
        return per_pixel_mean * self.error_scale


PAPER = Convention(
    name="paper",
    error_reduction="mean",
    error_scale=1000.0,
    psnr_data_range=1.0,
    ssim_data_range=2.0,
    lpips_rescale=False,
    lpips_scale=1000.0,
    summary="Su et al. 2020 as released: MSE and LPIPS ×10³, SSIM with data_range 2, LPIPS on unscaled [0,1] frames",
)
OPENSTL = Convention(
    name="openstl",
    error_reduction="sum",
    error_scale=1.0,
    psnr_data_range=1.0,
    ssim_data_range=2.0,
    lpips_rescale=True,
    lpips_scale=1.0,
    # OpenSTL's metric() computes MSE and MAE first, on the raw predictions, and clips to [0, 1] only after.
    clamp_errors=False,
    summary="OpenSTL benchmarks: MSE/MAE summed over a frame's pixels of the unclamped predictions, SSIM as the paper, LPIPS on [-1,1]",
)
STANDARD = Convention(
    name="standard",
    error_reduction="mean",
    error_scale=1.0,
    psnr_data_range=1.0,
    ssim_data_range=1.0,
    lpips_rescale=True,
    lpips_scale=1.0,
    summary="correct definitions, unscaled: per-pixel MSE/MAE, SSIM data_range 1, LPIPS on [-1,1]",
)
CONVENTIONS: dict[str, Convention] = {c.name: c for c in (PAPER, OPENSTL, STANDARD)}


def get_convention(name: str | Convention) -> Convention:
    """Look a convention up by name (``paper``, ``openstl``, ``standard``)."""
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name.lower()]
    except KeyError:
        raise CttlstmError(f"unknown metric convention {name!r} (use {', '.join(CONVENTIONS)})") from None


def parse_metrics(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validate a metric selection such as ``"mse,ssim,lpips"``; keeps the canonical order."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    wanted = {n.lower() for n in names}
    unknown = sorted(wanted - set(METRIC_NAMES))
    if unknown:
        raise CttlstmError(f"unknown metric(s) {', '.join(unknown)} (choose from {', '.join(METRIC_NAMES)})")
    if not wanted:
        raise CttlstmError(f"no metrics selected (choose from {', '.join(METRIC_NAMES)})")
    return tuple(n for n in METRIC_NAMES if n in wanted)


def compute_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    convention: str | Convention = "standard",
    metrics: Sequence[str] = ("mse", "mae", "psnr", "ssim"),
    lpips_model: LpipsMetric | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image metric values ``{name: [N]}`` as reported under ``convention``.

    ``pred`` is clamped to [0, 1] here, for MSE and MAE only where the convention says so
    (:attr:`Convention.clamp_errors`); ``target`` is taken as given (already in [0, 1]).
    LPIPS needs ``lpips_model`` (see :func:`cttlstm_cli.evaluation.lpips.load_lpips`).
    """
    conv = get_convention(convention)
    metrics = parse_metrics(metrics)
    _check_pair(pred, target)
    raw, pred = pred, clamp01(pred)
    errors_of = pred if conv.clamp_errors else raw
    pixels = pred.shape[1] * pred.shape[2] * pred.shape[3]
    out: dict[str, torch.Tensor] = {}
    for name in metrics:
        if name == "mse":
            out[name] = conv.error_values(mse(errors_of, target), pixels)
        elif name == "mae":
            out[name] = conv.error_values(mae(errors_of, target), pixels)
        elif name == "psnr":
            out[name] = psnr(pred, target, data_range=conv.psnr_data_range, max_db=PSNR_CAP_DB)
        elif name == "ssim":
            out[name] = ssim(pred, target, data_range=conv.ssim_data_range)
        elif name == "lpips":
            if lpips_model is None:
                raise CttlstmError("LPIPS requested but no LPIPS model given (load one with load_lpips)")
            value = lpips_model(pred, target, rescale=conv.lpips_rescale)
            out[name] = value.to(_ACC_DTYPE) * conv.lpips_scale
    return out


# --------------------------------------------------------------------------------------------
# Accumulation over a test set
# --------------------------------------------------------------------------------------------


@dataclass
class MetricReport:
    """Per-frame curves and headline values of one evaluation, with the convention that made them."""

    convention: Convention
    curves: dict[str, list[float]]
    headline: dict[str, float]
    num_samples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the convention travels with the numbers."""
        return {
            "convention": self.convention.name,
            "convention_description": self.convention.describe(),
            "num_samples": self.num_samples,
            "headline": dict(self.headline),
            "per_frame": {k: list(v) for k, v in self.curves.items()},
        }


class MetricAccumulator:
    """Accumulates per-sample, per-predicted-frame metrics over batches ``[B, F, C, H, W]``.

    Sums (``[F]`` per metric, float64) and the sample count are tensors on ``device`` so that a
    distributed run can all-reduce them (:meth:`all_reduce`) before :meth:`report`. Curves are
    means over samples (length F); each headline is the mean of its curve.
    """

    def __init__(
        self,
        convention: str | Convention = "paper",
        metrics: Sequence[str] | str = DEFAULT_METRICS,
        lpips_model: LpipsMetric | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.convention = get_convention(convention)
        self.metrics = parse_metrics(metrics)
        if "lpips" in self.metrics and lpips_model is None:
            raise CttlstmError("LPIPS requested but no LPIPS model given (load one with load_lpips)")
        self.lpips_model = lpips_model
        self.device = torch.device(device) if device is not None else None
        self.sums: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | None = None
        self.num_frames: int | None = None

    def _init_state(self, num_frames: int, device: torch.device) -> None:
        self.num_frames = num_frames
        dev = self.device or device
        self.sums = {m: torch.zeros(num_frames, dtype=_ACC_DTYPE, device=dev) for m in self.metrics}
        self.count = torch.zeros((), dtype=_ACC_DTYPE, device=dev)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add a batch; returns this batch's per-sample, per-frame values ``{name: [B, F]}``."""
        if pred.shape != target.shape or pred.dim() != 5:
            raise CttlstmError(
                f"accumulator expects prediction and target [B, F, C, H, W] of equal shape, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        b, f = pred.shape[:2]
        if self.num_frames is None:
            self._init_state(f, pred.device)
        elif f != self.num_frames:
            raise CttlstmError(f"batch has {f} predicted frames, earlier batches had {self.num_frames}")
        values = compute_metrics(
            pred.flatten(0, 1), target.flatten(0, 1), self.convention, self.metrics, self.lpips_model
        )
        per_frame = {k: v.reshape(b, f) for k, v in values.items()}
        for k, v in per_frame.items():
            self.sums[k] += v.sum(dim=0).to(self.sums[k].device)
        assert self.count is not None
        self.count += b
        return per_frame

    def state_tensors(self) -> list[torch.Tensor]:
        """The tensors a distributed reduction must sum (metric sums, then the count)."""
        if self.count is None:
            raise CttlstmError("no batches were evaluated")
        return [self.sums[m] for m in self.metrics] + [self.count]

    def all_reduce(self, group: Any = None, num_frames: int | None = None) -> None:
        """Sum the state over all ranks of ``torch.distributed`` (no-op when not distributed). A rank
        that saw no clip (fewer clips than ranks) joins with zeros of ``num_frames`` frames."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.count is None:
            if num_frames is None:
                raise CttlstmError("no batches were evaluated on this rank and no frame count was given")
            self._init_state(num_frames, self.device or torch.device("cpu"))
        for t in self.state_tensors():
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    def merge(self, other: MetricAccumulator) -> None:
        """Add another accumulator's state (same convention, metrics and frame count)."""
        if other.count is None:
            return
        if (other.convention, other.metrics) != (self.convention, self.metrics):
            raise CttlstmError("cannot merge metric accumulators with different conventions or metrics")
        if self.count is None:
            self._init_state(other.num_frames or 0, other.count.device)
        if other.num_frames != self.num_frames:
            raise CttlstmError(f"cannot merge {other.num_frames}-frame and {self.num_frames}-frame accumulators")
        for m in self.metrics:
            self.sums[m] += other.sums[m].to(self.sums[m].device)
        assert self.count is not None
        self.count += other.count.to(self.count.device)

    def curves(self) -> dict[str, torch.Tensor]:
        """Per-frame means over samples, ``{name: [F]}``."""
        if self.count is None or float(self.count) == 0:
            raise CttlstmError("no batches were evaluated")
        return {m: self.sums[m] / self.count for m in self.metrics}

    def headline(self) -> dict[str, float]:
        """The mean of each per-frame curve."""
        return {m: float(c.mean()) for m, c in self.curves().items()}

    def report(self) -> MetricReport:
        """Curves and headlines as plain floats, labelled with the convention."""
        curves = self.curves()
        assert self.count is not None
        return MetricReport(
            convention=self.convention,
            curves={m: [float(v) for v in c.cpu()] for m, c in curves.items()},
            headline={m: float(c.mean()) for m, c in curves.items()},
            num_samples=int(self.count),
        )


__all__: list[str] = [
    "CONVENTIONS",
    "Convention",
    "DEFAULT_METRICS",
    "METRIC_NAMES",
    "MetricAccumulator",
    "MetricReport",
    "OPENSTL",
    "PAPER",
    "PSNR_CAP_DB",
    "STANDARD",
    "clamp01",
    "compute_metrics",
    "get_convention",
    "mae",
    "mse",
    "parse_metrics",
    "psnr",
    "ssim",
]
