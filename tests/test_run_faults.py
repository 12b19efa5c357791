"""Faults around a training run, each one line and a non-zero exit with nothing already written lost:
a second writer of a run folder, a run killed before its first checkpoint, a full disk, a checkpoint
of another model, a damaged checkpoint, a checkpoint that references code, and the printed next command."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.checkpoint import read_checkpoint, save_checkpoint
from cttlstm_cli.recipe import load_recipe

from hooks import PAUSE_AFTER_FIRST_CHECKPOINT, wait_for_first_checkpoint
from conftest import RECIPES, REPO, assert_unchanged, file_snapshot, leave_ddp_worker, one_error_line

SMOKE = str(RECIPES / "smoke.yaml")
#: generous bound for waiting on another process; the tests poll for a condition, never sleep-and-assume
PATIENCE_S = 600


@pytest.fixture
def data(trained_smoke) -> Path:
    """The smoke recipe's prepared Moving-MNIST (shared with the evaluate and predict tests)."""
    return trained_smoke.data


def quick(data: Path, *extra: str) -> list[str]:
    """Options of a smoke run that takes seconds: 2 optimizer steps per epoch."""
    return ["--set", f"data.path={data}", "--set", "train.epoch_clips=16", "--set", "train.val_clips=8",
            "--device", "cpu", "--quiet", *extra]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def records(metrics: Path) -> list[dict]:
    """The log, without the one field that depends on time."""
    return [{k: v for k, v in json.loads(ln).items() if k != "clips_per_s"} for ln in metrics.read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def cttlstm(*args: str | Path, file_size_limit: int | None = None, paused: bool = False) -> subprocess.Popen:
    """``python -m cttlstm_cli ARGS`` in a child process; with ``file_size_limit`` no file it writes
    may grow past that many bytes (RLIMIT_FSIZE, SIGXFSZ ignored), so writes fail with EFBIG as they
    would with ENOSPC on a full disk. A wrapper sets the limit and execs, so this process forks no
    Python code (unlike preexec_fn). ``paused``: the run waits after its first checkpoint
    (:data:`hooks.PAUSE_AFTER_FIRST_CHECKPOINT`)."""
    start = ["-c", PAUSE_AFTER_FIRST_CHECKPOINT] if paused else ["-m", "cttlstm_cli"]
    command = [sys.executable, *start, *map(str, args)]
    if file_size_limit is not None:
        wrapper = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                   "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")  # fmt: skip
        command = [sys.executable, "-c", wrapper, str(file_size_limit), *command[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)


# -- one writer per run folder ---------------------------------------------------------------------

HOLD_LOCK = """
import sys
from cttlstm_cli.locking import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes stdin or kills this process
"""


@pytest.mark.slow
def test_a_second_writer_changes_nothing_and_names_the_holder(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "2")).code == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "locked\n"  # returns at once if the holder fails
        before = snapshot(run)
        for extra in (["--resume"], [], ["--resume", "--set", "train.epochs=9"]):
            line = one_error_line(cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "4", *extra)))
            assert line == (
                f"error: {run} is in use by another cttlstm process (PID {holder.pid}) that is writing to it; "
                "wait until it ends (or stop it), or choose another --out"
            )
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock of the killed holder: the run resumes.
    result = cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "4", "--resume"))
    assert result.code == 0, result.err
    assert read_checkpoint(run / "last.pt")["step"] == 4


