"""The process group of a command under torchrun: which rank this process is, its share of the clips,
and the few collectives that train, evaluate and suite need. Without torchrun (``WORLD_SIZE`` unset or
1) a command is one process of world size 1 and every collective here is a no-op.

The group is PyTorch's own (torchrun's environment, c10d, NCCL on GPUs, gloo on CPUs); docs/distributed.md
says how to launch it on one machine, on several and under SLURM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cttlstm_cli.errors import CttlstmError

T = TypeVar("T")

#: environment variable: seconds a collective may wait for the other ranks before the run fails
TIMEOUT_ENV = "CTTLSTM_DIST_TIMEOUT"
#: torch waits 30 minutes on gloo by default; a rank that died or hangs should fail a run in minutes
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> timedelta:
    """How long a collective waits for the other ranks: ``CTTLSTM_DIST_TIMEOUT`` seconds, or 10 minutes."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise CttlstmError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a rank may wait for the others (a positive number, e.g. 600)")
    return timedelta(seconds=seconds)


def restart_count() -> int:
    """How many times torchrun restarted this worker group (``--max-restarts``): 0 on the first attempt."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def launched_world() -> int:
    """The world size torchrun gave this process (1 without torchrun), before any group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


def collective_failure(err: BaseException) -> str | None:
    """The one line for ``err`` when it is a collective that failed under torchrun (another rank died,
    or the group waited past :func:`collective_timeout`); None for any other error. Such an error is
    not this process's bug: torchrun's ``--max-restarts`` brings the group back from the last checkpoint."""
    if launched_world() <= 1:
        return None
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    from_backend = isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "c10d", "ProcessGroup"))
    )
    if not from_backend:
        return None
    lower = text.lower()
    # gloo says "timed out connecting: Connection refused" when a peer's address does not answer: that is
    # a rank that is gone or unreachable (a firewall, a wrong interface), not a slow collective.
    refused = "connection refused" in lower or "connectfullmesh" in lower
    timed_out = "timed out" in lower or "timeout" in lower
    # The limit as set, not re-validated: this runs in the CLI's last-resort handler and must not raise.
    limit = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    if refused:
        cause = "could not connect to another process of the torchrun group (it stopped, or its address is unreachable)"
    elif timed_out:
        cause = f"a collective waited longer than {limit} s ({TIMEOUT_ENV})"
    else:
        cause = "another process of the torchrun group stopped"
    rank = os.environ.get("RANK", "?")
    return f"rank {rank}: {cause} ({type(err).__name__}: {first}); see the other ranks' messages, and docs/distributed.md"


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
        """``values`` summed over every rank (on the host)."""
        if self.world > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    def share(self, count: int) -> range:
        """This rank's items of ``count``: every ``world``-th from ``rank``, so that the ranks' first
        items together are the first items of one process, batch by batch."""
        return range(self.rank, count, self.world)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def on_main(self, work: Callable[[], T], refused: str = "rank 0 stopped (see its message); every rank stops with it") -> T | None:
        """Run ``work`` on rank 0 alone; every rank learns whether it raised a :class:`CttlstmError`, so
        that a refused rank 0 never leaves the others waiting in a collective. Rank 0 re-raises its error,
        the others raise ``refused``. Returns ``work``'s value on rank 0, None elsewhere."""
        error: CttlstmError | None = None
        value: T | None = None
        if self.is_main:
            try:
                value = work()
            except CttlstmError as err:
                error = err
        if self.world > 1:
            failures = self.all_sum(torch.tensor([0.0 if error is None else 1.0]))
            if error is None and float(failures[0]) > 0:
                error = CttlstmError(refused)
        if error is not None:
            raise error
        return value


def joined_group(device: torch.device) -> Distributed:
    """The process group this process has joined (:func:`setup_distributed`), or world size 1 when none:
    for library code that shares its work among ranks when run under torchrun, and runs whole otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed(device=device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size(), device=device, local_world=local_world)


def leave_group(code: int) -> None:
    """End a command-line process that joined a process group with exit ``code``: the group destroyed,
    the streams flushed, then ``os._exit``. The interpreter's own teardown after a gloo group aborts now
    and then ("terminate called without an active exception": a thread of torch.distributed destroyed
    while still joinable), and torchrun would count that abort as a failed worker and restart the group.
    A process that never joined a group returns and exits as usual."""
    import sys

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - a broken group (another rank died) cannot block the exit
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), if any; a
    group already joined (an earlier command of the same process) is reused. On CUDA each process
    takes the GPU of its local rank; collectives wait at most :func:`collective_timeout`."""
    world = launched_world()
    if world <= 1:
        return Distributed(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = collective_timeout()
        # torchrun's own rendezvous (env://: the agent's store, or rank 0's), with the keys of each attempt
        # apart: after a restart, a store that still held the dead workers' gloo addresses sent the new
        # ranks to them (seen with torch 2.13: "connectFullMesh failed ... Connection refused").
        store, _rank, _world = next(dist.rendezvous("env://", timeout=timeout))
        store = dist.PrefixStore(f"cttlstm/attempt-{restart_count()}", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    return joined_group(device)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Distributed",
    "TIMEOUT_ENV",
    "collective_failure",
    "collective_timeout",
    "joined_group",
    "launched_world",
    "leave_group",
    "restart_count",
    "setup_distributed",
]
