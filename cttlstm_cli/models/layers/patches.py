"""Space-to-depth patches: a frame ``[.., C, H, W]`` as ``[.., C*p*p, H/p, W/p]`` and back.

PredRNN and its successors (PredRNN++, E3D-LSTM, ...) cut every frame into non-overlapping
``p x p`` patches and stack each patch's pixels as channels before the recurrent stack, so that
the recurrent state is ``p`` times smaller in each spatial dimension. Channel ``c*p*p + i*p + j``
of the patched tensor holds pixel ``(i, j)`` of every patch of image channel ``c`` (the layout of
:func:`torch.nn.functional.pixel_unshuffle`). Both functions accept any number of leading
dimensions, so a whole clip ``[B, T, C, H, W]`` is reshaped in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.models.layers.conv import apply_conv


def patch_channels(channels: int, patch: int) -> int:
    """Channels of a patched tensor: ``channels * patch**2``."""
    return channels * patch * patch


def check_divisible(height: int, width: int, patch: int) -> None:
    """Raise ValueError unless ``height`` and ``width`` are multiples of ``patch``."""
    if patch < 1:
        raise ValueError(f"patch size must be >= 1, got {patch}")
    if height % patch or width % patch:
        raise ValueError(f"frames of {height}x{width} are not a multiple of the patch size {patch}")


def space_to_depth(x: Tensor, patch: int) -> Tensor:
    """``[.., C, H, W] -> [.., C*p*p, H/p, W/p]`` (see the module docstring for the channel order)."""
    check_divisible(x.shape[-2], x.shape[-1], patch)
    # A patch of 1 is the identity; pixel_unshuffle would still copy.
    return x if patch == 1 else F.pixel_unshuffle(x, patch)


def depth_to_space(x: Tensor, patch: int) -> Tensor:
    """``[.., C*p*p, H/p, W/p] -> [.., C, H, W]``, the inverse of :func:`space_to_depth`."""
    if x.shape[-3] % (patch * patch):
        raise ValueError(f"{x.shape[-3]} channels are not a multiple of patch**2 = {patch * patch}")
    return x if patch == 1 else F.pixel_shuffle(x, patch)


def patched_prefix(
    frames: Tensor,
    state: Any,
    patch: int,
    bottom_gates: Callable[[Tensor], Tensor],
    advance: Callable[[Tensor, Any], tuple[Tensor, Any]],
    head: nn.Module,
) -> tuple[Tensor, Any]:
    """Known inputs ``frames [B, P, C, H, W]`` through a patch-based recurrent stack, equal to P single
    steps: the patch reshape, the bottom layer's input convolutions (``bottom_gates``) and the ``head``
    run once over all P steps; ``advance(gates_t, state) -> (top, state)`` runs the stack for one step
    from the bottom layer's input gates. Everything that reads the previous step stays sequential."""
    batch, steps = frames.shape[:2]
    # Time-major [P*B, ...]: each step is one contiguous slice, so splitting costs nothing and the
    # split's backward is one concatenation.
    x = space_to_depth(frames.transpose(0, 1).flatten(0, 1), patch)
    tops = []
    for gates in bottom_gates(x).split(batch):
        top, state = advance(gates, state)
        tops.append(top)
    out = depth_to_space(apply_conv(head, torch.cat(tops)), patch)
    return out.unflatten(0, (steps, batch)).transpose(0, 1), state