@pytest.mark.slow
def test_train_resume_is_refused_while_another_train_writes_and_sigkill_frees_the_folder(cli, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    long_run = ["--set", "train.epochs=1000", "--set", "train.checkpoint_every=1"]
    first = cttlstm("train", SMOKE, "--out", run, *quick(data, *long_run), paused=True)
    try:
        wait_for_first_checkpoint(first)  # it waits there, holding the lock, until killed
        line = one_error_line(cli("train", SMOKE, "--out", run, *quick(data, *long_run, "--resume", "--max-steps", "1")))
        assert f"{run} is in use by another cttlstm process (PID {first.pid})" in line
        assert (run / ".lock").read_text().strip() == str(first.pid)
    finally:
        first.kill()  # SIGKILL: no handler runs, no lock file is cleaned up
        first.communicate()
    assert first.returncode == -9
    result = cli("train", SMOKE, "--out", run, *quick(data, *long_run, "--resume", "--max-steps", "1"))
    assert result.code == 0, result.err
    assert "resuming" in result.out


def _ddp_refused_worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from cttlstm_cli.training.trainer import Trainer
    from synthetic import BouncingSquares

    recipe = load_recipe(SMOKE, ["train.epochs=1"])
    try:
        trainer = Trainer(recipe, Path(out), torch.device("cpu"), BouncingSquares(32, 10, 32, seed=0), BouncingSquares(8, 10, 32, seed=1), log=lambda _m: None)
        trainer.close()
        message = "started"
    except CttlstmError as err:
        message = f"refused: {err}"
    (Path(result_dir) / f"rank{rank}.txt").write_text(message)
    leave_ddp_worker()


@pytest.mark.slow
def test_under_ddp_a_locked_folder_stops_every_rank_without_a_deadlock(tmp_path: Path) -> None:
    from cttlstm_cli.locking import RunLock

    run, results = tmp_path / "run", tmp_path / "results"
    results.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RunLock(run):  # another writer holds the folder
        before = snapshot(run)
        context = mp.start_processes(_ddp_refused_worker, args=(2, port, str(run), str(results)), nprocs=2, join=False, start_method="spawn")
        deadline = time.monotonic() + PATIENCE_S
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the ranks of a refused run did not stop (deadlock)")
        assert snapshot(run) == before
    assert (results / "rank0.txt").read_text() == (
        f"refused: {run} is in use by another cttlstm process (PID {os.getpid()}) that is writing to it; "
        "wait until it ends (or stop it), or choose another --out"
    )
    assert (results / "rank1.txt").read_text() == f"refused: rank 0 could not lock {run} (see its message); no rank trains"


# -- a run killed before its first checkpoint ------------------------------------------------------


class Killed(BaseException):
    """What a SIGKILL does to the training loop: it stops, and nothing of ours runs after it."""


def _killed_at_step(monkeypatch: pytest.MonkeyPatch, cli, run: Path, args: list[str], step: int) -> None:
    """A run stopped for good in optimizer step ``step``, before its first checkpoint (and with
    the temporary file of a checkpoint write cut short, as a kill inside a save leaves it)."""
    from cttlstm_cli.training import trainer as trainer_module

    real_step = trainer_module.train_step
    calls = []

    def killed_in_step(*a, **kw):
        calls.append(1)
        if len(calls) == step:
            raise Killed
        return real_step(*a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "train_step", killed_in_step)
        with pytest.raises(Killed):
            cli("train", SMOKE, "--out", run, *args)
    assert not any((run / name).exists() for name in ("last.pt", "previous.pt", "best.pt"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == step - 1
    (run / f".last.tmp-{os.getpid() + 1}.pt").write_bytes(b"PK\x03\x04 half a checkpoint")


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_restarts(cli, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 steps per epoch, the first checkpoint at step 4, a log line every step.
    args = quick(data, "--set", "train.epoch_clips=32", "--set", "train.log_every=1", "--max-steps", "6")
    assert cli("train", SMOKE, "--out", tmp_path / "uninterrupted", *args).code == 0
    reference = tmp_path / "uninterrupted"

    # Plain train over it: starts afresh, and the run is the one an uninterrupted train makes.
    _killed_at_step(monkeypatch, cli, tmp_path / "again", args, step=4)
    result = cli("train", SMOKE, "--out", tmp_path / "again", *args)
    assert result.code == 0, result.err
    assert (f"note: {tmp_path / 'again'} holds a run that stopped before its first checkpoint; starting afresh over it "
            "(recipe.yaml, metrics.jsonl replaced)") in result.out  # fmt: skip
    # --resume: starts from step 0 with the stored recipe, the same run again.
    _killed_at_step(monkeypatch, cli, tmp_path / "resumed", args, step=3)
    result = cli("train", SMOKE, "--out", tmp_path / "resumed", *args, "--resume")
    assert result.code == 0, result.err
    assert (f"note: {tmp_path / 'resumed'} holds no checkpoint yet (the run stopped before its first one); "
            "starting from step 0 with its stored recipe") in result.out  # fmt: skip
    for run in (tmp_path / "again", tmp_path / "resumed"):
        assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl"), run  # the partial log is replaced
        assert same_weights(run / "last.pt", reference / "last.pt") and same_weights(run / "best.pt", reference / "best.pt")
        assert (run / "recipe.yaml").read_text() == (reference / "recipe.yaml").read_text()
        assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]  # the cut-short write is gone
    # A folder with a checkpoint is still never started over.
    before = snapshot(tmp_path / "again")
    assert "already holds a run" in one_error_line(cli("train", SMOKE, "--out", tmp_path / "again", *args))
    assert snapshot(tmp_path / "again") == before


# -- a full disk -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fails", ["last.pt", "metrics.jsonl"])
def test_a_full_disk_is_one_line_and_keeps_every_checkpoint_and_the_log(cli, data: Path, tmp_path: Path, fails: str) -> None:
    run = tmp_path / "run"
    assert cli("train", SMOKE, "--out", run, *quick(data, "--set", "train.checkpoint_every=1", "--max-steps", "4")).code == 0
    checkpoints = {name: (run / name).read_bytes() for name in ("last.pt", "previous.pt", "best.pt")}
    log = (run / "metrics.jsonl").read_bytes()
    # The checkpoint no longer fits; or not even one more log line does (a line is about 150 bytes).
    limit = 64 * 1024 if fails == "last.pt" else len(log) + 40
    assert len(log) < limit < min(len(b) for b in checkpoints.values())
    more = ["--set", "train.epochs=10", "--set", "train.checkpoint_every=1", "--set", "train.log_every=1", "--max-steps", "8", "--resume"]
    child = cttlstm("train", SMOKE, "--out", run, *quick(data, *more), file_size_limit=limit)
    _, err = child.communicate(timeout=PATIENCE_S)
    assert child.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.strip() == (
        f"error: no space left on device writing {run / fails} (EFBIG: file size limit reached); "
        f"{run / 'last.pt'} (step 4) and the other checkpoints already written are kept; free some space, then continue with --resume"
    )
    assert {name: (run / name).read_bytes() for name in checkpoints} == checkpoints
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]  # no partial file left
    lines = (run / "metrics.jsonl").read_text().splitlines()
    if fails == "metrics.jsonl":
        assert (run / "metrics.jsonl").read_bytes() == log  # the line that did not fit is taken back out
    else:
        assert [json.loads(ln)["step"] for ln in lines][-1] == 5  # step 5 was logged, its checkpoint did not fit
    # With room again, the run continues from the kept checkpoint.
    result = cli("train", SMOKE, "--out", run, *quick(data, *more))
    assert result.code == 0, result.err
    assert f"resuming {run / 'last.pt'} at step 4" in result.out
    assert read_checkpoint(run / "last.pt")["step"] == 8


# -- a checkpoint of another model ------------------------------------------------------------------


def _foreign(run: Path, recipe_path: str | Path, *overrides: str) -> None:
    """Put a training checkpoint of another model or recipe in place of the run's last.pt (its training
    state copied from the real one, so only the model or the recipe differs)."""
    real = read_checkpoint(run / "last.pt")
    recipe = load_recipe(recipe_path, list(overrides))
    extra = {k: v for k, v in real.items() if k not in ("format", "model", "recipe", "image_channels")}
    save_checkpoint(run / "last.pt", create_model(recipe.model, 1), recipe, **extra)


@pytest.mark.parametrize(
    "other,expected",
    [
        ((SMOKE, "model.channels=[16,16]"), "holds a convrnn (convttlstm) model with model.channels = [16, 16], but the recipe asks for model.channels = [8, 8]"),
        ((RECIPES / "smoke-cnn3d.yaml",), "holds a cnn3d model, but the recipe asks for a convrnn (convttlstm) model"),
        # The same network trained on another frame size: its weights fit, its numbers are another run's.
        ((SMOKE, "train.epoch_clips=16", "train.val_clips=8", "data.frame_size=[16,16]"),
         "holds a run with data.frame_size = [16, 16], but this run has data.frame_size = [32, 32]"),
        ((SMOKE, "train.epoch_clips=16", "train.val_clips=8", "train.loss=l1"), "holds a run with train.loss = l1, but this run has train.loss = l1+l2"),
    ],
    ids=["width", "family", "frame-size", "loss"],
)
def test_resume_names_a_checkpoint_of_another_model_in_one_line(cli, data: Path, tmp_path: Path, other: tuple, expected: str) -> None:
    run = tmp_path / "run"
    assert cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "2")).code == 0
    _foreign(run, *other)
    before = snapshot(run)
    line = one_error_line(cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "4", "--resume")))
    assert line == (
        f"error: --resume: {run / 'last.pt'} is not a checkpoint of this run: it {expected}; "
        "put the run's own checkpoint back, or start a new run with another --out"
    )
    assert snapshot(run) == before


