"""Fetching dataset files into the cache: resumable, verified, never half-written under the real name.

One implementation for every download (MNIST, KTH): :func:`fetch` gets a URL (``http``,
``https``, ``file``) or a plain local path into ``dest``. Bytes go to ``dest.part`` first; an
interrupted transfer leaves that file behind and the next call asks for the rest with an HTTP
``Range`` request (a server that answers 200 instead of 206 gets a clean restart). The
finished file is checked (size, optional sha256, an optional ``verify`` callback) and only
then renamed to ``dest``, so a file under its real name is always complete. Every failure is
a :class:`DownloadError`: one line naming the URL and the cause.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cttlstm_cli import __version__
from cttlstm_cli.atomic import no_space_error
from cttlstm_cli.errors import CttlstmError

CHUNK = 1 << 16
#: seconds a connect or a single read may stall; generous, since mirrors can be slow and far away
DEFAULT_TIMEOUT = 60.0
USER_AGENT = f"cttlstm/{__version__}"
PART_SUFFIX = ".part"


class DownloadError(CttlstmError):
    """A download that failed; ``str()`` is one line naming the URL and the cause.

    ``kept`` is the number of bytes left in the ``.part`` file for a later resume (0 when none).
    """

    def __init__(self, message: str, url: str, kept: int = 0) -> None:
        super().__init__(message)
        self.url = url
        self.kept = kept
        self.reason = message


@dataclass
class Fetched:
    """What :func:`fetch` delivered."""

    path: Path
    url: str
    size: int
    sha256: str
    resumed_from: int = 0  # bytes that were already on disk and not fetched again
    transferred: int = 0  # bytes transferred by this call


def cache_root() -> Path:
    """cttlstm's cache folder: ``$CTTLSTM_CACHE_DIR``, else ``$CTTLSTM_CACHE``, else ``~/.cache/cttlstm``.

    Both variables are honoured because the LPIPS weights have always used the first and the
    MNIST download the second.
    """
    for name in ("CTTLSTM_CACHE_DIR", "CTTLSTM_CACHE"):
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".cache" / "cttlstm"


def part_path(dest: str | Path) -> Path:
    """Where ``dest`` is written until it is complete and verified."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_local(location: str) -> bool:
    """True for a ``file://`` URL or a plain path (no URL scheme)."""
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    # a one-letter "scheme" is a Windows drive letter (C:\\data), not a URL
    return scheme in ("", "file") or len(scheme) == 1


