"""The on-disk format of a prepared dataset: ``manifest.json`` plus HDF5 shards.

Layout of a prepared folder::

    DIR/manifest.json            # written last, atomically: its presence means "complete"
    DIR/.prepare-state.json      # options of a prepare in progress (removed when complete)
    DIR/train-00000.h5           # shards, one or more per split, each at most ~1 GB of frames
    DIR/.train-00001.h5.partial  # a shard being written (never read as valid)
    DIR/.lock                    # the lock a prepare holds while it writes (cttlstm_cli.locking)

Each shard holds a group ``videos`` with one uint8 dataset ``[T, H, W, C]`` per video
(or Moving-MNIST sequence), chunked per group of frames and gzip-compressed, with
attributes ``name``, ``source``, ``label`` (-1: none) and, for KTH, ``segments``
(``[[start, stop), ...]`` 0-based frame ranges). Shard-level datasets ``lengths``,
``labels`` and attribute ``segments_json`` let a reader index a shard without touching
any frames. A shard's attribute ``consumed_json`` records the job keys (sources) it
covers, including skipped ones, which is what resuming an interrupted prepare uses.

Integrity, end to end: every dataset of a shard carries HDF5's fletcher32 checksum per
chunk (a flipped byte fails the read of its chunk), the file format's own metadata
checksums are on (HDF5 1.10 object headers and chunk indexes), and the manifest records
each shard's size and sha256 (``splits.<split>.checksums``). Readers translate any
failure to read a shard into one :class:`ShardError` naming the file; shards written
before these checks (no fletcher32, no checksums in the manifest) read as before.

The manifest is checked against its schema on every read (:func:`read_manifest`, with
:mod:`cttlstm_cli.data.manifest`), and the shards against the manifest when a dataset is
opened or verified (:func:`check_shards`: sizes, the frame layout, no source in two splits).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cttlstm_cli.atomic import no_space_error, write_json_atomic
from cttlstm_cli.data.manifest import DTYPE, validate_manifest
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.rendering import printable

#: bump when the layout changes in a way old readers cannot handle
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATE_NAME = ".prepare-state.json"
#: a shard is closed once the (uncompressed) frames it holds pass this many bytes
SHARD_BYTES = 1 << 30
#: frames per HDF5 chunk: small enough that a 20-frame clip reads little more than itself
CHUNK_FRAMES = 10
SPLITS = ("train", "val", "test")
#: what a full disk during a prepare leaves, and how to go on
RESUME_ADVICE = "finished shards are kept: run the same 'cttlstm prepare' again once there is room to resume"
#: HDF5 format bounds of new shards: 1.10's formats checksum the superblock, object headers
#: and chunk indexes (a damaged header is refused, not misread); every h5py >= 3 reads them
LIBVER = ("v110", "v110")


class ShardError(CttlstmError):
    """A shard that cannot be read as written: missing, truncated, or with damaged bytes."""


def shard_error(path: Path, problem: str) -> ShardError:
    """The one-line error for a damaged or missing shard: names the file, the problem and the way out.

    ``problem`` completes "shard PATH ...", e.g. ``"is missing"`` or ``"is damaged (...)"``.
    The way out works because a prepare run again with the same options rebuilds missing
    shards of a complete dataset (see :func:`cttlstm_cli.data.prepare.check_output`).
    """
    fix = "run" if problem == "is missing" else "delete it and run"
    return ShardError(
        f"shard {path} {problem}; {fix} the same 'cttlstm prepare' again to rebuild it "
        f"(check every shard with 'cttlstm prepare --verify {path.parent}')"
    )


def unreadable_shard(path: Path, err: BaseException) -> ShardError | None:
    """The one-line error for a shard this user may not read (HDF5 reports it as an OSError with
    errno EACCES), or None for any other failure: rebuilding, the advice for a damaged shard, would
    not help, and the file is most likely fine."""
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM):
        return ShardError(f"shard {path} cannot be read (permission denied); give this user read access to it")
    return None


def describe_read_error(err: BaseException) -> str:
    """A short reason for an h5py read failure (h5py's messages carry a prefix that says nothing)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    prefixes = ("Unable to synchronously open file", "Unable to synchronously open object", "Can't synchronously read data")
    for prefix in prefixes:
        if text.startswith(prefix):
            text = text[len(prefix) :].strip(" ()") or text
    if "Fletcher32" in text or "filter returned failure" in text or "inflate()" in text:
        # the filters run on read in reverse: fletcher32 first (where present), then gzip
        return "a data chunk fails its checksum or decompression"
    return text


#: what reading a damaged HDF5 file raises: OSError from HDF5, KeyError for a lost object,
#: ValueError/TypeError/RuntimeError for metadata that decodes to nonsense
READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``root/manifest.json`` atomically; returns its path."""
    path = Path(root) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read ``root/manifest.json`` and check it against the schema (:mod:`cttlstm_cli.data.manifest`).

    Returns the decoded JSON as it is (extra keys included). A missing, unreadable or foreign
    file, a newer format, and any field the schema refuses are one-line CttlstmErrors naming
    the file and, for a field, its place: ``DIR/manifest.json: splits.train.videos: expected
    a non-negative integer, found 'x'``.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise CttlstmError(f"no prepared dataset at {root} (missing {MANIFEST_NAME}); run 'cttlstm prepare' first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).strip().splitlines()[0]
        raise CttlstmError(f"unreadable manifest {path}: {reason}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if type(version) is int and version > FORMAT_VERSION:  # a newer layout may break this schema: say so first
        raise CttlstmError(f"{path} has format version {version}; this cttlstm reads up to {FORMAT_VERSION}, please upgrade")
    try:
        validate_manifest(manifest)
    except ValueError as err:
        raise CttlstmError(f"{path}: {err}") from None
    return manifest


def write_state(root: Path, options: dict[str, Any], source: dict[str, Any] | None = None) -> None:
    """Record the options of a prepare in progress (so a re-run can resume or refuse) and the
    fingerprint of its source (so a resume notices a source that changed in between)."""
    write_json_atomic(root / STATE_NAME, {"format_version": FORMAT_VERSION, "options": options, "source_fingerprint": source})


def read_state_record(root: Path) -> dict[str, Any] | None:
    """The whole record of an interrupted prepare in ``root`` (``options``, ``source_fingerprint``), or None."""
    path = root / STATE_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("options"), dict) else None


def read_state(root: Path) -> dict[str, Any] | None:
    """Options of an interrupted prepare in ``root``, or None."""
    record = read_state_record(root)
    return None if record is None else record["options"]


def shard_name(split: str, index: int) -> str:
    """File name of a split's ``index``-th shard."""
    return f"{split}-{index:05d}.h5"


def partial_path(path: Path) -> Path:
    """Where a shard lives while it is written: hidden, and not ending in ``.h5``."""
    return path.with_name(f".{path.name}.partial")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _GuardedFile:
    """The file HDF5 writes a shard through (h5py's file-object driver), never failing a write.

    When a write fails inside HDF5 (a full disk, a file-size limit), HDF5 2.0 loses track of
    the dataset being closed and then crashes (SIGSEGV in ``H5D__flush_all_cb``) when the
    file is closed, and before that h5py only prints the errors of implicit dataset closes.
    So this file takes the I/O errors away from HDF5: the first ``OSError`` is kept in
    :attr:`error`, and that write and all later ones go to memory, where reads find them,
    so HDF5 always sees a consistent file and closes cleanly. The writer checks
    :attr:`error` after every video and discards the file. What lands in memory is at
    most the rest of one video plus the index.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: OSError | None = None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = 0
        self._size = 0
        self._spilled: list[tuple[int, bytes]] = []  # (offset, bytes) written after the error, in order

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as err:
                self.error = err
        if self.error is not None:
            self._spilled.append((self._pos, bytes(view)))
        self._pos += len(view)
        self._size = max(self._size, self._pos)
        return len(view)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], self._pos + got)
            if n <= 0:
                break
            got += n
        view[got:] = bytes(len(view) - got)  # past the end of the file reads as zeros
        start, stop = self._pos, self._pos + len(view)
        for offset, data in self._spilled:
            lo, hi = max(start, offset), min(stop, offset + len(data))
            if lo < hi:
                view[lo - start : hi - start] = data[lo - offset : hi - offset]
        self._pos = stop
        return len(view)

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(max(0, self._size - self._pos) if size < 0 else size)
        self.readinto(buf)
        return bytes(buf)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as err:
                self.error = err
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to do: writes go straight to the file descriptor."""

    def finish(self) -> None:
        """fsync and close (once); a full disk that only shows now (network file systems) is kept in :attr:`error`."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self.error is None:
                os.fsync(fd)
            os.close(fd)
        except OSError as err:
            self.error = self.error or err


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then deliver it to the handler that was in place.

    HDF5 calls back into Python for every byte it writes (the file object above). A
    KeyboardInterrupt raised inside such a callback is swallowed by h5py ("Exception ignored"),
    HDF5 is left with a failed write it cannot recover from, and the process later dies in a
    segfault with a damaged shard. Raised after the block instead, it stops the prepare between
    two videos, where the partial shard is simply deleted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only delivered to the main thread
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
        elif pending and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


class ShardWriter:
    """Writes one shard under a temporary name; :meth:`close` renames it into place.

    A shard that was never closed (crash, Ctrl-C) stays ``.NAME.h5.partial`` and is
    deleted by the next prepare: only renamed files count as complete. A full disk
    (ENOSPC, EDQUOT, or EFBIG from a file-size limit) raises a one-line CttlstmError
    from :meth:`add` or :meth:`close` naming the shard; the caller then calls :meth:`abort`,
    which deletes the temporary file.
    """

    def __init__(self, path: Path, compression_level: int = 1) -> None:
        self.path = path
        self.tmp = partial_path(path)
        self.tmp.unlink(missing_ok=True)
        try:
            self._io = _GuardedFile(self.tmp)
        except OSError as err:
            raise no_space_error(err, path, RESUME_ADVICE) or err from None
        try:
            with interrupts_deferred():
                self._file = h5py.File(self._io, "w", libver=LIBVER)
                self._group = self._file.create_group("videos")
        except BaseException:
            self._io.finish()
            self.tmp.unlink(missing_ok=True)
            raise
        self._level = compression_level
        self.lengths: list[int] = []
        self.labels: list[int] = []
        self.segments: list[list[list[int]] | None] = []
        self.sources: list[str] = []
        self.consumed: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self.nbytes = 0
        self._closed = False

    def _check_io(self) -> None:
        """Raise the first write failure of the temporary file (a full disk as one line)."""
        err = self._io.error
        if err is not None:
            other = OSError(err.errno, f"cannot write {self.tmp}: {err.strerror}")
            raise no_space_error(err, self.path, RESUME_ADVICE) or other from None

    def add(
        self,
        frames: np.ndarray,
        name: str,
        source: str,
        label: int | None = None,
        segments: list[list[int]] | None = None,
    ) -> None:
        """Append one video ``[T, H, W, C]`` uint8."""
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"expected uint8 [T, H, W, C], got {frames.dtype} {frames.shape}")
        with interrupts_deferred():
            idx = len(self.lengths)
            chunk = (min(CHUNK_FRAMES, frames.shape[0]),) + frames.shape[1:]
            ds = self._group.create_dataset(
                f"{idx:06d}",
                data=frames,
                chunks=chunk,
                compression="gzip",
                compression_opts=self._level,
                shuffle=False,
                fletcher32=True,
            )
            ds.attrs["name"] = name
            ds.attrs["source"] = source
            ds.attrs["label"] = -1 if label is None else int(label)
            if segments:
                ds.attrs["segments"] = np.asarray(segments, dtype=np.int64)
            del ds  # closing the dataset writes its cached chunks: a full disk shows now
        self.lengths.append(int(frames.shape[0]))
        self.labels.append(-1 if label is None else int(label))
        self.segments.append(segments)
        self.sources.append(source)
        self.nbytes += frames.nbytes
        self._check_io()

    @property
    def videos(self) -> int:
        return len(self.lengths)

    def close(self) -> dict[str, Any]:
        """Write the shard index, flush, and rename into place; returns the shard's manifest entry."""
        f = self._file
        with interrupts_deferred():
            for key, values in (("lengths", self.lengths), ("labels", self.labels)):
                data = np.asarray(values, dtype=np.int64)
                if len(data):
                    f.create_dataset(key, data=data, chunks=(len(data),), fletcher32=True)
                else:
                    f.create_dataset(key, data=data)
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["segments_json"] = json.dumps(self.segments)
            f.attrs["sources_json"] = json.dumps(self.sources)
            f.attrs["consumed_json"] = json.dumps(self.consumed)
            f.attrs["skipped_json"] = json.dumps(self.skipped)
            f.attrs["complete"] = True
            f.close()
            self._io.finish()
            self._closed = True
        self._check_io()
        os.replace(self.tmp, self.path)
        return shard_entry(self.path)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            if not self._closed:
                self._closed = True
                try:
                    with interrupts_deferred():
                        self._file.close()
                finally:
                    self._io.finish()
        finally:
            self.tmp.unlink(missing_ok=True)


def shard_entry(path: Path) -> dict[str, Any]:
    """Summary of a complete shard, as stored in the manifest and used to resume.

    Includes the file's size (``bytes``) and ``sha256``, which the manifest records so
    that any later change to the file is found (:func:`cttlstm_cli.data.verify.verify_dataset`).
    """
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise CttlstmError(f"{path} is not a complete shard")
            lengths = f["lengths"][()]
            entry = {
                "file": path.name,
                "videos": int(len(lengths)),
                "frames": int(lengths.sum()),
                "sources": json.loads(f.attrs["sources_json"]),
                "consumed": json.loads(f.attrs["consumed_json"]),
                "skipped": json.loads(f.attrs["skipped_json"]),
                "labels": [int(x) for x in f["labels"][()]],
            }
    except READ_ERRORS as err:
        raise unreadable_shard(path, err) or shard_error(path, f"is damaged ({describe_read_error(err)})") from None
    entry["bytes"] = path.stat().st_size
    entry["sha256"] = file_sha256(path)
    return entry


def shard_checksums(manifest: dict[str, Any], split: str) -> dict[str, dict[str, Any]]:
    """``{file: {"bytes": n, "sha256": hex}}`` the manifest records for ``split`` (empty for old datasets)."""
    return dict(manifest.get("splits", {}).get(split, {}).get("checksums") or {})


def check_shard_file(path: Path, recorded: dict[str, Any] | None = None) -> None:
    """Cheap checks before reading a shard: it exists and has the size the manifest recorded.

    Raises :class:`ShardError`. The size catches a truncated or overwritten-at-the-end file
    without reading it; content is checked by fletcher32 on read and sha256 in verify.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise shard_error(path, "is missing") from None
    except OSError as err:
        raise shard_error(path, f"cannot be read ({err.strerror})") from None
    want = (recorded or {}).get("bytes")
    if want is not None and size != int(want):
        what = "truncated" if size < int(want) else "changed"
        raise shard_error(path, f"is damaged ({what}: {size:,} bytes, the manifest records {int(want):,})")


def open_shard(path: Path) -> h5py.File:
    """Open a shard for reading; any failure is a :class:`ShardError` naming the file."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise shard_error(path, "is missing") from None
    except READ_ERRORS as err:
        raise unreadable_shard(path, err) or shard_error(path, f"is damaged ({describe_read_error(err)})") from None


@dataclass
class ShardHeader:
    """What a reader learns from a shard without touching frames: its index, the sources it
    covers, and the layout of its first video."""

    lengths: np.ndarray
    labels: np.ndarray
    segments: list[list[list[int]] | None]
    #: the job keys (sources) the shard covers, skipped ones included; None for a shard without the record
    consumed: list[str] | None
    #: ``([H, W, C], dtype)`` of the first stored video; None for a shard without videos
    layout: tuple[list[int], str] | None


def read_shard_header(path: Path) -> ShardHeader:
    """The :class:`ShardHeader` of a shard (metadata and the small index only); a :class:`ShardError` if unreadable."""
    with open_shard(path) as f:
        try:
            consumed = json.loads(f.attrs["consumed_json"]) if "consumed_json" in f.attrs else None
            first = next(iter(f["videos"]), None)
            layout = None
            if first is not None:
                ds = f["videos"][first]
                layout = ([int(n) for n in ds.shape[1:]], str(ds.dtype))
            return ShardHeader(f["lengths"][()], f["labels"][()], json.loads(f.attrs["segments_json"]), consumed, layout)
        except READ_ERRORS as err:
            raise shard_error(path, f"is damaged ({describe_read_error(err)})") from None


def read_shard_index(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[list[int]] | None]]:
    """(lengths, labels, segments) of a shard, without reading any frames; a :class:`ShardError` if unreadable."""
    header = read_shard_header(path)
    return header.lengths, header.labels, header.segments