def test_evaluate_and_predict_name_weights_that_do_not_fit_in_one_line(cli, trained_smoke, tmp_path: Path) -> None:
    """A file whose stored recipe and weights disagree (other widths; another family's tensors)."""
    good = read_checkpoint(trained_smoke.best)
    wider = create_model(load_recipe(SMOKE, ["model.channels=[16,16]"]).model, 1).state_dict()
    cnn3d = create_model(load_recipe(RECIPES / "smoke-cnn3d.yaml", []).model, 1).state_dict()
    np.save(tmp_path / "clip.npy", np.zeros((8, 32, 32), dtype=np.uint8))
    for name, weights, expected in (
        ("wider.pt", wider, "11 tensor(s) of another shape (e.g. cells.b0l0.tt.preprocess.0.weight: [4, 32, 3, 3] in the file, [4, 16, 3, 3] in the model)"),
        ("cnn3d.pt", cnn3d, "20 missing (e.g. cells.b0l0.tt.preprocess.0.weight); 12 unexpected (e.g. encoder.0.weight)"),
    ):
        path = tmp_path / name
        torch.save({**good, "model": weights}, path)
        for args in (["evaluate", path, "--quiet"], ["predict", tmp_path / "clip.npy", "-k", path, "--steps", "2", "--out", tmp_path / "p.gif"]):
            line = one_error_line(cli(*args))
            assert line.startswith(f"error: {path}: the weights do not fit the convrnn (convttlstm) model its recipe describes: "), line
            assert expected in line and len(line) < 400, line
    assert not (tmp_path / "p.gif").exists()


