"""Small in-memory clip datasets for tests that need training data but not the prepare pipeline."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class BouncingSquares(Dataset):
    """Clips ``[T, 1, S, S]`` of a 6-pixel square moving at constant velocity (wrapping)."""

    def __init__(self, clips: int, frames: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, size - 6, (clips, 2), generator=g)
        velocity = torch.randint(-2, 3, (clips, 2), generator=g)
        self.data = torch.zeros(clips, frames, 1, size, size)
        for t in range(frames):
            pos = (start + velocity * t) % (size - 6)
            for i in range(clips):
                self.data[i, t, 0, pos[i, 0] : pos[i, 0] + 6, pos[i, 1] : pos[i, 1] + 6] = 1.0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]
