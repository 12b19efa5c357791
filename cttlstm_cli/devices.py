"""Turning a ``--device`` string into a torch device, with clear errors, and readying the host for it."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import time
from dataclasses import dataclass

import torch

from cttlstm_cli.errors import CttlstmError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CttlstmError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CttlstmError(f"device {name!r} requested but this machine has no CUDA GPU (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CttlstmError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise CttlstmError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


# mallopt(3) parameters, and the largest mmap threshold glibc accepts on 64-bit systems
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


@functools.cache
def retain_freed_memory() -> bool:
    """Keep freed host blocks of up to 32 MiB in the process instead of handing them back to the kernel.

    A training step frees and reallocates the same activation-sized blocks every time. By default
    glibc unmaps blocks above its (adaptive) mmap threshold and trims the heap top, so the next
    step faults the pages in and zeroes them again: 60,000 to 120,000 page faults per fp32 step of
    the Moving-MNIST model at 32x32, about 3% of its time (docs/performance.md). Fixing the threshold
    at glibc's maximum and disabling trimming keeps those blocks for reuse; the peak memory stays
    the same. Larger blocks are still unmapped on free. Returns whether the setting took effect:
    only glibc has it, and ``CTTLSTM_RETAIN_MEMORY=0`` leaves the allocator alone.
    """
    if os.environ.get("CTTLSTM_RETAIN_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    threshold = libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MAX_MMAP_THRESHOLD)
    trim = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    return bool(threshold and trim)


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bf16 units (Ampere or later),
    or a CPU with AVX512-BF16 or AMX. Elsewhere torch emulates bf16, and a bf16 convolution then takes
    several times as long as an fp32 one (5x measured on AVX2), so ``train.precision: auto`` picks fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        # Private probes, absent from some builds: read as "not native", the safe answer.
        probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
        return any(probe is not None and bool(probe()) for probe in probes)
    return False


def open_device(name: str = "auto", threads: int | None = None) -> torch.device:
    """:func:`resolve_device`, and on the CPU :func:`retain_freed_memory` and :func:`use_cpu_threads`
    (``threads``: ``--threads``): what every command runs on."""
    device = resolve_device(name)
    if device.type == "cpu":
        retain_freed_memory()
        use_cpu_threads(threads)
    return device


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(interval: float = 0.25) -> float | None:
    """How many of the machine's cores other work keeps busy right now: the non-idle share of
    ``/proc/stat``'s CPU time over ``interval`` seconds, times the cores (None off Linux). Measured,
    not the load average, which trails a job that has just ended by minutes."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return None
    return (1.0 - (idle1 - idle0) / elapsed) * (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuThreads:
    """The threads torch computes with on the CPU, and why (for the line that shows the device)."""

    threads: int
    cores: int
    reason: str  # "--threads", "OMP_NUM_THREADS", "all cores", or the measured load

    def count(self) -> str:
        """``1 thread``, ``2 threads``."""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}"

    def describe(self) -> str:
        """The count and why: ``2 threads``; ``4 threads, from --threads``; ``1 of 2 threads, 1.3 cores
        busy with other work; --threads N to choose``."""
        if self.reason == "all cores":
            return self.count()
        if self.reason in ("--threads", "OMP_NUM_THREADS"):
            return f"{self.count()}, from {self.reason}"
        return f"{self.threads} of {self.cores} threads, {self.reason}; --threads N to choose"


def choose_cpu_threads(requested: int | None, cores: int, busy: float | None, environment: str | None) -> CpuThreads:
    """The thread count for the CPU: ``requested`` (``--threads``) when given, else ``OMP_NUM_THREADS``
    (``environment``) when set, else the ``cores`` that the ``busy`` cores of other work leave free, at
    least one. On a shared machine torch's threads, one per core, wait on each other at every
    operation while another job holds a core: a 2-core machine with two busy processes ran several
    times slower with 2 threads than with 1."""
    if requested is not None:
        if requested < 1:
            raise CttlstmError(f"--threads must be at least 1, got {requested}")
        return CpuThreads(requested, cores, "--threads")
    if environment is not None and environment.strip().isdigit() and int(environment) >= 1:
        return CpuThreads(int(environment), cores, "OMP_NUM_THREADS")
    if busy is None:
        return CpuThreads(cores, cores, "all cores")
    free = max(1, min(cores, int(cores - busy + 0.5)))
    if free >= cores:
        return CpuThreads(cores, cores, "all cores")
    return CpuThreads(free, cores, f"{busy:.1f} cores busy with other work")


_chosen: CpuThreads | None = None


def use_cpu_threads(requested: int | None = None) -> CpuThreads:
    """Set torch's CPU threads once per process (:func:`choose_cpu_threads`); a later call with a new
    ``requested`` count sets that one. The choice is what :func:`cpu_threads` reports."""
    global _chosen
    if _chosen is None or (requested is not None and requested != _chosen.threads):
        _chosen = choose_cpu_threads(requested, usable_cores(), busy_cores(), os.environ.get("OMP_NUM_THREADS"))
        torch.set_num_threads(_chosen.threads)
    return _chosen


def cpu_threads() -> CpuThreads:
    """What torch computes with on the CPU now: the choice of :func:`use_cpu_threads`, or torch's own."""
    if _chosen is not None and _chosen.threads == torch.get_num_threads():
        return _chosen
    return CpuThreads(torch.get_num_threads(), usable_cores(), "all cores")


def is_allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed allocation: torch's CPU allocator raises a plain RuntimeError for it
    ("DefaultCPUAllocator: can't allocate memory"), CUDA an OutOfMemoryError, Python a MemoryError."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def allocation_size(err: BaseException) -> str:
    """What a failed allocation asked for, in words (``1,440 GB asked for``), from torch's message."""
    found = re.search(r"allocate (\d+) bytes", str(err))
    return f"{int(found.group(1)) / 1e9:,.1f} GB asked for" if found else "out of memory"
