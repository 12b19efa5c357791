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

# Page faults of three fast-path training steps of a small model, after three warm-up steps.
FAULT_PROBE = """
import json, resource, torch
from cttlstm_cli.devices import retain_freed_memory
from cttlstm_cli.models import create_model
from cttlstm_cli.models.convrnn import ConvRNNConfig
retained = retain_freed_memory()
torch.manual_seed(0)
model = create_model(ConvRNNConfig(blocks=[1, 1, 1, 1], channels=[16, 16, 16, 16], rank=4, kernel=3))
clips = torch.rand(2, 20, 1, 32, 32)
def step():
    model(clips, 10, 10, 1.0).square().mean().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(json.dumps({"retained": retained, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe_faults(retain: bool) -> dict:
    env = {**os.environ, "CTTLSTM_RETAIN_MEMORY": "1" if retain else "0"}
    out = subprocess.run([sys.executable, "-c", FAULT_PROBE], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_retained_memory_is_reused_without_page_faults() -> None:
    default, retained = probe_faults(retain=False), probe_faults(retain=True)
    assert default["retained"] is False
    assert retained["retained"] is GLIBC
    if GLIBC:
        # glibc's default hands freed activation blocks back and faults them in again every step
        assert default["faults"] > 5000, default
        assert retained["faults"] < default["faults"] // 20, (default, retained)


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
