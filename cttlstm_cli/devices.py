"""Turning a ``--device`` string into a torch device, with clear errors."""

from __future__ import annotations

import torch

from cttlstm_cli.errors import CttlstmError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CttlstmError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CttlstmError(f"device {name!r} requested but this machine has no CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CttlstmError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise CttlstmError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device
