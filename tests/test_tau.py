"""The TAU family: the published counts, the temporal attention unit, the differential divergence and
the loss it trains with, and the whole command line on its smoke recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.models.losses import prediction_loss
from cttlstm_cli.models.tau import TAU, TAUConfig, differential_divergence
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES
from test_predrnn import data  # noqa: F401 - the tiny Moving-MNIST at 16x16, a module fixture

SMOKE = RECIPES / "smoke-tau.yaml"
SMALL = dict(frames=4, hidden_spatial=4, hidden_temporal=8, spatial_blocks=2, temporal_blocks=2, mlp_ratio=2.0, reduction=4)


def test_published_configuration_has_the_published_counts() -> None:
    # OpenSTL's own modules for one channel (design §9): 44,656,001 parameters; its model zoo gives
    # 16.0 GFLOPs (fvcore multiply-accumulates) for the 10-frame forward at 64x64.
    cfg = load_recipe(RECIPES / "mmnist-tau.yaml")
    model = create_model(cfg.model, cfg.data.channels)
    assert isinstance(model, TAU) and model.name == "TAU"
    assert sum(p.numel() for p in model.parameters()) == 44_656_001
    assert model.counted_macs(64, 64) * cfg.model.frames / 1e9 == pytest.approx(16.0, rel=0.02)


def _divergence_by_definition(pred: torch.Tensor, true: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(p ‖ q) summed term by term, each sample on its own: p, q the softmaxes of the differences / τ."""
    values = []
    for yp, yt in zip(pred, true):
        dp, dt = (yp[1:] - yp[:-1]).flatten() / tau, (yt[1:] - yt[:-1]).flatten() / tau
        p, q = torch.exp(dp) / torch.exp(dp).sum(), torch.exp(dt) / torch.exp(dt).sum()
        values.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p.tolist(), q.tolist())))
    return torch.tensor(sum(values) / len(values), dtype=torch.float64)


def test_differential_divergence_is_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    pred, true = torch.rand(3, 4, 1, 3, 3, generator=g, dtype=torch.float64), torch.rand(3, 4, 1, 3, 3, generator=g, dtype=torch.float64)
    for tau in (0.1, 1.0):
        got = differential_divergence(pred, true, tau)
        torch.testing.assert_close(got, _divergence_by_definition(pred, true, tau), rtol=1e-9, atol=1e-12)
        assert float(got) > 0
    assert float(differential_divergence(pred, pred, 0.1)) == pytest.approx(0.0, abs=1e-12)
    # The same motion on another background: the differences, and so the divergence, are unchanged.
    assert float(differential_divergence(pred + 0.3, pred, 0.1)) == pytest.approx(0.0, abs=1e-12)
    assert float(differential_divergence(pred[:, :1], true[:, :1], 0.1)) == 0.0  # one frame: no difference


def test_loss_is_the_recipe_loss_plus_alpha_times_the_divergence() -> None:
    torch.manual_seed(0)
    outputs, targets = torch.rand(2, 4, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    tau = create_model(TAUConfig(**SMALL, alpha=0.1, temperature=0.1), 1)
    expected = prediction_loss(outputs, targets, "l2") + 0.1 * differential_divergence(outputs, targets, 0.1)
    assert float(tau.loss(outputs, targets, "l2")) == pytest.approx(float(expected), rel=1e-6)
    plain = create_model(TAUConfig(**SMALL, alpha=0.0), 1)
    assert float(plain.loss(outputs, targets, "l1+l2")) == pytest.approx(float(prediction_loss(outputs, targets, "l1+l2")), rel=1e-6)
    # The divergence's gradient reaches the outputs: a model trained on it is pushed towards the true motion.
    outputs.requires_grad_(True)
    tau.loss(outputs, targets, "l2").backward()
    grad_with = outputs.grad.clone()
    outputs.grad = None
    plain.loss(outputs, targets, "l2").backward()
    assert not torch.allclose(grad_with, outputs.grad)


def test_unit_is_static_times_dynamic_attention_times_its_input() -> None:
    torch.manual_seed(0)
    model = create_model(TAUConfig(**SMALL), 1).double()
    mixer = model.translator.blocks[1].mixer
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    static = mixer.static(mixer.spatial.far(mixer.spatial.local(x)))
    pooled = x.mean(dim=(2, 3))
    w1, w2 = mixer.excite[0].weight.flatten(1), mixer.excite[2].weight.flatten(1)
    dynamic = torch.sigmoid(torch.relu(pooled @ w1.T) @ w2.T)[:, :, None, None]
    torch.testing.assert_close(mixer.unit(x), static * dynamic * x)
    # The dynamic attention is one weight per sample and channel: the same for every pixel.
    assert mixer.excite(x.mean(dim=(2, 3), keepdim=True)).shape == (2, 8, 1, 1)
    # The squeeze keeps channels // max(channels // reduction, 4) units: 512 -> 16 in the published model.
    assert create_model(TAUConfig(), 1).translator.blocks[1].mixer.excite[0].out_channels == 16


def test_longer_horizons_and_training_form() -> None:
    torch.manual_seed(0)
    model = create_model(TAUConfig(**{**SMALL, "frames": 3}), 1).double().eval()
    clips = torch.rand(2, 7, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = model(clips[:, :3], future_frames=7)
        first = model.block(clips[:, :3])
        second = model.block(first)
        third = model.block(second)
        trained = model(clips, 4, context_frames=3, teacher_forcing=1.0)
    torch.testing.assert_close(out, torch.cat([first, second, third], 1)[:, :7])
    torch.testing.assert_close(trained, out[:, :4])  # the ground-truth future never reaches the outputs
    assert torch.equal(model.training_targets(clips, 3), clips[:, 3:])


@pytest.mark.parametrize("bad, key", [("model.temperature=0", "temperature"), ("model.alpha=-1", "alpha"), ("model.reduction=0", "reduction")])
def test_impossible_values_are_one_line(cli, bad: str, key: str) -> None:
    from conftest import one_error_line

    line = one_error_line(cli("profile", SMOKE, "--no-time", "--set", bad))
    assert f"model.{key}" in line


@pytest.mark.slow
def test_smoke_recipe_trains_evaluates_predicts_and_profiles(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set", f"data.path={data}", "--set", "data.frame_size=[16,16]"]
    short = ["--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--set", "train.log_every=1"]
    result = cli("train", SMOKE, "--out", run, "--max-steps", "4", "--quiet", "--device", "cpu", *sets, *short)
    assert result.code == 0, result.err
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)

    result = cli("evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    params = sum(p.numel() for p in create_model(load_recipe(SMOKE).model, 1).parameters())
    assert report["model"] == "TAU" and report["parameters"] == params and report["num_samples"] == 16
    assert all(math.isfinite(v) for v in report["metrics"].values())

    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(9, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    out = tmp_path / "pred.gif"
    result = cli("predict", clip, "--checkpoint", run, "--steps", "6", "--out", out, "--device", "cpu")
    assert result.code == 0, result.err
    assert iio.imread(out, index=None).shape[0] == 4 + 6  # the model's 4 context frames, then 6 predicted

    result = cli("profile", SMOKE, "--no-time", "--json", *sets)
    assert result.code == 0, result.err
    row = json.loads(result.out)[0]
    assert row["arch"] == "tau" and row["params"] == params
