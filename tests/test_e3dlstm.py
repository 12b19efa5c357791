"""The E3D-LSTM family (``arch: e3dlstm``): its size and FLOPs from formulas, causality, the recall gate's
reach (the last tau cell states, never the future), the zigzag memory M, the fast path against the
literal reference, the recipes, the command line end to end (frame prediction and the classifier)
and bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model, registry
from cttlstm_cli.models.e3dlstm import E3DLSTM, E3DLSTMConfig
from cttlstm_cli.models.e3dlstm.reference import ReferenceE3DLSTM
from cttlstm_cli.recipe import load_recipe, recipe_from_dict

from conftest import RECIPES
from synthetic import labelled_dataset

SMOKE = RECIPES / "smoke-e3dlstm.yaml"
#: each E3D-LSTM recipe and the recipe whose data, training and evaluation it copies
RECIPE_BASES = {
    "mmnist-e3dlstm": "mmnist",
    "mmnist-e3dlstm-openstl": "mmnist",
    "kth-e3dlstm": "kth",
    "kth-e3dlstm-openstl": "kth",
    "ssv2-e3dlstm": "ssv2",
    "smoke-e3dlstm": "smoke",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are tiny: a second OpenMP thread only adds a barrier per op, and on cores shared with
    other processes each barrier can wait tens of milliseconds (a conv of 4x4x3 positions took 35 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**changes: object) -> E3DLSTMConfig:
    """A small configuration for fast tests: 3 layers of 4, 2x3x3 kernels, 2x2 patches, tau 2."""
    fields: dict[str, object] = dict(hidden=[4, 4, 4], kernel=(2, 3, 3), window=2, memory_steps=2, patch=2)
    fields.update(changes)
    return E3DLSTMConfig(**fields)


def expected_parameters(cfg: E3DLSTMConfig, image_channels: int) -> int:
    """Encoder, per layer the gate convs (7 from X with their biases, 4 from H, 3 from M, 1 from [C ; M]),
    the LayerNorm's gain and bias and W_1x1x1, then the decoder and the classifier head."""
    volume = cfg.kernel[0] * cfg.kernel[1] * cfg.kernel[2]
    patched = image_channels * cfg.patch**2
    total = patched * cfg.hidden[0] * volume + cfg.hidden[0]
    for c_in, h in zip([cfg.hidden[0], *cfg.hidden], cfg.hidden):
        total += volume * (7 * h * c_in + 4 * h * h + 3 * h * h + h * 2 * h) + 7 * h  # gate convs and biases
        total += 2 * h + 2 * h * h  # LayerNorm gain and bias, W_1x1x1
    total += cfg.hidden[-1] * patched * cfg.window + patched
    if cfg.classes is not None:
        total += cfg.hidden[-1] * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 128 * cfg.classes + cfg.classes
    return total


# -- recipes, size and FLOPs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPE_BASES))
def test_recipes_compare_like_for_like_and_count_parameters_exactly(name: str) -> None:
    recipe, base = load_recipe(RECIPES / f"{name}.yaml"), load_recipe(RECIPES / f"{RECIPE_BASES[name]}.yaml")
    assert isinstance(recipe.model, E3DLSTMConfig) and recipe.name == name
    assert (recipe.data, recipe.train, recipe.eval) == (base.data, base.train, base.eval)
    with torch.device("meta"):  # the size only: no memory, no initialisation
        model = E3DLSTM(recipe.model, recipe.data.channels)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(recipe.model, recipe.data.channels)
    quoted = {"mmnist-e3dlstm": 13_195_600, "kth-e3dlstm": 13_195_600, "mmnist-e3dlstm-openstl": 52_671_120,
              "kth-e3dlstm-openstl": 52_671_120, "ssv2-e3dlstm": 13_418_201, "smoke-e3dlstm": 37_916}  # fmt: skip
    assert count == quoted[name]  # as docs/models/e3dlstm.md says
    assert model.downsampling == recipe.model.patch and model.name == "E3D-LSTM"
    assert model.num_classes == (41 if name == "ssv2-e3dlstm" else None)


