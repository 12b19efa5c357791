"""The ``cttlstm`` command line: thin Typer commands over the library.

Every user error surfaces as one ``error: ...`` line on stderr and exit code 2;
Ctrl-C exits with 130. Commands parse options, call the library and print. Whatever is
printed survives file names that are not valid UTF-8: their undecodable bytes are shown as
``\\xNN`` instead of failing the whole command with a ``UnicodeEncodeError``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Iterator

import typer

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions

from cttlstm_cli import __version__
from cttlstm_cli.cli.app import app
from cttlstm_cli.errors import CttlstmError, RecipeNotice

# Importing a command module registers its command on `app`.
from cttlstm_cli.cli import prepare as _prepare  # noqa: E402,F401
from cttlstm_cli.cli import train as _train  # noqa: E402,F401
from cttlstm_cli.cli import profile as _profile  # noqa: E402,F401
from cttlstm_cli.cli import evaluate as _evaluate  # noqa: E402,F401
from cttlstm_cli.cli import predict as _predict  # noqa: E402,F401
from cttlstm_cli.cli import compare as _compare  # noqa: E402,F401
from cttlstm_cli.cli import suite as _suite  # noqa: E402,F401
from cttlstm_cli.cli.app import reflow_help  # noqa: E402

reflow_help(app)


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings' hook signature
    if issubclass(category, RecipeNotice):
        print(f"notice: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


@contextlib.contextmanager
def _printable_output() -> Iterator[None]:
    """Let stdout and stderr print any path: a file name with bytes that are not UTF-8 reaches
    Python as lone surrogates (``os.fsdecode``), which a strict stream refuses with a
    ``UnicodeEncodeError`` in the middle of a command (rich output, the one-line error, ...).
    Both streams escape such characters as ``\\xNN`` for the duration of the command."""
    from cttlstm_cli.rendering import ESCAPE_ERRORS  # registers the error handler

    changed = []
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != ESCAPE_ERRORS:
            try:
                before = stream.errors
                stream.reconfigure(errors=ESCAPE_ERRORS)
            except (ValueError, OSError):  # closed, or a stream that cannot change
                continue
            changed.append((stream, before))
    try:
        yield
    finally:
        for stream, before in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=before)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of raising for user errors."""
    with _printable_output():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", RecipeNotice)  # once per key and place
            warnings.showwarning = _show_notice
            result = app(args=argv, prog_name="cttlstm", standalone_mode=False)
    except CttlstmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except click_exceptions.UsageError as err:
        if not err.format_message():  # bare `cttlstm`: the help was the answer
            return 0
        hint = f" (see 'cttlstm {err.ctx.command_path.partition(' ')[2]} --help')".replace("  ", " ") if err.ctx else ""
        print(f"error: {err.format_message()}{hint}", file=sys.stderr)
        return 2
    except typer.Exit as err:  # typer's Exit and Abort are click's, under every typer version
        return err.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: see crash_report
        from cttlstm_cli.devices import allocation_size, is_allocation_failure
        from cttlstm_cli.distributed import collective_failure

        if (line := collective_failure(err)) is not None:  # another rank's fault, or the network's: not a bug here
            print(f"error: {line}", file=sys.stderr)
            return GROUP_FAILED
        if is_allocation_failure(err):  # what fits depends on the machine: the job's size, not a bug
            print(f"error: {OUT_OF_MEMORY} ({allocation_size(err)}); {OUT_OF_MEMORY_ADVICE}", file=sys.stderr)
            return 2
        print(f"error: {crash_report(err, argv)}", file=sys.stderr)
        return INTERNAL_ERROR
    return result if isinstance(result, int) else 0


#: exit code of a command stopped by an unexpected exception (BSD's EX_SOFTWARE): a bug, not bad input
INTERNAL_ERROR = 70
#: exit code of a rank whose torchrun group failed around it (EX_TEMPFAIL: a restart may well succeed)
GROUP_FAILED = 75
#: the line of a job that asked for more memory than the machine has, where no estimate refused it first
OUT_OF_MEMORY = "out of memory"
OUT_OF_MEMORY_ADVICE = "a smaller batch (train.micro_batch, --batch-size), frame size, rollout or model needs less"
#: how the last-resort line starts; the tests fail whenever a command prints it
INTERNAL_ERROR_PREFIX = "internal error"


def crash_report(err: BaseException, argv: list[str] | None) -> str:
    """Write the traceback of an unexpected exception to a crash report file; returns the one line to show.

    Every fault a user can cause has its own message; reaching this means cttlstm itself missed
    a case. The user still sees one line (with the file to attach to a bug report), never a
    traceback, and the test suite fails whenever a command ends here.
    """
    import datetime
    import os
    import tempfile
    import traceback

    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    summary = f"{type(err).__name__}: {first}" if first else type(err).__name__
    text = (
        f"cttlstm {__version__}, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
        f"command: cttlstm {' '.join(sys.argv[1:] if argv is None else argv)}\n\n"
        + "".join(traceback.format_exception(err))
    )
    try:
        fd, path = tempfile.mkstemp(prefix="cttlstm-crash-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        where = f"crash report: {path}"
    except OSError as io_err:  # a full or read-only temporary folder: the line still says what happened
        where = f"no crash report written ({io_err.strerror})"
    return f"{INTERNAL_ERROR_PREFIX}: {summary} (a bug in cttlstm; {where})"


def entry_point() -> None:
    """Console-script entry (``cttlstm``, ``python -m cttlstm_cli``)."""
    code = main()
    from cttlstm_cli.distributed import leave_group

    leave_group(code)  # under torchrun: the process group torn down, then gone (never returns there)
    sys.exit(code)
