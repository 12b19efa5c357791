"""First use on a CPU (issue 25): threads chosen for the machine's load, a speed estimate before the first
step, a bounded ``profile`` that keeps what it measured on Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cttlstm_cli.devices import CpuThreads, choose_cpu_threads
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.profiling import timed_batch
from cttlstm_cli.recipe import load_recipe
from cttlstm_cli.training.step import build_training_model, probe_step_seconds
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES, REPO
from hooks import read_stderr_until
from synthetic import BouncingSquares

SMOKE = str(RECIPES / "smoke.yaml")


# -- threads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, cores, busy, environment, threads, reason",
    [
        (None, 2, 0.1, None, 2, "all cores"),
        (None, 2, 0.6, None, 1, "0.6 cores busy with other work"),  # 1.4 free: one thread
        (None, 2, 1.9, None, 1, "1.9 cores busy with other work"),
        (None, 2, 5.0, None, 1, "5.0 cores busy with other work"),  # never fewer than one
        (None, 8, 3.2, None, 5, "3.2 cores busy with other work"),
        (None, 2, None, None, 2, "all cores"),  # no /proc/stat: all of them
        (None, 2, 1.9, "2", 2, "OMP_NUM_THREADS"),  # the user's setting wins over the load
        (3, 2, 1.9, "2", 3, "--threads"),  # and --threads over both
        (None, 2, 1.9, "lots", 1, "1.9 cores busy with other work"),  # a setting that is no count is not one
    ],
)
def test_threads_follow_the_load_unless_the_user_chose(requested, cores, busy, environment, threads: int, reason: str) -> None:
    chosen = choose_cpu_threads(requested, cores, busy, environment)
    assert (chosen.threads, chosen.cores, chosen.reason) == (threads, cores, reason)


def test_the_thread_line_says_why() -> None:
    assert CpuThreads(2, 2, "all cores").describe() == "2 threads"
    assert CpuThreads(1, 2, "1.9 cores busy with other work").describe() == "1 of 2 threads, 1.9 cores busy with other work; --threads N to choose"
    assert CpuThreads(4, 2, "--threads").describe() == "4 threads, from --threads"
    with pytest.raises(CttlstmError, match="--threads must be at least 1, got 0"):
        choose_cpu_threads(0, 2, None, None)


def test_train_threads_option_is_used_and_kept_in_the_resume_command(cli, trained_smoke, tmp_path: Path) -> None:
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--device", "cpu", "--threads", "1", "--max-steps", "1",
                 "--set", f"data.path={trained_smoke.data}", "--set", "train.epoch_clips=16")  # fmt: skip
    assert result.code == 0, result.err
    assert "device cpu (1 thread, from --threads)" in result.out and torch.get_num_threads() == 1
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # as the other tests expect


# -- the estimate before the first step -----------------------------------------------------------------


def test_the_speed_probe_leaves_no_trace() -> None:
    recipe = load_recipe(RECIPES / "smoke-simvp.yaml")  # GroupNorm and drop-path: buffers and randomness
    model = build_training_model(recipe, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = probe_step_seconds(model, recipe, torch.device("cpu"))
    assert seconds > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_run_that_estimates_its_speed_trains_bit_for_bit_as_one_that_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "WARM_PROBE_BUDGET_S", math.inf)  # both probes, however loaded the machine
    recipe = load_recipe(RECIPES / "smoke.yaml")
    data = BouncingSquares(64, 10, 32, seed=0), BouncingSquares(16, 10, 32, seed=1)
    said: list[str] = []
    Trainer(recipe, tmp_path / "a", torch.device("cpu"), *data, log=lambda _m: None, status=said.append).fit(max_steps=3)
    Trainer(recipe, tmp_path / "b", torch.device("cpu"), *data, log=lambda _m: None).fit(max_steps=3)
    estimate = [line for line in said if line.startswith("estimate: ")]
    # the estimate comes from the warm micro-batch (here the whole batch of 8)
    assert len(estimate) == 1 and "per optimizer step (8 clips, from 8 clips timed in " in estimate[0]
    assert estimate[0].split(" timed in ")[1].split(",")[1].strip().startswith("after a first clip")
    assert said.index(estimate[0]) < said.index("first optimizer step (measuring speed)…")
    a, b = torch.load(tmp_path / "a" / "last.pt", weights_only=True), torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize(("first", "warm", "expected"), [(0.5, 1.0, "1 s per optimizer step (8 clips, from 4 clips timed in 0.5 s, after a first clip)"),
                                                         (100.0, None, "13 min per optimizer step (8 clips, from 1 clip timed in 1.7 min)")])
def test_the_estimate_times_a_warm_micro_batch_after_a_quick_first_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        first: float, warm: float | None, expected: str) -> None:
    from cttlstm_cli.training import trainer as trainer_module

    calls: list[int] = []

    def probe(model, recipe, device, clips: int = 1) -> float:
        calls.append(clips)
        # the warm micro-batch of 4 takes half the batch's time, the first of them longer (one-off costs)
        return first if len(calls) == 1 else (warm if len(calls) == 2 else warm / 2)

    monkeypatch.setattr(trainer_module, "probe_step_seconds", probe)
    recipe = load_recipe(RECIPES / "smoke.yaml", ["train.micro_batch=4"])
    data = BouncingSquares(64, 10, 32, seed=0), BouncingSquares(16, 10, 32, seed=1)
    said: list[str] = []
    Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data, log=lambda _m: None, status=said.append).fit(max_steps=1)
    (estimate,) = [line for line in said if line.startswith("estimate: ")]
    assert calls == ([1, 4, 4] if warm is not None else [1])
    assert estimate.startswith(f"estimate: {expected}"), estimate


def test_a_slow_epoch_is_named_before_the_first_step_and_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "probe_step_seconds", lambda *a, **k: 100.0)  # as slow as a paper recipe on a CPU
    recipe = load_recipe(RECIPES / "smoke.yaml", ["train.epoch_clips=640"])
    data = BouncingSquares(640, 10, 32, seed=0), BouncingSquares(16, 10, 32, seed=1)
    lines: list[str] = []
    Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data, log=lines.append, status=lines.append).fit(max_steps=2)
    notes = [line for line in lines if "the paper's recipes are meant for GPUs" in line]
    assert len(notes) == 1 and notes[0].startswith("note: an epoch takes about 18 h on this CPU (80 steps of 13 min)")
    assert lines.index(notes[0]) < lines.index("first optimizer step (measuring speed)…")


# -- profile ------------------------------------------------------------------------------------------


def test_timed_batch_fits_the_budget() -> None:
    assert timed_batch(0.01, 16, 3, 60.0) == 16  # 0.48 s: the recipe's batch
    assert timed_batch(1.0, 16, 3, 30.0) == 10  # 48 s would be over: 10 clips take 30 s
    assert timed_batch(20.0, 16, 3, 60.0) == 1  # one clip at least, however slow
    assert timed_batch(20.0, 16, 3, None) == 16  # no budget


def test_profile_times_a_smaller_batch_within_its_budget_and_says_so(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli import profiling

    monkeypatch.setattr(profiling, "probe_step_seconds", lambda *a, **k: 5.0)  # 8 clips x 3 steps would be 2 min
    result = cli("profile", "smoke", "--device", "cpu", "--json", "--time-budget", "30")
    assert result.code == 0, result.err
    (row,) = json.loads(result.out)
    assert row["batch_size"] == 8 and row["timed_batch_size"] == 2 and row["peak_memory_bytes"] is None
    assert row["step_seconds"] > 0 and "training step(s) of 2 clip(s) after 1 warm-up, about 30 s" in result.err
    table = cli("profile", "smoke", "--device", "cpu", "--time-budget", "30")
    assert "8 (timed at 2)" in table.out and "scaled up" in table.out


#: ``python -c`` this, then cttlstm's arguments: profile, whose timing waits (after saying so on stderr) for a Ctrl-C
_PROFILE_WAITS = """
import sys, time
from cttlstm_cli import profiling

