"""The one-cycle learning rate (``train.lr_schedule: onecycle``): torch's curve read back from a real run's
metrics.jsonl, exact resume (in-process and after SIGKILL), one-line errors, and the plateau schedule
left as it was."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.checkpoint import read_checkpoint
from cttlstm_cli.recipe import Recipe, load_recipe
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES, REPO
from synthetic import BouncingSquares

#: 5 epochs of 4 optimizer steps (16 training clips, batches of 4)
EPOCHS, STEPS_PER_EPOCH = 5, 4
TOTAL = EPOCHS * STEPS_PER_EPOCH
#: every epoch enters the next plateau phase at once: scheduled sampling and lr_scale move every epoch
MOVING_PLATEAU = ["train.scheduled_sampling={start: 1.0, patience: 0, decay: 0.25}", "train.lr_decay={patience: 0, factor: 0.5, every: 1}"]


def recipe(*sets: str) -> Recipe:
    """The smoke recipe at 16x16, 2 -> 2, on the one-cycle schedule, a metrics line every step."""
    return load_recipe(RECIPES / "smoke.yaml", [
        "data.frame_size=[16,16]", "data.input_frames=2", "data.future_frames=2", "data.workers=0", "train.batch_size=4",
        f"train.epochs={EPOCHS}", "train.val_clips=4", "train.log_every=1", "train.checkpoint_every=2", "train.lr_schedule=onecycle", *sets,
    ])  # fmt: skip


def data() -> tuple[BouncingSquares, BouncingSquares]:
    return BouncingSquares(4 * STEPS_PER_EPOCH, 4, 16, seed=0), BouncingSquares(4, 4, 16, seed=1)


def train(run: Path, *sets: str, max_steps: int | None = None, resume: bool = False) -> Trainer:
    trainer = Trainer(recipe(*sets), run, torch.device("cpu"), *data(), resume=resume, log=lambda _m: None)
    trainer.fit(max_steps=max_steps)
    return trainer


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def torch_one_cycle(step: int, lr: float, total: int = TOTAL, warmup: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as torch's OneCycleLR documentation defines it
    (two phases, cosine annealing): lr / div at step 0, lr at step warmup * total - 1, lr / (div * final_div)
    at the last step."""

    def cosine(begin: float, finish: float, pct: float) -> float:  # from begin at pct 0 to finish at pct 1
        return finish + (begin - finish) / 2 * (math.cos(math.pi * pct) + 1)

    peak_step = warmup * total - 1
    if step <= peak_step:
        return cosine(lr / div, lr, step / peak_step)
    return cosine(lr, lr / (div * final_div), (step - peak_step) / (total - 1 - peak_step))


def test_the_curve_in_metrics_is_torchs_one_cycle(tmp_path: Path) -> None:
    trainer = train(tmp_path / "run", *MOVING_PLATEAU)
    lr = trainer.recipe.train.lr
    steps = records(tmp_path / "run", "train")
    assert [r["step"] for r in steps] == list(range(1, TOTAL + 1))
    lrs = [r["lr"] for r in steps]  # the record of step k holds the lr that step k (0-based: k - 1) used
    assert lrs == pytest.approx([torch_one_cycle(k, lr) for k in range(TOTAL)], rel=1e-12)
    peak = round(0.3 * TOTAL) - 1
    assert lrs[0] == pytest.approx(lr / 25, rel=1e-12)
    assert lrs[peak] == lr == max(lrs)  # the warm-up's last step is the peak, exactly
    assert lrs[-1] == pytest.approx(lr / (25 * 1e4), rel=1e-12)
    assert all(a < b for a, b in zip(lrs[: peak + 1], lrs[1 : peak + 1])) and all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    # torch cycles Adam's beta1 against the lr (0.95 -> 0.85 at the peak -> 0.95), as OpenSTL trains with.
    group = read_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"][0]
    assert (group["max_momentum"], group["base_momentum"], group["max_lr"]) == (0.95, 0.85, lr)
    assert group["lr"] == lrs[-1]  # nothing is planned past the last step
    # The plateau schedule still drives scheduled sampling, and lr_decay no longer moves the lr.
    val = records(tmp_path / "run", "val")
    assert [r["lr_scale"] for r in val] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert [steps[e * STEPS_PER_EPOCH]["teacher_forcing"] for e in range(EPOCHS)] == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """The whole one-cycle run, to compare interrupted ones with."""
    return train(tmp_path_factory.mktemp("one-cycle") / "full")


@pytest.mark.slow
def test_resumed_mid_run_equals_uninterrupted(uninterrupted: Trainer, tmp_path: Path) -> None:
    train(tmp_path / "part", max_steps=7)  # mid-epoch 1, on the falling side of the cycle
    resumed = train(tmp_path / "part", resume=True)
    assert resumed.step == uninterrupted.step == TOTAL
    for key, value in uninterrupted.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert [r["lr"] for r in records(tmp_path / "part", "train")] == [r["lr"] for r in records(uninterrupted.run.root, "train")]


