"""PredRNN-V2 (``arch: predrnnv2``): the published counts, the memory-decoupling term and the loss it joins,
reverse scheduled sampling (its schedule, the context mask, causality, micro-batches), the fast path against
the literal reference, recipes, and every command on the smoke recipe."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import Sampling, create_model, model_names
from cttlstm_cli.models.losses import prediction_loss
from cttlstm_cli.models.predrnn import PredRNN, PredRNNConfig
from cttlstm_cli.models.predrnn.flops import parameter_count as predrnn_parameter_count
from cttlstm_cli.models.predrnnv2 import PredRNNV2, PredRNNV2Config
from cttlstm_cli.models.predrnnv2.flops import parameter_count
from cttlstm_cli.models.predrnnv2.reference import ReferencePredRNNV2
from cttlstm_cli.recipe import load_recipe, recipe_from_dict
from cttlstm_cli.training.step import train_step

from conftest import RECIPES
from test_predrnn import data, expected_parameters  # noqa: F401 - data: PredRNN's tiny Moving-MNIST fixture

SMOKE = RECIPES / "smoke-predrnnv2.yaml"
SMALL = {"hidden": [4, 4, 4], "kernel": 3, "patch": 2}


def small(seed: int = 0, **fields) -> PredRNNV2:
    torch.manual_seed(seed)
    return create_model(PredRNNV2Config(**{**SMALL, **fields}), 1).double()


def test_published_configuration_has_the_published_counts() -> None:
    assert "predrnnv2" in model_names()
    model = create_model(PredRNNV2Config(), 1)
    params = sum(p.numel() for p in model.parameters())
    # PredRNN's 23,838,720 and the 128 x 128 adapter.
    assert params == parameter_count(model.config, 1) == expected_parameters([128] * 4, 5, 4, 1) + 128 * 128 == 23_855_104
    assert predrnn_parameter_count(model.config, 1) == 23_838_720
    # The adapter runs only in training: one prediction step costs PredRNN's 6.10 GMACs, 116 G per 10 -> 10.
    macs = model.macs_per_step(64, 64)
    assert macs == model.counted_macs(64, 64) == create_model(PredRNNConfig(), 1).macs_per_step(64, 64) == 6_102_712_320
    assert round(19 * macs / 1e9) == 116
    assert model.name == "PredRNN-V2" and model.downsampling == 4


@pytest.mark.parametrize(
    "model,message",
    [
        ({"hidden": [8, 4]}, "model.hidden: every layer must have the same width"),
        ({"sampling_steps": 100}, "model.sampling_steps: PredRNN-V2 has no linear schedule"),
        ({"sampling_start": 50_000, "sampling_end": 50_000}, "sampling_end (50000) must come after sampling_start (50000)"),
        ({"sampling_alpha": 0}, "model.sampling_alpha: "),
        ({"sampling_probability": 1.5}, "model.sampling_probability: "),
        ({"decoupling_weight": -0.1}, "model.decoupling_weight: "),
        ({"sampling_start": -1}, "model.sampling_start: "),
        ({"beta": 0.1}, "model.beta: unknown key"),
    ],
)
def test_bad_config_names_the_key_in_one_line(model: dict, message: str) -> None:
    with pytest.raises(CttlstmError, match=re.escape(message)) as err:
        recipe_from_dict({"model": {"arch": "predrnnv2", **model}})
    assert "\n" not in str(err.value)


def test_recipes_validate_in_the_published_configurations() -> None:
    for name, size, beta, schedule in (
        ("mmnist-predrnnv2", (64, 64), 0.1, (25_000, 50_000, 5_000.0)),
        ("kth-predrnnv2", (128, 128), 0.01, (5_000, 50_000, 2_000.0)),
    ):
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        cfg = recipe.model
        assert isinstance(cfg, PredRNNV2Config) and recipe.data.frame_size == size
        assert parameter_count(cfg, 1) == 23_855_104 and cfg.decoupling_weight == beta
        assert (cfg.sampling_start, cfg.sampling_end, cfg.sampling_alpha, cfg.sampling_probability) == (*schedule, 0.5)
        assert recipe.train.loss == "l2"


def test_reverse_scheduled_sampling_follows_the_paper() -> None:
    model = small()
    schedule = {step: model.teacher_forcing(step, 0.3) for step in (0, 24_999, 25_000, 30_000, 49_999, 50_000, 60_000)}
    assert schedule[0] == schedule[24_999] == schedule[25_000] == Sampling(future=0.5, context=0.5)
    # 5,000 steps in: the future's probability is 0.5 * 20,000 / 25,000, the context's 1 - 0.5 e^-1.
    assert schedule[30_000].future == pytest.approx(0.4, abs=1e-15)
    assert schedule[30_000].context == pytest.approx(1 - 0.5 * math.exp(-1), abs=1e-15)
    assert schedule[49_999].future == pytest.approx(0.5 / 25_000) and schedule[49_999].context == pytest.approx(1 - 0.5 * math.exp(-24_999 / 5_000))
    assert schedule[50_000] == schedule[60_000] == Sampling(future=0.0, context=1.0)


def _with_predrnn_weights(model: PredRNNV2) -> PredRNN:
    plain = create_model(PredRNNConfig(**SMALL), 1).double()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("adapter.")}
    plain.load_state_dict(state)
    return plain


def test_the_adapter_changes_no_prediction() -> None:
    model = small(seed=1)
    plain = _with_predrnn_weights(model)
    frames = torch.rand(2, 7, 1, 8, 8, dtype=torch.float64)
    for net in (model, plain):
        net.eval()
    with torch.no_grad():
        assert torch.equal(model(frames[:, :3], future_frames=4), plain(frames[:, :3], future_frames=4))
    model.train()
    plain.train()
    before = model(frames, 4, context_frames=3, teacher_forcing=0.5, generator=torch.Generator().manual_seed(2))
    term = model.decoupling
    assert torch.equal(before, plain(frames, 4, context_frames=3, teacher_forcing=0.5, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        model.adapter.weight.mul_(-3.0).add_(0.1)
    after = model(frames, 4, context_frames=3, teacher_forcing=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(before, after) and not torch.allclose(term, model.decoupling)


def test_the_decoupling_term_is_its_definition_on_a_hand_checked_case() -> None:
    model = create_model(PredRNNV2Config(hidden=[2], kernel=1, patch=1), 1).double()
    with torch.no_grad():
        model.adapter.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    # Two samples, two channels, 1x2 pixels; the adapter is the identity.
    delta_c = torch.tensor([[[[1.0, 0.0]], [[3.0, 4.0]]], [[[2.0, 2.0]], [[1.0, 0.0]]]], dtype=torch.float64)
    delta_m = torch.tensor([[[[1.0, 1.0]], [[-4.0, 3.0]]], [[[-5.0, -5.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    # cos per (sample, channel): 1/sqrt(2), 0 (orthogonal), -1 (opposite, |.| = 1), 0 (an all-zero increment).
    expected = (1 / math.sqrt(2) + 0 + 1 + 0) / 4
    assert model.similarity(delta_c, delta_m).item() == pytest.approx(expected, abs=1e-15)
    assert ReferencePredRNNV2(model).similarity(delta_c, delta_m).item() == pytest.approx(expected, abs=1e-15)
    # A scaled adapter changes nothing (each side is normalised); a mixing one does.
    with torch.no_grad():
        model.adapter.weight.mul_(7.0)
    assert model.similarity(delta_c, delta_m).item() == pytest.approx(expected, abs=1e-15)


def test_the_training_forward_averages_the_term_over_layers_and_steps() -> None:
    model = small(seed=2)
    frames = torch.rand(2, 6, 1, 8, 8, dtype=torch.float64)
    seen: list[torch.Tensor] = []
    original = model.similarity
    model.similarity = lambda dc, dm: seen.append(original(dc, dm)) or seen[-1]  # type: ignore[method-assign]
    model(frames, 3, context_frames=3, teacher_forcing=1.0)
    assert len(seen) == 3 * 5  # three layers, I + F - 1 = 5 steps
    torch.testing.assert_close(model.decoupling, torch.stack(seen).mean(), rtol=0, atol=0)
    # Prediction and evaluation-mode forwards leave no term.
    model(frames[:, :3], future_frames=2)
    assert model.decoupling is None
    model.eval()
    model(frames, 3, context_frames=3, teacher_forcing=1.0)
    assert model.decoupling is None and model.increments is None


def test_the_loss_adds_beta_times_the_term_once() -> None:
    model = small(seed=3, decoupling_weight=0.25)
    frames = torch.rand(2, 6, 1, 8, 8, dtype=torch.float64)
    targets = frames[:, 1:]
    outputs = model(frames, 3, context_frames=3, teacher_forcing=Sampling(0.5, 0.5), generator=torch.Generator().manual_seed(0))
    term = model.decoupling
    assert term is not None and 0 < term.item() < 1
    loss = model.loss(outputs, targets, "l2")
    torch.testing.assert_close(loss, prediction_loss(outputs.float(), targets.float(), "l2") + 0.25 * term)
    loss.backward()
    assert model.adapter.weight.grad is not None and model.adapter.weight.grad.abs().sum() > 0
    # The term served that loss; without a new training forward the loss is the prediction loss alone.
    assert model.decoupling is None
    torch.testing.assert_close(model.loss(outputs.detach(), targets, "l2"), prediction_loss(outputs.float(), targets.float(), "l2"))


def test_sampling_of_a_plain_probability_is_bit_identical_for_every_family() -> None:
    frames = torch.rand(3, 7, 1, 8, 8, dtype=torch.float64)
    for model in (small(seed=4), _with_predrnn_weights(small(seed=4))):
        for p in (0.0, 0.5, 1.0):
            a = model(frames, 4, context_frames=3, teacher_forcing=p, generator=torch.Generator().manual_seed(7))
            b = model(frames, 4, context_frames=3, teacher_forcing=Sampling(p), generator=torch.Generator().manual_seed(7))
            assert torch.equal(a, b)


def test_the_context_mask_feeds_predictions_and_never_a_later_frame() -> None:
    model = small(seed=5).eval()
    context, future = 4, 3
    frames = torch.rand(2, context + future, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        # Every context input from the model's own prediction, no future truth: the model seeded with frame 0 alone.
        own = model(frames, future, context_frames=context, teacher_forcing=Sampling(0.0, 0.0))
        torch.testing.assert_close(own, model(frames[:, :1], future_frames=context + future - 1), rtol=1e-12, atol=1e-12)
        # Every context input the truth: plain scheduled sampling.
        assert torch.equal(model(frames, future, context_frames=context, teacher_forcing=Sampling(1.0, 1.0)),
                           model(frames, future, context_frames=context, teacher_forcing=1.0))  # fmt: skip
        # Per clip and step: clip 1 takes its prediction at step 2 only, so steps 0-1 equal the plain forward.
        mask = torch.tensor([[True, True, True], [True, False, True]])
        mixed = model(frames, future, context_frames=context, teacher_forcing=Sampling(1.0, mask))
        plain = model(frames, future, context_frames=context, teacher_forcing=1.0)
        assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[1, :2], plain[1, :2])
        assert not torch.allclose(mixed[1, 2:], plain[1, 2:])
        # Causality under context sampling: output t never sees frames after t.
        sampling = Sampling(torch.tensor([[True, False], [False, True]]), torch.tensor([[False, True, False], [True, False, True]]))
        out = model(frames, future, context_frames=context, teacher_forcing=sampling)
        for t in range(context + future - 2):
            later = frames.clone()
            later[:, t + 1 :] = torch.rand_like(later[:, t + 1 :])
            again = model(later, future, context_frames=context, teacher_forcing=sampling)
            assert torch.equal(again[:, : t + 1], out[:, : t + 1]), t


@pytest.mark.parametrize("sampling", [Sampling(1.0, 1.0), Sampling(0.5, 0.5), Sampling(0.0, 0.3)])
def test_fast_path_equals_the_reference_with_the_decoupling_loss(sampling: Sampling) -> None:
    model = small(seed=6)
    reference = ReferencePredRNNV2(model)
    frames = torch.rand(2, 7, 1, 8, 8, dtype=torch.float64)
    results = []
    for net in (model, reference):
        model.zero_grad()
        out = net(frames, 4, context_frames=3, teacher_forcing=sampling, generator=torch.Generator().manual_seed(5))
        term = net.decoupling.detach()
        loss = net.loss(out, frames[:, 1:], "l1+l2")
        loss.backward()
        results.append((out.detach(), term, loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, term_a, loss_a, grads_a), (out_b, term_b, loss_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(term_a, term_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-10, atol=1e-12)
    for (name, _), a, b in zip(model.named_parameters(), grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_micro_batches_take_the_same_step_as_one_batch() -> None:
    recipe = load_recipe(SMOKE, ["data.frame_size=[8,8]", "data.input_frames=3", "data.future_frames=3"])
    clips = torch.rand(4, 6, 1, 8, 8, dtype=torch.float64)
    params = []
    for micro in (None, 2):
        model = small(seed=7)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_step(model, optimizer, clips, recipe, Sampling(0.5, 0.5), generator=torch.Generator().manual_seed(3), micro_batch=micro)
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_smoke_recipe_trains_on_its_schedule_evaluates_predicts_and_profiles(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set", f"data.path={data}", "--set", "data.frame_size=[16,16]"]
    short = ["--set", "train.epochs=2", "--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--set", "train.log_every=1",
             "--set", "model.sampling_start=1", "--set", "model.sampling_end=3", "--set", "model.sampling_alpha=1"]  # fmt: skip
    result = cli("train", SMOKE, "--out", run, "--quiet", "--device", "cpu", *sets, *short)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    # Two epochs of two steps, on the family's reverse schedule (the plateau one would hold 1.0 here).
    assert [r["teacher_forcing"] for r in train] == [0.5, 0.5, 0.25, 0.0]
    assert [r.get("context_truth") for r in train] == [0.5, 0.5, 1 - 0.5 * math.exp(-1), None]
    assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 1 for r in train)
    assert [r["teacher_forcing"] for r in records if r["kind"] == "val"] == [0.25, 0.0]

    result = cli("evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    params = expected_parameters([8, 8], 3, 2, 1) + 8 * 8
    assert report["model"] == "PredRNN-V2" and report["parameters"] == params and report["num_samples"] == 16
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
    assert row["arch"] == "predrnnv2" and row["params"] == params and row["flops_per_step"] == row["flops_per_step_counted"]
