"""Model cost: parameters, FLOPs (the paper's definition) and measured epoch time.

FLOPs follow the paper's Table 2: *multiplications for one-step prediction per
sample*, i.e. the multiply-accumulates of every convolution (and of rebuilding
tensor-train kernels) when the whole model advances one frame. They are counted by
running one step under ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC)
and, for families that give one, analytically from the configuration as well.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch

from cttlstm_cli.models import VideoModel, unwrap
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training.memory import resolve_micro_batch
from cttlstm_cli.training.step import build_training_model, compile_model, make_optimizer, train_step


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
    epoch_seconds: float | None
    step_seconds: float | None
    peak_memory_bytes: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a CUDA device, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def time_training_steps(
    model: VideoModel, recipe: Recipe, device: torch.device, batch_size: int, warmup: int = 1, timed_steps: int = 2
) -> float:
    """Mean seconds of one full training step (forward, backward, optimizer) after warm-up."""
    data = recipe.data
    h, w = data.frame_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    clips = torch.rand(batch_size, data.clip_frames, model.image_channels, h, w, generator=generator).to(device)
    optimizer = make_optimizer(model, recipe, device)
    scaler = torch.amp.GradScaler(device.type) if recipe.train.precision == "fp16" else None
    model.train()
    micro = resolve_micro_batch(model, recipe, device, batch_size).size  # as training would split it
    timed = compile_model(model, recipe)  # warm-up then includes the compilation
    for _ in range(warmup):
        train_step(timed, optimizer, clips, recipe, 1.0, scaler, micro_batch=micro)
    _sync(device)
    start = time.perf_counter()
    for _ in range(timed_steps):
        train_step(timed, optimizer, clips, recipe, 1.0, scaler, micro_batch=micro)
    _sync(device)
    return (time.perf_counter() - start) / timed_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_recipe(
    recipe: Recipe,
    device: torch.device,
    batch_size: int | None = None,
    measure_time: bool = True,
    warmup: int = 1,
    timed_steps: int = 2,
) -> Profile:
    """Parameters, FLOPs and (optionally) the measured time of a 10,000-clip epoch."""
    torch.manual_seed(recipe.train.seed)
    model = build_training_model(recipe, device)
    h, w = recipe.data.frame_size
    batch = batch_size or recipe.train.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = epoch_seconds = None
    if measure_time:
        step_seconds = time_training_steps(model, recipe, device, batch, warmup, timed_steps)
        epoch_seconds = step_seconds * math.ceil(recipe.train.epoch_clips / batch)
    net = unwrap(model)
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
        batch_size=batch,
        device=str(device),
        epoch_seconds=epoch_seconds,
        step_seconds=step_seconds,
        peak_memory_bytes=peak_memory_bytes(device) if measure_time else None,
    )