def _train_until_killed(run: str, threads: int, waiting: Any) -> None:
    """A child process's training that waits to be killed once it has written last.pt at step 6
    (mid-epoch 1); on as many threads as the parent's runs, whose convolutions then sum in the same order."""
    torch.set_num_threads(threads)
    save = Trainer.save

    def save_then_wait(self: Trainer, path: Path | None = None) -> None:
        save(self, path)
        if path is None and self.step == 6:
            waiting.set()
            time.sleep(600)

    Trainer.save = save_then_wait  # type: ignore[method-assign]
    train(Path(run))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted: Trainer, tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    waiting = spawn.Event()
    killed = spawn.Process(target=_train_until_killed, args=(str(tmp_path / "killed"), torch.get_num_threads(), waiting))
    killed.start()
    try:
        assert waiting.wait(timeout=600), "the training never reached step 6"
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.join(timeout=60)
    assert killed.exitcode == -signal.SIGKILL
    assert read_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 6
    resumed = train(tmp_path / "killed", resume=True)
    assert resumed.step == TOTAL
    for key, value in uninterrupted.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr_schedule=cosine", "train.lr_schedule: Input should be 'plateau' or 'onecycle' (got cosine)"),
        ("train.one_cycle.warmup=-0.1", "train.one_cycle.warmup: Input should be greater than or equal to 0 (got -0.1)"),
        ("train.one_cycle.warmup=1.0", "train.one_cycle.warmup: Input should be less than 1 (got 1.0)"),
        ("train.one_cycle.warmup=.nan", "train.one_cycle.warmup: Input should be a finite number (got .nan)"),
        ("train.one_cycle.div_factor=0", "train.one_cycle.div_factor: Input should be greater than 0 (got 0)"),
        ("train.one_cycle.final_div_factor=.inf", "train.one_cycle.final_div_factor: Input should be a finite number (got .inf)"),
        ("train.one_cycle.pct_start=0.3", "train.one_cycle.pct_start: unknown key"),
    ],
)
def test_impossible_values_are_one_line(override: str, message: str) -> None:
    with pytest.raises(CttlstmError) as info:
        recipe(override)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_warm_up_of_exactly_one_step_is_one_line(tmp_path: Path) -> None:
    # 0.05 of 20 steps: torch's warm-up would span no step and divide by zero
    with pytest.raises(CttlstmError, match=r"^train.one_cycle.warmup: 0.05 of 20 steps is a warm-up of exactly one step") as info:
        train(tmp_path / "run", "train.one_cycle.warmup=0.05")
    assert "\n" not in str(info.value)


def test_plateau_is_the_default_and_sets_the_lr_per_epoch_as_before(tmp_path: Path) -> None:
    assert load_recipe(RECIPES / "smoke.yaml").train.lr_schedule == "plateau"
    trainer = train(tmp_path / "run", "train.lr_schedule=plateau", *MOVING_PLATEAU)
    lr = trainer.recipe.train.lr
    scales = [1.0] + [r["lr_scale"] for r in records(tmp_path / "run", "val")]
    assert [r["lr"] for r in records(tmp_path / "run", "train")] == [lr * scales[(k - 1) // STEPS_PER_EPOCH] for k in range(1, TOTAL + 1)]
    # No scheduler touched the optimizer: its checkpointed state is what it always was.
    group = read_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"][0]
    assert not {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"} & set(group)
    assert tuple(group["betas"]) == (0.9, 0.999)


def test_a_suite_folder_begun_before_the_key_existed_is_still_the_same_run(tmp_path: Path) -> None:
    """Its resolved.json holds the models' recipes without train.lr_schedule and train.one_cycle; they
    compare as the plateau recipes they are, not as trainings with another schedule."""
    from cttlstm_cli.suite import load_suite
    from cttlstm_cli.suite.runner import RESOLVED_NAME, SuiteRun

    path = REPO / "suites" / "smoke.yaml"
    run = SuiteRun(load_suite(path), path, tmp_path / "out")
    run._check_folder()  # a new folder: the resolved suite is written
    resolved = tmp_path / "out" / RESOLVED_NAME
    stored = json.loads(resolved.read_text())
    for model in stored["models"].values():
        del model["train"]["lr_schedule"], model["train"]["one_cycle"]
    resolved.write_text(json.dumps(stored))
    run._check_folder()  # refused, were the stored recipes compared as they were written
    assert json.loads(resolved.read_text())["models"]["convttlstm"]["train"]["lr_schedule"] == "plateau"
