"""PredRNN (``arch: predrnn``): parameter and FLOP counts against the published configuration, the
ST-LSTM's memories and the zigzag, the fast path against the literal reference, its own sampling
schedule through the trainer, recipes, and every command on the smoke recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model, model_names
from cttlstm_cli.models.predrnn import PredRNN, PredRNNConfig
from cttlstm_cli.models.predrnn.flops import parameter_count
from cttlstm_cli.models.predrnn.reference import ReferencePredRNN
from cttlstm_cli.recipe import load_recipe, recipe_from_dict

from conftest import RECIPES

SMOKE = RECIPES / "smoke-predrnn.yaml"


def small(seed: int = 0, channels: int = 1) -> PredRNN:
    torch.manual_seed(seed)
    return create_model(PredRNNConfig(hidden=[4, 4, 4], kernel=3, patch=2), channels).double()


def expected_parameters(hidden: list[int], kernel: int, patch: int, channels: int) -> int:
    """Paper Eq. 3 by hand, no biases: per layer W_x (7 gates over X), W_h (g, i, f, o over H), W_m
    (g', i', f' over M), W_o (k x k over [C, M]) and the 1x1 over [C, M]; then a 1x1 head."""
    k2, x = kernel * kernel, channels * patch * patch
    total = 0
    for layer, n in enumerate(hidden):
        c = x if layer == 0 else hidden[layer - 1]
        total += k2 * c * 7 * n + k2 * n * 4 * n + k2 * n * 3 * n + k2 * 2 * n * n + 2 * n * n
    return total + hidden[-1] * x


def test_published_configuration_has_the_published_counts() -> None:
    assert "predrnn" in model_names()
    model = create_model(PredRNNConfig(), 1)
    params = sum(p.numel() for p in model.parameters())
    assert params == parameter_count(model.config, 1) == expected_parameters([128] * 4, 5, 4, 1) == 23_838_720
    # OpenSTL's 116 GFLOPs is the whole 10 -> 10 training forward: 19 steps at 64x64.
    macs = model.macs_per_step(64, 64)
    assert macs == model.counted_macs(64, 64)
    assert round(19 * macs / 1e9) == 116
    assert model.name == "PredRNN" and model.downsampling == 4


def test_small_counts_and_analytic_macs_equal_torchs_count() -> None:
    model = small()
    assert sum(p.numel() for p in model.parameters()) == expected_parameters([4, 4, 4], 3, 2, 1)
    for channels in (1, 3):
        m = create_model(PredRNNConfig(hidden=[6, 6], kernel=5, patch=4), channels)
        assert sum(p.numel() for p in m.parameters()) == expected_parameters([6, 6], 5, 4, channels)
        assert m.analytic_macs(16, 24) == m.counted_macs(16, 24)


@pytest.mark.parametrize(
    "model,message",
    [
        ({"hidden": [8, 4]}, "model.hidden: every layer must have the same width"),
        ({"hidden": [8, 0]}, "model.hidden: every entry must be >= 1"),
        ({"kernel": 4}, "model.kernel: must be odd"),
        ({"sampling_steps": 0}, "model.sampling_steps: "),
        ({"layers": 3}, "model.layers: unknown key"),
    ],
)
def test_bad_config_names_the_key(model: dict, message: str) -> None:
    with pytest.raises(CttlstmError, match=message.replace(".", r"\.")):
        recipe_from_dict({"model": {"arch": "predrnn", **model}})


def test_recipes_validate_in_the_published_configuration() -> None:
    for name, size in (("mmnist-predrnn", (64, 64)), ("kth-predrnn", (128, 128))):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert isinstance(recipe.model, PredRNNConfig) and recipe.data.frame_size == size
        assert parameter_count(recipe.model, 1) == 23_838_720 and recipe.model.sampling_steps == 50_000
        assert recipe.train.loss == "l2"


def test_its_own_schedule_falls_linearly_and_null_defers_to_the_recipe() -> None:
    model = small()
    assert model.config.sampling_steps == 50_000
    assert [model.teacher_forcing(s, 0.3) for s in (0, 25_000, 50_000, 80_000)] == [1.0, 0.5, 0.0, 0.0]
    plain = create_model(PredRNNConfig(hidden=[4, 4], kernel=3, patch=2, sampling_steps=None))
    assert plain.teacher_forcing(10, 0.3) == 0.3


def test_outputs_up_to_t_do_not_see_later_frames() -> None:
    model = small()
    frames = torch.rand(2, 6, 1, 8, 8, dtype=torch.float64)
    out = model(frames, 3, context_frames=3, teacher_forcing=1.0)
    changed = frames.clone()
    changed[:, 4:] = torch.rand_like(changed[:, 4:])
    again = model(changed, 3, context_frames=3, teacher_forcing=1.0)
    assert torch.equal(out[:, :4], again[:, :4]) and not torch.allclose(out[:, 4], again[:, 4])


def test_the_zigzag_memory_and_both_memories_are_used() -> None:
    model = small()
    layers = len(model.cells)
    frames = torch.rand(2, 4, 1, 8, 8, dtype=torch.float64)
    state = model.init_state(2, 8, 8)
    _, state = model.step(frames[:, 0], state)
    # The top layer's M at t-1 enters the bottom layer at t.
    top_memory = state[2 * layers].detach().requires_grad_()
    _, after = model.step(frames[:, 1], (*state[: 2 * layers], top_memory))
    (grad,) = torch.autograd.grad(after[0].sum(), top_memory)  # H^1_t
    assert grad.abs().sum() > 0

    def rollout(cut: str) -> torch.Tensor:
        s, outs = model.init_state(2, 8, 8), []
        for t in range(4):
            if cut == "zigzag":
                s = (*s[: 2 * layers], torch.zeros_like(s[2 * layers]))
            elif cut == "temporal":
                s = (*s[:layers], *(torch.zeros_like(c) for c in s[layers : 2 * layers]), s[2 * layers])
            y, s = model.step(frames[:, t], s)
            outs.append(y)
        return torch.stack(outs, 1)

    full = rollout("")
    assert torch.equal(full, model(frames, 1, context_frames=4, teacher_forcing=1.0)[:, :4])
    for cut in ("zigzag", "temporal"):
        assert (full - rollout(cut)).abs().max() > 1e-6, cut


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.5, 0.0])
def test_fast_path_equals_the_reference_in_values_and_gradients(teacher_forcing: float) -> None:
    model = small(seed=3)
    reference = ReferencePredRNN(model)
    frames = torch.rand(2, 7, 1, 8, 8, dtype=torch.float64)
    outs = []
    for net in (model, reference):
        model.zero_grad()
        out = net(frames, 4, context_frames=3, teacher_forcing=teacher_forcing, generator=torch.Generator().manual_seed(5))
        out.pow(2).mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Moving-MNIST at 16x16."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("predrnn") / "data"
    args = ["prepare", "mmnist", "--out", str(root), "--size", "16", "--train", "16", "--val", "8", "--test", "8",
            "--offline", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return root


@pytest.mark.slow
def test_smoke_recipe_trains_on_its_schedule_evaluates_predicts_and_profiles(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set", f"data.path={data}", "--set", "data.frame_size=[16,16]"]
    short = ["--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--set", "train.log_every=1",
             "--set", "model.sampling_steps=4"]  # fmt: skip
    result = cli("train", SMOKE, "--out", run, "--max-steps", "6", "--quiet", "--device", "cpu", *sets, *short)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    # The family's schedule, not the plateau one (which would hold 1.0 here): 1 - step / 4 per step.
    assert [r["teacher_forcing"] for r in train] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 1 for r in train)

    result = cli("evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    params = expected_parameters([8, 8], 3, 2, 1)
    assert report["model"] == "PredRNN" and report["parameters"] == params and report["num_samples"] == 16
    assert all(math.isfinite(v) for v in report["metrics"].values())

    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(9, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    out = tmp_path / "pred.gif"
    result = cli("predict", clip, "--checkpoint", run, "--steps", "3", "--out", out, "--device", "cpu")
    assert result.code == 0, result.err
    assert iio.imread(out, index=None).shape[0] == 5 + 3

    result = cli("profile", SMOKE, "--no-time", "--json", *sets)
    assert result.code == 0, result.err
    row = json.loads(result.out)[0]
    assert row["arch"] == "predrnn" and row["params"] == params and row["flops_per_step"] == row["flops_per_step_counted"]
