"""Faults found by hand, each pinned: one line and exit 2 for a job that cannot fit or a bad input, nothing
half-written, progress and provenance for long jobs, and paths that are not UTF-8."""

from __future__ import annotations

import io
import json
import re
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.training import memory

from conftest import RECIPES, one_error_line

CONTEXT, STEPS = 5, 4  # the smoke recipe's context, and a short rollout


@pytest.fixture(scope="module")
def clip(trained_smoke, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real frames of the smoke test split as a .npy clip (room for 5 context frames and ground truth)."""
    from cttlstm_cli.data.dataset import ClipDataset

    ds = ClipDataset(trained_smoke.data, "test", clip_frames=12, mode="sequential")
    path = tmp_path_factory.mktemp("clip") / "clip.npy"
    np.save(path, np.asarray(ds.read(0, 0, 12))[..., 0])
    return path


# ---- predict: memory, provenance, progress -----------------------------------------------------------------------


def test_predict_refuses_steps_that_cannot_fit_in_one_line(cli, trained_smoke, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.gif"
    # 10^9 frames of at least 32x32 float32 predictions alone are 4 TB: no machine running these tests has that.
    line = one_error_line(cli("predict", clip, "--steps", 10**9, "-k", trained_smoke.run, "--out", out, "--save-npy"))
    assert line.startswith("error: --steps 1,000,000,000 needs about ") and "steps fit" in line
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_predict_max_steps_is_what_fits(cli, trained_smoke, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.predict import prepare_prediction

    estimate = prepare_prediction(clip, [trained_smoke.run], STEPS).memory()
    assert estimate.host_per_frame > 32 * 32 * 4 and estimate.host_fixed > 0
    # memory for exactly STEPS steps (and half a frame more): STEPS fit, STEPS + 1 do not
    need = estimate.need(STEPS)[0] + estimate.host_per_frame // 2
    monkeypatch.setattr(memory, "available_memory", lambda device: int(need / memory.BUDGET_FRACTION) + 1)
    assert estimate.max_future_frames(int(need / memory.BUDGET_FRACTION) + 1) == STEPS
    line = one_error_line(cli("predict", clip, "--steps", STEPS + 1, "-k", trained_smoke.run, "--out", tmp_path / "a.gif"))
    assert line.endswith(f"at most {STEPS} steps fit")
    assert not (tmp_path / "a.gif").exists()
    result = cli("predict", clip, "--steps", STEPS, "-k", trained_smoke.run, "--out", tmp_path / "b.gif")
    assert result.code == 0, result.err
    assert (tmp_path / "b.gif").is_file()


def test_predict_names_its_checkpoint(cli, trained_smoke, clip: Path, tmp_path: Path) -> None:
    result = cli("predict", clip, "--steps", STEPS, "-k", trained_smoke.run, "--out", tmp_path / "p.gif")
    assert result.code == 0, result.err
    data = torch.load(trained_smoke.best, map_location="cpu", weights_only=True)
    best = data["schedule"]["best_loss"]
    expected = f"checkpoint: {trained_smoke.best} (step {data['step']}, epoch {data['epoch']}, best validation loss {best:.5f})"
    assert result.err.splitlines() == [expected]
    # stdout is what scripts read, unchanged: no progress for a short run
    assert result.out.splitlines() == [f"context frames 1-{CONTEXT} of 12, {STEPS} predicted beside the ground truth",
                                       f"wrote {tmp_path / 'p.gif'}"]


@pytest.mark.parametrize("command", ["predict", "profile"])
def test_help_shows_every_bracket(cli, command: str) -> None:
    """Rich reads [lowercase ...] as a markup tag and drops it: every bracket in a help text must show."""
    import re

    import typer

    from cttlstm_cli.cli import app

    result = cli(command, "--help")
    shown = " ".join(result.out.replace("│", " ").split())
    texts = [p.help or "" for p in typer.main.get_command(app).commands[command].params]
    brackets = [b.replace("\\[", "[") for text in texts for b in re.findall(r"\\?\[[^\]]*\]", text)]
    if command == "predict":
        assert "[steps, C, H, W]" in shown and "[T,H,W] or [T,H,W,C]" in shown
    for bracket in brackets:
        assert " ".join(bracket.split()) in shown, bracket


def test_long_predict_shows_progress(cli, trained_smoke, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cttlstm_cli.cli.predict as predict_cli

    monkeypatch.setattr(predict_cli, "PROGRESS_STEPS", 4)  # "long" from 4 steps, to keep the test quick
    result = cli("predict", clip, "--steps", 8, "-k", trained_smoke.run, "--out", tmp_path / "p.gif")
    assert result.code == 0, result.err
    lines = result.err.splitlines()
    assert lines[0].startswith("checkpoint: ")
    counts = [ln for ln in lines if ln.startswith("predicting with Conv-TT-LSTM: ")]
    assert counts[-1] == "predicting with Conv-TT-LSTM: 8/8" and len(counts) == 8  # each tenth (here each step)
    assert f"writing {tmp_path / 'p.gif'}" in lines and "rendering 13 frames" in lines
    # on a terminal: a bar instead (the same phases), and stdout unchanged
    screen = io.StringIO()
    monkeypatch.setattr(predict_cli, "err_console", Console(file=screen, force_terminal=True, width=120))
    result = cli("predict", clip, "--steps", 11, "-k", trained_smoke.run, "--out", tmp_path / "q.gif")
    assert result.code == 0 and "predicting with Conv-TT-LSTM" in screen.getvalue() and "━" in screen.getvalue()
    assert "predicting" not in result.out and "rendering" not in result.err


def test_free_running_prediction_reports_every_frame_and_equals_forward(trained_smoke) -> None:
    from cttlstm_cli.checkpoint import load_model
    from cttlstm_cli.predict import predict_free_running

    model = load_model(trained_smoke.best)
    context = torch.rand(1, CONTEXT, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    out = predict_free_running(model, context, 6, seen.append)
    with torch.no_grad():
        expected = model(context, future_frames=6)[0]
    assert seen == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    one = predict_free_running(model, context[:, :1], 3)  # a single context frame goes through step(), not prefix()
    with torch.no_grad():
        torch.testing.assert_close(one, model(context[:, :1], future_frames=3)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("recipe", ["smoke-predrnnpp", "smoke-e3dlstm"])
def test_free_running_prediction_equals_forward_for_every_recurrent_family(recipe: str) -> None:
    from cttlstm_cli.models import create_model
    from cttlstm_cli.predict import predict_free_running
    from cttlstm_cli.recipe import load_recipe

    r = load_recipe(RECIPES / f"{recipe}.yaml")
    torch.manual_seed(0)
    model = create_model(r.model, r.data.channels).eval()
    context = torch.rand(1, 3, r.data.channels, *r.data.frame_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(predict_free_running(model, context, 3), model(context, future_frames=3)[0], rtol=0, atol=1e-6)


def test_a_gpu_rollout_is_limited_by_gpu_memory_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.predict import RolloutMemory

    # 100 bytes per frame on the host, 50 on the GPU (plus 1,000 fixed there), 5 context frames
    estimate = RolloutMemory(torch.device("cuda"), 5, host_per_frame=100, host_fixed=0, device_per_frame=50, device_fixed=1000)
    free = {"cpu": 10**9, "cuda": 5000}  # GPU budget 4,000: (4,000 - 1,000) // 50 = 60 frames, 55 steps
    monkeypatch.setattr(memory, "available_memory", lambda device: free[device.type])
    assert estimate.max_future_frames(free["cpu"], free["cuda"]) == 55
    estimate.check(55)
    with pytest.raises(CttlstmError) as info:
        estimate.check(56)
    assert str(info.value) == (
        "--steps 56 needs about 4,050 bytes of GPU memory, more than the 4,000 bytes it may use (80% of the 5,000 bytes available); "
        "at most 55 steps fit"
    )
    free["cpu"] = 1000  # host budget 800: 8 frames, 3 steps
    with pytest.raises(CttlstmError, match=r"^--steps 4 needs about .* of memory, .*; at most 3 steps fit$"):
        estimate.check(4)


# ---- profile: memory, progress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--no-time"]])
def test_profile_refuses_frames_that_cannot_fit(cli, extra: list[str]) -> None:
    line = one_error_line(cli("profile", "smoke", "--device", "cpu", "--set", "data.frame_size=[100000,100000]", *extra))
    assert "data.frame_size 100000x100000 needs about " in line and "frames of at most about " in line


def test_profile_refuses_training_steps_that_cannot_fit(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.models import create_model
    from cttlstm_cli.recipe import load_recipe

    recipe = load_recipe(RECIPES / "smoke.yaml")
    model = create_model(recipe.model)
    step = memory.step_activation_bytes(model, 32, 32)
    per_clip = memory.activation_bytes_per_clip(model, recipe, torch.device("cpu"))
    assert per_clip * memory.SAFETY > 4 * step
    room = int(2 * step / memory.BUDGET_FRACTION)  # one prediction step fits, one training clip does not
    monkeypatch.setattr(memory, "available_memory", lambda device: room)
    line = one_error_line(cli("profile", "smoke", "--device", "cpu", "--batch-size", "2"))
    assert line.startswith("error: training steps of 2 clip(s) at data.frame_size 32x32 needs about ")
    assert line.endswith("; --no-time skips the timing")
    assert cli("profile", "smoke", "--device", "cpu", "--no-time").code == 0


def test_profile_is_never_silent(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("profile", "smoke", "--json", "--device", "cpu", "--batch-size", "2", "--timed-steps", "1")
    assert result.code == 0, result.err
    json.loads(result.out)  # stdout stays the JSON alone
    phase = "smoke on cpu: timing 1 training step(s) of 2 clip(s) after 1 warm-up, about TIME"
    # the ETA is measured: its value varies, its place does not
    lines = [re.sub(r", about [0-9.]+ (s|min|h)", ", about TIME", line) for line in result.err.splitlines()]
    assert lines == ["smoke on cpu: counting FLOPs", "smoke on cpu: timing one clip for an estimate", phase, f"{phase}: 1/2", f"{phase}: 2/2"]
    import cttlstm_cli.cli.profile as profile_cli

    screen = io.StringIO()
    monkeypatch.setattr(profile_cli, "err_console", Console(file=screen, force_terminal=True, width=150))
    result = cli("profile", "smoke", "--json", "--device", "cpu", "--batch-size", "2", "--timed-steps", "1")
    assert result.code == 0 and result.err == ""
    shown = screen.getvalue()
    assert "building the model" in shown and "counting FLOPs" in shown and "timing 1 training step(s)" in shown


# ---- recipes ----------------------------------------------------------------------------------------------------


def test_empty_recipe_is_refused(cli, tmp_path: Path) -> None:
    for text in ("", "# nothing but a comment\n", "{}\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        line = one_error_line(cli("profile", empty, "--no-time"))
        assert line == f"error: recipe {empty} is empty (no sections); see docs/recipes.md, or start from recipes/smoke.yaml"


@pytest.mark.parametrize(
    "value,shown",
    [("bxi", "bxi"), ("64x64", "64x64"), ("[b, i]", "[b, i]"), ("[64.5, 64]", "[64.5, 64]"), ("[true, 64]", "[true, 64]"),
     ("[64, 64, 3]", "[64, 64, 3]"), ("64", "64"), ("null", "null"), ("[0, 64]", "[0, 64]")],
)
def test_bad_frame_size_is_echoed_as_given(cli, tmp_path: Path, value: str, shown: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata:\n  frame_size: {value}\n")
    line = one_error_line(cli("profile", recipe, "--no-time"))
    assert line == f"error: {recipe}: data.frame_size: must be two positive integers [H, W], got {shown}"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_size=true", "train.batch_size: must be a number, not true or false"),
        ("model.channels=[true, 8]", "model.channels.0: must be a number, not true or false"),
        ("train.lr=fast", "train.lr: Input should be a valid number (got fast)"),
        ("train.epochs=2.5", "train.epochs: Input should be a valid integer (got 2.5)"),
        ("train=3", "train: must be a section (a mapping of keys) (got 3)"),
        ("eval.metrics=[foo]", "eval.metrics.0: Input should be 'mse', 'mae', 'psnr', 'ssim' or 'lpips' (got foo)"),
    ],
)
def test_wrong_types_in_recipes_are_one_readable_line(cli, override: str, message: str) -> None:
    line = one_error_line(cli("profile", "smoke", "--no-time", "--set", override))
    assert line == f"error: --set {override}: {message}"  # the --set wrote it, not the file


# ---- LPIPS weights that reference code --------------------------------------------------------------------------


class _Touch:
    """Unpickling this runs ``touch MARKER``: a weights file that executes code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch zip", "torch legacy", "pickle"])
def test_malicious_lpips_weights_are_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    from cttlstm_cli.evaluation.lpips import load_alexnet_weights

    marker = tmp_path / "MARKER"
    evil = tmp_path / "alexnet.pth"
    payload = {"features.0.weight": _Touch(marker)}
    if kind == "torch zip":
        torch.save(payload, evil)
    elif kind == "torch legacy":
        torch.save(payload, evil, _use_new_zipfile_serialization=False)
    else:
        evil.write_bytes(pickle.dumps({"AlexNet_0": _Touch(marker)}))
    with pytest.raises(CttlstmError) as info:
        load_alexnet_weights(evil)
    message = str(info.value)
    assert message == (
        f"{evil}: the weights file references code (posix.system), refused; LPIPS weights may hold only arrays of numbers"
    )
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_malicious_lpips_weights_through_evaluate(cli, trained_smoke, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "alexnet.pth"
    torch.save({"features.0.weight": _Touch(marker)}, evil)
    line = one_error_line(cli("evaluate", trained_smoke.run, "--metrics", "mse,lpips", "--lpips-weights", evil,
                               "--device", "cpu", "--out", tmp_path / "eval"))
    assert "references code (posix.system), refused" in line and "weights_only" not in line
    assert not marker.exists() and not (tmp_path / "eval").exists()


# ---- paths that are not UTF-8 -----------------------------------------------------------------------------------

FF = os.fsdecode(b"\xff")  # the byte 0xff, as Python sees it in a file name: a lone surrogate


def test_missing_non_utf8_paths_give_one_line(cli, trained_smoke, tmp_path: Path) -> None:
    missing = tmp_path / f"clip{FF}.npy"
    line = one_error_line(cli("predict", missing, "--steps", 3, "-k", trained_smoke.run))
    assert line == f"error: clip not found: {tmp_path}/clip\\xff.npy"
    line = one_error_line(cli("evaluate", tmp_path / f"run{FF}"))
    assert line.startswith("error: ") and f"{tmp_path}/run\\xff" in line


def test_non_utf8_file_names_are_printed(cli, trained_smoke, clip: Path, tmp_path: Path) -> None:
    source = tmp_path / f"clip{FF}.npy"
    shutil.copy(clip, source)
    out = tmp_path / f"pred{FF}.gif"
    result = cli("predict", source, "--steps", STEPS, "-k", trained_smoke.run, "--out", out)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == f"wrote {tmp_path}/pred\\xff.gif"
    assert out.is_file()


def test_non_utf8_run_names_label_panels_and_arrays(cli, trained_smoke, clip: Path, tmp_path: Path) -> None:
    runs = []
    for name in (f"a{FF}", "b"):  # two runs of one model: panels are labelled by the runs' names
        run = tmp_path / name
        run.mkdir()
        shutil.copy(trained_smoke.best, run / "best.pt")
        runs += ["-k", run]
    out = tmp_path / "grid.gif"
    result = cli("predict", clip, "--steps", STEPS, *runs, "--out", out, "--save-npy")
    assert result.code == 0, result.err
    assert f"checkpoint: {tmp_path}/a\\xff/best.pt (step " in result.err
    with np.load(tmp_path / "grid.npz") as saved:
        assert saved.files == ["Conv-TT-LSTM (a\\xff)", "Conv-TT-LSTM (b)"]
    assert "Conv-TT-LSTM (a\\xff) | Conv-TT-LSTM (b)" in result.out
