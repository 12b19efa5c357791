"""One writer per folder: an OS-level lock that ``train`` holds on its run folder for the life of a
run, and a download on its cache folder.

The lock is ``fcntl.flock`` on ``RUN/.lock``. The kernel drops it when the holder's last
descriptor of the file goes away, so a run killed with SIGKILL never leaves a stale lock
(data-loader workers forked from the run share the descriptor and exit within seconds of
their parent). The file holds the PID of the process that took the lock last, for the
message a second writer gets; whether the lock is *held* is the kernel's answer, never the
file's content, so the file is left in place after the run (removing it could let two
writers lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from cttlstm_cli.errors import CttlstmError

#: the lock file's name inside a run folder
LOCK_NAME = ".lock"


class RunLockedError(CttlstmError):
    """Another process holds the folder's lock; ``advice`` ends the one-line message."""

    def __init__(self, folder: Path, holder: int | None, advice: str = "wait until it ends (or stop it), or choose another --out") -> None:
        self.folder, self.holder = folder, holder
        who = f"PID {holder}" if holder is not None else "PID unknown"
        super().__init__(f"{folder} is in use by another cttlstm process ({who}) that is writing to it; {advice}")


def _parse_pid(text: str) -> int | None:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return int(first) if first.isdigit() else None


def check_unlocked(folder: str | Path) -> None:
    """Raise :class:`RunLockedError` if another process holds ``folder``'s lock; changes nothing.

    A quick look before expensive work; only :meth:`RunLock.acquire` makes it safe to write.
    """
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file, or none we can open: nobody to wait for
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(Path(folder), _parse_pid(_read_all(fd))) from None
        except OSError:
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock on one run folder; :meth:`acquire` it, :meth:`release` it (or use ``with``).

    Locks of two ``RunLock`` objects on the same folder conflict even within one process.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock without waiting, creating the folder if needed; returns ``self``.

        Raises :class:`RunLockedError` (naming the holder's PID) when another process holds it;
        nothing in the folder is changed then.
        """
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_CLOEXEC: a program this process starts must not keep the run locked after it ends.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise CttlstmError(f"cannot create the lock file {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse_pid(_read_all(fd))
            os.close(fd)
            raise RunLockedError(self.folder, holder) from None
        except OSError as err:  # e.g. ENOLCK on a file system without locks
            os.close(fd)
            raise CttlstmError(f"cannot lock {self.path}: {err.strerror or err}") from None
        try:
            # Truncate first: on a full disk the write may fail, and an empty file ("PID unknown")
            # is better than a stale PID.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock is what counts; the PID only helps the message
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # LOCK_UN before close: forked data-loader workers share this open file description,
        # and closing only our descriptor would leave the lock held while they live.
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter shutdown)
            pass


def _read_all(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace")
    except OSError:
        return ""