def local_path(location: str) -> Path:
    """The file a ``file://`` URL or plain path names."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path))
    return Path(location).expanduser()


def join_location(base: str, name: str) -> str:
    """``name`` inside ``base``: a URL (``http``, ``https``, ``file``) or a plain folder path."""
    if is_local(base) and urllib.parse.urlsplit(base).scheme.lower() != "file":
        return str(Path(base).expanduser() / name)
    return base.rstrip("/") + "/" + urllib.parse.quote(name)


@contextmanager
def cache_lock(folder: str | Path) -> Iterator[None]:
    """Hold the lock on ``folder`` (:class:`cttlstm_cli.locking.RunLock`) so two cttlstm processes
    never write the same ``.part``; raises CttlstmError at once when another process holds it."""
    from cttlstm_cli.locking import RunLock, RunLockedError

    lock = RunLock(folder)
    try:
        lock.acquire()
    except RunLockedError as err:
        raise RunLockedError(err.folder, err.holder, "wait for its download to finish and run again") from None
    try:
        yield
    finally:
        lock.release()


def _describe(err: BaseException) -> str:
    """A short, human cause for a network or file error."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}".strip()
    if isinstance(err, urllib.error.URLError):
        return _describe(err.reason) if isinstance(err.reason, BaseException) else str(err.reason)
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(err, socket.gaierror):
        return f"host not found ({err.strerror or err})"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(err, http.client.IncompleteRead):
        return "the connection was cut during the transfer"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class _Bar:
    """A rich progress bar for one file (no-op when disabled)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self.progress = None
        self.task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            from cttlstm_cli.data.prepare import _console  # stderr: stdout stays for results

            self.progress = Progress(
                TextColumn("[bold]{task.description:<16}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=_console,
            )  # fmt: skip
            self.progress.__enter__()
        return self

    def start(self, total: int | None, completed: int) -> None:
        """(Re)start the bar at ``completed`` of ``total`` bytes; a retry reuses the file's one bar."""
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task(self.label, total=total, completed=completed)
        else:
            self.progress.update(self.task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


def _hash_prefix(path: Path, size: int) -> hashlib._Hash:
    """sha256 state after the first ``size`` bytes of ``path`` (the part kept from an earlier run)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = size
        while left > 0:
            block = f.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def _copy_stream(src: BinaryIO, part: Path, mode: str, h: hashlib._Hash, bar: _Bar, url: str, offset: int) -> int:
    """Append ``src`` to ``part``; returns the bytes written. Disk-full and read errors become DownloadError."""
    done = 0
    try:
        with part.open(mode) as out:
            while True:
                try:
                    block = src.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _Interrupted(err, done) from None
                if not block:
                    break
                out.write(block)
                h.update(block)
                done += len(block)
                bar.advance(len(block))
            out.flush()
            os.fsync(out.fileno())  # what the next run resumes from must really be on disk
    except OSError as err:
        full = no_space_error(err, part, f"{offset + done} bytes so far; free some space and run again to resume")
        if full is not None:
            raise DownloadError(str(full), url, offset + done) from None
        raise DownloadError(f"cannot write {part}: {_describe(err)}", url, offset + done) from None
    return done


class _Interrupted(Exception):
    """The source stopped delivering mid-transfer (``done`` bytes were written first)."""

    def __init__(self, err: BaseException, done: int) -> None:
        super().__init__(str(err))
        self.err, self.done = err, done


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def _attempt_http(url: str, part: Path, timeout: float, bar: _Bar) -> tuple[int, hashlib._Hash, int, int]:
    """One GET (with ``Range`` when ``part`` holds bytes). Returns (total, hash, resumed_from, transferred)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            # our .part is as long as the file (complete) or longer (not this file): decide by the size the server states
            m = re.search(r"/(\d+)", err.headers.get("Content-Range", "") if err.headers else "")
            if m and int(m.group(1)) == offset:
                return offset, _hash_prefix(part, offset), offset, 0
            part.unlink(missing_ok=True)
            raise _Restart() from None
        raise DownloadError(f"could not fetch {url}: {_describe(err)}", url, offset) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(f"could not fetch {url}: {_describe(err)}", url, offset) from None
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                # a range we did not ask for: safest is to start over
                part.unlink(missing_ok=True)
                raise _Restart()
            total = int(m.group(3)) if m.group(3) != "*" else (offset + length if length is not None else None)
            h, mode = _hash_prefix(part, offset), "ab"
        else:
            # 200: the server ignored Range (or there was none): the whole file comes again, from byte 0
            offset, total, h, mode = 0, length, hashlib.sha256(), "wb"
        bar.start(total, offset)
        try:
            done = _copy_stream(resp, part, mode, h, bar, url, offset)
        except _Interrupted as cut:
            raise _Dropped(url, offset + cut.done, total, _describe(cut.err), cut.done) from None
    got = offset + done
    if total is not None and got < total:
        raise _Dropped(url, got, total, "the connection closed early", done)
    if total is not None and got > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not fetch {url}: the server sent {got} bytes but announced {total}", url)
    return got, h, offset, done


def _attempt_local(location: str, part: Path, bar: _Bar) -> tuple[int, hashlib._Hash, int, int]:
    """Copy a local file (``file://`` URL or path) into ``part``, resuming like a Range request."""
    src = local_path(location)
    try:
        total = src.stat().st_size
        handle = src.open("rb")
    except OSError as err:
        raise DownloadError(f"could not fetch {location}: {_describe(err)}", location) from None
    with handle:
        offset = part.stat().st_size if part.is_file() else 0
        if offset > total:
            offset = 0  # longer than the source: not a prefix of it
        if offset:
            handle.seek(offset)
            h, mode = _hash_prefix(part, offset), "ab"
        else:
            h, mode = hashlib.sha256(), "wb"
        bar.start(total, offset)
        try:
            done = _copy_stream(handle, part, mode, h, bar, location, offset)
        except _Interrupted as cut:
            raise _Dropped(location, offset + cut.done, total, _describe(cut.err), cut.done) from None
    if offset + done != total:
        raise _Dropped(location, offset + done, total, "the file changed while it was copied", done)
    return total, h, offset, done


class _Restart(Exception):
    """The ``.part`` could not be resumed; it was removed and the transfer starts again from 0."""


class _Dropped(Exception):
    """The transfer stopped early; the bytes received so far are in the ``.part`` file."""

    def __init__(self, url: str, got: int, total: int | None, cause: str, progressed: int) -> None:
        of = f" of {total}" if total is not None else ""
        super().__init__(f"could not fetch {url}: {cause} after {got}{of} bytes")
        self.url, self.got, self.progressed = url, got, progressed


def _with_kept(message: str, url: str, part: Path) -> DownloadError:
    """The error, saying how much of the file waits in ``part`` for the next run."""
    kept = part.stat().st_size if part.is_file() else 0
    if kept:
        message = f"{message}; {kept} bytes kept in {part} for resuming"
    return DownloadError(message, url, kept)


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    verify: Callable[[Path], None] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = 3,
    progress: bool = True,
    label: str | None = None,
) -> Fetched:
    """Download ``url`` (``http(s)://``, ``file://`` or a plain path) to ``dest``; resumable.

    Bytes go to ``dest.part``; a ``.part`` left by an interrupted run is continued with a
    ``Range`` request (a server that ignores it gets a clean restart). A transfer that stops
    early but made progress is resumed up to ``retries`` times. The complete file must match
    ``sha256`` (when given) and pass ``verify(part_path)`` (which raises CttlstmError to
    reject it); a rejected file is deleted, an accepted one renamed to ``dest``. An existing
    ``dest`` is not looked at: callers decide whether their cached copy is good.

    Raises :class:`DownloadError` (one line) on any failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    local = is_local(url)
    restarts = 0
    attempt = 0
    with _Bar(label or dest.name, progress) as bar:
        while True:
            try:
                if local:
                    size, h, resumed, done = _attempt_local(url, part, bar)
                else:
                    size, h, resumed, done = _attempt_http(url, part, timeout, bar)
                break
            except _Restart:
                restarts += 1
                if restarts > 1:
                    raise DownloadError(f"could not fetch {url}: the server does not answer byte ranges consistently", url) from None
            except _Dropped as drop:
                attempt += 1
                # retry only while bytes keep arriving: a dead host fails at once, a flaky one resumes
                if drop.progressed == 0 or attempt > retries:
                    raise _with_kept(str(drop), url, part) from None
            except DownloadError as err:
                raise _with_kept(str(err), url, part) from None
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not fetch {url}: sha256 mismatch (got {digest[:12]}..., expected {sha256[:12]}...)", url)
    if verify is not None:
        try:
            verify(part)
        except CttlstmError:
            part.unlink(missing_ok=True)  # complete but bad: resuming it could never help
            raise
    os.replace(part, dest)
    return Fetched(dest, url, size, digest, resumed_from=resumed, transferred=done)
