"""What a run tells its listener (training/events.py), the run folder as a class of its own
(training/run_folder.py) and ``run_training``, the library call behind ``cttlstm train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import load_recipe
from cttlstm_cli.distributed import Distributed
from cttlstm_cli.training.events import EpochFinished, FitEnded, FitStarted, RunOpened, StepFinished, TrainingEvent, ValidationBatch
from cttlstm_cli.training.run import resolve_run_dir, run_training
from cttlstm_cli.training.run_folder import RunFolder
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES
from synthetic import BouncingSquares


def smoke(*sets: str):
    return load_recipe(RECIPES / "smoke.yaml", list(sets))


def data():
    return BouncingSquares(64, 10, 32, seed=0), BouncingSquares(16, 10, 32, seed=1)


def test_a_listener_hears_every_step_validation_and_epoch_in_order(tmp_path: Path) -> None:
    heard: list[TrainingEvent] = []
    result = Trainer(smoke("train.epochs=2"), tmp_path / "run", torch.device("cpu"), *data(), events=heard.append, log=lambda _m: None).fit()
    kinds = [type(e).__name__ for e in heard]
    one_epoch = ["StepFinished"] * 8 + ["ValidationBatch"] * 3 + ["EpochFinished"]
    assert kinds == ["FitStarted", *one_epoch, *one_epoch, "FitEnded"]

    assert isinstance(heard[0], FitStarted) and heard[0].state.step == 0 and heard[0].state.run_seconds_left is None
    steps = [e.state for e in heard if isinstance(e, StepFinished)]
    assert [s.step for s in steps] == list(range(1, 17))
    assert [s.position for s in steps] == list(range(1, 9)) * 2
    assert all(s.steps_per_epoch == 8 and s.epochs == 2 and s.total_steps == 16 for s in steps)
    # measured from the first step on: a speed and the time left, which only falls to none
    assert all(s.clips_per_s is not None and s.clips_per_s > 0 and s.run_seconds_left is not None for s in steps)
    assert steps[-1].epoch_seconds_left == 0 and steps[-1].run_seconds_left > 0  # its last validation is still to come
    assert all(s.loss is not None and math.isfinite(s.loss) for s in steps)

    # the metrics lines the events carry are the ones written to the log, no more and no fewer
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    carried = [e.record for e in heard if isinstance(e, (StepFinished, EpochFinished)) and e.record is not None]
    assert carried == logged and [r["step"] for r in carried if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12, 14, 16]

    validations = [(e.epoch, e.done, e.total) for e in heard if isinstance(e, ValidationBatch)]
    assert validations == [(0, 0, 2), (0, 1, 2), (0, 2, 2), (1, 0, 2), (1, 1, 2), (1, 2, 2)]
    ends = [e for e in heard if isinstance(e, EpochFinished)]
    assert [e.state.epoch for e in ends] == [1, 2] and [e.state.position for e in ends] == [0, 0]
    assert ends[-1].record["best_val_loss"] == result.best_val_loss and ends[-1].state.run_seconds_left == 0
    assert isinstance(heard[-1], FitEnded) and heard[-1].state.step == result.steps == 16


def test_the_last_event_is_fit_ended_also_when_the_run_stops(tmp_path: Path) -> None:
    heard: list[TrainingEvent] = []

    def listener(event: TrainingEvent) -> None:
        heard.append(event)
        if isinstance(event, StepFinished) and event.state.step == 3:
            raise KeyboardInterrupt  # as a Ctrl-C landing in the display would

    result = Trainer(smoke(), tmp_path / "run", torch.device("cpu"), *data(), events=listener, log=lambda _m: None).fit()
    assert result.interrupted and result.saved == tmp_path / "run" / "last.pt" and result.steps == 3
    assert isinstance(heard[-1], FitEnded) and heard[-1].state.step == 3
    assert sum(isinstance(e, FitEnded) for e in heard) == 1


def test_the_run_folder_refuses_a_second_run_and_picks_the_newest_usable_checkpoint(tmp_path: Path) -> None:
    recipe = smoke()
    Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data(), log=lambda _m: None).fit(max_steps=9)
    net = Trainer(recipe, tmp_path / "other", torch.device("cpu"), *data(), log=lambda _m: None)
    net.close()

    warned: list[str] = []
    folder = RunFolder(tmp_path / "run", recipe, Distributed(), warn=warned.append)
    folder.acquire()
    try:
        with pytest.raises(CttlstmError, match="already holds a run; pass --resume"):
            folder.start(resume=False, net=net.net)
        (tmp_path / "run" / "last.pt").write_bytes(b"torn")
        found = folder.start(resume=True, net=net.net)
    finally:
        folder.release()
    assert found is not None and found[0] == tmp_path / "run" / "previous.pt" and found[1].step == 8
    assert len(warned) == 1 and warned[0].startswith("last.pt is unusable") and "falling back to previous.pt" in warned[0]
    assert folder.last_saved_step() is None  # the torn last.pt holds no step


def test_run_training_is_the_train_command_as_a_call(trained_smoke, tmp_path: Path) -> None:
    recipe = smoke(f"data.path={trained_smoke.data}", "train.epoch_clips=16", "train.val_clips=8", "train.epochs=1")
    heard: list[TrainingEvent] = []
    statuses: list[str] = []
    result = run_training(recipe, tmp_path / "run", device="cpu", events=heard.append, log=lambda _m: None, status=statuses.append)
    assert not result.interrupted and result.steps == 2 and result.epochs == 1 and (tmp_path / "run" / "best.pt").is_file()
    opened = heard[0]
    assert isinstance(opened, RunOpened) and (opened.train_clips, opened.val_clips, opened.step) == (16, 8, 0)
    assert opened.resumed_from is None and opened.device.startswith("cpu (") and isinstance(heard[1], FitStarted)
    assert statuses[:2] == [f"opening the datasets in {trained_smoke.data}…", "building the model…"]

    longer = smoke(f"data.path={trained_smoke.data}", "train.epoch_clips=16", "train.val_clips=8", "train.epochs=2")
    again = run_training(longer, tmp_path / "run", resume=True, device="cpu", log=lambda _m: None)
    assert again.resumed_from == tmp_path / "run" / "last.pt" and again.steps == 4


def test_run_training_interrupted_before_any_step_says_so_in_its_result(trained_smoke, tmp_path: Path) -> None:
    recipe = smoke(f"data.path={trained_smoke.data}", "train.epoch_clips=16", "train.val_clips=8")

    def stop_at_once(line: str) -> None:
        if line.startswith("building"):
            raise KeyboardInterrupt

    result = run_training(recipe, tmp_path / "run", device="cpu", log=lambda _m: None, status=stop_at_once)
    assert result.interrupted and result.steps == result.session_steps == 0 and result.saved is None
    assert result.kept_step is None and result.preparing is None and not (tmp_path / "run" / "last.pt").exists()


def test_resolve_run_dir_names_a_new_run_and_finds_the_newest_to_resume(tmp_path: Path) -> None:
    recipe = smoke()
    assert resolve_run_dir(recipe, tmp_path / "given", resume=True, root=tmp_path) == tmp_path / "given"
    fresh = resolve_run_dir(recipe, None, resume=False, root=tmp_path)
    assert fresh.parent == tmp_path and fresh.name.startswith("smoke-")
    with pytest.raises(CttlstmError, match=f"no run of recipe 'smoke' under {tmp_path}/"):
        resolve_run_dir(recipe, None, resume=True, root=tmp_path)
    (tmp_path / "smoke-20260101-000000").mkdir()
    (tmp_path / "smoke-20260101-000000" / "recipe.yaml").write_text("name: smoke\n")
    assert resolve_run_dir(recipe, None, resume=True, root=tmp_path) == tmp_path / "smoke-20260101-000000"
