"""``cttlstm profile``: parameters, FLOPs (analytic == counted, close to the paper) and JSON."""

from __future__ import annotations

import json

import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.models.convrnn.flops import analytic_macs
from cttlstm_cli.profiling import profile_recipe
from cttlstm_cli.models.convrnn import ConvRNNConfig
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES

# Paper Table 2 / design §6: multiplications for one-step prediction per sample.
PAPER_GFLOPS = {("convttlstm", 64): 10.76, ("convttlstm", 120): 37.83, ("convlstm", 64): 15.88, ("convlstm", 120): 55.83}


@pytest.mark.parametrize("cell,size", list(PAPER_GFLOPS))
def test_flops_match_paper_within_3_percent(cell: str, size: int) -> None:
    macs = analytic_macs(ConvRNNConfig(cell=cell), 1, size, size)
    assert abs(macs / 1e9 / PAPER_GFLOPS[cell, size] - 1) < 0.03


@pytest.mark.parametrize(
    "cfg",
    [
        dict(cell="convttlstm"),
        dict(cell="convttlstm", tt_padding="stepwise"),
        dict(cell="convttlstm", ctt_form="parallel"),
        dict(cell="convttlstm", ctt_order=2, history=4, rank=4, kernel=3),
        dict(cell="convttlstm", ctt_order=3, history=3, ctt_kernel=1),
        dict(cell="convttlstm", ctt_order=3, history=3, ctt_kernel=3, ctt_form="parallel"),
        dict(cell="convlstm"),
        dict(cell="convlstm_ttd"),
    ],
)
def test_analytic_flops_equal_torch_flop_counter(cfg: dict) -> None:
    config = ConvRNNConfig(**cfg)
    model = create_model(config, image_channels=1)
    assert analytic_macs(config, 1, 24, 20) == model.analytic_macs(24, 20) == model.counted_macs(24, 20)


@pytest.mark.slow
def test_profile_json(cli) -> None:
    result = cli("profile", RECIPES / "mmnist.yaml", RECIPES / "mmnist-convlstm.yaml", RECIPES / "kth.yaml", "--no-time", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert [r["recipe"] for r in rows] == ["mmnist", "mmnist-convlstm", "kth"]
    assert [r["params"] for r in rows] == [2_687_281, 3_973_201, 2_687_281]
    assert all(r["epoch_10k_seconds"] is None and r["recipe_epoch_seconds"] is None and r["epoch_seconds"] is None for r in rows)
    assert abs(rows[0]["flops_per_step"] / 10.76e9 - 1) < 0.03
    assert abs(rows[1]["flops_per_step"] / 15.88e9 - 1) < 0.03
    # FLOPs scale with frame area: 128^2 is (128/120)^2 times the paper's 120^2 figure.
    assert abs(rows[2]["flops_per_step"] / (37.83e9 * (128 / 120) ** 2) - 1) < 0.03


def test_profile_times_an_epoch(cli) -> None:
    result = cli("profile", "smoke", "--json", "--device", "cpu", "--batch-size", "2", "--timed-steps", "1")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)
    assert row["step_seconds"] > 0
    # The paper's epoch is 10,000 clips whatever the recipe's: 5,000 steps at batch 2.
    assert row["epoch_10k_seconds"] == pytest.approx(row["step_seconds"] * 5000)
    assert row["epoch_seconds"] == row["epoch_10k_seconds"]  # the older key, same meaning as compare reads it
    # The smoke recipe's own epoch is 64 clips: 32 steps.
    assert row["epoch_clips"] == 64 and row["recipe_epoch_seconds"] == pytest.approx(row["step_seconds"] * 32)
    assert row["peak_memory_bytes"] > 0


def test_profile_table_labels_the_epochs_truthfully(cli) -> None:
    result = cli("profile", "smoke", "--device", "cpu", "--batch-size", "2", "--timed-steps", "1")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    step = float(next(ln for ln in lines if "s / training step" in ln).split("│")[2])
    paper = next(ln for ln in lines if "10,000-clip epoch" in ln)
    own = next(ln for ln in lines if "recipe epoch" in ln)
    # the step time is shown to 1 ms: the minutes it gives are as exact as that
    assert float(paper.split("│")[2]) == pytest.approx(step * 5000 / 60, abs=0.0005 * 5000 / 60 + 0.005)
    assert "(64 clips)" in own
    assert float(own.split("│")[2].split("(")[0]) == pytest.approx(step * 32 / 60, abs=0.0005 * 32 / 60 + 0.005)
    assert "10k-clip" not in result.out


def test_profile_table_and_overrides(cli) -> None:
    result = cli("profile", "smoke", "--no-time", "--set", "model.cell=convlstm")
    assert result.code == 0, result.err
    assert "ConvLSTM" in result.out and "parameters" in result.out


@pytest.mark.parametrize(
    "args,message",
    [
        (["profile", "nope.yaml"], "error: recipe not found: nope.yaml"),
        (["profile", "smoke", "--set", "model.history=0"], "error: "),
        (["profile", "smoke", "--device", "cuda:7"], "error: device 'cuda:7'"),
        (["profile", "smoke", "--batch-size", "zero"], "error: Invalid value for '--batch-size'"),
    ],
)
def test_profile_bad_input_is_one_line(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.code == 2
    assert result.err.startswith(message)
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


@pytest.mark.slow
def test_timed_steps_run_the_model_as_training_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """Profile times the compiled, channels-last model when the recipe trains it that way."""
    seen = []
    real_compile = torch.compile

    def compile_for_test(model, mode=None, **kwargs):
        seen.append((mode, model.cells["b0l0"].state_conv.weight.is_contiguous(memory_format=torch.channels_last)))
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_for_test)
    recipe = load_recipe(RECIPES / "smoke.yaml", ["train.precision=bf16", "train.compile=max-autotune"])
    result = profile_recipe(recipe, torch.device("cpu"), batch_size=2, timed_steps=1)
    fp32 = load_recipe(RECIPES / "smoke.yaml", ["train.compile=true"])
    profile_recipe(fp32, torch.device("cpu"), batch_size=2, timed_steps=1)
    assert seen == [("max-autotune", True), ("default", False)] and result.step_seconds > 0


def test_profile_splits_a_batch_that_does_not_fit_like_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli import profiling
    from cttlstm_cli.training import memory

    recipe = load_recipe(RECIPES / "smoke.yaml", ["train.micro_batch=4"])  # 4 does not divide 2: ignored
    per_clip = memory.activation_bytes_per_clip(create_model(recipe.model), recipe, torch.device("cpu"))
    # room for one clip's activations (and the clips and a prediction step), not for two
    room = int(1.5 * per_clip * memory.SAFETY / memory.BUDGET_FRACTION)
    monkeypatch.setattr(memory, "available_memory", lambda device: room)
    used = []
    real_step = profiling.train_step
    monkeypatch.setattr(profiling, "train_step", lambda *a, **kw: (used.append(kw["micro_batch"]), real_step(*a, **kw))[1])
    result = profile_recipe(recipe, torch.device("cpu"), batch_size=2, timed_steps=1)
    assert used == [1, 1] and result.step_seconds > 0
    used.clear()
    monkeypatch.setattr(memory, "available_memory", lambda device: 100 * room)
    profile_recipe(load_recipe(RECIPES / "smoke.yaml", ["train.micro_batch=2"]), torch.device("cpu"), batch_size=4, timed_steps=1)
    assert used == [2, 2]
