"""Writing files so that readers never see half of one: a temporary name, then a rename.

Also the one wording of a full disk: :func:`no_space_error` and :func:`no_space_as_error`
turn the ``OSError`` of a write that found no room into a one-line :class:`CttlstmError`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def no_space_error(err: BaseException, path: str | Path | None = None, advice: str = "") -> CttlstmError | None:
    """The one-line CttlstmError for ``err`` when it says the disk is full, else None.

    ENOSPC, EDQUOT and EFBIG all read ``no space left on device writing PATH (ENOSPC)``, the
    errno in brackets telling which; ``path`` (default: the error's own file name) names
    the file the write was for; ``advice`` (what is kept, how to go on) follows after "; ".
    """
    if not isinstance(err, OSError) or err.errno not in NO_SPACE_ERRNOS:
        return None
    where = path if path is not None else (err.filename or "a file")
    message = f"no space left on device writing {where} ({NO_SPACE_ERRNOS[err.errno]})"
    return CttlstmError(f"{message}; {advice}" if advice else message)


@contextmanager
def no_space_as_error(path: str | Path | None = None, advice: str = "") -> Iterator[None]:
    """Re-raise a full-disk ``OSError`` from the block as :func:`no_space_error`'s CttlstmError.

    Any other exception passes unchanged, so callers that expect ``OSError`` for other
    failures keep working.
    """
    try:
        yield
    except OSError as err:
        mapped = no_space_error(err, path, advice)
        if mapped is None:
            raise
        raise mapped from None
