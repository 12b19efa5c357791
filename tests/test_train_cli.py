"""``cttlstm train`` from the command line: the smoke run, SIGKILL + resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cttlstm_cli.checkpoint import read_checkpoint

from hooks import PAUSE_AFTER_FIRST_CHECKPOINT, wait_for_first_checkpoint
from conftest import RECIPES, REPO, one_error_line

SMOKE = str(RECIPES / "smoke.yaml")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke recipe's Moving-MNIST, prepared once (offline digits) by a real train run."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("smoke")
    code = main(["train", SMOKE, "--out", str(root / "run"), "--set", f"data.path={root / 'data'}", "--quiet", "--max-steps", "1"])
    assert code == 0
    assert json.loads((root / "data" / "manifest.json").read_text())["frame_size"] == [32, 32]
    return root / "data"


@pytest.mark.slow
def test_smoke_training_loss_falls(cli, smoke_data: Path, tmp_path: Path) -> None:
    result = cli("train", SMOKE, "--out", tmp_path / "run", "--set", f"data.path={smoke_data}")
    assert result.code == 0, result.err
    assert "best validation loss" in result.out and "next: cttlstm evaluate" in result.out
    records = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["kind"] == "train"]
    val = [r["val_loss"] for r in records if r["kind"] == "val"]
    assert len(val) == 3 and val[-1] < val[0] and train[-1] < 0.6 * train[0]
    # The smoke recipe checkpoints several times within its run (every 4 of its 24 steps).
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 24
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]


def _train_process(out: Path, data: Path, *extra: str, paused: bool = False) -> subprocess.Popen:
    start = ["-c", PAUSE_AFTER_FIRST_CHECKPOINT] if paused else ["-m", "cttlstm_cli"]
    args = [sys.executable, *start, "train", SMOKE, "--out", str(out), "--device", "cpu", "--quiet"]
    args += ["--set", f"data.path={data}", "--set", "train.epoch_clips=128", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_bad_input_is_one_line_and_overwrites_nothing(cli, smoke_data: Path, tmp_path: Path) -> None:
    def one_line_error(*args: str | Path) -> str:
        return one_error_line(cli("train", *args))

    assert "prepared at frame size 32x32 but the recipe asks for 64x64" in one_line_error(
        SMOKE, "--out", tmp_path / "a", "--set", f"data.path={smoke_data}", "--set", "data.frame_size=[64,64]"
    )
    assert "no prepared kth dataset" in one_line_error("kth", "--out", tmp_path / "b", "--set", f"data.path={tmp_path / 'no-such-data'}")
    # A run to collide with.
    assert cli("train", SMOKE, "--out", tmp_path / "run", "--set", f"data.path={smoke_data}", "--max-steps", "2", "--quiet").code == 0
    def state() -> dict[str, object]:
        # .lock is rewritten (with the same PID: these runs are all this process) by every train
        # that takes the lock before it looks; its bytes must not change, the run's files not at all.
        return {p.name: p.read_bytes() if p.name == ".lock" else p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}

    before = state()
    assert "already holds a run" in one_line_error(SMOKE, "--out", tmp_path / "run", "--set", f"data.path={smoke_data}")
    assert "recipe differs" in one_line_error(
        SMOKE, "--out", tmp_path / "run", "--resume", "--set", f"data.path={smoke_data}", "--set", "model.rank=2"
    )
    assert state() == before
    assert "recipe not found" in one_line_error("nope.yaml")
    assert "train.lr" in one_line_error(SMOKE, "--set", "train.lr=-1")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(smoke_data: Path, tmp_path: Path) -> None:
    proc = _train_process(tmp_path / "run", smoke_data, "--set", "train.epochs=50", paused=True)
    last = tmp_path / "run" / "last.pt"
    wait_for_first_checkpoint(proc)  # the run waits after its first checkpoint until the Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    saved = read_checkpoint(last)
    assert 0 < saved["step"] < 50 * 16
    # One line says what was saved and how to go on.
    resume = (f"cttlstm train {SMOKE} --out {tmp_path / 'run'} --resume --device cpu --quiet "
              f"--set data.path={smoke_data} --set train.epoch_clips=128 --set train.epochs=50")  # fmt: skip
    assert err.decode().strip().splitlines()[-1] == f"interrupted: saved {last} at step {saved['step']}; continue with: {resume}"
    # The saved state resumes.
    resumed = _train_process(tmp_path / "run", smoke_data, "--set", "train.epochs=1", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()


@pytest.mark.slow
def test_early_activity_training_from_the_command_line(cli, tmp_path: Path) -> None:
    from cttlstm_cli.data.dataset import EarlyActivityDataset
    from cttlstm_cli.recipe import load_recipe

    from synthetic import labelled_dataset

    data = labelled_dataset(tmp_path / "ssv2")
    sets = [f"data.path={data}", "data.dataset=ssv2", "model.classes=3", "data.observed_fraction=0.5",
            "data.input_frames=4", "data.future_frames=3", "train.epoch_clips=12", "train.batch_size=4", "train.epochs=2"]
    recipe = load_recipe(SMOKE, sets)
    ds = EarlyActivityDataset.from_recipe(recipe.data, "train", clips_per_epoch=12)
    # 16 stored frames, the first half observed: 4 evenly spaced context frames, then the next 3.
    assert ds.frame_indices(16).tolist() == [0, 2, 5, 7, 8, 9, 10]
    clip, label = ds[0]
    assert clip.shape == (7, 1, 32, 32) and label in (0, 1, 2)
    args = ["train", SMOKE, "--out", tmp_path / "run", "--quiet"]
    for s in sets:
        args += ["--set", s]
    result = cli(*args)
    assert result.code == 0, result.err
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 6 and any(k.startswith("classifier.") for k in ckpt["model"])


def test_a_diverging_run_stops_in_one_line_and_saves_nothing_non_finite(cli, smoke_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli("train", SMOKE, "--out", run, "--quiet", "--device", "cpu", "--set", f"data.path={smoke_data}",
                 "--set", "train.lr=1e20", "--set", "train.checkpoint_every=1")  # fmt: skip
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged: the training loss is nan at step "), result.err
    assert "train.lr = 1e+20" in lines[0]
    # Every checkpoint written before the loss went non-finite holds finite weights, and none after.
    for path in run.glob("*.pt"):
        saved = read_checkpoint(path)
        assert all(t.isfinite().all() for t in saved["model"].values()), path
        assert f"{run / 'last.pt'} (step {read_checkpoint(run / 'last.pt')['step']}) is kept" in lines[0]
    # The log is strict JSON (no bare NaN).
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line, parse_constant=lambda name: pytest.fail(f"metrics.jsonl holds {name}"))


def test_evaluate_and_predict_refuse_non_finite_weights(cli, smoke_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", SMOKE, "--out", run, "--quiet", "--set", f"data.path={smoke_data}", "--max-steps", "1").code == 0
    data = torch.load(run / "last.pt", weights_only=True)
    name = next(iter(data["model"]))
    data["model"][name] = data["model"][name].clone().fill_(float("nan"))
    torch.save(data, tmp_path / "nan.pt")
    for args in (["evaluate", tmp_path / "nan.pt", "--quiet"], ["predict", tmp_path / "clip.npy", "-k", tmp_path / "nan.pt", "--steps", "2"]):
        np.save(tmp_path / "clip.npy", np.zeros((8, 32, 32), dtype=np.uint8))
        result = cli(*args)
        assert result.code == 2 and result.err.strip() == (
            f"error: {tmp_path / 'nan.pt'}: holds non-finite weights (NaN or infinity), as a diverged run leaves; use an earlier checkpoint"
        )
    assert not (tmp_path / "pred.gif").exists()
