"""Timing in words, without torch: the paper's epoch, epoch times, durations for people, the step clock
of a running training and its speed line and notes.

A leaf that the trainer, profiling, compare, the suite and the CLI import alike: it imports nothing of
cttlstm and no torch, so that timing and formatting never pull a model or a tensor library into a
module that only prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: the paper's epoch: Table 2's "Time(m)" is minutes per 10,000 training clips, whatever a recipe's own
#: ``train.epoch_clips``
PAPER_EPOCH_CLIPS = 10_000


def device_type(device: object) -> str:
    """``"cpu"``, ``"cuda"``, ... of a torch.device or a device string (``"cuda:1"``), without importing torch."""
    return str(getattr(device, "type", device)).split(":", 1)[0]


def epoch_time(step_seconds: float, batch_size: int, clips: int = PAPER_EPOCH_CLIPS) -> float:
    """Seconds of an epoch of ``clips`` clips at ``step_seconds`` per training step of ``batch_size`` clips."""
    return step_seconds * math.ceil(clips / batch_size)


#: an epoch longer than this on a CPU gets a note that points to :data:`CPU_TUTORIAL_RECIPE`
SLOW_EPOCH_SECONDS = 3600.0
#: the recipe made for training on a CPU
CPU_TUTORIAL_RECIPE = "recipes/tutorial.yaml"


def format_duration(seconds: float) -> str:
    """``seconds`` for people, in the largest unit that keeps the number readable:
    ``0.31 s``, ``45 s``, ``3.2 min``, ``50 min``, ``2.5 h``, ``20 h``, ``3.5 days``, ``416 days``."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.2g} s" if seconds >= 0.01 else f"{seconds:.3f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    for unit, size, upto in (("min", 60.0, 90 * 60.0), ("h", 3600.0, 48 * 3600.0)):
        if seconds < upto:
            value = seconds / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    days = seconds / 86400
    return f"{days:.1f} days" if days < 10 else f"{days:,.0f} days"


def slow_epoch_note(step_seconds: float, steps_per_epoch: int, device: object) -> str | None:
    """The note for a run whose epoch takes more than :data:`SLOW_EPOCH_SECONDS` on a CPU (None otherwise):
    how long an epoch takes, that the paper's recipes are meant for GPUs, and the CPU tutorial recipe.
    On a GPU a long epoch is the recipe's choice, not a wrong machine, and says nothing."""
    epoch = step_seconds * steps_per_epoch
    if device_type(device) != "cpu" or epoch <= SLOW_EPOCH_SECONDS:
        return None
    return (
        f"an epoch takes about {format_duration(epoch)} on this CPU ({steps_per_epoch:,} steps of {format_duration(step_seconds)}): "
        f"the paper's recipes are meant for GPUs. On a CPU, try {CPU_TUTORIAL_RECIPE}, a small SimVP on 32x32 "
        f"Moving-MNIST that learns in about 10 minutes on 2 cores (cttlstm train {CPU_TUTORIAL_RECIPE}). This run goes on"
    )


def speed_line(
    step_seconds: float,
    clips: str,
    device: str,
    steps_per_epoch: int,
    epochs: int,
    steps_done: int = 0,
    first_step: str | None = "first step",
    label: str = "speed",
) -> str:
    """``speed: X per optimizer step (CLIPS, FIRST_STEP) on DEVICE -> about Y per epoch (N steps), Z for
    the whole run (E epochs)``; a run resumed after ``steps_done`` steps gets the time of what is left."""
    epoch = step_seconds * steps_per_epoch
    total = steps_per_epoch * epochs
    what = ", ".join(x for x in (clips, first_step) if x)
    line = (
        f"{label}: {format_duration(step_seconds)} per optimizer step ({what}) on {device} "
        f"→ about {format_duration(epoch)} per epoch ({steps_per_epoch:,} steps), "
    )
    if steps_done <= 0:
        return line + f"{format_duration(step_seconds * total)} for the whole run ({epochs:,} epochs)"
    left = max(0, total - steps_done)
    return line + f"{format_duration(step_seconds * left)} for the rest of the run ({left:,} of {total:,} steps, {epochs:,} epochs)"


class StepClock:
    """Seconds per optimizer step as a run goes, for its estimates and ETA.

    The first step is timed on its own (:meth:`first`, without waiting for the loader's first
    batch): it includes one-off costs (allocator warm-up, torch.compile), so it stands only until
    later steps have been timed. From then on the estimate is their mean, each step timed from
    the end of the one before (:meth:`tick`), so that data loading and checkpoints count as they
    do in the run; :meth:`restart` after validation keeps it out (it is timed on its own).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.first_seconds: float | None = None
        self.validation_seconds: float | None = None  # the most recent validation's
        self._total, self._count = 0.0, 0
        self._mark: float | None = None

    def first(self, seconds: float) -> None:
        """The first step of the run took ``seconds``; later steps are timed from now."""
        self.first_seconds = seconds
        self._mark = self._clock()

    def restart(self) -> None:
        """Time the next step from now (after validation, say), not from the end of the last one."""
        if self.first_seconds is not None:
            self._mark = self._clock()

    def tick(self) -> None:
        """A step (after the first) has just finished."""
        now = self._clock()
        if self._mark is not None:
            self._total += now - self._mark
            self._count += 1
        self._mark = now

    @property
    def steady(self) -> bool:
        """Whether the estimate comes from steps after the first (free of one-off costs)."""
        return self._count > 0

    @property
    def step_seconds(self) -> float | None:
        """The current estimate of one step: the mean of the steps after the first, else the first; None before it."""
        return self._total / self._count if self._count else self.first_seconds

    def remaining(self, steps: int, validations: int = 0) -> float | None:
        """Seconds for ``steps`` more steps and ``validations`` more validations (counted once one has been
        timed); None before the first step."""
        step = self.step_seconds
        if step is None:
            return None
        return steps * step + validations * (self.validation_seconds or 0.0)


__all__ = [
    "CPU_TUTORIAL_RECIPE",
    "PAPER_EPOCH_CLIPS",
    "SLOW_EPOCH_SECONDS",
    "StepClock",
    "device_type",
    "epoch_time",
    "format_duration",
    "slow_epoch_note",
    "speed_line",
]
