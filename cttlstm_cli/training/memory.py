"""How many clips of a batch fit in memory at once (``train.micro_batch: null``).

The paper's recipe (batch 16, 64x64, 19 recurrent steps, 12 layers) keeps about 7 GB of
activations per 4 clips for the backward pass: on a GPU with 80 GB that is nothing, on a
24 GB CPU machine the full batch does not fit. The estimate runs the training forward of
one clip at a reduced frame size, adds up the tensors autograd saves for the backward
(each storage once, parameters excluded), and scales by the pixel count; the batch is then
split into the largest micro-batch that fits in 80% of the memory available. Gradients
are accumulated over micro-batches, so the optimizer step is unchanged.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from cttlstm_cli.models import unwrap
from cttlstm_cli.recipe import Recipe
from cttlstm_cli.training.step import autocast, model_loss

#: the saved tensors are most of the peak; backward's transient buffers are the rest
SAFETY = 1.4
PROBE_PIXELS = 32 * 32


def activation_bytes_per_clip(model: nn.Module, recipe: Recipe, device: torch.device) -> int:
    """Bytes autograd keeps for the backward of one training clip at the recipe's frame size."""
    data = recipe.data
    h, w = data.frame_size
    # Probe at about 32x32 (a multiple of the encoder's downsampling): small enough to be quick,
    # large enough that the CTT's widened border does not dominate.
    unit = unwrap(model).downsampling
    scale = 1
    while (h // (scale * 2)) * (w // (scale * 2)) >= PROBE_PIXELS and (h // (scale * 2)) % unit == 0 and (w // (scale * 2)) % unit == 0:
        scale *= 2
    ph, pw = h // scale, w // scale
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    clip = torch.rand(1, data.clip_frames, data.channels, ph, pw, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if unwrap(model).num_classes is not None else None
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast(recipe.train.precision, device):
        model_loss(model, clip, recipe, 1.0, labels=labels)
    return int(sum(saved.values()) * scale * scale)


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_micro_batch(batch_size: int, bytes_per_clip: int, available: int) -> int:
    """The largest divisor of ``batch_size`` whose clips fit in 80% of ``available`` bytes (at least 1)."""
    budget = 0.8 * available
    for size in range(batch_size, 0, -1):
        if batch_size % size == 0 and size * bytes_per_clip * SAFETY <= budget:
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
