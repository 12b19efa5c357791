"""The fast path (split gate convs, layer-major prefixes, cached projections) equals the
literal per-step reference implementation, in values and in gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.models.convrnn.reference import ReferenceConvRNN
from cttlstm_cli.models.layers import conv
from cttlstm_cli.models.convrnn import ConvRNNConfig

CONFIGS = [
    dict(cell="convttlstm", ctt_order=3, history=3),
    dict(cell="convttlstm", ctt_order=2, history=4, tt_padding="stepwise"),
    dict(cell="convttlstm", ctt_order=3, history=3, ctt_form="parallel"),
    dict(cell="convttlstm", ctt_order=3, history=3, ctt_kernel=1),  # Table 4's 1x1 CTT ablation
    dict(cell="convlstm"),
    dict(cell="convlstm_ttd"),
    dict(cell="convttlstm", encoder_channels=[4, 6], classes=3),
]


def pair(cfg: dict, dtype=torch.float64):
    torch.manual_seed(0)
    fast = create_model(ConvRNNConfig(blocks=[2, 1, 1, 2], channels=[4, 6, 6, 4], rank=3, kernel=3, **cfg)).to(dtype)
    # a copy, so that each side accumulates its own gradients
    return fast, ReferenceConvRNN(copy.deepcopy(fast))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("teacher_forcing", [0.0, 1.0, 0.5])
def test_fast_rollout_equals_reference(cfg: dict, teacher_forcing: float) -> None:
    fast, ref = pair(cfg)
    clips = torch.rand(2, 7, 1, 12, 8, dtype=torch.float64)
    a = fast(clips, 3, 4, teacher_forcing, torch.Generator().manual_seed(1))
    b = ref(clips, 3, 4, teacher_forcing, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast(clips[:, :4], future_frames=3), ref(clips[:, :4], future_frames=3), rtol=1e-10, atol=1e-10)


def test_fast_step_api_streams_like_the_reference() -> None:
    fast, ref = pair(dict(cell="convttlstm", ctt_order=3, history=4))
    frames = torch.rand(2, 5, 1, 8, 8, dtype=torch.float64)
    sf, sr = fast.init_state(2, 8, 8), ref.init_state(2, 8, 8)
    for t in range(5):
        yf, sf = fast.step(frames[:, t], sf)
        yr, sr = ref.step(frames[:, t], sr)
        torch.testing.assert_close(yf, yr, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_fast_training_gradients_equal_reference_in_float32() -> None:
    """The CPU benchmark's setting in miniature: float32, fwd+bwd over 19 steps, <= 1e-5 relative."""
    fast, ref = pair(dict(cell="convttlstm", ctt_order=3, history=3), dtype=torch.float32)
    clips = torch.rand(2, 20, 1, 16, 16)
    for model in (fast, ref):
        out = model(clips, 10, 10, 1.0)
        ((out - clips[:, 1:]).abs().mean() + (out - clips[:, 1:]).pow(2).mean()).backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        scale = q.grad.abs().max().clamp_min(1e-12)
        assert ((p.grad - q.grad).abs().max() / scale) <= 1e-5, name


def test_channels_last_weights_give_the_same_rollout() -> None:
    fast, ref = pair(dict(cell="convttlstm", ctt_order=3, history=3), dtype=torch.float32)
    fast = fast.to(memory_format=torch.channels_last)
    clips = torch.rand(2, 7, 1, 12, 8)
    torch.testing.assert_close(fast(clips, 3, 4, 1.0), ref(clips, 3, 4, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fast_training_with_nnpack_convs_equals_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide enough layers and a long enough prefix that the batched input convs take NNPACK."""
    calls = []
    nnpack = conv._nnpack_conv
    monkeypatch.setattr(conv, "_nnpack_conv", lambda *a: (calls.append(a[0].shape), nnpack(*a))[1])
    torch.manual_seed(0)
    cfg = ConvRNNConfig(blocks=[1, 1, 1, 1], channels=[16, 16, 16, 16], rank=4, kernel=3, ctt_order=3, history=3)
    fast = create_model(cfg)
    ref = ReferenceConvRNN(copy.deepcopy(fast))
    clips = torch.rand(2, 20, 1, 32, 32)
    for model in (fast, ref):
        out = model(clips, 10, 10, 1.0)
        ((out - clips[:, 1:]).abs().mean() + (out - clips[:, 1:]).pow(2).mean()).backward()
    # forward and input gradient of the 3 wide batched input convs (layer 0 sees 1 channel)
    assert len(calls) == (6 if conv.nnpack_available() else 0)
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        scale = q.grad.abs().max().clamp_min(1e-12)
        assert ((p.grad - q.grad).abs().max() / scale) <= 1e-5, name