# -- a damaged checkpoint (a field missing, of the wrong type or out of range) ---------------------------


def _copy_of(trained_smoke, tmp_path: Path) -> Path:
    """A copy of the session's trained smoke run: last.pt, previous.pt and best.pt, all at step 2."""
    return Path(shutil.copytree(trained_smoke.run, tmp_path / "run"))


def _damage(path: Path, change) -> None:  # noqa: ANN001 - a function that changes the payload in place
    data = read_checkpoint(path)
    change(data)
    torch.save(data, path)


def _complex_weights(data: dict) -> None:
    data["model"]["cells.b0l0.tt.preprocess.0.weight"] = data["model"]["cells.b0l0.tt.preprocess.0.weight"].to(torch.complex64)


def _int_weights(data: dict) -> None:
    data["model"]["cells.b0l0.tt.preprocess.0.weight"] = data["model"]["cells.b0l0.tt.preprocess.0.weight"].to(torch.int64)


COMPLEX = "model['cells.b0l0.tt.preprocess.0.weight']: complex weights (complex64); a checkpoint holds real floating-point tensors"
INTEGER = "model['cells.b0l0.tt.preprocess.0.weight']: integer weights (int64); a checkpoint holds real floating-point tensors"


@pytest.mark.parametrize(
    "change,problem",
    [
        (_complex_weights, COMPLEX),
        (lambda d: d.update(step="abc"), "step: expected a non-negative integer, found 'abc'"),
        (lambda d: d.pop("rng"), "rng: missing"),
        (lambda d: d["rng"].update(numpy_pos=10**6), "rng['numpy_pos']: expected a position from 0 to 624, found 1000000"),
        (lambda d: d["schedule"].update(best_loss="low"), "schedule['best_loss']: expected a loss (infinity before the first validation), found 'low'"),
        (lambda d: d["optimizer"].pop("state"), "optimizer['state']: missing"),
    ],
    ids=["complex-weights", "step", "no-rng", "numpy-position", "schedule", "optimizer"],
)
def test_resume_passes_over_a_damaged_last_checkpoint_with_a_warning(cli, trained_smoke, tmp_path: Path, change, problem: str) -> None:
    """A damaged last.pt is skipped for previous.pt, as an unreadable one is: a warning naming the field, and the run goes on."""
    run = _copy_of(trained_smoke, tmp_path)
    _damage(run / "last.pt", change)
    result = cli("train", SMOKE, "--out", run, *quick(trained_smoke.data, "--max-steps", "2", "--resume"))
    assert result.code == 0, result.err
    assert f"warning: last.pt is unusable ({run / 'last.pt'}: {problem}); falling back to previous.pt" in result.out.splitlines()
    assert f"resuming {run / 'previous.pt'} at step 2;" in result.out


