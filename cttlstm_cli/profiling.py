"""Model cost: parameters, FLOPs (the paper's definition) and measured epoch time.

FLOPs follow the paper's Table 2: *multiplications for one-step prediction per
sample*, i.e. the multiply-accumulates of every convolution (and of rebuilding
tensor-train kernels) when the whole model advances one frame. They are counted by
running one step under ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC)
and, for families that give one, analytically from the configuration as well.

The epoch time is the paper's Time(m): minutes of one 10,000-clip epoch, whatever the
recipe's own ``train.epoch_clips`` (also reported, labelled as the recipe's epoch).

:func:`prepare_profile` builds the model and refuses, in one line, a recipe whose frames cannot
fit in memory (before anything large is allocated); :func:`run_profile` measures, reporting each
phase to an optional ``progress`` callback.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cttlstm_cli.evaluation.compare import EPOCH_CLIPS as PAPER_EPOCH_CLIPS
from cttlstm_cli.models import VideoModel, unwrap
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training import memory
from cttlstm_cli.training.memory import MicroBatch, resolve_micro_batch
from cttlstm_cli.training.step import build_training_model, compile_model, make_optimizer, train_step

#: ``progress(phase, done, total)``: what profiling is doing; ``total`` None for a phase without steps
ProgressCallback = Callable[[str, int, "int | None"], None]


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Profile:
    """One row of ``cttlstm profile``."""

    recipe: str
    arch: str
    model: str
    params: int
    frame_size: list[int]
    flops_per_step: int  # the analytic count where the family has one, else the counted one
    flops_per_step_counted: int
    flops_analytic: bool
    batch_size: int
    device: str
    step_seconds: float | None
    epoch_10k_seconds: float | None  # a 10,000-clip epoch, the paper's Time(m)
    epoch_clips: int  # the recipe's train.epoch_clips
    recipe_epoch_seconds: float | None  # an epoch of the recipe's epoch_clips
    peak_memory_bytes: int | None

    @property
    def epoch_seconds(self) -> float | None:
        """The older name of :attr:`epoch_10k_seconds` (kept in the JSON too)."""
        return self.epoch_10k_seconds

    def to_dict(self) -> dict[str, object]:
        """The JSON row of ``cttlstm profile --json``."""
        return {**asdict(self), "epoch_seconds": self.epoch_seconds}


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


def slow_epoch_note(step_seconds: float, steps_per_epoch: int, device: torch.device | str) -> str | None:
    """The note for a run whose epoch takes more than :data:`SLOW_EPOCH_SECONDS` on a CPU (None otherwise):
    how long an epoch takes, that the paper's recipes are meant for GPUs, and the CPU tutorial recipe.
    On a GPU a long epoch is the recipe's choice, not a wrong machine, and says nothing."""
    epoch = step_seconds * steps_per_epoch
    if torch.device(device).type != "cpu" or epoch <= SLOW_EPOCH_SECONDS:
        return None
    return (
        f"an epoch takes about {format_duration(epoch)} on this CPU ({steps_per_epoch:,} steps of {format_duration(step_seconds)}): "
        f"the paper's recipes are meant for GPUs. On a CPU, try {CPU_TUTORIAL_RECIPE}, a small Conv-TT-LSTM on 32x32 "
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
) -> str:
    """``speed: X per optimizer step (CLIPS, FIRST_STEP) on DEVICE -> about Y per epoch (N steps), Z for
    the whole run (E epochs)``; a run resumed after ``steps_done`` steps gets the time of what is left."""
    epoch = step_seconds * steps_per_epoch
    total = steps_per_epoch * epochs
    what = ", ".join(x for x in (clips, first_step) if x)
    line = (
        f"speed: {format_duration(step_seconds)} per optimizer step ({what}) on {device} "
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


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a CUDA device, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def time_training_steps(
    model: VideoModel,
    recipe: Recipe,
    device: torch.device,
    batch_size: int,
    warmup: int = 1,
    timed_steps: int = 2,
    micro_batch: MicroBatch | None = None,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """Mean seconds of one full training step (forward, backward, optimizer) after warm-up.

    ``micro_batch`` (default: :func:`resolve_micro_batch`, as training would split the batch);
    ``on_step(k)`` after each of the ``warmup + timed_steps`` steps.
    """
    data = recipe.data
    h, w = data.frame_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    clips = torch.rand(batch_size, data.clip_frames, model.image_channels, h, w, generator=generator).to(device)
    optimizer = make_optimizer(model, recipe, device)
    scaler = torch.amp.GradScaler(device.type) if recipe.train.precision == "fp16" else None
    model.train()
    micro = (micro_batch or resolve_micro_batch(model, recipe, device, batch_size)).size
    timed = compile_model(model, recipe)  # warm-up then includes the compilation
    done = 0

    def step() -> None:
        nonlocal done
        train_step(timed, optimizer, clips, recipe, 1.0, scaler, micro_batch=micro)
        done += 1
        if on_step is not None:
            _sync(device)  # so that the count follows the work, not the queue
            on_step(done)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(timed_steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / timed_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ProfileJob:
    """A recipe's model, built and checked to fit in memory, ready to be measured (:func:`run_profile`)."""

    recipe: Recipe
    device: torch.device
    model: nn.Module
    batch_size: int
    micro_batch: MicroBatch | None  # None with measure_time False
    measure_time: bool
    warmup: int
    timed_steps: int


def check_profile_memory(
    model: nn.Module, recipe: Recipe, device: torch.device, batch_size: int, micro_batch: MicroBatch | None
) -> None:
    """Refuse, in one line, frames too large to profile: one prediction step (the FLOP count) and,
    with ``micro_batch``, the timed training steps (:func:`~cttlstm_cli.training.memory.require_training_memory`)."""
    h, w = recipe.data.frame_size
    net = unwrap(model)
    step = memory.step_activation_bytes(net, h, w)
    hint = memory.largest_frame(step, h, w, device, net.downsampling)
    memory.require(f"one prediction step at data.frame_size {h}x{w}", step, device, hint)
    if micro_batch is not None:
        memory.require_training_memory(model, recipe, device, micro_batch, "; --no-time skips the timing")


def prepare_profile(
    recipe: Recipe,
    device: torch.device,
    batch_size: int | None = None,
    measure_time: bool = True,
    warmup: int = 1,
    timed_steps: int = 2,
) -> ProfileJob:
    """Build the recipe's model on ``device`` and check that profiling it fits in memory
    (:func:`check_profile_memory`); nothing large is allocated before the check."""
    torch.manual_seed(recipe.train.seed)
    model = build_training_model(recipe, device)
    batch = batch_size or recipe.train.batch_size
    micro = resolve_micro_batch(model, recipe, device, batch) if measure_time else None
    check_profile_memory(model, recipe, device, batch, micro)
    return ProfileJob(recipe, device, model, batch, micro, measure_time, warmup, timed_steps)


def run_profile(job: ProfileJob, progress: ProgressCallback | None = None) -> Profile:
    """Parameters, FLOPs and (when ``job.measure_time``) the measured time of a 10,000-clip epoch.

    ``progress(phase, done, total)`` hears of each phase: counting FLOPs, then each training step.
    """
    report = progress or (lambda phase, done, total: None)
    recipe, device, model = job.recipe, job.device, job.model
    h, w = recipe.data.frame_size
    net = unwrap(model)
    report("counting FLOPs", 0, None)
    analytic = net.analytic_macs(h, w)
    counted = net.counted_macs(h, w)
    step_seconds = epoch_10k = recipe_epoch = None
    if job.measure_time:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        total = job.warmup + job.timed_steps
        phase = f"timing {job.timed_steps} training step(s) of {job.batch_size} clip(s) after {job.warmup} warm-up"
        report(phase, 0, total)
        step_seconds = time_training_steps(
            model, recipe, device, job.batch_size, job.warmup, job.timed_steps, job.micro_batch,
            on_step=lambda done: report(phase, done, total),
        )
        epoch_10k = epoch_time(step_seconds, job.batch_size)
        recipe_epoch = epoch_time(step_seconds, job.batch_size, recipe.train.epoch_clips)
    return Profile(
        recipe=recipe.name,
        arch=net.config.arch,
        model=net.name,
        params=count_parameters(model),
        frame_size=[h, w],
        flops_per_step=counted if analytic is None else analytic,
        flops_per_step_counted=counted,
        flops_analytic=analytic is not None,
        batch_size=job.batch_size,
        device=str(device),
        step_seconds=step_seconds,
        epoch_10k_seconds=epoch_10k,
        epoch_clips=recipe.train.epoch_clips,
        recipe_epoch_seconds=recipe_epoch,
        peak_memory_bytes=peak_memory_bytes(device) if job.measure_time else None,
    )


def profile_recipe(
    recipe: Recipe,
    device: torch.device,
    batch_size: int | None = None,
    measure_time: bool = True,
    warmup: int = 1,
    timed_steps: int = 2,
    progress: ProgressCallback | None = None,
) -> Profile:
    """Parameters, FLOPs and (optionally) the measured time of a 10,000-clip epoch:
    :func:`prepare_profile` then :func:`run_profile`."""
    return run_profile(prepare_profile(recipe, device, batch_size, measure_time, warmup, timed_steps), progress)
