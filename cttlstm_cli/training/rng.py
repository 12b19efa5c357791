"""The random state of a training process: captured into and restored from checkpoints (through the
checkpoint schema), seeded at the start, and the per-step generator of scheduled sampling."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from cttlstm_cli.checkpoint_schema import RngState


def rng_state() -> dict[str, Any]:
    """Every random generator this process uses, as tensors and plain data (a checkpoint's ``rng``; its
    layout, and what a valid one is, are :class:`~cttlstm_cli.checkpoint_schema.RngState`'s)."""
    return RngState.capture()


def set_rng_state(state: RngState) -> None:
    """Restore what :func:`rng_state` captured, read back through the schema (which is what makes it
    safe: a validated state sets every generator or, never half of them, fails)."""
    state.restore()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Scheduled-sampling draws of optimizer step ``step``: a pure function of (seed, step),
    so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


__all__ = ["rng_state", "seed_everything", "set_rng_state", "step_generator"]
