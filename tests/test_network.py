"""The video-prediction network: exact sizes, rollout semantics, gradients."""

from __future__ import annotations

import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.models.layers import TTConv2d, balanced_factors
from cttlstm_cli.models.convrnn import ConvRNNConfig

TINY = dict(blocks=[1, 1, 1, 1], channels=[4, 6, 6, 4], rank=3, kernel=3)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (dict(cell="convttlstm", ctt_order=3, history=3, rank=8, kernel=5), 2_687_281),
        (dict(cell="convlstm", kernel=5), 3_973_201),
        (dict(cell="convttlstm", ctt_order=3, history=5, rank=8), 3_263_281),
        (dict(cell="convttlstm", ctt_order=5, history=5, rank=8), 2_918_065),
    ],
)
def test_paper_parameter_counts(overrides: dict, expected: int) -> None:
    model = create_model(ConvRNNConfig(**overrides), image_channels=1)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_layer_layout_and_skips() -> None:
    model = create_model(ConvRNNConfig())
    assert list(model.cells) == [f"b{b}l{l}" for b in range(4) for l in range(3)]
    assert model.cells["b0l0"].in_channels == 1
    assert model.cells["b1l0"].in_channels == 32
    assert model.cells["b3l0"].in_channels == 48 + 32  # [block 2 ; block 0]
    assert model.head.in_channels == 32 + 48  # [block 3 ; block 1]


def test_classic_ttd_kernel_rebuilds_dense_shape() -> None:
    assert balanced_factors(128, 2) == (16, 8)
    assert balanced_factors(80, 3) == (5, 4, 4)
    layer = TTConv2d(80, 128, 5, rank=4, order=3)
    assert layer.weight().shape == (128, 80, 5, 5)
    x = torch.randn(1, 80, 9, 9)
    assert layer(x).shape == (1, 128, 9, 9)


@pytest.mark.parametrize("cell", ["convttlstm", "convlstm", "convlstm_ttd"])
def test_forward_shapes_and_unclamped_outputs(cell: str) -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(cell=cell, **TINY), image_channels=2)
    frames = torch.rand(3, 4, 2, 10, 12)
    out = model(frames, future_frames=5)
    assert out.shape == (3, 5, 2, 10, 12)
    # The first prediction only depends on the context.
    torch.testing.assert_close(model(frames, future_frames=1), out[:, :1])


def test_rollout_feeds_back_predictions() -> None:
    """Steps >= I read the previous output, never the ground truth, with teacher forcing 0."""
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(**TINY)).double()
    clips = torch.rand(2, 8, 1, 8, 8, dtype=torch.float64)
    out = model(clips, future_frames=4, context_frames=4, teacher_forcing=0.0)
    assert out.shape == (2, 7, 1, 8, 8)
    scrambled = clips.clone()
    scrambled[:, 4:] = torch.rand_like(scrambled[:, 4:])
    torch.testing.assert_close(model(scrambled, 4, 4, teacher_forcing=0.0), out)
    # The inference API is the same rollout over the context alone.
    torch.testing.assert_close(model(clips[:, :4], future_frames=4), out[:, 3:])
    # Manual loop with explicit state: the step function is the whole story.
    state = model.init_state(2, 8, 8)
    x = clips[:, 0]
    manual = []
    for t in range(7):
        y, state = model.step(x if t >= 4 else clips[:, t], state)
        manual.append(y)
        x = y
    torch.testing.assert_close(torch.stack(manual, 1), out)


def test_teacher_forcing_one_uses_ground_truth() -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(**TINY)).double()
    clips = torch.rand(2, 8, 1, 8, 8, dtype=torch.float64)
    forced = model(clips, 4, 4, teacher_forcing=1.0)
    # Equivalent to treating all 7 input frames as context.
    torch.testing.assert_close(forced, model(clips[:, :7], future_frames=1, context_frames=7))
    assert (forced - model(clips, 4, 4, teacher_forcing=0.0)).abs().max() > 1e-6


def test_scheduled_sampling_is_per_sample_and_per_step() -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(**TINY)).double()
    clips = torch.rand(2, 8, 1, 8, 8, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    mixed = model(clips, 4, 4, teacher_forcing=mask)
    truth = model(clips, 4, 4, teacher_forcing=1.0)
    free = model(clips, 4, 4, teacher_forcing=0.0)
    torch.testing.assert_close(mixed[1], free[1])  # sample 1 never sees ground truth
    torch.testing.assert_close(mixed[0, :5], truth[0, :5])  # step 4 used ground truth for sample 0
    assert (mixed[0, 5] - truth[0, 5]).abs().max() > 1e-8  # step 5 used the prediction
    gen = torch.Generator().manual_seed(0)
    a = model(clips, 4, 4, teacher_forcing=0.5, generator=gen)
    gen.manual_seed(0)
    torch.testing.assert_close(model(clips, 4, 4, teacher_forcing=0.5, generator=gen), a)


@pytest.mark.parametrize("cell", ["convttlstm", "convlstm", "convlstm_ttd"])
def test_every_parameter_receives_a_gradient(cell: str) -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(cell=cell, ctt_order=3, history=4, **{k: v for k, v in TINY.items()}))
    clips = torch.rand(2, 6, 1, 8, 8)
    out = model(clips, 3, 3, teacher_forcing=0.5)
    (out - clips[:, 1:]).abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_parallel_form_network_equals_sequential() -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(**TINY)).double()
    frames = torch.rand(2, 4, 1, 9, 9, dtype=torch.float64)
    seq = model(frames, future_frames=3)
    model.set_ctt_form("parallel")
    torch.testing.assert_close(model(frames, future_frames=3), seq)
