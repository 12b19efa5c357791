"""Files and folders that cannot be read or written, memory that cannot be had, and the CLI's last resort.

Permissions are tested for real, in a separate process: as root (these tests often run as root) the
process drops the capabilities that let root ignore permissions (``setpriv``), so that a mode of 000
or 555 means to it what it means to any user. Every case is one line naming the file, a non-zero exit
and no file changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cttlstm_cli.cli import INTERNAL_ERROR, INTERNAL_ERROR_PREFIX, OUT_OF_MEMORY, app, main

from conftest import RECIPES, assert_unchanged, file_snapshot, one_error_line

#: as root, run without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes then apply to the process
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def run_as_user(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``cttlstm ARGS`` in a process that file permissions apply to."""
    command = [*AS_A_USER, sys.executable, "-m", "cttlstm_cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})


def refused_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one ``error:`` line of a refused command (last line of stderr; nothing else is an error)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert not errors[0].startswith(f"error: {INTERNAL_ERROR_PREFIX}"), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def evaluated(trained_smoke, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run with its evaluate report (what compare reads)."""
    root = tmp_path_factory.mktemp("evaluated")
    run = root / "run"
    shutil.copytree(trained_smoke.run, run)
    assert main(["evaluate", str(run / "best.pt"), "--data", str(trained_smoke.data), "--quiet"]) == 0
    return run


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder no one may write into (mode 555), made writable again after the test."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.slow
def test_read_only_output_folders_are_one_line(trained_smoke, evaluated: Path, read_only: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((8, 32, 32), dtype=np.uint8))
    before = file_snapshot(evaluated, trained_smoke.data, clip)
    cases = [
        (["evaluate", evaluated / "best.pt", "--data", trained_smoke.data, "--out", read_only / "eval", "-q"], "cannot write"),
        (["compare", evaluated / "best.pt", "--out", read_only], "cannot write"),
        (["predict", clip, "-k", evaluated / "best.pt", "--steps", "2", "--out", read_only / "p.gif"], "cannot write"),
        (["prepare", "mmnist", "--out", read_only / "d", "--train", "4", "--val", "2", "--test", "2", "--size", "32", "-q"], "cannot write"),
        (["train", RECIPES / "smoke.yaml", "--out", read_only / "run", "--set", f"data.path={trained_smoke.data}", "-q"], "cannot write"),
    ]
    for args, expected in cases:
        line = refused_line(run_as_user(*args, cwd=tmp_path))
        assert expected in line and str(read_only) in line and "Permission denied" in line, (args[0], line)
    assert list(read_only.iterdir()) == []
    assert_unchanged(before)


@pytest.mark.slow
def test_a_read_only_run_folder_is_not_resumed_and_not_changed(trained_smoke, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_smoke.run, run)
    before = {path: kept for path, kept in file_snapshot(run).items() if path.name != ".lock"}  # the lock records who holds it
    run.chmod(0o555)
    try:
        result = run_as_user(
            "train", RECIPES / "smoke.yaml", "--out", run, "--resume", "--set", f"data.path={trained_smoke.data}",
            "--set", "train.epoch_clips=16", "--set", "train.val_clips=8", "--max-steps", "3", "-q", "--device", "cpu", cwd=tmp_path,
        )
    finally:
        run.chmod(0o755)
    assert "cannot write" in refused_line(result)
    assert_unchanged(before)
    assert sorted(p for p in run.rglob("*") if p.is_file() and p.name != ".lock") == sorted(before)  # nothing added


@pytest.mark.slow
def test_unreadable_inputs_are_one_line(trained_smoke, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(RECIPES / "smoke.yaml", recipe)
    data = tmp_path / "data"
    shutil.copytree(trained_smoke.data, data)
    shard = data / "test-00000.h5"
    before = file_snapshot(data)
    recipe.chmod(0o000)
    shard.chmod(0o000)
    try:
        assert refused_line(run_as_user("train", recipe, "--out", tmp_path / "run", cwd=tmp_path)) == f"error: cannot read {recipe}: Permission denied"
        assert refused_line(run_as_user("profile", recipe, "--no-time", cwd=tmp_path)) == f"error: cannot read {recipe}: Permission denied"
        unreadable = f"shard {shard} cannot be read (permission denied); give this user read access to it"
        line = refused_line(run_as_user("evaluate", trained_smoke.best, "--data", data, "--out", tmp_path / "eval", "-q", cwd=tmp_path))
        assert line == f"error: {unreadable}"
        verify = run_as_user("prepare", "--verify", data, cwd=tmp_path)  # its report, and exit 1: something cannot be checked
        assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr
        assert "test-00000.h5: cannot be read (permission denied)" in verify.stdout + verify.stderr
    finally:
        recipe.chmod(0o644)
        shard.chmod(0o644)
    assert_unchanged(before)
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


def test_a_decompression_bomb_in_a_frame_folder_is_refused_from_its_header(cli, trained_smoke, tmp_path: Path) -> None:
    """A 10000x10000 PNG is a few kB on disk and 300 MB once decoded, per frame: refused before decoding."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        Image.new("L", (32, 32), 40 * i).save(frames / f"{i:03d}.png")
    Image.new("1", (10_000, 10_000)).save(frames / "006.png")
    line = one_error_line(cli("predict", frames, "-k", trained_smoke.best, "--steps", "2", "--out", tmp_path / "p.gif"))
    assert "10000x10000 pixels, more than the 67,108,864 a frame may have (8192x8192)" in line and "006.png" in line, line
    assert not (tmp_path / "p.gif").exists()


def test_a_model_too_wide_for_memory_is_one_line(cli, trained_smoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights that fit but whose activations do not: the memory probe's own allocation fails, and says so.
    (``model.channels: [8, 2000000]`` does this for real, asking for 295 GB, but takes minutes to get there:
    the allocator's failure is raised here as torch raises it.)"""
    from cttlstm_cli.training import memory

    def allocate(model: object, run: object) -> int:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 294912000000 bytes.")

    monkeypatch.setattr(memory, "_saved_bytes", allocate)
    line = one_error_line(cli("train", RECIPES / "smoke.yaml", "--set", f"data.path={trained_smoke.data}", "--out", tmp_path / "run", "-q"))
    assert line == (
        "error: one training clip of this model does not fit in memory even at 32x32 pixels (294.9 GB asked for); "
        "check its widths (model.channels, model.rank, model.kernel ...)"
    )
    assert not (tmp_path / "run" / "last.pt").exists()


def test_weights_beyond_the_memory_there_is_are_refused_before_allocating(cli, tmp_path: Path) -> None:
    line = one_error_line(cli("profile", RECIPES / "smoke.yaml", "--set", "model.channels=[8, 90000000]", "--no-time"))
    assert "the convrnn model the recipe describes" in line or "model the recipe describes" in line, line


def test_an_out_that_names_a_file_is_refused_before_any_work(cli, trained_smoke, evaluated: Path, tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    cases = [
        ["evaluate", trained_smoke.best, "--data", trained_smoke.data, "--out", existing, "-q"],
        ["compare", evaluated / "best.pt", "--out", existing],
        ["train", RECIPES / "smoke.yaml", "--set", f"data.path={trained_smoke.data}", "--out", existing, "-q"],
        ["prepare", "mmnist", "--out", existing, "--train", "4", "--val", "2", "--test", "2", "--size", "32", "-q"],
    ]
    for args in cases:
        assert one_error_line(cli(*args)) == f"error: --out {existing} is a file, not a folder", args[0]
    assert existing.read_text() == "mine" and sorted(tmp_path.iterdir()) == [existing]


@pytest.mark.parametrize("fps", ["nan", "inf", "-inf", "0", "-2", "1001"])
def test_impossible_frame_rates_are_refused_before_the_model_runs(cli, trained_smoke, tmp_path: Path, fps: str) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((8, 32, 32), dtype=np.uint8))
    result = cli("predict", clip, "-k", trained_smoke.best, "--steps", "2", "--out", tmp_path / "p.gif", "--fps", fps)
    assert one_error_line(result).startswith("error: --fps must be a number above 0 and at most 1000, got ")
    assert "checkpoint:" not in result.out  # refused before the checkpoint was loaded
    assert not (tmp_path / "p.gif").exists()


#: ``python -c`` this, a byte limit, then a command: the command runs with no file allowed past the limit
#: (RLIMIT_FSIZE, SIGXFSZ ignored), so that its writes fail with EFBIG as they would with ENOSPC on a full disk
FILE_SIZE_LIMITED = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@pytest.mark.slow
def test_full_output_folders_are_one_line_and_keep_what_was_there(trained_smoke, evaluated: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((8, 32, 32), dtype=np.uint8))
    earlier = tmp_path / "eval"
    shutil.copytree(next(evaluated.glob("eval-*")), earlier)  # an earlier report, to be replaced whole or not at all
    before = file_snapshot(evaluated, trained_smoke.data, earlier, clip)
    cases = [
        (["evaluate", evaluated / "best.pt", "--data", trained_smoke.data, "--out", earlier, "-q"], earlier / "report.json"),
        (["compare", evaluated / "best.pt", "--out", tmp_path / "cmp"], tmp_path / "cmp"),
        (["predict", clip, "-k", evaluated / "best.pt", "--steps", "2", "--out", tmp_path / "p.gif"], tmp_path / "p.gif"),
    ]
    for args, written in cases:
        command = [sys.executable, "-c", FILE_SIZE_LIMITED, "600", "-m", "cttlstm_cli", *map(str, args)]
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        line = refused_line(proc)
        assert "EFBIG: file size limit reached" in line and str(written) in line, (args[0], line)
        assert not list(tmp_path.rglob(".*.tmp-*")), "a temporary file was left behind"
    assert not (tmp_path / "p.gif").exists()
    assert_unchanged(before)


# ---- the last resort ----------------------------------------------------------------------------------------------------


@pytest.fixture
def failing_command():
    """A ``cttlstm boom`` command that raises what the test sets, registered for the test only."""
    raised: list[BaseException] = []

    def boom() -> None:
        raise raised[0]

    app.command("boom")(boom)
    yield raised
    app.registered_commands[:] = [c for c in app.registered_commands if c.name != "boom"]


def test_an_unexpected_exception_is_one_line_and_a_crash_report(failing_command, capsys: pytest.CaptureFixture[str]) -> None:
    failing_command.append(ZeroDivisionError("division by zero\nsecond line"))
    assert main(["boom"]) == INTERNAL_ERROR
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith(f"error: {INTERNAL_ERROR_PREFIX}: ZeroDivisionError: division by zero (a bug in cttlstm; crash report: ")
    report = Path(lines[0].rsplit("crash report: ", 1)[1].rstrip(")"))
    try:
        text = report.read_text()
        assert "command: cttlstm boom" in text and "Traceback (most recent call last)" in text and "ZeroDivisionError" in text
    finally:
        report.unlink()


def test_running_out_of_memory_anywhere_is_one_line_not_a_crash(failing_command, capsys: pytest.CaptureFixture[str]) -> None:
    failing_command.append(RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 294912000000 bytes."))
    assert main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {OUT_OF_MEMORY} (294.9 GB asked for); a smaller batch (train.micro_batch, --batch-size), frame size, rollout or model needs less"]


def test_the_guard_fails_tests_that_reach_it(failing_command, capsys: pytest.CaptureFixture[str]) -> None:
    """The cli fixture's check: reaching the guard is a test failure, even though the user saw one line."""
    from conftest import fail_if_guard_fired

    failing_command.append(KeyError("x"))
    assert main(["boom"]) == INTERNAL_ERROR
    err = capsys.readouterr().err
    Path(err.rsplit("crash report: ", 1)[1].strip().rstrip(")")).unlink()
    with pytest.raises(pytest.fail.Exception, match="last-resort guard fired"):
        fail_if_guard_fired(err)
    fail_if_guard_fired("error: some/file: a message of its own\n")  # every other line passes
