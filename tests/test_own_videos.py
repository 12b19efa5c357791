"""Your own videos end to end, as docs/train.md shows it: prepare folder -> train -> evaluate -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from data_video_helpers import write_video

from conftest import RECIPES


def _moving_square(t: int, offset: int) -> np.ndarray:
    """Frames [t, 48, 64, 3] of a bright square sliding right: a motion worth predicting."""
    frames = np.zeros((t, 48, 64, 3), dtype=np.uint8)
    for i in range(t):
        x = (offset + 3 * i) % 52
        frames[i, 16:28, x : x + 12] = 255
    return frames


@pytest.mark.slow
def test_prepare_folder_train_evaluate_predict(cli, tmp_path: Path) -> None:
    videos = tmp_path / "my videos"
    for k in range(8):
        write_video(videos / ("walks" if k % 2 else "runs") / f"clip{k}.avi", _moving_square(16, 5 * k))
    data, run = tmp_path / "data", tmp_path / "run"

    prepared = cli("prepare", "folder", videos, "--out", data, "--size", "16", "--gray", "--split", "0.5,0.25,0.25", "-q")
    assert prepared.code == 0, prepared.err
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["frame_size"] == [16, 16] and manifest["channels"] == 1
    assert sum(s["videos"] for s in manifest["splits"].values()) == 8

    overrides = ["data.dataset=folder", f"data.path={data}", "data.frame_size=[16,16]", "data.channels=1",
                 "data.input_frames=4", "model.frames=4", "data.future_frames=4", "train.epochs=1", "train.epoch_clips=8", "train.batch_size=4"]  # fmt: skip
    sets = [a for o in overrides for a in ("--set", o)]
    trained = cli("train", RECIPES / "tutorial.yaml", "--out", run, *sets, "-q")
    assert trained.code == 0, trained.err
    assert (run / "best.pt").is_file()

    evaluated = cli("evaluate", run, "--future", "4", "--json", "-q")
    assert evaluated.code == 0, evaluated.err
    report = json.loads(evaluated.out)
    assert report["data"]["dataset"] == "folder" and report["num_samples"] >= 1
    assert set(report["horizons"][0]["baselines"]) == {"copy_last_frame", "blank_frame"}

    gif = tmp_path / "clip.gif"
    predicted = cli("predict", videos / "runs" / "clip0.avi", "--steps", "6", "-k", run, "--out", gif)
    assert predicted.code == 0, predicted.err
    assert f"checkpoint: {run / 'best.pt'}" in predicted.err
    assert iio.imread(gif).shape[0] == 4 + 6  # context and predicted frames, one animation frame each
