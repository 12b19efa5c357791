"""Model cost: parameters, FLOPs (the paper's definition) and measured epoch time.

FLOPs follow the paper's Table 2: *multiplications for one-step prediction per
sample*, i.e. the multiply-accumulates of every convolution (and of rebuilding
tensor-train kernels) when the whole network advances one frame. They are counted
twice, independently: analytically from the configuration, and by running one
step under ``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from cttlstm_cli.models.cells import TTConv2d
from cttlstm_cli.models.network import VideoPredictionNetwork, skip_source
from cttlstm_cli.recipe import ModelConfig, Recipe
from cttlstm_cli.training.memory import resolve_micro_batch
from cttlstm_cli.training.step import build_training_model, compile_model, make_optimizer, train_step


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _tt_kernel_macs(layer: TTConv2d) -> int:
    """Multiplications to rebuild a TT kernel from its cores (a chain of tensordots)."""
    macs, elements = 0, layer.kernel_size**2
    for core in layer.cores:
        t, s, r_in, r_out = core.shape
        elements *= t * s
        macs += elements * r_out * r_in
    return macs


def analytic_macs(cfg: ModelConfig, image_channels: int, height: int, width: int) -> int:
    """Multiply-accumulates of one network step for one sample, from the configuration alone."""
    total = 0
    enc = cfg.encoder_channels
    for i, (c_in, c_out) in enumerate(zip([image_channels, *enc], enc), start=1):
        total += (height >> i) * (width >> i) * c_in * c_out * 16  # 4x4 stride-2 convs
    height, width = height >> len(enc), width >> len(enc)
    area, k2 = height * width, cfg.kernel**2
    widths = cfg.channels
    for b, (layers, hidden) in enumerate(zip(cfg.blocks, widths)):
        for l in range(layers):
            if l > 0:
                c_in = hidden
            else:
                c_in = (enc[-1] if enc else image_channels) if b == 0 else widths[b - 1]
                src = skip_source(b, cfg.skip_stride)
                c_in += widths[src] if src is not None else 0
            if cfg.cell == "convlstm":
                total += area * 4 * hidden * (c_in + hidden) * k2
            elif cfg.cell == "convlstm_ttd":
                total += area * 4 * hidden * (c_in + hidden) * k2
                total += _tt_kernel_macs(TTConv2d(c_in, 4 * hidden, cfg.kernel, cfg.rank, cfg.order))
            else:
                window = cfg.steps - cfg.order + 1
                r, n = cfg.rank, cfg.order
                total += n * area * r * window * hidden * k2  # preprocessing
                total += area * 4 * hidden * (c_in + r) * k2  # gates
                total += _ctt_core_macs(cfg, height, width)
    src = skip_source(len(widths), cfg.skip_stride)
    features = widths[-1] + (widths[src] if src is not None else 0)
    for i, c_out in enumerate(reversed(enc)):  # transposed convs: every input pixel meets a 4x4 kernel
        total += (height << i) * (width << i) * features * c_out * 16
        features = c_out
    full = (height << len(enc)) * (width << len(enc))
    return total + full * image_channels * features


def _ctt_core_macs(cfg: ModelConfig, height: int, width: int) -> int:
    r, n, k = cfg.rank, cfg.order, cfg.kernel
    pad = k // 2
    if n == 1:
        return 0
    if cfg.ctt_form == "parallel":
        size = (n - 1) * (k - 1) + 1
        build, kernel = 0, 1
        for _ in range(n - 1):  # composing kernels is itself a small convolution (batched over R)
            kernel_out = kernel + k - 1
            build += r**3 * kernel**2 * kernel_out**2
            kernel = kernel_out
        return height * width * r * n * r * size**2 + build
    if cfg.tt_padding == "stepwise":
        return (n - 1) * height * width * r * r * k * k
    margin = (n - 1) * pad
    # Valid convs on the widened canvas: output i is widened by margin - i*pad.
    return sum((height + 2 * (margin - i * pad)) * (width + 2 * (margin - i * pad)) for i in range(1, n)) * r * r * k * k


def counted_macs(model: VideoPredictionNetwork, height: int, width: int) -> int:
    """Multiply-accumulates of one step for one sample, as counted by torch's FLOP counter."""
    state = model.init_state(1, height, width)
    frame = torch.zeros(1, model.image_channels, height, width, device=model.head.weight.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.step(frame, state)
    return counter.get_total_flops() // 2


@dataclass
class Profile:
    """One row of ``cttlstm profile``."""

    recipe: str
    cell: str
    params: int
    frame_size: list[int]
    flops_per_step: int
    flops_per_step_counted: int
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
    model: VideoPredictionNetwork, recipe: Recipe, device: torch.device, batch_size: int, warmup: int = 1, steps: int = 2
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
    for _ in range(steps):
        train_step(timed, optimizer, clips, recipe, 1.0, scaler, micro_batch=micro)
    _sync(device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_recipe(
    recipe: Recipe,
    device: torch.device,
    batch_size: int | None = None,
    measure_time: bool = True,
    warmup: int = 1,
    steps: int = 2,
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
        step_seconds = time_training_steps(model, recipe, device, batch, warmup, steps)
        epoch_seconds = step_seconds * math.ceil(recipe.train.epoch_clips / batch)
    return Profile(
        recipe=recipe.name,
        cell=recipe.model.cell,
        params=count_parameters(model),
        frame_size=[h, w],
        flops_per_step=analytic_macs(recipe.model, recipe.data.channels, h, w),
        flops_per_step_counted=counted_macs(model, h, w),
        batch_size=batch,
        device=str(device),
        epoch_seconds=epoch_seconds,
        step_seconds=step_seconds,
        peak_memory_bytes=peak_memory_bytes(device) if measure_time else None,
    )
