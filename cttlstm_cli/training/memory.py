"""Memory estimates: how many clips of a batch fit at once, and whether a job fits at all.

The paper's recipe (batch 16, 64x64, 19 recurrent steps, 12 layers) keeps about 7 GB of
activations per 4 clips for the backward pass: on a GPU with 80 GB that is nothing, on a
24 GB CPU machine the full batch does not fit. The estimate runs the model at a reduced frame
size (about 32x32, :func:`probe_size`), adds up the tensors autograd saves for the backward
(each storage once, parameters excluded), and scales by the pixel count; the batch is then
split into the largest micro-batch that fits in 80% of the memory available (``train.micro_batch:
null``). Gradients are accumulated over micro-batches, so the optimizer step is unchanged.

The same probe bounds what one prediction step holds (:func:`step_activation_bytes`), which
``predict`` and ``profile`` use to refuse, in one line, a job that cannot fit (:func:`require`)
instead of dying in an allocation halfway through.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from cttlstm_cli.devices import allocation_size, available_memory, is_allocation_failure
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import unwrap
from cttlstm_cli.models.interface import like_parameters
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training.step import autocast, model_loss

#: the saved tensors are most of the peak; backward's transient buffers are the rest
SAFETY = 1.4
PROBE_PIXELS = 32 * 32
#: the fraction of the available memory a job plans to use
BUDGET_FRACTION = 0.8


def probe_size(height: int, width: int, unit: int = 1) -> tuple[int, int]:
    """A small frame size (about 32x32, multiples of ``unit``) standing in for ``height`` x ``width``.

    Halving while the halves stay multiples of ``unit`` keeps the probe's proportions exact; a
    size without such halves (100000 = 2^5 x 3125 stops at 3125 x 3125) is rounded to multiples
    of ``unit`` near 32x32 instead, so that the probe itself never needs much memory.
    """
    scale = 1
    while (height // (scale * 2)) * (width // (scale * 2)) >= PROBE_PIXELS and (height // (scale * 2)) % unit == 0 and (width // (scale * 2)) % unit == 0:
        scale *= 2
    ph, pw = height // scale, width // scale
    if ph * pw <= 4 * PROBE_PIXELS:
        return ph, pw
    shrink = math.sqrt(height * width / PROBE_PIXELS)
    return max(unit, round(height / shrink / unit) * unit), max(unit, round(width / shrink / unit) * unit)


def _saved_bytes(model: nn.Module, run: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves while ``run()`` runs (each storage once, ``model``'s parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        run()
    return sum(saved.values())


def _saved_bytes_at_probe(model: nn.Module, run: Callable[[], object], what: str, size: tuple[int, int]) -> int:
    """:func:`_saved_bytes`, where a failed allocation means the model is too wide for this machine
    even at the probe's small frame size: one line saying so, not torch's allocator message."""
    try:
        return _saved_bytes(model, run)
    except (RuntimeError, MemoryError) as err:
        if not is_allocation_failure(err):
            raise
        raise CttlstmError(
            f"{what} of this model does not fit in memory even at {size[0]}x{size[1]} pixels ({allocation_size(err)}); "
            "check its widths (model.channels, model.rank, model.kernel ...)"
        ) from None


def activation_bytes_per_clip(model: nn.Module, recipe: Recipe, device: torch.device) -> int:
    """Bytes autograd keeps for the backward of one training clip at the recipe's frame size."""
    data = recipe.data
    h, w = data.frame_size
    # Probe at about 32x32 (a multiple of the encoder's downsampling): small enough to be quick,
    # large enough that the CTT's widened border does not dominate.
    ph, pw = probe_size(h, w, unwrap(model).downsampling)
    clip = torch.rand(1, data.clip_frames, data.channels, ph, pw, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if unwrap(model).num_classes is not None else None

    def run() -> None:
        with autocast(recipe.train.precision, device):
            model_loss(model, clip, recipe, 1.0, labels=labels)

    return int(_saved_bytes_at_probe(model, run, "one training clip", (ph, pw)) * (h * w) / (ph * pw))


def step_activation_bytes(model: nn.Module, height: int, width: int) -> int:
    """Bytes one prediction step of ``model`` holds at frames of ``height`` x ``width``, on the model's device.

    Counted as every tensor autograd would keep for one step from one context frame (the
    recurrent state, every intermediate feature map, the input and output frames): without
    autograd most of them are freed as the step goes, so this bounds the step's peak from above.
    """
    net = unwrap(model)
    ph, pw = probe_size(height, width, net.downsampling)
    # The input requires grad so that autograd records (and the hook sees) every op even when
    # the model's own parameters are frozen, as a model loaded for prediction may be.
    # A model that reads a fixed number of frames at once (SimVP) takes them all: its step is one forward.
    frame = torch.rand(1, net.fixed_context or 1, net.image_channels, ph, pw, **like_parameters(net)).requires_grad_()
    saved = _saved_bytes_at_probe(net, lambda: net(frame, future_frames=1, classify=not net.predicts_frames), "one prediction step", (ph, pw))
    return int(saved * (height * width) / (ph * pw))


def budget(available: int) -> int:
    """The part of ``available`` bytes a job plans to use: the rest is left for what the estimates miss."""
    return int(BUDGET_FRACTION * available)


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``4,050 bytes``, ``512 MiB``, ``3.2 GiB``, ``18,626 GiB``."""
    if n < 2**20:
        return f"{max(int(n), 0):,} bytes"
    if n < 2**30:
        return f"{n / 2**20:,.0f} MiB"
    gib = n / 2**30
    return f"{gib:,.1f} GiB" if gib < 100 else f"{gib:,.0f} GiB"


def require(what: str, need: int, device: torch.device, hint: str, available: int | None = None) -> None:
    """Refuse, in one line, a job that needs ``need`` bytes on ``device`` when its :func:`budget` is smaller.

    ``what`` names the job (``--steps 100000``), ``hint`` says what would fit. ``available`` defaults
    to :func:`available_memory` of ``device``.
    """
    free = available_memory(device) if available is None else available
    if need <= budget(free):
        return
    place = "GPU memory" if device.type == "cuda" else "memory"
    raise CttlstmError(
        f"{what} needs about {format_bytes(need)} of {place}, more than the {format_bytes(budget(free))} it may use "
        f"({BUDGET_FRACTION:.0%} of the {format_bytes(free)} available); {hint}"
    )


def largest_frame(need: int, height: int, width: int, device: torch.device, unit: int = 1) -> str:
    """Which frames fit, for a job of ``need`` bytes at ``height`` x ``width`` that grows with the
    pixel count: ``frames of at most about 5948x5948 fit`` (square, multiples of ``unit``)."""
    pixels = budget(available_memory(device)) * height * width / max(need, 1)
    side = math.isqrt(int(pixels)) // unit * unit
    return f"frames of at most about {side}x{side} fit" if side >= unit else "no frame size fits"


def require_training_memory(
    model: nn.Module, recipe: Recipe, device: torch.device, micro_batch: MicroBatch, hint: str = ""
) -> None:
    """Refuse, in one line, training steps that cannot fit even split into ``micro_batch``: the batch's
    clips (float32, on ``device`` and, drawn there first, on the CPU) plus one micro-batch's activations
    (:func:`activation_bytes_per_clip`, times :data:`SAFETY`). ``hint`` is added to the line."""
    data = recipe.data
    h, w = data.frame_size
    net = unwrap(model)
    clips = micro_batch.batch_size * data.clip_frames * net.image_channels * h * w * 4
    per_clip = micro_batch.bytes_per_clip or activation_bytes_per_clip(model, recipe, device)
    need = clips + int(micro_batch.size * per_clip * SAFETY)
    what = f"training steps of {micro_batch.batch_size} clip(s) at data.frame_size {h}x{w}"
    require(what, need, device, largest_frame(need, h, w, device, net.downsampling) + hint)
    if device.type != "cpu":
        require(f"the {micro_batch.batch_size} clip(s) of {what}", clips, torch.device("cpu"),
                largest_frame(clips, h, w, torch.device("cpu"), net.downsampling) + hint)


def choose_micro_batch(batch_size: int, bytes_per_clip: int, available: int) -> int:
    """The largest divisor of ``batch_size`` whose clips fit in 80% of ``available`` bytes (at least 1)."""
    limit = BUDGET_FRACTION * available
    # Start at the most clips that fit, not at batch_size: a batch of a billion clips would
    # otherwise take a billion trials before the refusal that follows.
    fitting = int(limit // max(bytes_per_clip * SAFETY, 1))
    for size in range(min(batch_size, fitting), 0, -1):
        if batch_size % size == 0:
            return size
    return 1


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """The micro-batch a run uses and why."""

    batch_size: int
    size: int
    bytes_per_clip: int | None = None  # None when the recipe fixed the size
    available: int | None = None

    def describe(self) -> str | None:
        """One line for the run's log when the batch is split, else None."""
        if self.size == self.batch_size:
            return None
        line = f"batches of {self.batch_size} run as {self.batch_size // self.size} micro-batches of {self.size}"
        if self.bytes_per_clip is not None and self.available is not None:
            line += f" (about {self.bytes_per_clip / 2**30:.1f} GiB of activations per clip, {self.available / 2**30:.1f} GiB available)"
        return line


def resolve_micro_batch(model: nn.Module, recipe: Recipe, device: torch.device, batch_size: int | None = None) -> MicroBatch:
    """The micro-batch for batches of ``batch_size`` (default ``train.batch_size``): ``train.micro_batch``
    where it divides the batch, else the largest that the estimate says fits."""
    batch = batch_size or recipe.train.batch_size
    fixed = recipe.train.micro_batch
    if fixed is not None and batch % fixed == 0:
        return MicroBatch(batch, fixed)
    per_clip = activation_bytes_per_clip(model, recipe, device)
    available = available_memory(device)
    return MicroBatch(batch, choose_micro_batch(batch, per_clip, available), per_clip, available)
