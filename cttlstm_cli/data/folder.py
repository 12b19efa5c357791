"""Any folder of videos (mp4, avi, webm, mov, mkv, gif, .npy, or sub-folders of frame images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cttlstm_cli.data.prepare import Item, Job, PrepareResult, require_folder, run_prepare, source_fingerprint
from cttlstm_cli.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_video
from cttlstm_cli.errors import CttlstmError


def _decode(path: str, size: tuple[int, int], channels: int, max_frames: int | None) -> list[Item]:
    frames = read_video(path, size=size, channels=channels, max_frames=max_frames)
    p = Path(path)
    return [Item(p.stem if p.is_file() else p.name, frames, p.name)]


def find_videos(source: Path) -> tuple[list[Path], list[Path]]:
    """(videos, other files): video files and frame-image folders at any depth, sorted by path."""
    videos: list[Path] = []
    others: list[Path] = []
    for path in sorted(source.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(source).parts):
            continue  # hidden files and folders (e.g. .DS_Store, .git)
        if path.is_dir():
            if any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in path.iterdir()):
                videos.append(path)
        elif path.suffix.lower() in VIDEO_EXTENSIONS or path.suffix.lower() == ".npy":
            videos.append(path)
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(path)
    if source.is_dir() and any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in source.iterdir()):
        videos.insert(0, source)  # SOURCE itself is one frame folder
    return videos, others


def assign_splits(n: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Seeded split of ``n`` items by fractions (train, val, test); stable for a given seed.

    Each item gets exactly one split. The assignment depends on ``n``: a source that gains
    or loses a clip is split anew, which is why :func:`build_folder` records the source's
    fingerprint and a resume of a changed source starts over.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    names = np.array(["test"] * n, dtype=object)
    names[order[:n_train]] = "train"
    names[order[n_train : n_train + n_val]] = "val"
    return list(names)


def clip_files(videos: list[Path]) -> list[Path]:
    """The files ``videos`` are read from: each video file, and the frame images of each frame folder."""
    files: list[Path] = []
    for video in videos:
        if video.is_dir():
            files += [c for c in video.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            files.append(video)
    return files


def build_folder(
    source: str | Path,
    out: str | Path,
    size: tuple[int, int] = (64, 64),
    channels: int = 3,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    max_frames: int | None = None,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> PrepareResult:
    """Prepare a user's folder of videos, resized to ``size`` with 1 (gray) or 3 channels, split by fractions.

    Clips that cannot be read (an empty file, no frames, frames of 0x0 pixels, a damaged
    container) are skipped and listed in the manifest; a file name that is not UTF-8 is kept,
    its undecodable bytes shown as ``\\xNN`` in the names stored. The fingerprint of every clip
    file (path, size, mtime) is recorded, so that resuming after SOURCE changed starts over
    rather than mixing two versions of it (see :func:`cttlstm_cli.data.prepare.run_prepare`).
    """
    source, out = require_folder(source), Path(out)
    videos, others = find_videos(source)
    if not videos:
        raise CttlstmError(f"no videos found in {source} (looked for mp4, avi, webm, mov, mkv, gif, npy and frame-image folders)")
    pre_skipped = [{"source": str(p.relative_to(source)), "reason": "not a video file type"} for p in others]
    splits = assign_splits(len(videos), fractions, seed)
    jobs: dict[str, list[Job]] = {"train": [], "val": [], "test": []}
    for path, split in zip(videos, splits):
        key = str(path.relative_to(source)) if path != source else "."
        jobs[split].append(Job(key, _decode, (str(path), tuple(size), channels, max_frames)))
    options: dict[str, Any] = {
        "dataset": "folder",
        "source": str(source.resolve()),
        "size": list(size),
        "channels": channels,
        "split": list(fractions),
        "max_frames": max_frames,
        "seed": seed,
    }
    return run_prepare(
        out, "folder", options, jobs, tuple(size), channels, workers=workers, pre_skipped=pre_skipped, progress=progress,
        source=source_fingerprint(source, clip_files(videos)),
    )  # fmt: skip
