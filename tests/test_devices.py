"""Device resolution and the host setup every command runs on the CPU."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from cttlstm_cli import devices
from cttlstm_cli.errors import CttlstmError

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Where glibc puts a 24 MiB block and whether it keeps the freed bytes, read from mallinfo2(3):
# the allocator's own bookkeeping, so the answer does not depend on timing or the machine's load.
ALLOCATOR_PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
retained = False
if sys.argv[1] == "retain":
    from cttlstm_cli.devices import retain_freed_memory
    retained = retain_freed_memory()
block = libc.malloc(24 << 20)
held = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
print(json.dumps({"retained": retained, "mmapped_while_held": held.hblkhd, "heap_free_after": freed.fordblks}))
"""


def probe_allocator(mode: str) -> dict:
    env = {**os.environ, "CTTLSTM_RETAIN_MEMORY": "1"}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="retain_freed_memory tunes glibc's malloc; other C libraries are left alone")
def test_retained_memory_stays_in_the_heap_for_reuse() -> None:
    mib24 = 24 << 20
    default, retained = probe_allocator("default"), probe_allocator("retain")
    # glibc's default maps a block this large separately and unmaps it on free: the next step
    # faults it in and zeroes it again.
    assert default["retained"] is False and default["mmapped_while_held"] >= mib24
    # Retained: the block comes from the heap, and its bytes stay there, free for the next step.
    assert retained["retained"] is True
    assert retained["mmapped_while_held"] < mib24 and retained["heap_free_after"] >= mib24


def test_retain_is_a_no_op_off_glibc_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTTLSTM_RETAIN_MEMORY", "0")
    assert devices.retain_freed_memory.__wrapped__() is False
    monkeypatch.setenv("CTTLSTM_RETAIN_MEMORY", "1")
    assert devices.retain_freed_memory.__wrapped__() is GLIBC


def test_retain_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTTLSTM_RETAIN_MEMORY", "0")
    assert devices.retain_freed_memory.__wrapped__() is False


def test_open_device_readies_the_cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: calls.append(True) or True)
    assert devices.open_device("cpu") == torch.device("cpu")
    assert calls == [True]


@pytest.mark.parametrize(
    ("name", "message"),
    [("gpu", "unknown device 'gpu'"), ("meta", "unsupported device 'meta'")]
    + ([] if torch.cuda.is_available() else [("cuda", "no CUDA GPU")]),
)
def test_bad_device_names_are_one_clear_error(name: str, message: str) -> None:
    with pytest.raises(CttlstmError, match=message):
        devices.open_device(name)
