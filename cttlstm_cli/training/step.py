"""One optimizer step of the paper's recipe, shared by ``train`` and ``profile``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cttlstm_cli.devices import native_bf16
from cttlstm_cli.models import create_model, teacher_mask
from cttlstm_cli.models.interface import Sampling, unwrap
from cttlstm_cli.recipe import Recipe

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_training_model(recipe: Recipe, device: torch.device) -> nn.Module:
    """The recipe's model on ``device``, in the memory format training uses (``train.channels_last``)."""
    net = create_model(recipe.model, recipe.data.channels)
    net.check_data(*recipe.data.frame_size, recipe.data.input_frames)
    net = net.to(device)
    if uses_channels_last(recipe, device):
        net = to_channels_last(net)
    return net


def uses_channels_last(recipe: Recipe, device: torch.device) -> bool:
    """Whether the recipe trains on ``device`` in channels-last memory format (``train.channels_last``,
    under the precision :func:`resolve_precision` resolves there)."""
    return recipe.train.channels_last_under(resolve_precision(recipe.train.precision, device))


def to_channels_last(model: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer in channels-last, every 5-D one (3D convs) in channels-last-3d."""

    def convert(t: Tensor) -> Tensor:
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t

    return model._apply(convert)


def compile_model(model: nn.Module, recipe: Recipe) -> nn.Module:
    """``torch.compile(model)`` in the recipe's ``train.compile`` mode, or ``model`` when it is off."""
    mode = recipe.train.compile
    if not mode:
        return model
    return torch.compile(model, mode="default" if mode is True else mode)


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW from the recipe; the fused CUDA kernel where available (what apex's FusedAdam gave)."""
    cfg = recipe.train
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = device.type == "cuda"
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def model_loss(
    model: nn.Module,
    clips: Tensor,
    recipe: Recipe,
    teacher_forcing: float | Tensor | Sampling,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """The training objective on one batch (call under autocast): prediction loss, plus
    cross-entropy weighted as ``lambda * L_prediction + CE`` when ``labels`` are given
    (the cross-entropy alone for a model that predicts no frames)."""
    data = recipe.data
    # The family says which frames its training outputs predict and what its objective adds to the
    # prediction loss; the forward itself goes through `model` so that DDP's gradient hooks stay in play.
    net = unwrap(model)
    targets = net.training_targets(clips, data.input_frames)
    if labels is None:
        outputs = model(clips, data.future_frames, data.input_frames, teacher_forcing, generator)
        return net.loss(outputs, targets, recipe.train.loss)
    outputs, logits = model(clips, data.future_frames, data.input_frames, teacher_forcing, generator, classify=True)
    cross_entropy = F.cross_entropy(logits.float(), labels)
    if outputs is None:  # a classifier only
        return cross_entropy
    return recipe.train.prediction_weight * net.loss(outputs, targets, recipe.train.loss) + cross_entropy


def probe_step_seconds(model: nn.Module, recipe: Recipe, device: torch.device, clips: int = 1) -> float:
    """Seconds of the forward and backward of ``clips`` random clips, a first estimate of the time per
    clip of a training step that may itself take minutes (a paper recipe on a CPU). Leaves no trace:
    the gradients, the buffers (normalisation statistics) and the random state are as they were, so
    that a run with the probe trains exactly as one without."""
    net = unwrap(model)
    data = recipe.data
    params = list(net.parameters())
    grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    sample = torch.rand(clips, data.clip_frames, net.image_channels, *data.frame_size, device=device)
    labels = torch.zeros(clips, dtype=torch.long, device=device) if getattr(net, "classifier", None) is not None else None
    was_training = net.training
    net.train()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(recipe.train.precision, device):
            loss = model_loss(net, sample, recipe, 1.0, labels=labels)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    finally:
        for p, g in zip(params, grads):
            p.grad = g
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        net.train(was_training)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: ``auto`` is bf16 where the device computes it natively
    (:func:`~cttlstm_cli.devices.native_bf16`), else fp32; the others are themselves."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """torch.amp autocast for ``bf16``/``fp16`` (``auto`` as :func:`resolve_precision` resolves it on
    ``device``); a no-op for ``fp32``."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision]):
        yield


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    clips: Tensor,
    recipe: Recipe,
    teacher_forcing: float | Tensor | Sampling,
    scaler: torch.amp.GradScaler | None = None,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    micro_batch: int | None = None,
) -> Tensor:
    """Forward all ``I+F-1`` steps, backward the loss over every prediction, clip, step.

    ``clips [B, I+F, C, H, W]`` in [0, 1]. With ``labels`` (activity recognition) the
    loss is ``lambda * L_prediction + cross-entropy``. ``micro_batch`` (a divisor of B)
    runs forward and backward that many clips at a time and accumulates the gradients:
    the same step in less memory. Returns the (detached) loss.
    """
    optimizer.zero_grad(set_to_none=True)
    batch = clips.shape[0]
    size = micro_batch or batch
    if batch % size:
        raise ValueError(f"micro-batch {size} does not divide the batch of {batch}")
    chunks = batch // size
    data = recipe.data
    # Draw the whole batch's scheduled-sampling choices at once, as one big batch would.
    if chunks > 1 and isinstance(teacher_forcing, float | int) and 0.0 < teacher_forcing < 1.0:
        teacher_forcing = teacher_mask(teacher_forcing, batch, data.future_frames - 1, clips, data.input_frames, generator)  # type: ignore[assignment]
    elif chunks > 1 and isinstance(teacher_forcing, Sampling):
        teacher_forcing = teacher_forcing.drawn(batch, clips, data.input_frames, data.future_frames, generator)
    total = torch.zeros((), device=clips.device)
    for i in range(chunks):
        part = slice(i * size, (i + 1) * size)
        forcing = teacher_forcing[part] if isinstance(teacher_forcing, Tensor | Sampling) else teacher_forcing
        # DDP averages gradients once, after the last chunk.
        sync = contextlib.nullcontext() if i == chunks - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(recipe.train.precision, clips.device):
                loss = model_loss(model, clips[part], recipe, forcing, generator, None if labels is None else labels[part]) / chunks
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        total += loss.detach().float()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if recipe.train.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total
