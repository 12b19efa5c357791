"""The process group of a run under torchrun: which rank this process is, and the few collectives the
trainer needs. Without torchrun (``WORLD_SIZE`` unset or 1) a run is one process of world size 1."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """Rank layout of this process (world size 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world: int = 1  # processes on this machine (they share its cores)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return Distributed(rank=rank, world=world, device=device, local_world=local_world)


__all__ = ["Distributed", "setup_distributed"]