#: what to do about a manifest that does not describe its shards
LAYOUT_ADVICE = "the manifest does not describe its shards: restore it, or prepare the dataset again into a new --out"


def check_layout(root: Path, manifest: dict[str, Any], name: str, layout: tuple[list[int], str] | None) -> None:
    """Refuse, in one line naming the field and both values, a shard whose frames are not the
    ``frame_size``, ``channels`` and ``dtype`` the manifest records (an edited manifest, or
    another dataset's shard): readers would otherwise serve clips of the wrong shape."""
    if layout is None:
        return
    shape, dtype = layout
    where = f"{root / MANIFEST_NAME}"
    if len(shape) != 3:
        raise CttlstmError(f"{where}: shard {name} holds videos of shape {shape}, not [T, H, W, C]; {LAYOUT_ADVICE}")
    for field, want, have in (
        ("frame_size", list(manifest["frame_size"]), shape[:2]),
        ("channels", manifest["channels"], shape[2]),
        ("dtype", manifest.get("dtype", DTYPE), dtype),
    ):
        if want != have:
            raise CttlstmError(f"{where}: {field} is {want!r} but shard {name} holds {have!r}; {LAYOUT_ADVICE}")


def shared_source(root: Path, shards: Iterable[tuple[str, str, list[str] | None]]) -> str | None:
    """The one-line problem when a source is covered by two shards (``(split, file, consumed keys)``
    each), in two splits or twice in one; None when every source is covered once.

    A clip in train and test would leak what the model is evaluated on into its training.
    """
    seen: dict[str, tuple[str, str]] = {}
    for split, name, keys in shards:
        for key in keys or ():
            if key in seen:
                other_split, other = seen[key]
                where = (
                    f"in both the {other_split} split ({other}) and the {split} split ({name})"
                    if other_split != split
                    else f"twice in the {split} split ({other}, {name})"
                )
                return f"{root}: source '{printable(key)}' is {where}; prepare the dataset again into a new --out"
            seen[key] = (split, name)
    return None