def test_resume_with_every_checkpoint_damaged_is_one_line_and_changes_nothing(cli, trained_smoke, tmp_path: Path) -> None:
    run = _copy_of(trained_smoke, tmp_path)
    for name, change in (("last.pt", _int_weights), ("previous.pt", lambda d: d.update(epoch=-1)), ("best.pt", lambda d: d.update(recipe=None))):
        _damage(run / name, change)
    before = file_snapshot(run)
    result = cli("train", SMOKE, "--out", run, *quick(trained_smoke.data, "--max-steps", "4", "--resume"))
    line = one_error_line(result)
    assert line == f"error: --resume: no usable checkpoint in {run} (last.pt and previous.pt and best.pt unreadable, damaged or not training checkpoints)"
    assert [ln for ln in result.out.splitlines() if ln.startswith("warning: ")] == [
        f"warning: last.pt is unusable ({run / 'last.pt'}: {INTEGER}); falling back to previous.pt",
        f"warning: previous.pt is unusable ({run / 'previous.pt'}: epoch: expected a non-negative integer, found -1); falling back to best.pt",
        f"warning: best.pt is unusable ({run / 'best.pt'}: recipe: expected a mapping of recipe sections, found None); no other checkpoint to fall back to",
    ]
    assert_unchanged(before)


