"""The SimVP (gSTA) family: the published counts, the analytic FLOP count against torch's, the fast path
against the literal reference, the block-wise forward, the training form.

The FLOP and reference checks are written once, for any model on SimVP's skeleton
(:func:`assert_analytic_macs_equal_torchs_count`, :func:`assert_fast_path_equals_its_reference`);
tests/test_tau_reference.py runs them on TAU."""

from __future__ import annotations

import copy

import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.models.losses import prediction_loss
from cttlstm_cli.models.registry import reference_model
from cttlstm_cli.models.simvp import SimVPConfig
from cttlstm_cli.models.simvp.flops import forward_macs
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES, assert_training_forward_matches

#: a tiny configuration: 3 frames at once, two encoder blocks of 4 channels, two translator blocks
TINY = dict(frames=3, hidden_spatial=4, hidden_temporal=8, spatial_blocks=2, temporal_blocks=2, mlp_ratio=2.0)
#: changes to :data:`TINY` that reach every branch of the count and of the reference: four encoder blocks
#: (two PixelShuffles), an odd number of them with a 5x5 kernel, other attention kernels (a dilated 3x3, a
#: dilated 5x5), a fractional MLP ratio, three translator blocks, stochastic depth
VARIANTS = [
    {},
    {"spatial_blocks": 4, "hidden_spatial": 6},
    {"spatial_blocks": 3, "spatial_kernel": 5},
    {"attention_kernel": 13, "mlp_ratio": 2.5},
    {"attention_kernel": 15, "temporal_blocks": 3, "drop_path": 0.3},
]


def assert_published_macs(recipe: str, per_forward: int) -> None:
    """The published configuration's exact count per 10-frame forward at 64x64, analytic and counted."""
    cfg = load_recipe(RECIPES / recipe)
    model = create_model(cfg.model, cfg.data.channels)
    assert forward_macs(model.config, model.image_channels, 64, 64, model.mixer_macs) == per_forward
    assert model.analytic_macs(64, 64) == model.counted_macs(64, 64) == per_forward // cfg.model.frames


def assert_analytic_macs_equal_torchs_count(config: SimVPConfig, channels: int) -> None:
    model = create_model(config, channels)
    unit = model.downsampling
    for height, width in [(4 * unit, 4 * unit), (6 * unit, 3 * unit), (2 * unit, 10 * unit)]:
        assert model.analytic_macs(height, width) == model.counted_macs(height, width) > 0


def assert_fast_path_equals_its_reference(config: SimVPConfig, channels: int) -> None:
    """In float64: training (batch statistics, stochastic depth drawn from the same seed) in values,
    gradients and the running statistics both keep; then evaluation (running statistics) at a horizon of
    three blocks. The reference calls no module of the network, only reads its parameters."""
    torch.manual_seed(0)
    fast = create_model(config, channels).double()
    reference = reference_model(config.arch)(copy.deepcopy(fast))
    t, size = config.frames, 4 * fast.downsampling
    clips = torch.rand(2, t + 4, channels, size, size, dtype=torch.float64)
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda module, *_: calls.append(type(module).__name__))
             for m in reference.network.modules()]
    for seed in (1, 2):  # twice: the running statistics move on from the first update alike
        assert_training_forward_matches(fast, reference, clips, 4, t, 0.5, seed)
    fast.eval()
    reference.eval()
    with torch.no_grad():
        horizon = 3 * t - 1  # three blocks, the last cut short
        torch.testing.assert_close(fast(clips[:, :t], horizon), reference(clips[:, :t], horizon), rtol=1e-10, atol=1e-12)
    for hook in hooks:
        hook.remove()
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("recipe, params, gmacs", [
    # OpenSTL's own modules for one channel (design §9): 46,769,665 parameters; its model zoo gives
    # 16.5 GFLOPs (fvcore multiply-accumulates) for the 10-frame forward at 64x64.
    ("mmnist-simvp.yaml", 46_769_665, 16.5),
])
def test_published_configurations_have_the_published_counts(recipe: str, params: int, gmacs: float) -> None:
    cfg = load_recipe(RECIPES / recipe)
    model = create_model(cfg.model, cfg.data.channels)
    assert sum(p.numel() for p in model.parameters()) == params
    per_forward = model.counted_macs(64, 64) * cfg.model.frames / 1e9
    assert per_forward == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize("config", [SimVPConfig])
