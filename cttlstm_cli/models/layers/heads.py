"""The activity classifier head of the paper's early-activity-recognition models (§4, Appendix B)."""

from __future__ import annotations

from torch import nn


def activity_classifier(in_channels: int, classes: int) -> nn.Sequential:
    """Two stride-2 3x3 convs (64 then 128 channels, ReLU), global average pooling and one
    fully-connected layer: feature map ``[B, in_channels, H, W]`` -> logits ``[B, classes]``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, classes),
    )
