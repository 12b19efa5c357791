"""Writing files so that readers never see half of one: a temporary name, then a rename.

Also the one wording of a full disk: :func:`no_space_error` and :func:`no_space_as_error`
turn the ``OSError`` of a write that found no room into a one-line :class:`CttlstmError`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cttlstm_cli.errors import CttlstmError

#: errno values that all mean "this write found no room": a full file system, a disk quota,
#: and a file-size limit (``ulimit -f``, RLIMIT_FSIZE, with SIGXFSZ ignored)
NO_SPACE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "ENOSPC",
    errno.EDQUOT: "EDQUOT: disk quota exceeded",
    errno.EFBIG: "EFBIG: file size limit reached",
}


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps ``path``'s extension (writers such as imageio, matplotlib and
    ``np.save`` pick or append formats by it) and is removed whatever happens.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # a full, read-only or protected folder, whatever the writer in the block
        raise write_error(err, path) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_error(err: OSError, path: str | Path) -> CttlstmError:
    """The one-line error of a failed write of ``path``: :func:`no_space_error`'s for a full disk, else
    ``cannot write PATH: Permission denied`` (a read-only or protected folder, a name that is a folder ...)."""
    return no_space_error(err, path) or CttlstmError(f"cannot write {path}: {err.strerror or err}")


def require_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, in one line, an output folder that names an existing file or lies in a folder this
    process cannot write: every write into it would fail (ENOTDIR, EEXIST, EACCES) after the work was
    done. Call it before the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CttlstmError(f"{option} {path} is a file, not a folder")
    nearest = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if nearest is not None and nearest.is_dir() and not os.access(nearest, os.W_OK | os.X_OK):
        denied = PermissionError(errno.EACCES, f"{os.strerror(errno.EACCES)} ({nearest} is not writable for this user)")
        raise write_error(denied, path)
    return path


def refuse_writing_over_inputs(output: str | Path, inputs: list[str | Path], option: str = "--out") -> None:
    """Refuse, in one line naming ``option``, an ``output`` that is one of the command's ``inputs`` (the
    same file by any path, hard link or symbolic link) or lies inside an input folder: writing it would
    destroy or change what the command reads."""
    out = Path(output)
    resolved = out.resolve()
    for given in inputs:
        source = Path(given)
        if not source.exists():
            continue
        same = out.exists() and os.path.samefile(out, source)
        inside = source.is_dir() and resolved.is_relative_to(source.resolve())
        if same or inside:
            how = "is" if same else "is inside"
            raise CttlstmError(f"{option} {out} {how} the input {source}: it would be overwritten; choose another {option}")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_bytes_durably(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` and fsync it: a full disk shows up here (some file systems
    only report it when the data reaches the disk), not later as a silently short file."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class NoSpaceError(CttlstmError):
    """A write found no room: ``no space left on device writing PATH (ENOSPC)``.

    ``path`` is the file the write was for, ``errno`` which of :data:`NO_SPACE_ERRNOS` it was,
    ``advice`` (optional) what is kept and how to go on, after "; " in the same line.
    """

    def __init__(self, path: str | Path, err_no: int, advice: str = "") -> None:
        self.path, self.errno, self.advice = path, err_no, advice
        message = f"no space left on device writing {path} ({NO_SPACE_ERRNOS.get(err_no, 'ENOSPC')})"
        super().__init__(f"{message}; {advice}" if advice else message)


def no_space_error(err: BaseException, path: str | Path | None = None, advice: str = "") -> NoSpaceError | None:
    """The one-line :class:`NoSpaceError` for ``err`` when it says the disk is full, else None.

    ``path`` (default: the error's own file name) names the file the write was for.
    """
    if not isinstance(err, OSError) or err.errno not in NO_SPACE_ERRNOS:
        return None
    return NoSpaceError(path if path is not None else (err.filename or "a file"), err.errno, advice)


@contextmanager
def no_space_as_error(path: str | Path | None = None, advice: str = "") -> Iterator[None]:
    """Re-raise a full-disk ``OSError`` from the block as :func:`no_space_error`'s :class:`NoSpaceError`.

    Any other exception passes unchanged, so callers that expect ``OSError`` for other
    failures keep working.
    """
    try:
        yield
    except NoSpaceError as err:  # from an atomic write in the block, which knows no advice
        if advice and not err.advice:
            raise NoSpaceError(err.path, err.errno, advice) from None
        raise
    except OSError as err:
        mapped = no_space_error(err, path, advice)
        if mapped is None:
            raise
        raise mapped from None
