"""The 3D-CNN activity classifier (``arch: cnn3d``): its size, its contract as a classifier that
predicts no frames, and train / evaluate / profile / predict through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.models.cnn3d import CNN3D, CNN3DConfig
from cttlstm_cli.recipe import load_recipe, recipe_from_dict

from conftest import RECIPES
from synthetic import brightness_labelled_dataset

SMOKE = RECIPES / "smoke-cnn3d.yaml"


def expected_parameters(cfg: CNN3DConfig, image_channels: int) -> int:
    """Conv3d weights and biases of encoder and layers, then the classifier head (2 convs + FC)."""
    t, k = cfg.temporal_kernel, cfg.kernel
    total, width = 0, image_channels
    for out in cfg.encoder_channels:
        total += width * out * t * 4 * 4 + out
        width = out
    for count, out in zip(cfg.blocks, cfg.channels):
        for _ in range(count):
            total += width * out * t * k * k + out
            width = out
    return total + (width * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * cfg.classes + cfg.classes)


@pytest.mark.parametrize("recipe", ["ssv2-3dcnn", "smoke-cnn3d"])
def test_parameter_count_from_the_layer_list(recipe: str) -> None:
    r = load_recipe(RECIPES / f"{recipe}.yaml")
    model = create_model(r.model, r.data.channels)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(r.model, r.data.channels)
    if recipe == "ssv2-3dcnn":
        assert expected_parameters(r.model, 3) == 2_677_193  # quoted in docs/models/cnn3d.md


def test_a_classifier_only_contract() -> None:
    cfg = CNN3DConfig(encoder_channels=[4], blocks=[1], channels=[4], kernel=3, classes=5)
    model = create_model(cfg, 2)
    assert isinstance(model, CNN3D) and not model.predicts_frames and model.num_classes == 5 and model.downsampling == 2
    frames = torch.rand(3, 6, 2, 8, 8)
    outputs, logits = model(frames, 4, context_frames=4, classify=True)
    assert outputs is None and logits.shape == (3, 5)
    # Only the observed frames count: what follows them changes nothing.
    later = frames.clone()
    later[:, 4:] = 0
    assert torch.equal(model(later, 4, context_frames=4, classify=True)[1], logits)
    assert torch.equal(model(frames[:, :4], 4, classify=True)[1], logits)
    with pytest.raises(CttlstmError, match="predicts no frames"):
        model(frames)
    # A conv per frame: the counted cost of one frame is the per-frame share of a whole clip's.
    head = 2 * 2 * 64 * 4 * 9 + 1 * 1 * 128 * 64 * 9 + 128 * 5  # stride-2 head convs (4x4 -> 2x2 -> 1x1), FC
    per_frame = model.counted_macs(8, 8)
    assert per_frame == 4 * 4 * (2 * 4 * 3 * 16) + 4 * 4 * (4 * 4 * 27) + head


def test_classes_are_required_and_checked() -> None:
    with pytest.raises(CttlstmError, match=r"model\.classes: Field required"):
        recipe_from_dict({"model": {"arch": "cnn3d"}})
    with pytest.raises(CttlstmError, match=r"model\.temporal_kernel: must be odd"):
        recipe_from_dict({"model": {"arch": "cnn3d", "classes": 3, "temporal_kernel": 2}})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brightness_labelled_dataset(tmp_path_factory.mktemp("cnn3d") / "data")


@pytest.mark.slow
def test_trains_on_cross_entropy_then_evaluates_profiles_and_refuses_predict(cli, labelled: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--set", f"data.path={labelled}", "--set", "data.frame_size=[16,16]"]
    result = cli("train", SMOKE, "--out", run, "--quiet", "--device", "cpu", "--set", "train.epochs=10", *args)
    assert result.code == 0, result.err
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert len(losses) == 10 * 2 and losses[-1] < 0.7 * losses[0]  # cross-entropy of 3 classes starts near ln 3

    report = json.loads(cli("evaluate", run, "--json", "--quiet", "--device", "cpu").out)
    assert report["model"] == "3D-CNN" and report["metrics"] == {} and report["per_frame"] == {}
    assert report["accuracy"]["num_samples"] == 12 and report["accuracy"]["top1"] >= 0.75
    assert set(report["accuracy"]["per_group"]) == {"dark", "grey", "bright"}
    folder = run / "eval-test-5-paper"
    assert (folder / "report.json").is_file() and not (folder / "per_frame.png").exists()
    table = cli("evaluate", run, "--quiet", "--device", "cpu", "--out", tmp_path / "table")
    assert table.code == 0 and "3D-CNN" in table.out and "bright" in table.out

    profile = cli("profile", SMOKE, "--json", "--no-time", *args)
    row = json.loads(profile.out)[0]
    assert row["arch"] == "cnn3d" and row["model"] == "3D-CNN" and row["flops_per_step"] == row["flops_per_step_counted"] > 0

    clip = tmp_path / "clip.npy"
    import numpy as np

    np.save(clip, np.zeros((8, 16, 16, 1), dtype=np.uint8))
    refused = cli("predict", clip, "--checkpoint", run, "--steps", "3", "--out", tmp_path / "p.gif")
    assert refused.code == 2 and refused.err.strip() == (
        "error: 3D-CNN classifies activities and predicts no frames; predict needs a frame-prediction model"
    )
    assert not (tmp_path / "p.gif").exists()
