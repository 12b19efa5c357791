"""The CTT module: Algorithm 1 == Algorithm 2 == Eq. 8's explicit kernels."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from cttlstm_cli.models.layers.ctt import ConvTensorTrain, compose_convs


def eq8_kernel(cores: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Composed kernel and bias of applying ``cores`` in order, by the explicit sums of Eq. 8.

    An independent oracle: sums over every tap displacement and intermediate channel
    directly, with no convolution calls.
    """
    weight, bias = cores[0]
    for w2, b2 in cores[1:]:
        k1, k2 = weight.shape[-1], w2.shape[-1]
        out = torch.zeros(w2.shape[0], weight.shape[1], k1 + k2 - 1, k1 + k2 - 1, dtype=weight.dtype)
        for (u1, u2), (v1, v2) in itertools.product(itertools.product(range(k1), repeat=2), itertools.product(range(k2), repeat=2)):
            out[:, :, u1 + v1, u2 + v2] += w2[:, :, v1, v2] @ weight[:, :, u1, u2]
        bias = b2 + w2.sum(dim=(2, 3)) @ bias
        weight = out
    return weight, bias


def random_history(module: ConvTensorTrain, channels: int, size=(13, 11), batch=2) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, *size, dtype=torch.float64) for _ in range(module.history)]


@pytest.mark.parametrize("order,steps,kernel", [(1, 1, 3), (2, 2, 5), (3, 3, 5), (3, 5, 3), (4, 4, 3)])
def test_parallel_equals_sequential(order: int, steps: int, kernel: int) -> None:
    torch.manual_seed(order * 10 + steps)
    module = ConvTensorTrain(4, order, steps, rank=3, kernel_size=kernel).double()
    history = random_history(module, 4)
    sequential = module(history)
    module.set_form("parallel")
    parallel = module(history)
    assert sequential.shape == (2, 3, 13, 11)
    torch.testing.assert_close(parallel, sequential, rtol=1e-10, atol=1e-10)


def test_compose_convs_matches_eq8_sums() -> None:
    torch.manual_seed(0)
    first = (torch.randn(3, 2, 5, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    second = (torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    weight, bias = compose_convs(*first, *second)
    ref_w, ref_b = eq8_kernel([first, second])
    torch.testing.assert_close(weight, ref_w)
    torch.testing.assert_close(bias, ref_b)


def test_eq8_kernels_applied_directly_equal_the_recursion() -> None:
    """Sum_i K(i) * U_i with K(i) from Eq. 8 (zero-padded U_i) equals the sequential recursion."""
    torch.manual_seed(1)
    module = ConvTensorTrain(5, order=3, history=3, rank=4, kernel_size=5).double()
    history = random_history(module, 5)
    u = module.preprocessed(history)
    cores = [(c.weight, c.bias) for c in module.cores]
    expected = u[-1].clone()
    total_bias = torch.zeros(4, dtype=torch.float64)
    for i in range(module.order - 1):
        weight, bias = eq8_kernel(cores[i:])  # window i passes through G_i .. G_{N-2}
        expected = expected + F.conv2d(u[i], weight, padding=weight.shape[-1] // 2)
        total_bias = bias if i == 0 else total_bias
    expected = expected + total_bias[None, :, None, None]
    torch.testing.assert_close(module.sequential(u), expected)


def test_interior_independent_of_border_semantics() -> None:
    """Stepwise (authors') and composed padding agree away from the frame edge, and differ near it."""
    torch.manual_seed(2)
    module = ConvTensorTrain(3, order=3, history=3, rank=4, kernel_size=3).double()
    history = random_history(module, 3, size=(16, 16))
    composed = module(history)
    module.tt_padding = "stepwise"
    stepwise = module(history)
    m = module.margin
    torch.testing.assert_close(composed[..., m:-m, m:-m], stepwise[..., m:-m, m:-m])
    assert (composed - stepwise).abs().max() > 1e-3


def test_parallel_refuses_stepwise_padding() -> None:
    module = ConvTensorTrain(2, 3, 3, 2, 3, tt_padding="stepwise")
    with pytest.raises(ValueError, match="composed"):
        module.set_form("parallel")


def test_receptive_field_grows_with_time_gap() -> None:
    """Requirement 2: a pixel of the oldest state reaches further than one of the newest."""
    torch.manual_seed(3)
    module = ConvTensorTrain(1, order=3, history=3, rank=2, kernel_size=3).double()
    size = 15
    reach = []
    for slot in range(3):
        history = [torch.zeros(1, 1, size, size, dtype=torch.float64) for _ in range(3)]
        base = module(history)
        history[slot][0, 0, size // 2, size // 2] = 1.0
        changed = (module(history) - base).abs().sum(dim=(0, 1)) > 0
        reach.append(int(changed.any(dim=0).sum()))
    assert reach == [7, 5, 3]  # oldest: k + 2(k-1); newest: k
