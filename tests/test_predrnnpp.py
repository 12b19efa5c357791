"""PredRNN++ (``arch: predrnnpp``): parameter and FLOP counts, causality, the zigzag memory and the
gradient highway, the fast path against the literal reference, recipes, and every command."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model, model_names
from cttlstm_cli.models.layers.patches import depth_to_space, space_to_depth
from cttlstm_cli.models.predrnnpp import PredRNNPP, PredRNNPPConfig
from cttlstm_cli.models.predrnnpp.flops import parameter_count
from cttlstm_cli.models.predrnnpp.reference import ReferencePredRNNPP, reference_patches, reference_unpatch
from cttlstm_cli.recipe import load_recipe, recipe_from_dict

from conftest import RECIPES

SMOKE = RECIPES / "smoke-predrnnpp.yaml"
#: a small network with three different widths, so that W3 really changes M's width at every layer
SMALL = dict(hidden=[4, 3, 5], kernel=3, patch=2)


def small(layer_norm: bool = True, channels: int = 1, seed: int = 0) -> PredRNNPP:
    torch.manual_seed(seed)
    return create_model(PredRNNPPConfig(**SMALL, layer_norm=layer_norm), channels).double()


def expected_parameters(hidden: list[int], kernel: int, patch: int, channels: int, layer_norm: bool) -> int:
    """Paper Eq. 1-3 by hand: per layer W1 [X,H,C]->3n, W2 [X,C,M']->3n, W3 1x1 M'->n, W4 [X,C,M]->n,
    W5 1x1 [C,M]->n (each with a bias); the highway's four k x k convs (z -> z, two biases); a 1x1 head."""
    k2, x = kernel * kernel, channels * patch * patch
    total = 0
    for layer, n in enumerate(hidden):
        c = x if layer == 0 else hidden[layer - 1]
        m = hidden[-1] if layer == 0 else hidden[layer - 1]  # M arrives from the top (zigzag) or from below
        total += (c + n + n) * 3 * n * k2 + 3 * n
        total += (c + n + m) * 3 * n * k2 + 3 * n
        total += m * n + n
        total += (c + n + n) * n * k2 + n
        total += (n + n) * n + n
        if layer_norm:
            total += 2 * (3 * n + 3 * n + n)
    z = hidden[0]
    total += 4 * z * z * k2 + 2 * z + (4 * z if layer_norm else 0)
    return total + hidden[-1] * x + x


# -- counts --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official() -> PredRNNPP:
    """The authors' Moving-MNIST configuration (the config's defaults)."""
    torch.manual_seed(0)
    return create_model(PredRNNPPConfig(), 1, check=False)


def test_registered_and_parameter_counts_are_exact(official: PredRNNPP) -> None:
    assert "predrnnpp" in model_names() and official.name == "PredRNN++" and official.downsampling == 4
    count = sum(p.numel() for p in official.parameters())
    assert count == expected_parameters([128, 64, 64, 64], 5, 4, 1, True) == 14_683_088
    assert abs(count / 15.05e6 - 1) < 0.03  # Conv-TT-LSTM paper, Table 2; the rest is in docs/models/predrnnpp.md
    openstl = PredRNNPPConfig(hidden=[128] * 4, layer_norm=False)
    assert parameter_count(openstl, 1) == expected_parameters([128] * 4, 5, 4, 1, False) == 33_739_536
    smoke = dict(hidden=[8, 8], kernel=3, patch=2, layer_norm=True)
    for kwargs, channels in [(dict(SMALL, layer_norm=True), 1), (dict(SMALL, layer_norm=False), 3), (smoke, 1)]:
        model = create_model(PredRNNPPConfig(**kwargs), channels, check=False)
        count = sum(p.numel() for p in model.parameters())
        assert count == expected_parameters(**kwargs, channels=channels) == parameter_count(model.config, channels)


def test_analytic_macs_equal_torchs_count(official: PredRNNPP) -> None:
    for layer_norm, channels, (h, w) in [(True, 1, (8, 8)), (False, 3, (12, 6))]:
        model = small(layer_norm, channels)
        assert model.analytic_macs(h, w) == model.counted_macs(h, w)
    # The official network's count (docs/models/predrnnpp.md); torch's count of it agrees but takes seconds.
    assert official.analytic_macs(64, 64) == 3_756_785_664
    assert official.analytic_macs(128, 128) == 4 * 3_756_785_664  # KTH: four times the pixels


def test_recipes_validate_and_name_the_family() -> None:
    expected = {
        "mmnist-predrnnpp": ([128, 64, 64, 64], True, 14_683_088, (64, 64)),
        "kth-predrnnpp": ([128, 64, 64, 64], True, 14_683_088, (128, 128)),
        "mmnist-predrnnpp-openstl": ([128] * 4, False, 33_739_536, (64, 64)),
        "kth-predrnnpp-openstl": ([128] * 4, False, 33_739_536, (128, 128)),
        "smoke-predrnnpp": ([8, 8], True, None, (32, 32)),
    }
    for name, (hidden, layer_norm, params, size) in expected.items():
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        base = load_recipe(RECIPES / f"{name.split('-')[0]}.yaml")
        cfg = recipe.model
        assert isinstance(cfg, PredRNNPPConfig) and (cfg.hidden, cfg.layer_norm) == (hidden, layer_norm)
        assert recipe.data.frame_size == size
        assert (recipe.data, recipe.train, recipe.eval) == (base.data, base.train, base.eval)  # like-for-like
        if params is not None:
            assert parameter_count(cfg, recipe.data.channels) == params


@pytest.mark.parametrize(
    "model,message",
    [
        ({"kernel": 4}, "model.kernel: must be odd"),
        ({"hidden": [8]}, "model.hidden: needs at least two layers"),
        ({"hidden": [8, 0]}, "model.hidden: every entry must be >= 1"),
        ({"patch": 0}, "model.patch: "),
        ({"depth": 3}, "model.depth: unknown key"),
    ],
)
def test_bad_config_names_the_key(model: dict, message: str) -> None:
    with pytest.raises(CttlstmError, match=message.replace(".", r"\.")):
        recipe_from_dict({"model": {"arch": "predrnnpp", **model}})


# -- patches ---------------------------------------------------------------------------------------


def test_patches_match_the_literal_reshape_and_invert() -> None:
    frames = torch.rand(2, 3, 3, 8, 12)
    patched = space_to_depth(frames, 4)
    assert patched.shape == (2, 3, 48, 2, 3)
    torch.testing.assert_close(patched[:, 1], reference_patches(frames[:, 1], 4), rtol=0, atol=0)
    # channel c*p*p + i*p + j holds pixel (i, j) of every patch
    assert torch.equal(patched[0, 0, 1 * 16 + 2 * 4 + 3, 1, 2], frames[0, 0, 1, 4 + 2, 8 + 3])
    assert torch.equal(depth_to_space(patched, 4), frames)
    assert torch.equal(reference_unpatch(patched[:, 0], 4), frames[:, 0])
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        space_to_depth(torch.rand(1, 1, 8, 10), 4)


# -- the network -----------------------------------------------------------------------------------


def test_outputs_up_to_t_do_not_see_later_frames() -> None:
    model = small()
    clips = torch.rand(2, 7, 1, 8, 8, dtype=torch.float64)
    out = model(clips, 3, context_frames=4, teacher_forcing=1.0)  # every input known: outputs 0..5
    t = 2
    changed = clips.clone()
    changed[:, t + 1 :] = torch.rand_like(changed[:, t + 1 :])
    again = model(changed, 3, context_frames=4, teacher_forcing=1.0)
    assert torch.equal(out[:, : t + 1], again[:, : t + 1])
    assert not torch.allclose(out[:, t + 1], again[:, t + 1])


def test_the_zigzag_memory_and_the_highway_are_connected() -> None:
    model = small()
    layers = len(model.cells)
    frames = torch.rand(2, 4, 1, 8, 8, dtype=torch.float64)
    state = model.init_state(2, 8, 8)
    _, state = model.step(frames[:, 0], state)
    # The top layer's M at t-1 is an input of the bottom layer at t (and of nothing else there).
    top_memory = state[2 * layers].detach().requires_grad_()
    _, after = model.step(frames[:, 1], (*state[: 2 * layers], top_memory, state[-1]))
    (grad,) = torch.autograd.grad(after[0].sum(), top_memory)  # H^1_t
    assert grad.abs().sum() > 0

    # Cutting the zigzag (M^L_{t-1} -> layer 1 replaced by zeros) changes the predictions.
    def rollout(cut: bool) -> torch.Tensor:
        s, outs = model.init_state(2, 8, 8), []
        for t in range(4):
            if cut:
                s = (*s[: 2 * layers], torch.zeros_like(s[2 * layers]), s[-1])
            y, s = model.step(frames[:, t], s)
            outs.append(y)
        return torch.stack(outs, 1)

    assert torch.equal(rollout(False), model(frames, 1, context_frames=4, teacher_forcing=1.0)[:, :4])
    assert (rollout(False) - rollout(True)).abs().max() > 1e-6

    # The highway's parameters, on both its input and its state path, are trained.
    out = model(torch.rand(2, 6, 1, 8, 8, dtype=torch.float64), 3, context_frames=3, teacher_forcing=0.0)
    out.pow(2).mean().backward()
    for p in model.highway.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_free_running_prediction_equals_a_manual_rollout() -> None:
    model = small(layer_norm=False, channels=2)
    context = torch.rand(3, 4, 2, 6, 10, dtype=torch.float64)
    predicted = model(context, future_frames=3)
    state = model.init_state(3, 6, 10)
    for t in range(4):
        y, state = model.step(context[:, t], state)
    manual = [y]
    for _ in range(2):
        y, state = model.step(y, state)
        manual.append(y)
    torch.testing.assert_close(predicted, torch.stack(manual, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("teacher_forcing", [0.0, 1.0, 0.5])
def test_fast_path_equals_the_reference_in_values_and_gradients(layer_norm: bool, teacher_forcing: float) -> None:
    fast = small(layer_norm)
    ref = ReferencePredRNNPP(copy.deepcopy(fast))  # a copy, so that each side accumulates its own gradients
    clips = torch.rand(2, 7, 1, 8, 6, dtype=torch.float64)
    a = fast(clips, 3, 4, teacher_forcing, torch.Generator().manual_seed(1))
    b = ref(clips, 3, 4, teacher_forcing, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    (a - clips[:, 1:]).pow(2).mean().backward()
    (b - clips[:, 1:]).pow(2).mean().backward()
    grads = dict(ref.network.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)
    with torch.no_grad():
        a, b = fast(clips[:, :4], future_frames=3), ref(clips[:, :4], future_frames=3)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_frame_size_not_a_multiple_of_the_patch_is_one_line() -> None:
    with pytest.raises(CttlstmError, match=r"^data\.frame_size 8x6 does not suit PredRNN\+\+: its frames must be multiples of 4, set by model\.patch"):
        create_model(PredRNNPPConfig(hidden=[4, 4], kernel=3, patch=4)).init_state(1, 8, 6)


# -- every command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Moving-MNIST at 16x16."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("predrnnpp") / "data"
    args = ["prepare", "mmnist", "--out", str(root), "--size", "16", "--train", "16", "--val", "8", "--test", "8",
            "--offline", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return root


@pytest.mark.slow
def test_smoke_recipe_trains_evaluates_predicts_and_profiles(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["--set", f"data.path={data}", "--set", "data.frame_size=[16,16]"]
    short = ["--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--set", "train.log_every=1"]
    result = cli("train", SMOKE, "--out", run, "--max-steps", "4", "--quiet", "--device", "cpu", *sets, *short)
    assert result.code == 0, result.err
    assert "arch: predrnnpp" in (run / "recipe.yaml").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) and 0 < x < 1 for x in losses) and losses[-1] < losses[0]

    result = cli("evaluate", run, "--json", "--quiet", "--device", "cpu")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    params = expected_parameters([8, 8], 3, 2, 1, True)
    assert report["model"] == "PredRNN++" and report["parameters"] == params and report["num_samples"] == 16
    assert all(math.isfinite(v) for v in report["metrics"].values())

    clip = tmp_path / "clip.gif"
    iio.imwrite(clip, (torch.rand(9, 16, 16) * 255).to(torch.uint8).numpy(), extension=".gif")
    out = tmp_path / "pred.gif"
    result = cli("predict", clip, "--checkpoint", run, "--steps", "3", "--out", out, "--device", "cpu")
    assert result.code == 0, result.err
    assert iio.imread(out, index=None).shape[0] == 5 + 3  # the 5 context frames, then 3 predictions

    result = cli("profile", SMOKE, "--no-time", "--json", *sets)
    assert result.code == 0, result.err
    row = json.loads(result.out)[0]
    assert row["arch"] == "predrnnpp" and row["model"] == "PredRNN++" and row["params"] == params
    assert row["flops_analytic"] and row["flops_per_step"] == row["flops_per_step_counted"] == small_macs(16, 16)


def small_macs(height: int, width: int) -> int:
    """The smoke model's one-step multiply-accumulates, by hand (hidden [8, 8], 3x3, 2x2 patches, 1 channel)."""
    x, n, k2 = 4, 8, 9

    def layer(c: int) -> int:  # W1, W2 (M is n wide everywhere here), W3, W4, W5
        return k2 * (c + 2 * n) * 3 * n + k2 * (c + 2 * n) * 3 * n + n * n + k2 * (c + 2 * n) * n + 2 * n * n

    return (height // 2) * (width // 2) * (layer(x) + layer(n) + k2 * 2 * n * 2 * n + n * x)


def test_frame_size_not_divisible_by_the_patch_stops_train(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli("train", SMOKE, "--out", run, "--max-steps", "1", "--quiet", "--device", "cpu", "--set",
                 f"data.path={data}", "--set", "data.frame_size=[16,16]", "--set", "model.patch=3")  # fmt: skip
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: data.frame_size 16x16 does not suit PredRNN++: its frames must be multiples of 3, set by model.patch; "
        "choose another data.frame_size or model.patch"
    ]
    assert not run.exists()
