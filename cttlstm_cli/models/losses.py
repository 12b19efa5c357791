"""The prediction losses every family's training objective starts from."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def prediction_loss(predictions: Tensor, targets: Tensor, kind: str = "l1+l2") -> Tensor:
    """The mean error over every predicted pixel: ``l1+l2`` (the paper's §4, the default), ``l2``
    (mean squared error, as OpenSTL trains its baselines) or ``l1``."""
    loss = predictions.new_zeros(())
    if "l1" in kind:
        loss = loss + F.l1_loss(predictions, targets)
    if "l2" in kind:
        loss = loss + F.mse_loss(predictions, targets)
    return loss


__all__ = ["prediction_loss"]