@pytest.mark.parametrize(
    "changes,size",
    [
        ({}, (8, 12)),
        (dict(window=3, kernel=(2, 3, 3), memory_steps=3), (8, 8)),
        (dict(window=1, kernel=(1, 1, 3), patch=1, classes=3), (6, 4)),
    ],
)
def test_analytic_flops_equal_torchs_count(changes: dict, size: tuple[int, int]) -> None:
    model = create_model(tiny(**changes), 2)
    assert model.analytic_macs(*size) == model.counted_macs(*size) > 0


def test_flops_quoted_in_the_docs() -> None:
    official, openstl = E3DLSTMConfig(), E3DLSTMConfig(hidden=[128] * 4)
    from cttlstm_cli.models.e3dlstm.flops import analytic_macs

    assert [analytic_macs(official, 1, s, s) for s in (64, 128)] == [9_304_539_136, 67_819_798_528]
    assert [analytic_macs(openstl, 1, s, s) for s in (64, 128)] == [32_064_405_504, 189_460_905_984]
    assert analytic_macs(official.model_copy(update={"classes": 41}), 3, 128, 128) == 68_033_708_032


# -- the algorithm ---------------------------------------------------------------------------------


def test_fast_path_equals_the_literal_reference() -> None:
    torch.manual_seed(0)
    model = create_model(tiny(classes=3, memory_steps=3), 2).double()
    reference = ReferenceE3DLSTM(model)
    registry.check_contract(reference)  # the oracle keeps the same contract
    frames = torch.rand(2, 7, 2, 8, 8, dtype=torch.float64)
    (a, la), (b, lb) = model(frames[:, :4], 3, classify=True), reference(frames[:, :4], 3, classify=True)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)
    mask = torch.tensor([[True, False], [False, True]])  # scheduled sampling: known inputs, then some fed back
    for teacher in (1.0, mask):
        fast, slow = model(frames, 3, 4, teacher), reference(frames, 3, 4, teacher)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    # Training gradients (float32) agree as well.
    model.float()
    grads = []
    for net in (model, ReferenceE3DLSTM(model)):
        model.zero_grad()
        net(frames.float(), 3, 4, 1.0).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_free_running_prediction_is_a_manual_step_by_step_rollout() -> None:
    torch.manual_seed(1)
    model = create_model(tiny(window=3), 1).double()
    frames = torch.rand(2, 4, 1, 8, 8, dtype=torch.float64)
    state = model.init_state(2, 8, 8, dtype=torch.float64)
    for t in range(4):
        y, state = model.step(frames[:, t], state)
    manual = [y]
    for _ in range(2):
        y, state = model.step(y, state)
        manual.append(y)
    torch.testing.assert_close(model(frames, 3), torch.stack(manual, dim=1), rtol=1e-12, atol=1e-12)


def test_outputs_never_depend_on_later_frames() -> None:
    torch.manual_seed(2)
    model = create_model(tiny(window=3, kernel=(3, 3, 3)), 1).double()
    frames = torch.rand(1, 6, 1, 8, 8, dtype=torch.float64)
    base = model(frames, 1, 5, 1.0)  # every input is a ground-truth frame: output t predicts frame t + 1
    for t in range(5):
        changed = frames.clone()
        changed[:, t + 1 :] += torch.rand_like(changed[:, t + 1 :])
        out = model(changed, 1, 5, 1.0)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        if t + 1 < 5:
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def _memories(state: tuple) -> list[tuple[torch.Tensor, ...]]:
    return [memory for _, memory in state[2]]


def test_the_state_keeps_exactly_the_last_tau_cell_states() -> None:
    torch.manual_seed(3)
    tau = 3
    model = create_model(tiny(memory_steps=tau), 1)
    state = model.init_state(1, 8, 8)
    zero = _memories(state)
    history = [[m[0]] for m in zero]  # C_{-1}: the zero cell state
    with torch.no_grad():
        for t in range(6):
            _, state = model.step(torch.rand(1, 1, 8, 8), state)
            for layer, memory in enumerate(_memories(state)):
                history[layer].append(memory[-1])  # C_t is the newest entry
                expected = history[layer][-tau:]
                assert len(memory) == min(tau, t + 2) and all(a is b for a, b in zip(memory, expected))