def check_shards(root: Path, manifest: dict[str, Any], split: str | None = None) -> dict[str, ShardHeader]:
    """The cheap checks of a prepared dataset's shards against its manifest (metadata only, no frames).

    Every shard of ``split`` must be there with its recorded size and a readable index (a
    :class:`ShardError` otherwise); the other splits' shards (all of them when ``split`` is None)
    are checked when they can be read, since a missing or damaged one is only a problem for
    whoever reads that split (and for ``prepare --verify``, which reports it). Every shard read
    must hold frames of the manifest's ``frame_size``, ``channels`` and ``dtype``
    (:func:`check_layout`, one video's metadata per shard), and no source may be covered by two
    shards (:func:`shared_source`: a clip in two splits). Returns ``{file name: header}`` of the
    shards read, in manifest order.
    """
    headers: dict[str, ShardHeader] = {}
    covered: list[tuple[str, str, list[str] | None]] = []
    for name_of_split, summary in manifest["splits"].items():
        sums = shard_checksums(manifest, name_of_split)
        for name in summary["shards"]:
            path = Path(root) / name
            try:
                check_shard_file(path, sums.get(name))
                header = read_shard_header(path)
            except ShardError:
                if name_of_split == split:
                    raise
                continue
            check_layout(Path(root), manifest, name, header.layout)
            headers[name] = header
            covered.append((name_of_split, name, header.consumed))
    problem = shared_source(Path(root), covered)
    if problem is not None:
        raise CttlstmError(problem)
    return headers
