"""A deterministic point inside a real ``cttlstm`` process, for the tests that signal one mid-run.

Polling for ``last.pt`` and then sending a signal races the run: on a fast machine it may have
finished, on a loaded one the signal may land anywhere. :data:`PAUSE_AFTER_FIRST_CHECKPOINT` runs the
real command line with one change: once the first ``last.pt`` is written, it says so on stderr
(:data:`FIRST_CHECKPOINT_LINE`) and waits, until a Ctrl-C asks the trainer to stop (the run then
goes on to save and exit as it would) or for ever (a SIGKILL's test). :func:`wait_for_first_checkpoint`
reads stderr up to that line: no timing is involved anywhere.
"""

from __future__ import annotations

import subprocess

#: what the paused process writes to stderr once its first last.pt is on disk
FIRST_CHECKPOINT_LINE = "test hook: first last.pt written; waiting"

#: ``python -c`` this, then cttlstm's arguments
PAUSE_AFTER_FIRST_CHECKPOINT = f"""
import sys, time
from cttlstm_cli.training.trainer import Trainer
save = Trainer.save
paused = []

def save_then_wait(self, path=None):
    save(self, path)
    if path is None and not paused:  # the first last.pt
        paused.append(True)
        print({FIRST_CHECKPOINT_LINE!r}, file=sys.stderr, flush=True)
        while not self._stop_requested:  # a Ctrl-C sets it (the trainer's handler); a SIGKILL never returns
            time.sleep(0.05)

Trainer.save = save_then_wait
from cttlstm_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""


def read_stderr_until(proc: subprocess.Popen, wanted: str) -> list[str]:
    """Read ``proc``'s stderr (a pipe) up to the line ``wanted`` and return the lines before it; fails
    with what the process wrote when it ends without writing it."""
    assert proc.stderr is not None
    before: list[str] = []
    for raw in proc.stderr:
        line = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\n")
        if line == wanted:
            return before
        before.append(line)
    proc.wait()
    raise AssertionError(f"the process ended (exit {proc.returncode}) without saying {wanted!r}: " + "\n".join(before))


def wait_for_first_checkpoint(proc: subprocess.Popen) -> list[str]:
    """Block until ``proc`` (started with :data:`PAUSE_AFTER_FIRST_CHECKPOINT`) waits after its first
    ``last.pt``; the stderr lines before that."""
    return read_stderr_until(proc, FIRST_CHECKPOINT_LINE)