def test_recall_reads_the_last_tau_memories_and_nothing_older() -> None:
    torch.manual_seed(4)
    tau = 3
    model = create_model(tiny(memory_steps=tau), 1).double()
    state = model.init_state(1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(tau + 2):
            _, state = model.step(torch.rand(1, 1, 8, 8, dtype=torch.float64), state)
    frame = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    out, _ = model.step(frame, state)
    # A memory older than tau steps, put in front of each layer's memory, changes nothing.
    window, m, layers = state
    older = tuple((h, (torch.rand_like(memory[0]) * 10, *memory)) for h, memory in layers)
    assert torch.equal(model.step(frame, (window, m, older))[0], out)
    # Every one of the last tau memories (C_{t-k}, k = 1 .. tau) of every layer reaches the output.
    leaves = tuple((h, tuple(c.clone().requires_grad_() for c in memory)) for h, memory in layers)
    model.step(frame, (window, m, leaves))[0].square().sum().backward()
    for _, memory in leaves:
        assert len(memory) == tau and all(c.grad is not None and c.grad.abs().sum() > 0 for c in memory)
    # ... and so does a perturbation of the oldest one, C_{t-tau}.
    h0, memory0 = layers[0]
    bumped = ((h0, (memory0[0] + 1.0, *memory0[1:])), *layers[1:])
    assert not torch.allclose(model.step(frame, (window, m, bumped))[0], out)


def test_the_spatio_temporal_memory_zigzags_through_the_stack() -> None:
    torch.manual_seed(5)
    model = create_model(tiny(), 1)
    state = model.init_state(1, 8, 8)
    with torch.no_grad():
        _, state = model.step(torch.rand(1, 1, 8, 8), state)
    window, m, layers = state
    m = m.clone().requires_grad_()  # M of the top layer at step t - 1
    out, (_, m_next, _) = model.step(torch.rand(1, 1, 8, 8), (window, m, layers))
    out.sum().backward(retain_graph=True)
    assert m.grad is not None and m.grad.abs().sum() > 0  # ... enters step t (at the bottom)
    model.zero_grad()
    m_next.sum().backward()  # the M a step hands on has passed through every layer, bottom to top
    for cell in model.cells:
        assert cell.conv_m.weight.grad is not None and cell.conv_m.weight.grad.abs().sum() > 0
    assert model.cells[-1].conv_x.weight.grad.abs().sum() > 0


def test_the_classifier_reads_the_top_hidden_state_and_trains_the_whole_stack() -> None:
    torch.manual_seed(6)
    model = create_model(tiny(classes=3), 1)
    frames = torch.rand(2, 6, 1, 8, 8)
    outputs, logits = model(frames, 3, 3, 1.0, classify=True)
    assert outputs.shape == (2, 5, 1, 8, 8) and logits.shape == (2, 3)
    state = model.init_state(2, 8, 8)
    for t in range(5):
        _, state = model.step(frames[:, t], state)
    torch.testing.assert_close(model.classify(state), logits)  # the final state's top H
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert model.encoder.weight.grad.abs().sum() > 0
    assert all(cell.conv_x.weight.grad.abs().sum() > 0 for cell in model.cells)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,message",
    [
        ({"hidden": [8, 4]}, r"model\.hidden: all layers must have the same width"),
        ({"kernel": [2, 4, 3]}, r"model\.kernel: height and width must be odd"),
        ({"kernel": [3, 3, 3]}, r"model\.kernel's temporal depth \(3\) exceeds model\.window \(2\)"),
        ({"patch": 0}, r"model\.patch: Input should be greater than or equal to 1"),
        ({"tau": 3}, r"model\.tau: unknown key"),
    ],
)
def test_strict_configuration(model: dict, message: str) -> None:
    with pytest.raises(CttlstmError, match=message):
        recipe_from_dict({"model": {"arch": "e3dlstm", **model}})


