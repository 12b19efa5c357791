"""What ``cttlstm train`` tells its user while it runs: the phase lines, the measured speed and
what it means for an epoch and the run, the note for a CPU run that would take hours per epoch,
the per-epoch bar, and the one line a Ctrl-C ends with, before any step included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cttlstm_cli.timing import (
    CPU_TUTORIAL_RECIPE,
    SLOW_EPOCH_SECONDS,
    StepClock,
    format_duration,
    slow_epoch_note,
    speed_line,
)

from conftest import RECIPES, REPO
from hooks import read_stderr_until

SMOKE = str(RECIPES / "smoke.yaml")


def test_durations_read_in_the_largest_sensible_unit() -> None:
    assert format_duration(0.314) == "0.31 s"
    assert format_duration(2.5) == "2.5 s"
    assert format_duration(45) == "45 s"
    assert format_duration(3.2 * 60) == "3.2 min"
    assert format_duration(50 * 60) == "50 min"
    assert format_duration(2.5 * 3600) == "2.5 h"
    assert format_duration(20 * 3600) == "20 h"
    assert format_duration(3.5 * 86400) == "3.5 days"
    assert format_duration(416 * 86400) == "416 days"


def test_slow_epoch_note_only_for_an_epoch_over_an_hour_on_a_cpu() -> None:
    # The paper's Moving-MNIST recipe on a 2-core CPU: about 2 minutes a step, 625 steps an epoch.
    note = slow_epoch_note(115.0, 625, torch.device("cpu"))
    assert note is not None and note.startswith("an epoch takes about 20 h on this CPU (625 steps of 1.9 min)")
    assert CPU_TUTORIAL_RECIPE in note and (REPO / CPU_TUTORIAL_RECIPE).is_file()  # a recipe the user has
    assert "meant for GPUs" in note and "goes on" in note
    assert slow_epoch_note(1.0, int(SLOW_EPOCH_SECONDS), "cpu") is None  # exactly the threshold: not over it
    assert slow_epoch_note(1.0, int(SLOW_EPOCH_SECONDS) + 1, "cpu") is not None
    assert slow_epoch_note(115.0, 625, "cuda") is None  # a long epoch on a GPU is the recipe's choice


def test_speed_line_counts_epoch_and_run_from_one_step() -> None:
    line = speed_line(115.0, "16 clips", "cpu (2 threads)", 625, 500)
    assert line == ("speed: 1.9 min per optimizer step (16 clips, first step) on cpu (2 threads) "
                    "→ about 20 h per epoch (625 steps), 416 days for the whole run (500 epochs)")  # fmt: skip
    resumed = speed_line(2.0, "8 clips", "cpu", 10, 3, steps_done=25, first_step=None)
    assert resumed == ("speed: 2 s per optimizer step (8 clips) on cpu → about 20 s per epoch (10 steps), "
                       "10 s for the rest of the run (5 of 30 steps, 3 epochs)")  # fmt: skip


def test_step_clock_trusts_the_first_step_only_until_later_steps_are_timed() -> None:
    now = [0.0]
    clock = StepClock(clock=lambda: now[0])
    assert clock.step_seconds is None and clock.remaining(10) is None
    clock.restart()  # before the first step: nothing to time from
    clock.first(30.0)  # compilation and warm-up included
    assert clock.step_seconds == 30.0 and not clock.steady
    now[0] += 2.0
    clock.tick()
    now[0] += 4.0
    clock.tick()
    assert clock.steady and clock.step_seconds == 3.0
    now[0] += 100.0  # a validation
    clock.validation_seconds = 100.0
    clock.restart()  # ... which is no training step
    now[0] += 3.0
    clock.tick()
    assert clock.step_seconds == 3.0
    assert clock.remaining(10) == 30.0 and clock.remaining(10, validations=2) == 230.0


def test_help_describes_any_recipe_not_only_the_papers(cli) -> None:
    result = cli("train", "--help")
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "predict data.future_frames frames from data.input_frames context frames (10 -> 10 on 20-frame clips in the paper's recipes)" in text
    assert "Train a model: 10 -> 10 prediction" not in text


def _run_lines(out: str) -> list[str]:
    return [ln.rstrip() for ln in out.splitlines()]


def test_train_says_each_phase_and_the_measured_speed(cli, trained_smoke, tmp_path: Path) -> None:
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--device", "cpu", "--set", f"data.path={trained_smoke.data}",
                 "--set", "train.epoch_clips=32", "--set", "train.epochs=5", "--max-steps", "2")  # fmt: skip
    assert result.code == 0, result.err
    lines = _run_lines(result.out)
    phases = [f"opening the datasets in {trained_smoke.data}…", "building the model…", "first optimizer step (measuring speed)…"]
    at = [lines.index(p) for p in phases]
    assert at == sorted(at), lines
    speed = [ln for ln in lines if ln.startswith("speed: ")]
    assert len(speed) == 1, lines
    # 32 clips an epoch in batches of 8: 4 steps; 5 epochs.
    match = re.fullmatch(
        r"speed: (\S+ \S+) per optimizer step \(8 clips, first step\) on cpu \(\d+ threads\) "
        r"→ about (\S+ \S+) per epoch \(4 steps\), (\S+ \S+) for the whole run \(5 epochs\)",
        speed[0],
    )
    assert match, speed[0]
    assert lines.index(speed[0]) > at[-1]
    assert not any(ln.startswith("note: ") for ln in lines)  # a smoke epoch takes seconds
    # The bar counts this epoch's steps (2 of 4), not the run's 20, and has a row for the whole run.
    epoch_row = [ln for ln in lines if ln.startswith("epoch 1/5 ")]
    assert len(epoch_row) == 1 and " 2/4 " in epoch_row[0] and "/20" not in epoch_row[0], lines
    assert any(ln.startswith("overall ") and "10.0%" in ln for ln in lines), lines
    # Off a terminal rich draws no live display: no cursor movements or carriage returns in a log.
    assert "\x1b" not in result.out and "\r" not in result.out


def test_a_cpu_epoch_over_an_hour_gets_the_tutorial_note_and_the_run_goes_on(cli, trained_smoke, tmp_path: Path) -> None:
    # 80 million clips an epoch: 10 million steps, over an hour at any step time above 0.4 ms;
    # the run still does the one step --max-steps asks for.
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--device", "cpu", "--quiet", "--set", f"data.path={trained_smoke.data}",
                 "--set", "train.epoch_clips=80000000", "--max-steps", "1")  # fmt: skip
    assert result.code == 0, result.err
    notes = [ln for ln in _run_lines(result.out) if ln.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: an epoch takes about ") and "(10,000,000 steps of " in notes[0], result.out
    assert f"try {CPU_TUTORIAL_RECIPE}" in notes[0]
    # --quiet stays quiet otherwise: no phase lines, no speed line, no bar.
    assert "…" not in result.out and "speed: " not in result.out and "overall" not in result.out
    from cttlstm_cli.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


@pytest.mark.slow
def test_quiet_stays_quiet_while_moving_mnist_is_prepared(cli, tmp_path: Path) -> None:
    """The first use of a Moving-MNIST path prepares it; under --quiet without its bars (they were drawn)."""
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--device", "cpu", "--quiet", "--set", f"data.path={tmp_path / 'data'}",
                 "--set", "train.epoch_clips=8", "--set", "train.val_clips=8", "--max-steps", "1")  # fmt: skip
    assert result.code == 0, result.err
    assert (tmp_path / "data" / "manifest.json").is_file()
    assert "━" not in result.out + result.err and "1000/1000" not in result.out + result.err, result.err


#: runs `cttlstm ARGS` with one stage made to wait for ever (until SIGINT): the first optimizer
#: step, or the preparation of Moving-MNIST; it says so on stderr once it waits there, so that the
#: test's SIGINT lands in the wait (a signal that landed earlier, in a destructor say, could be
#: swallowed where it landed)
_WAITING = "test hook: waiting in the stage"
_BLOCKED = f"""
import sys, time
from cttlstm_cli.data import mmnist
from cttlstm_cli.training import trainer