def test_longer_horizons_feed_the_prediction_back_in_blocks(config) -> None:
    torch.manual_seed(0)
    model = create_model(config(frames=3, hidden_spatial=4, hidden_temporal=8, spatial_blocks=2, temporal_blocks=2, mlp_ratio=2.0), 1)
    model = model.double().eval()
    clips = torch.rand(2, 5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = model(clips, future_frames=7)
        first = model.block(clips[:, -3:])
        second = model.block(first)
        third = model.block(second)
        short = model(clips, future_frames=2)
    assert out.shape == (2, 7, 1, 8, 8)
    torch.testing.assert_close(out, torch.cat([first, second, third], 1)[:, :7])
    torch.testing.assert_close(short, first[:, :2])  # a shorter horizon keeps the first frames


@pytest.mark.parametrize("config", [SimVPConfig])
def test_training_form_predicts_the_future_and_never_sees_it(config) -> None:
    torch.manual_seed(0)
    model = create_model(config(frames=3, hidden_spatial=4, hidden_temporal=8, spatial_blocks=2, temporal_blocks=2, mlp_ratio=2.0), 1)
    model = model.double().eval()
    clips = torch.rand(2, 3 + 4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        trained = model(clips, 4, context_frames=3, teacher_forcing=1.0)
        other_future = clips.clone()
        other_future[:, 3:] = torch.rand_like(other_future[:, 3:])
        again = model(other_future, 4, context_frames=3, teacher_forcing=0.5, generator=torch.Generator().manual_seed(0))
        predicted = model(clips[:, :3], future_frames=4)
    assert torch.equal(model.training_targets(clips, 3), clips[:, 3:])
    torch.testing.assert_close(trained, predicted)
    torch.testing.assert_close(again, predicted)  # the ground-truth future never reaches the outputs


def test_context_must_be_the_models_frames(cli, tmp_path) -> None:
    cfg = load_recipe(RECIPES / "smoke-simvp.yaml")
    model = create_model(cfg.model, 1)
    with pytest.raises(CttlstmError, match="reads model.frames = 4 frames at once, but data.input_frames is 5"):
        model.check_data(32, 32, 5)
    with pytest.raises(CttlstmError, match="multiples of 2, set by model.spatial_blocks"):
        model.check_data(33, 32, 4)
    from conftest import one_error_line

    line = one_error_line(cli("train", RECIPES / "smoke-simvp.yaml", "--out", tmp_path / "run", "--set", "data.input_frames=6",
                              "--set", f"data.path={tmp_path / 'data'}"))
    assert "data.input_frames is 6" in line and not (tmp_path / "data").exists()


def test_simvp_trains_on_the_recipe_loss() -> None:
    torch.manual_seed(0)
    outputs, targets = torch.rand(2, 4, 1, 8, 8), torch.rand(2, 4, 1, 8, 8)
    small = dict(frames=4, hidden_spatial=4, hidden_temporal=8, spatial_blocks=2, temporal_blocks=2, mlp_ratio=2.0)
    simvp = create_model(SimVPConfig(**small), 1)
    assert simvp.loss(outputs, targets, "l2") == pytest.approx(float(prediction_loss(outputs, targets, "l2")))
    assert simvp.loss(outputs, targets, "l1+l2") == pytest.approx(float(prediction_loss(outputs, targets, "l1+l2")))


def test_published_configuration_has_the_exact_macs() -> None:
    # OpenSTL's model zoo: 16.5 GFLOPs (fvcore multiply-accumulates) for the 10-frame forward at 64x64.
    assert_published_macs("mmnist-simvp.yaml", 16_468_475_904)


@pytest.mark.parametrize("changes", VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_analytic_macs_equal_torchs_count(changes: dict, channels: int) -> None:
    assert_analytic_macs_equal_torchs_count(SimVPConfig(**{**TINY, **changes}), channels)


@pytest.mark.parametrize("changes", VARIANTS)
def test_fast_path_equals_its_reference(changes: dict) -> None:
    assert_fast_path_equals_its_reference(SimVPConfig(**{**TINY, **changes}), channels=2)