def wait(*args, **kwargs):
    print("test hook: timing", file=sys.stderr, flush=True)
    while True:
        time.sleep(0.05)

profiling.time_training_steps = wait
from cttlstm_cli.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_in_profile_prints_what_was_measured() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-c", _PROFILE_WAITS, "profile", "smoke", "smoke-simvp", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    read_stderr_until(proc, "test hook: timing")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted while timing smoke: the table shows what was measured before"
    # both recipes were counted before either was timed
    assert "Conv-TT-LSTM" in out and "SimVP (gSTA)" in out and "parameters" in out


# -- the smaller points ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.lrr=1", "error: --set train.lrr=1: train.lrr: unknown key; did you mean train.lr?"),
        ("trian.lr=1", "error: --set trian.lr=1: trian: unknown key; did you mean train?"),
        ("model.chanels=[4]", "error: --set model.chanels=[4]: model.chanels: unknown key; did you mean model.channels?"),
        ("train.scheduled_sampling.strat=1",
         "error: --set train.scheduled_sampling.strat=1: train.scheduled_sampling.strat: unknown key; did you mean train.scheduled_sampling.start?"),
        ("train.lr=abc", "error: --set train.lr=abc: train.lr: Input should be a valid number (got abc)"),
        ("train.lr=true", "error: --set train.lr=true: train.lr: must be a number, not true or false"),
        ("model.xyzzy=1", "error: --set model.xyzzy=1: model.xyzzy: unknown key"),  # nothing close: no guess
    ],
)
def test_a_set_typo_blames_the_set_and_names_the_nearest_key(cli, override: str, line: str) -> None:
    result = cli("profile", "smoke", "--no-time", "--set", override)
    assert result.code == 2 and result.err.strip().splitlines() == [line]