def wait_for_ever(*args, **kwargs):
    print({_WAITING!r}, file=sys.stderr, flush=True)
    while True:
        time.sleep(0.05)

if sys.argv[1] == "step":
    trainer.train_step = wait_for_ever
else:
    mmnist.build_mmnist = wait_for_ever
from cttlstm_cli.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["step", "data"])
def test_ctrl_c_before_the_first_step_says_nothing_was_saved(stage: str, trained_smoke, tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = trained_smoke.data if stage == "step" else tmp_path / "no-data-yet"
    args = ["train", SMOKE, "--out", str(run), "--device", "cpu", "--set", f"data.path={data}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED, stage, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    phase = "first optimizer step (measuring speed)…" if stage == "step" else f"preparing Moving-MNIST in {data} (first use; once only)…"
    read_stderr_until(proc, _WAITING)  # no deadline: it comes, or the process ends (pytest-timeout is the backstop)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert phase in out.splitlines(), out
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    command = f"cttlstm train {SMOKE} --out {run} --device cpu --set data.path={data}"
    if stage == "step":
        assert last == f"interrupted before the first optimizer step: nothing saved; {run} can be restarted with the same command: {command}"
    else:
        assert last == (f"interrupted while preparing the data in {data}: nothing saved in {run}; the finished parts of the data "
                        f"are kept, and the same command goes on from them: {command}")  # fmt: skip
    assert not list(run.glob("*.pt"))
