"""Small in-memory clip datasets for tests that need training data but not the prepare pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cttlstm_cli.data import shards as fmt


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


def _labelled_shards(root: Path, videos: int, frames: int, size: int, video, label_names: list[str],
                     groups: dict[str, list[int]]) -> Path:
    """Write a prepared ssv2-style dataset: ``video(v)`` gives video v of each split, labelled v % 3."""
    root.mkdir(parents=True)
    splits = {}
    for split in ("train", "val", "test"):
        writer = fmt.ShardWriter(root / fmt.shard_name(split, 0))
        for v in range(videos):
            writer.add(video(v), f"{split}{v}", f"{split}{v}.webm", label=v % 3)
        entry = writer.close()
        splits[split] = {"videos": videos, "frames": videos * frames, "shards": [entry["file"]],
                         "sources": entry["sources"], "labels": entry["labels"]}
    fmt.write_manifest(root, {"format_version": 1, "dataset": "ssv2", "frame_size": [size, size], "channels": 1,
                              "splits": splits, "label_names": label_names, "groups": groups})
    return root


def labelled_dataset(root: Path, videos: int = 6, frames: int = 16, size: int = 32) -> Path:
    """A tiny prepared ssv2-style dataset: gray noise videos labelled 0, 1, 2 in turn, two groups."""
    rng = np.random.default_rng(0)
    return _labelled_shards(root, videos, frames, size, lambda v: rng.integers(0, 256, (frames, size, size, 1), dtype=np.uint8),
                            ["push", "pull", "drop"], {"moving": [0, 1], "falling": [2]})  # fmt: skip


def brightness_labelled_dataset(root: Path, videos: int = 12, frames: int = 12, size: int = 16) -> Path:
    """A tiny prepared ssv2-style dataset a classifier can learn: class 0 dark, 1 mid-grey, 2 bright
    noise videos (labels in turn), three groups of one class each."""
    rng = np.random.default_rng(0)

    def video(v: int) -> np.ndarray:
        return np.clip(rng.normal(40 + 80 * (v % 3), 25, (frames, size, size, 1)), 0, 255).astype(np.uint8)

    return _labelled_shards(root, videos, frames, size, video, ["dark", "grey", "bright"],
                            {"dark": [0], "grey": [1], "bright": [2]})  # fmt: skip
