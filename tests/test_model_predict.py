"""``VideoModel.predict``: what a notebook user calls, and the README's snippet run verbatim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.recipe import load_recipe

from conftest import RECIPES, REPO


@pytest.fixture(scope="module")
def model():
    recipe = load_recipe(RECIPES / "smoke.yaml")
    torch.manual_seed(0)
    return create_model(recipe.model, recipe.data.channels)


def test_predict_is_the_forward_clamped_without_a_graph_and_keeps_the_mode(model) -> None:
    clips = torch.rand(2, 5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    model.train()
    out = model.predict(clips, 3)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        raw = model(clips, future_frames=3)
    assert out.shape == (2, 3, 1, 32, 32) and not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, raw.clamp(0, 1), rtol=0, atol=0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # one clip in, one clip out: the same frames as its row of the batch
    torch.testing.assert_close(model.predict(clips[1], 3), out[1], rtol=0, atol=1e-6)


def test_predict_takes_what_read_video_returns(model) -> None:
    frames = (np.random.default_rng(0).random((6, 32, 32, 1)) * 255).astype(np.uint8)  # uint8 [T, H, W, C]
    as_floats = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(model.predict(frames, 2), model.predict(as_floats, 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "frames, future, message",
    [
        (torch.rand(32, 32), 2, r"frames must be \[frames, channels, height, width\].*got shape \[32, 32\]"),
        (torch.rand(5, 3, 32, 32), 2, r"frames have 3 channel\(s\) \(shape \[5, 3, 32, 32\]\), but Conv-TT-LSTM takes 1"),
        (torch.randint(0, 9, (5, 1, 32, 32)), 2, r"got int64 values"),
        (torch.full((5, 1, 32, 32), float("nan")), 2, r"NaN or infinite"),
        ("frames.npy", 2, r"got a str"),
        (torch.rand(5, 1, 32, 32), 0, r"future_frames must be a whole number of frames, at least 1; got 0"),
        (torch.rand(5, 1, 32, 32), 2.5, r"got 2.5"),
    ],
)
def test_wrong_input_is_one_line(model, frames, future, message: str) -> None:
    with pytest.raises(CttlstmError, match=message) as caught:
        model.predict(frames, future)
    assert "\n" not in str(caught.value)


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_snippet_runs_verbatim_after_the_tutorial(tmp_path: Path) -> None:
    """The tutorial's command (cut to one short epoch), then the README's Python, unchanged, in the same folder."""
    train = [sys.executable, "-m", "cttlstm_cli", "train", str(REPO / "recipes" / "tutorial.yaml"), "--out", "runs/tutorial", "--quiet",
             "--set", "train.epochs=1", "--set", "train.epoch_clips=16", "--set", "train.val_clips=16",
             "--set", "data.train_sequences=1000"]  # fmt: skip  (16 clips need no 10,000 sequences: 10 s of preparing saved)
    trained = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    ran = subprocess.run([sys.executable, "-c", _readme_snippet()], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    (line,) = ran.stdout.splitlines()
    mse = float(line.removeprefix("MSE over the 10 predicted frames: "))
    assert 0.0 < mse < 1.0