@pytest.mark.parametrize(
    "change,problem",
    [
        (lambda d: d["optimizer"]["param_groups"][0].update(betas="abc"), "param group 0 holds 'betas' = 'abc' where the optimizer keeps (0.9, 0.999)"),
        (lambda d: d["optimizer"]["param_groups"][0].pop("eps"), "param group 0 lacks 'eps'"),
        (lambda d: d["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)), "a state 'exp_avg' of shape [3] for a parameter of shape [4, 16, 3, 3]"),
        (lambda d: d["optimizer"].update(param_groups=[*d["optimizer"]["param_groups"], {"params": []}]),
         "loaded state dict has a different number of parameter groups"),
    ],
    ids=["betas", "no-eps", "moment-shape", "groups"],
)
def test_resume_refuses_an_optimizer_state_that_does_not_fit_and_changes_nothing(cli, trained_smoke, tmp_path: Path, change, problem: str) -> None:
    """Valid data that does not fit the run's optimizer would fail at the first optimizer step, mid-run."""
    run = _copy_of(trained_smoke, tmp_path)
    _damage(run / "last.pt", change)
    before = file_snapshot(run)
    line = one_error_line(cli("train", SMOKE, "--out", run, *quick(trained_smoke.data, "--max-steps", "4", "--resume")))
    assert line == f"error: --resume: {run / 'last.pt'}: its optimizer state does not fit the recipe's optimizer ({problem})"
    assert_unchanged(before)


def test_evaluate_and_predict_name_the_damaged_field_in_one_line(cli, trained_smoke, tmp_path: Path) -> None:
    """Complex or integer weights used to be accepted (exit 0); a wrong type elsewhere was a traceback."""
    np.save(tmp_path / "clip.npy", np.zeros((8, 32, 32), dtype=np.uint8))
    cases = [
        (_complex_weights, COMPLEX),
        (_int_weights, INTEGER),
        (lambda d: d.pop("image_channels"), "image_channels: missing"),
        (lambda d: d.update(image_channels=2**70), "image_channels: expected a positive integer, found 1180591620717411303424"),
        (lambda d: d["recipe"].update(model=[]), "recipe: model: must be a section (a mapping of keys) (got [])"),
        (lambda d: d.update(step="abc"), "step: expected a non-negative integer, found 'abc'"),
        (lambda d: d["rng"].update(torch="state"), "rng['torch']: expected torch's generator state (a uint8 tensor of 5056 bytes), found 'state'"),
    ]
    for change, problem in cases:
        path = tmp_path / "damaged.pt"
        shutil.copy(trained_smoke.best, path)
        _damage(path, change)
        for args in (["evaluate", path, "--quiet"], ["predict", tmp_path / "clip.npy", "-k", path, "--steps", "2", "--out", tmp_path / "p.gif"]):
            assert one_error_line(cli(*args)) == f"error: {path}: {problem}"
    assert not (tmp_path / "p.gif").exists()


# -- a checkpoint that references code ---------------------------------------------------------------


class RunsAShellCommand:
    """Unpickling this runs ``os.system(command)``: what a malicious checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_checkpoint_that_references_code_is_refused_and_never_run(cli, data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    run = tmp_path / "run"
    assert cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "2")).code == 0
    torch.save({**read_checkpoint(run / "last.pt"), "payload": RunsAShellCommand(f"touch {shlex.quote(str(marker))}")}, evil)
    # It really is malicious: an unsafe load runs the command (shown on a copy, with another marker).
    control = tmp_path / "control.pt"
    torch.save({"payload": RunsAShellCommand(f"touch {shlex.quote(str(tmp_path / 'CONTROL'))}")}, control)
    torch.load(control, weights_only=False)
    assert (tmp_path / "CONTROL").exists()

    refused = f"error: {evil}: refused to load: it references code (posix.system), and checkpoints may hold only tensors and plain data"
    np_clip = tmp_path / "clip.npy"
    np.save(np_clip, np.zeros((8, 32, 32), dtype=np.uint8))
    for args in (["evaluate", evil, "--quiet"], ["predict", np_clip, "-k", evil, "--steps", "2", "--out", tmp_path / "p.gif"]):
        assert one_error_line(cli(*args)) == refused
    # As a run's last.pt it is refused too, not skipped for previous.pt as if it were merely corrupt.
    evil.replace(run / "last.pt")
    before = snapshot(run)
    line = one_error_line(cli("train", SMOKE, "--out", run, *quick(data, "--max-steps", "4", "--resume")))
    assert line == refused.replace(str(evil), str(run / "last.pt"))
    assert snapshot(run) == before
    assert not marker.exists()
    with pytest.raises(CttlstmError, match="references code"):
        read_checkpoint(run / "last.pt")
    assert not marker.exists()


# -- the next command --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("validated", [True, False], ids=["best", "no-validation-yet"])
def test_the_next_command_is_quoted_and_runs(cli, data: Path, tmp_path: Path, validated: bool) -> None:
    run = tmp_path / "my runs" / "smoke [1] it's"
    steps = ["--max-steps", "2"] if validated else ["--set", "train.epoch_clips=32", "--max-steps", "1"]
    result = cli("train", SMOKE, "--out", run, *quick(data, *steps))
    assert result.code == 0, result.err
    lines = [ln for ln in result.out.splitlines() if ln.startswith("next: ")]
    target = run if validated else run / "last.pt"
    assert lines == [f"next: cttlstm evaluate {shlex.quote(str(target))} --split val"]
    assert (run / "best.pt").is_file() == validated
    command = shlex.split(lines[0].removeprefix("next: "))
    assert command[:2] == ["cttlstm", "evaluate"] and command[2] == str(target) and command[3:] == ["--split", "val"]
    evaluated = cli(*command[1:], "--limit", "8", "--quiet")
    assert evaluated.code == 0, evaluated.err