def test_a_typo_in_the_file_is_still_the_files_with_a_guess(cli, tmp_path: Path) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("name: typo\ntrain:\n  epoch: 3\n")
    assert cli("profile", recipe, "--no-time").err.strip() == f"error: {recipe}: train.epoch: unknown key; did you mean train.epochs?"


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "profile", "compare", "prepare", "suite run", "suite status"])
def test_help_shows_no_value_for_flags_and_no_cut_or_dangling_text(command: str) -> None:
    env = dict(os.environ, COLUMNS="120", PYTHONPATH=str(REPO))
    text = subprocess.run([sys.executable, "-m", "cttlstm_cli", *command.split(), "--help"], capture_output=True, text=True, env=env).stdout
    assert "--help" in text and "<bool>" not in text
    assert "see below" not in text
    if command == "prepare":
        assert "{group: [templates]}" in " ".join(text.replace("│", " ").split())  # rich used to eat [templates]


@pytest.mark.parametrize("command", ["train", "profile", "evaluate", "suite run"])
def test_help_prose_wraps_at_the_terminal_not_at_the_docstrings_line_breaks(command: str) -> None:
    import inspect

    from cttlstm_cli.cli import app

    env = dict(os.environ, COLUMNS="400", PYTHONPATH=str(REPO))
    text = subprocess.run([sys.executable, "-m", "cttlstm_cli", *command.split(), "--help"], capture_output=True, text=True, env=env).stdout
    lines = [" ".join(line.replace("│", " ").split()) for line in text.splitlines()]
    apps = {"suite": next(g.typer_instance for g in app.registered_groups if g.name == "suite")}
    *group, name = command.split()
    callback = next(c.callback for c in (apps[group[0]] if group else app).registered_commands if (c.name or c.callback.__name__.replace("_command", "")) == name)
    broken = [p.splitlines() for p in inspect.cleandoc(callback.__doc__).split("\n\n")[1:] if len(p.splitlines()) > 1]
    assert broken, "the test needs a docstring paragraph of several lines"
    for paragraph in broken:
        # the words either side of the docstring's first line break stand on one line of the help
        seam = " ".join(paragraph[0].split()[-2:] + paragraph[1].split()[:2])
        assert any(seam in line for line in lines), seam


def test_reusing_the_out_of_a_run_is_refused_before_any_data_is_opened(cli, trained_smoke, tmp_path: Path) -> None:
    never = tmp_path / "data-that-would-be-prepared"
    result = cli("train", SMOKE, "--out", trained_smoke.run, "--set", f"data.path={never}", "--quiet")
    assert result.code == 2
    assert result.err.strip() == f"error: --out {trained_smoke.run} already holds a run; pass --resume to continue it or choose another --out"
    assert not never.exists()  # Moving-MNIST was not prepared for a run that could not start


def test_a_typo_in_a_suites_set_names_the_suite_and_its_model(tmp_path: Path) -> None:
    from cttlstm_cli.suite import load_suite, resolve_models

    text = (REPO / "suites" / "smoke.yaml").read_text().replace("    recipe: smoke\n", "    recipe: smoke\n    set: {model.chanels: [4, 4]}\n", 1)
    suite_file = tmp_path / "typo.yaml"
    suite_file.write_text(text)
    with pytest.raises(CttlstmError) as caught:
        resolve_models(load_suite(suite_file), suite_file)
    assert str(caught.value) == (f"{suite_file}: model 'convttlstm': set model.chanels=[4, 4]: model.chanels: unknown key; "
                                 "did you mean model.channels?")
