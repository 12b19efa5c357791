"""Metrics against scikit-image, the conventions' arithmetic, and accumulation over batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation.metrics import (
    CONVENTIONS,
    OPENSTL,
    PAPER,
    PSNR_CAP_DB,
    STANDARD,
    MetricAccumulator,
    compute_metrics,
    get_convention,
    mae,
    mse,
    parse_metrics,
    psnr,
    ssim,
)


METRICS = ("mse", "mae", "psnr", "ssim", "lpips")


def _frames(channels: int, n: int = 3, h: int = 40, w: int = 33, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random frames plus structured ones (a moving bright square, gradients, a flat frame)."""
    rng = np.random.default_rng(seed)
    target = rng.random((n, channels, h, w))
    pred = np.clip(target + 0.15 * rng.standard_normal(target.shape), 0, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    square_t = ((abs(yy - 15) < 6) & (abs(xx - 12) < 6)).astype(float)
    square_p = ((abs(yy - 17) < 6) & (abs(xx - 14) < 6)).astype(float) * 0.9
    grad = (yy / h + xx / w) / 2
    structured_t = np.stack([square_t, grad, np.full((h, w), 0.3)])
    structured_p = np.stack([square_p, grad**1.5, np.full((h, w), 0.3)])
    structured_t = np.repeat(structured_t[:, None], channels, axis=1)
    structured_p = np.repeat(structured_p[:, None], channels, axis=1)
    return np.concatenate([pred, structured_p]), np.concatenate([target, structured_t])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_ssim_psnr_mse_match_scikit_image(channels: int, convention: str) -> None:
    conv = get_convention(convention)
    pred, target = _frames(channels)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    ours_ssim = ssim(p, t, data_range=conv.ssim_data_range).numpy()
    ours_psnr = psnr(p, t, data_range=conv.psnr_data_range).numpy()
    ours_mse = mse(p, t).numpy()
    for i in range(len(pred)):
        a, b = pred[i].transpose(1, 2, 0), target[i].transpose(1, 2, 0)
        ref_ssim = sk_ssim(a, b, data_range=conv.ssim_data_range, channel_axis=-1)  # 7×7, K1 .01, K2 .03
        assert ours_ssim[i] == pytest.approx(ref_ssim, abs=1e-5)
        if not np.array_equal(a, b):
            assert ours_psnr[i] == pytest.approx(sk_psnr(b, a, data_range=conv.psnr_data_range), abs=1e-5)
        assert ours_mse[i] == pytest.approx(sk_mse(a, b), abs=1e-9)


def test_float32_input_matches_scikit_image() -> None:
    pred, target = (x.astype(np.float32) for x in _frames(1, seed=3))
    ours = ssim(torch.from_numpy(pred), torch.from_numpy(target), data_range=2.0).numpy()
    ref = [sk_ssim(pred[i, 0], target[i, 0], data_range=2.0) for i in range(len(pred))]
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_identical_images() -> None:
    x = torch.rand(2, 1, 16, 16)
    assert torch.all(mse(x, x) == 0) and torch.all(mae(x, x) == 0)
    assert torch.all(torch.isinf(psnr(x, x)))
    assert torch.all(psnr(x, x, max_db=PSNR_CAP_DB) == PSNR_CAP_DB)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.all(compute_metrics(x, x, "paper", ["psnr"])["psnr"] == PSNR_CAP_DB)


def test_convention_arithmetic() -> None:
    pred, target = torch.rand(5, 1, 64, 64), torch.rand(5, 1, 64, 64)
    paper = compute_metrics(pred, target, PAPER, ["mse", "mae", "psnr", "ssim"])
    openstl = compute_metrics(pred, target, OPENSTL, ["mse", "mae", "psnr", "ssim"])
    standard = compute_metrics(pred, target, STANDARD, ["mse", "mae", "psnr", "ssim"])
    h, w = 64, 64
    # The documented relation: MSE_openstl = MSE_paper × H·W / 1000 (gray frames).
    torch.testing.assert_close(openstl["mse"], paper["mse"] * h * w / 1000, rtol=1e-13, atol=0)
    torch.testing.assert_close(openstl["mae"], paper["mae"] * h * w / 1000, rtol=1e-13, atol=0)
    torch.testing.assert_close(paper["mse"], standard["mse"] * 1000, rtol=1e-13, atol=0)
    torch.testing.assert_close(openstl["mse"], ((pred - target) ** 2).sum(dim=(1, 2, 3)).double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(paper["psnr"], standard["psnr"])
    torch.testing.assert_close(paper["ssim"], openstl["ssim"])
    assert not torch.allclose(paper["ssim"], standard["ssim"])  # data_range 2 vs 1 matters
    torch.testing.assert_close(paper["ssim"], ssim(pred, target, data_range=2.0))
    # Predictions are clamped to [0, 1] before any metric.
    torch.testing.assert_close(
        compute_metrics(pred * 3 - 1, target, STANDARD, ["mse"])["mse"], mse((pred * 3 - 1).clamp(0, 1), target)
    )


class _RecordingLpips:
    """Stands in for LPIPS: records what it is given and returns zeros."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, rescale: bool = True) -> torch.Tensor:
        self.seen.append((pred.clone(), rescale))
        return torch.zeros(pred.shape[0])


def test_order_of_operations_with_predictions_outside_0_1() -> None:
    """Each convention's numbers, computed here with plain NumPy from the definitions in docs/metrics.md:
    openstl (OpenSTL's metric()) measures MSE and MAE on the raw predictions and clips to [0, 1] only for
    PSNR, SSIM and LPIPS; paper (the authors' model_test.py) and standard clamp before every metric."""
    rng = np.random.default_rng(7)
    target = rng.random((4, 1, 24, 20))
    pred = target + 0.8 * rng.standard_normal(target.shape)  # far outside [0, 1] in places
    assert (pred < 0).any() and (pred > 1).any()
    clipped = np.clip(pred, 0.0, 1.0)
    per_image = (1, 2, 3)
    raw_sq, raw_abs = ((pred - target) ** 2).sum(axis=per_image), np.abs(pred - target).sum(axis=per_image)
    clip_sq, clip_abs = ((clipped - target) ** 2).mean(axis=per_image), np.abs(clipped - target).mean(axis=per_image)
    psnr_clipped = -10 * np.log10(clip_sq)
    ssim2 = [sk_ssim(c[0], t[0], data_range=2.0) for c, t in zip(clipped, target)]
    ssim1 = [sk_ssim(c[0], t[0], data_range=1.0) for c, t in zip(clipped, target)]
    expected = {
        "openstl": {"mse": raw_sq, "mae": raw_abs, "psnr": psnr_clipped, "ssim": ssim2},
        "paper": {"mse": 1000 * clip_sq, "mae": 1000 * clip_abs, "psnr": psnr_clipped, "ssim": ssim2},
        "standard": {"mse": clip_sq, "mae": clip_abs, "psnr": psnr_clipped, "ssim": ssim1},
    }
    for name, values in expected.items():
        lpips = _RecordingLpips()
        got = compute_metrics(torch.from_numpy(pred), torch.from_numpy(target), name, METRICS, lpips_model=lpips)
        for metric, value in values.items():
            np.testing.assert_allclose(got[metric].numpy(), value, rtol=1e-9, atol=1e-12, err_msg=f"{name} {metric}")
        (seen, rescale), = lpips.seen
        np.testing.assert_array_equal(seen.numpy(), clipped)  # LPIPS sees clamped frames under every convention
        assert rescale == (name != "paper")
    # OpenSTL's MSE of unclamped predictions is larger than that of the clamped ones (what the bug reported).
    assert (raw_sq > clip_sq * 24 * 20).all()
    assert "MSE/MAE on the unclamped predictions" in OPENSTL.describe()
    assert "predictions clamped to [0,1]" in PAPER.describe() and "predictions clamped to [0,1]" in STANDARD.describe()


def test_conventions_describe_themselves() -> None:
    for conv in CONVENTIONS.values():
        text = conv.describe()
        assert text.startswith(conv.name) and "SSIM" in text and "LPIPS" in text
    assert "data range 2" in PAPER.describe() and "without rescaling" in PAPER.describe()
    assert "sum over pixels" in OPENSTL.describe()
    assert "K2 0.03, data range 1;" in STANDARD.describe() and "K2 0.03, data range 2;" in OPENSTL.describe()
    with pytest.raises(CttlstmError, match="unknown metric convention"):
        get_convention("bogus")
    with pytest.raises(CttlstmError, match="unknown metric"):
        parse_metrics("mse,fid")
    assert parse_metrics("lpips, mse") == ("mse", "lpips")


def test_accumulator_curves_headline_and_batching() -> None:
    torch.manual_seed(0)
    pred = torch.rand(7, 4, 1, 24, 24) * 1.2 - 0.1  # some values outside [0,1] to exercise the clamp
    target = torch.rand(7, 4, 1, 24, 24)
    metrics = ["mse", "mae", "psnr", "ssim"]

    whole = MetricAccumulator("openstl", metrics)
    whole.update(pred, target)
    parts = MetricAccumulator("openstl", metrics)
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:
        parts.update(pred[lo:hi], target[lo:hi])
    for m in metrics:
        torch.testing.assert_close(parts.curves()[m], whole.curves()[m], rtol=1e-12, atol=1e-12)

    report = whole.report()
    assert report.convention is OPENSTL and report.num_samples == 7
    for m in metrics:
        assert len(report.curves[m]) == 4
        assert report.headline[m] == pytest.approx(float(np.mean(report.curves[m])), rel=1e-12)
    # The curve of frame k is the mean over samples of that frame's per-image values.
    per_image = compute_metrics(pred[:, 2], target[:, 2], "openstl", ["ssim"])["ssim"]
    assert report.curves["ssim"][2] == pytest.approx(float(per_image.mean()), rel=1e-12)
    d = report.to_dict()
    assert d["convention"] == "openstl" and "openstl convention" in d["convention_description"]

    merged = MetricAccumulator("openstl", metrics)
    a, b = MetricAccumulator("openstl", metrics), MetricAccumulator("openstl", metrics)
    a.update(pred[:2], target[:2])
    b.update(pred[2:], target[2:])
    merged.merge(a)
    merged.merge(b)
    torch.testing.assert_close(merged.curves()["mse"], whole.curves()["mse"], rtol=1e-12, atol=0)


def test_accumulator_errors() -> None:
    acc = MetricAccumulator("paper", ["mse"])
    with pytest.raises(CttlstmError, match="no batches"):
        acc.report()
    acc.update(torch.rand(2, 3, 1, 8, 8), torch.rand(2, 3, 1, 8, 8))
    with pytest.raises(CttlstmError, match="predicted frames"):
        acc.update(torch.rand(2, 4, 1, 8, 8), torch.rand(2, 4, 1, 8, 8))
    with pytest.raises(CttlstmError, match="LPIPS requested"):
        MetricAccumulator("paper", ["lpips"])
