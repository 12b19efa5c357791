"""A convolution whose kernel is stored as a classic tensor train (Garipov et al.; paper Eq. 13)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def balanced_factors(n: int, parts: int) -> tuple[int, ...]:
    """Split ``n`` into ``parts`` integer factors as equal as possible (largest first)."""
    primes: list[int] = []
    rest, p = n, 2
    while rest > 1:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    factors = [1] * parts
    for q in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= q
    return tuple(sorted(factors, reverse=True))


class TTConv2d(nn.Module):
    """A conv whose ``[C_out, C_in, k, k]`` kernel is stored as a classic tensor train.

    Following Garipov et al. (paper Eq. 13), ``order`` N factors: a spatial core
    ``[k*k, R]`` and N - 1 cores ``[T_j, S_j, R, R]`` (the last with rank 1 on its
    right) with ``prod T_j = C_out`` and ``prod S_j = C_in``, each split as evenly
    as its prime factors allow. The dense kernel is rebuilt on
    every call; it is tiny next to the activations.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int, order: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        if order < 2:
            raise ValueError(f"a tensor-train kernel needs order >= 2, got {order}")
        self.out_factors = balanced_factors(out_channels, order - 1)
        self.in_factors = balanced_factors(in_channels, order - 1)
        ranks = [rank] * (order - 1) + [1]
        self.spatial = nn.Parameter(torch.empty(kernel_size * kernel_size, rank))
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(t, s, ranks[j], ranks[j + 1]))
            for j, (t, s) in enumerate(zip(self.out_factors, self.in_factors))
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Scale the cores so the rebuilt kernel has roughly Kaiming-uniform variance.
        fan_in = self.in_channels * self.kernel_size**2
        target = 1.0 / (3.0 * fan_in)
        per_core = target ** (1.0 / (len(self.cores) + 1))
        nn.init.normal_(self.spatial, std=math.sqrt(per_core))
        for core in self.cores:
            nn.init.normal_(core, std=math.sqrt(per_core / core.shape[2]))

    def weight(self) -> Tensor:
        """The dense kernel ``[C_out, C_in, k, k]``."""
        w = self.spatial  # [kk, r]
        for core in self.cores:  # w: [kk, T.., S.., r] -> absorb one (T, S) pair
            w = torch.tensordot(w, core, dims=([w.dim() - 1], [2]))  # [..., T, S, r']
            w = w.movedim(-3, 1 + (w.dim() - 4) // 2)
        # w: [kk, T_1..T_d, S_1..S_d, 1]
        k = self.kernel_size
        w = w.reshape(k, k, self.out_channels, self.in_channels)
        return w.permute(2, 3, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.kernel_size // 2)
