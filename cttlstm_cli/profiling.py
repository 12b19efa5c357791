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

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from cttlstm_cli.models import VideoModel, unwrap
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training import memory
from cttlstm_cli.training.memory import MicroBatch, resolve_micro_batch
from cttlstm_cli.timing import epoch_time, format_duration
from cttlstm_cli.training.step import build_training_model, compile_model, make_optimizer, probe_step_seconds, train_step

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
    #: the batch actually timed: the recipe's, or a smaller one when timing it would take longer than
    #: the time budget (``step_seconds`` is then scaled up to ``batch_size`` in proportion); None untimed
    timed_batch_size: int | None
    step_seconds: float | None
    epoch_10k_seconds: float | None  # a 10,000-clip epoch, the paper's Time(m)
    epoch_clips: int  # the recipe's train.epoch_clips
    recipe_epoch_seconds: float | None  # an epoch of the recipe's epoch_clips
    peak_memory_bytes: int | None  # measured at the batch timed: None when that was not the recipe's

    @property
    def extrapolated(self) -> bool:
        """Whether the step time was scaled up from a smaller batch than the recipe's."""
        return self.timed_batch_size is not None and self.timed_batch_size < self.batch_size

    @property
    def epoch_seconds(self) -> float | None:
        """The older name of :attr:`epoch_10k_seconds` (kept in the JSON too)."""
        return self.epoch_10k_seconds

    def to_dict(self) -> dict[str, object]:
        """The JSON row of ``cttlstm profile --json``."""
        return {**asdict(self), "epoch_seconds": self.epoch_seconds}


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
    max_seconds: float | None = None  # the time budget of the timing (None: time the recipe's batch, however long)


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
    max_seconds: float | None = None,
) -> ProfileJob:
    """Build the recipe's model on ``device`` and check that profiling it fits in memory
    (:func:`check_profile_memory`); nothing large is allocated before the check. ``max_seconds``
    bounds the timing (:func:`timed_batch`)."""
    torch.manual_seed(recipe.train.seed)
    model = build_training_model(recipe, device)
    batch = batch_size or recipe.train.batch_size
    micro = resolve_micro_batch(model, recipe, device, batch) if measure_time else None
    check_profile_memory(model, recipe, device, batch, micro)
    return ProfileJob(recipe, device, model, batch, micro, measure_time, warmup, timed_steps, max_seconds)


def timed_batch(seconds_per_clip: float, batch_size: int, steps: int, max_seconds: float | None) -> int:
    """The batch to time ``steps`` training steps with: the recipe's ``batch_size``, or the largest smaller
    one whose steps take at most ``max_seconds`` at ``seconds_per_clip`` (at least one clip). A step's
    time grows in proportion to its clips (they are independent work), so a smaller batch's time scaled
    up estimates the recipe's where timing that would take minutes (a paper recipe on a CPU)."""
    if max_seconds is None or seconds_per_clip * batch_size * steps <= max_seconds:
        return batch_size
    return max(1, min(batch_size, int(max_seconds / (seconds_per_clip * steps))))


def count_profile(job: ProfileJob, progress: ProgressCallback | None = None) -> Profile:
    """Parameters and FLOPs of ``job``'s model (seconds even for a paper recipe); no timing."""
    report = progress or (lambda phase, done, total: None)
    recipe, device, model = job.recipe, job.device, job.model
    h, w = recipe.data.frame_size
    net = unwrap(model)
    report("counting FLOPs", 0, None)
    analytic = net.analytic_macs(h, w)
    counted = net.counted_macs(h, w)
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
        timed_batch_size=None,
        step_seconds=None,
        epoch_10k_seconds=None,
        epoch_clips=recipe.train.epoch_clips,
        recipe_epoch_seconds=None,
        peak_memory_bytes=None,
    )


def time_profile(job: ProfileJob, counts: Profile, progress: ProgressCallback | None = None) -> Profile:
    """``counts`` (:func:`count_profile`) with the measured step and epoch times and the peak memory.

    With ``job.max_seconds``, one clip's forward and backward is timed first (``probe_step_seconds``)
    and the steps are timed at the batch that fits the budget (:func:`timed_batch`); the phase reported
    to ``progress(phase, done, total)`` says how long the timing will take."""
    report = progress or (lambda phase, done, total: None)
    recipe, device, model = job.recipe, job.device, job.model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    total = job.warmup + job.timed_steps
    timed = job.batch_size
    eta = ""
    if job.max_seconds is not None:
        report("timing one clip for an estimate", 0, None)
        per_clip = probe_step_seconds(model, recipe, device)
        timed = timed_batch(per_clip, job.batch_size, total, job.max_seconds)
        eta = f", about {format_duration(per_clip * timed * total)}"
    micro = job.micro_batch if timed == job.batch_size else resolve_micro_batch(model, recipe, device, timed)
    phase = f"timing {job.timed_steps} training step(s) of {timed} clip(s) after {job.warmup} warm-up{eta}"
    report(phase, 0, total)
    measured = time_training_steps(
        model, recipe, device, timed, job.warmup, job.timed_steps, micro, on_step=lambda done: report(phase, done, total)
    )
    step_seconds = measured * job.batch_size / timed
    return replace(
        counts,
        timed_batch_size=timed,
        step_seconds=step_seconds,
        epoch_10k_seconds=epoch_time(step_seconds, job.batch_size),
        recipe_epoch_seconds=epoch_time(step_seconds, job.batch_size, recipe.train.epoch_clips),
        peak_memory_bytes=peak_memory_bytes(device) if timed == job.batch_size else None,
    )


def run_profile(job: ProfileJob, progress: ProgressCallback | None = None) -> Profile:
    """Parameters, FLOPs and (when ``job.measure_time``) the measured time of a 10,000-clip epoch:
    :func:`count_profile`, then :func:`time_profile`."""
    counts = count_profile(job, progress)
    return time_profile(job, counts, progress) if job.measure_time else counts


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
