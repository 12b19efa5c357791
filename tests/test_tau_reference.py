"""TAU against its literal reference and its analytic FLOP count: the network (SimVP's checks of
tests/test_simvp.py, run on TAU's configurations) and the differential divergence from its definition."""

from __future__ import annotations

import math

import pytest
import torch

from cttlstm_cli.models import create_model
from cttlstm_cli.models.tau import TAUConfig, differential_divergence
from cttlstm_cli.models.tau.reference import ReferenceTAU, reference_divergence

from test_simvp import (
    TINY, VARIANTS, assert_analytic_macs_equal_torchs_count, assert_fast_path_equals_its_reference, assert_published_macs,
)

#: SimVP's variants, and squeeze-and-excitation bottlenecks other than the floor of 4 units: a reduction of
#: 2 on 20 channels squeezes to 2
TAU_VARIANTS = [{"reduction": 4, **changes} for changes in VARIANTS] + [{"reduction": 2, "hidden_temporal": 20}]


def test_published_configuration_has_the_exact_macs() -> None:
    # OpenSTL's model zoo: 16.0 GFLOPs (fvcore) for the 10-frame forward at 64x64.
    assert_published_macs("mmnist-tau.yaml", 15_893_991_424)


@pytest.mark.parametrize("changes", TAU_VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_analytic_macs_equal_torchs_count(changes: dict, channels: int) -> None:
    assert_analytic_macs_equal_torchs_count(TAUConfig(**{**TINY, **changes}), channels)


@pytest.mark.parametrize("changes", TAU_VARIANTS)
def test_fast_path_equals_its_reference(changes: dict) -> None:
    assert_fast_path_equals_its_reference(TAUConfig(**{**TINY, **changes}), channels=2)


def test_divergence_of_a_hand_computed_case() -> None:
    # Sample 0: the prediction moves by 0.1 then stays, Δ/τ = [1, 0]; the truth stands still, Δ/τ = [0, 0]
    # (uniform). KL = p log(2p) + (1 - p) log(2(1 - p)) with p = e / (1 + e). Sample 1 predicts the truth: 0.
    predicted = torch.tensor([[0.0, 0.1, 0.1], [0.3, 0.5, 0.2]], dtype=torch.float64).reshape(2, 3, 1, 1, 1)
    true = torch.tensor([[0.4, 0.4, 0.4], [0.3, 0.5, 0.2]], dtype=torch.float64).reshape(2, 3, 1, 1, 1)
    p = math.e / (1 + math.e)
    expected = (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))) / 2
    assert float(reference_divergence(predicted, true, 0.1)) == pytest.approx(expected, rel=1e-12)
    assert float(differential_divergence(predicted, true, 0.1)) == pytest.approx(expected, rel=1e-12)
    assert float(reference_divergence(predicted[:, :1], true[:, :1], 0.1)) == 0.0  # one frame: no difference


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_divergence_equals_the_reference_in_values_and_gradients(temperature: float) -> None:
    torch.manual_seed(0)
    predicted = torch.rand(3, 4, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    true = torch.rand(3, 4, 2, 5, 6, dtype=torch.float64)
    fast = differential_divergence(predicted, true, temperature)
    (fast_grad,) = torch.autograd.grad(fast, predicted)
    literal = reference_divergence(predicted, true, temperature)
    (literal_grad,) = torch.autograd.grad(literal, predicted)
    assert float(literal.detach()) > 0
    torch.testing.assert_close(fast, literal, rtol=1e-12, atol=0)
    torch.testing.assert_close(fast_grad, literal_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.1, 0.0])
def test_loss_equals_the_references(alpha: float) -> None:
    torch.manual_seed(0)
    model = create_model(TAUConfig(**{**TINY, "reduction": 4, "alpha": alpha}), 1)
    outputs, targets = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    for kind in ("l2", "l1+l2"):
        torch.testing.assert_close(model.loss(outputs, targets, kind), ReferenceTAU(model).loss(outputs, targets, kind))
