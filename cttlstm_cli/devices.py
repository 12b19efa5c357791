"""Turning a ``--device`` string into a torch device, with clear errors, and readying the host for it."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re

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


def open_device(name: str = "auto") -> torch.device:
    """:func:`resolve_device`, and on the CPU :func:`retain_freed_memory`: what every command runs on."""
    device = resolve_device(name)
    if device.type == "cpu":
        retain_freed_memory()
    return device


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