def test_a_frame_size_that_is_not_whole_patches_is_refused() -> None:
    model = create_model(tiny(patch=4), 1)
    with pytest.raises(CttlstmError, match=r"data\.frame_size 8x10 .*multiples of 4.*model\.patch"):
        model(torch.rand(1, 2, 1, 8, 10))


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmnist16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("e3dlstm") / "data"
    sizes = ["--size", "16", "--train", "16", "--val", "8", "--test", "8"]
    assert main(["prepare", "mmnist", "--out", str(root), *sizes, "--offline", "--quiet"]) == 0
    return root


def _small(data: Path) -> list[str]:
    sets = [f"data.path={data}", "data.frame_size=[16,16]", "train.epoch_clips=16", "train.val_clips=8"]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.slow
def test_smoke_recipe_trains_evaluates_predicts_and_profiles(cli, mmnist16: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli("train", SMOKE, "--out", run, "--max-steps", "2", "--quiet", "--device", "cpu", *_small(mmnist16))
    assert result.code == 0, result.err
    assert (run / "best.pt").is_file() and "arch: e3dlstm" in (run / "recipe.yaml").read_text()

    result = cli("evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    cfg = load_recipe(SMOKE).model
    assert report["model"] == "E3D-LSTM" and report["parameters"] == expected_parameters(cfg, 1)
    assert report["num_samples"] == 16 and set(report["metrics"]) == {"mse", "psnr", "ssim"}

    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(9, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    result = cli("predict", clip, "--checkpoint", run, "--steps", "3", "--out", tmp_path / "pred.gif")
    assert result.code == 0, result.err
    assert iio.imread(tmp_path / "pred.gif", index=None).shape[0] == 5 + 3

    result = cli("profile", SMOKE, "--no-time", "--json", "--set", "data.frame_size=[16,16]")
    assert result.code == 0, result.err
    row = json.loads(result.out)[0]
    assert row["arch"] == "e3dlstm" and row["model"] == "E3D-LSTM" and row["params"] == report["parameters"]
    assert row["flops_analytic"] and row["flops_per_step"] == row["flops_per_step_counted"]


@pytest.mark.slow
def test_classifier_trains_on_prediction_and_cross_entropy_and_reports_accuracy(cli, tmp_path: Path) -> None:
    data = labelled_dataset(tmp_path / "ssv2", size=16)
    run = tmp_path / "run"
    sets = ["model.classes=3", "data.dataset=ssv2", f"data.path={data}", "data.frame_size=[16,16]",
            "data.observed_fraction=0.5", "train.epoch_clips=8", "train.val_clips=null", "train.batch_size=4",
            "eval.batch_size=4", "train.prediction_weight=0.5"]  # fmt: skip
    args = [arg for s in sets for arg in ("--set", s)]
    result = cli("train", SMOKE, "--out", run, "--max-steps", "2", "--quiet", "--device", "cpu", *args)
    assert result.code == 0, result.err
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    # lambda * L_prediction + cross-entropy, and the cross-entropy of 3 classes starts near ln 3 ~ 1.1
    assert losses and all(loss > 1.0 for loss in losses)
    report = json.loads(cli("evaluate", run, "--json", "--quiet", "--device", "cpu").out)
    assert report["model"] == "E3D-LSTM" and report["accuracy"]["num_samples"] == 6
    assert 0.0 <= report["accuracy"]["top1"] <= 1.0 and set(report["accuracy"]["per_group"]) == {"moving", "falling"}


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.patch=3", r"error: data\.frame_size 16x16 .*multiples of 3.*model\.patch"),
        ("model.window=6", r"error: model\.window \(6\) is longer than the context \(data\.input_frames = 5\); "
                           r"use a window of at most data\.input_frames frames"),
    ],
)
def test_bad_input_stops_train_in_one_line_writing_nothing(
    cli, mmnist16: Path, tmp_path: Path, override: str, message: str
) -> None:
    run = tmp_path / "run"
    result = cli("train", SMOKE, "--out", run, "--quiet", "--device", "cpu", "--set", override, *_small(mmnist16))
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and re.fullmatch(message, lines[0]), result.err
    assert not run.exists()
