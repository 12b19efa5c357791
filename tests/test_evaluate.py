"""``cttlstm evaluate``: numbers against a manual computation, conventions, outputs, broken inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cttlstm_cli.data.dataset import EarlyActivityDataset, open_dataset
from cttlstm_cli.evaluation.metrics import mse, psnr, ssim
from cttlstm_cli.models import create_model
from cttlstm_cli.checkpoint import load_model_and_recipe, save_checkpoint
from cttlstm_cli.models.convrnn import ConvRNNConfig
from cttlstm_cli.recipe import load_recipe

from synthetic import labelled_dataset
from conftest import RECIPES, installed_lpips_weights, one_error_line

def _json(result) -> dict:
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_json_report_headline_is_mean_of_curve(cli, trained_smoke, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    rep = _json(cli("evaluate", trained_smoke.run, "--metrics", "mse,psnr,ssim", "--limit", "8", "--future", "5", "--json", "--out", out, "-q"))
    assert rep["convention"] == "paper" and "data range 2" in rep["convention_description"]
    assert rep["num_samples"] == 8 and rep["future_frames"] == 5 and rep["context_frames"] == 5
    assert set(rep["metrics"]) == {"mse", "psnr", "ssim"}
    for name, curve in rep["per_frame"].items():
        assert len(curve) == 5
        assert rep["metrics"][name] == float(torch.tensor(curve, dtype=torch.float64).mean())
        assert rep["metrics"][name] == pytest.approx(float(np.mean(curve)), rel=1e-12)
    assert rep["checkpoint"].endswith("best.pt") and rep["split"] == "test"
    assert rep["data"]["path"] == str(trained_smoke.data)
    saved = json.loads((out / "report.json").read_text())
    assert saved == rep
    with Image.open(out / "per_frame.png") as im:
        im.verify()
        assert im.format == "PNG"


def test_numbers_equal_manual_computation(cli, trained_smoke, tmp_path: Path) -> None:
    rep = _json(cli("evaluate", trained_smoke.best, "--metrics", "mse,psnr,ssim", "--limit", "6", "--future", "7",
                    "--convention", "standard", "--json", "--out", tmp_path, "-q"))
    model, recipe = load_model_and_recipe(trained_smoke.best)
    data = recipe.data.model_copy(update={"path": str(trained_smoke.data)})
    ds = open_dataset(data, "test", mode="sequential", clip_frames=5 + 7)
    clips = torch.stack([ds[i] for i in range(6)])
    with torch.no_grad():
        pred = model(clips[:, :5], future_frames=7).clamp(0, 1)
    target = clips[:, 5:]
    for name, fn in {"mse": mse, "psnr": psnr, "ssim": ssim}.items():
        per_frame = [float(fn(pred[:, t], target[:, t]).mean()) for t in range(7)]
        assert rep["per_frame"][name] == pytest.approx(per_frame, rel=1e-9, abs=1e-12)
        assert rep["metrics"][name] == pytest.approx(float(np.mean(per_frame)), rel=1e-9)


def test_trivial_baselines_are_scored_on_the_same_clips(cli, trained_smoke, tmp_path: Path) -> None:
    rep = _json(cli("evaluate", trained_smoke.best, "--metrics", "mse,ssim", "--limit", "6", "--future", "7",
                    "--convention", "standard", "--json", "--out", tmp_path, "-q"))
    _, recipe = load_model_and_recipe(trained_smoke.best)
    data = recipe.data.model_copy(update={"path": str(trained_smoke.data)})
    ds = open_dataset(data, "test", mode="sequential", clip_frames=5 + 7)
    clips = torch.stack([ds[i] for i in range(6)])
    target = clips[:, 5:]
    expected = {"copy_last_frame": clips[:, 4:5].expand_as(target), "blank_frame": torch.zeros_like(target)}
    baselines = rep["horizons"][0]["baselines"]
    assert set(baselines) == set(expected)
    for name, pred in expected.items():
        for metric, fn in {"mse": mse, "ssim": ssim}.items():
            per_frame = [float(fn(pred[:, t], target[:, t]).mean()) for t in range(7)]
            assert baselines[name]["per_frame"][metric] == pytest.approx(per_frame, rel=1e-9, abs=1e-12)
            assert baselines[name]["metrics"][metric] == pytest.approx(float(np.mean(per_frame)), rel=1e-9)
    # The table shows them beside the model, with the model's standing against the better one.
    table = cli("evaluate", trained_smoke.best, "--metrics", "mse", "--limit", "6", "--future", "7", "--convention", "standard",
                "--out", tmp_path / "t", "-q")
    assert table.code == 0 and "copy last frame" in table.out and "blank frame" in table.out
    best = min(baselines, key=lambda n: baselines[n]["metrics"]["mse"])
    change = 100 * (rep["metrics"]["mse"] - baselines[best]["metrics"]["mse"]) / baselines[best]["metrics"]["mse"]
    label = best.replace("_", " ")
    assert f"{abs(change):.0f}% {'below' if change < 0 else 'above'} the best trivial predictor ({label})" in table.out
    # --no-baselines skips them.
    bare = _json(cli("evaluate", trained_smoke.best, "--metrics", "mse", "--limit", "2", "--no-baselines", "--json",
                     "--out", tmp_path / "bare", "-q"))
    assert "baselines" not in bare["horizons"][0]


def test_openstl_mse_is_paper_times_pixels_over_1000(cli, trained_smoke, tmp_path: Path) -> None:
    args = ("evaluate", trained_smoke.run, "--metrics", "mse,mae,ssim", "--limit", "4", "--future", "5", "--json", "-q")
    paper = _json(cli(*args, "--convention", "paper", "--out", tmp_path / "p"))
    openstl = _json(cli(*args, "--convention", "openstl", "--out", tmp_path / "o"))
    assert (paper["convention"], openstl["convention"]) == ("paper", "openstl")
    h, w = paper["data"]["frame_size"]
    for m in ("mse", "mae"):
        assert openstl["metrics"][m] == pytest.approx(paper["metrics"][m] * h * w / 1000, rel=1e-12)
        assert openstl["per_frame"][m] == pytest.approx([v * h * w / 1000 for v in paper["per_frame"][m]], rel=1e-12)
    assert openstl["metrics"]["ssim"] == pytest.approx(paper["metrics"]["ssim"], rel=1e-12)  # both data range 2


def test_several_horizons_and_default_output_dir(cli, trained_smoke) -> None:
    rep = _json(cli("evaluate", trained_smoke.run, "--metrics", "mse", "--limit", "4", "--future", "3,6", "--future", "3", "--json", "-q"))
    assert [h["future_frames"] for h in rep["horizons"]] == [3, 6]
    assert [len(h["per_frame"]["mse"]) for h in rep["horizons"]] == [3, 6]
    assert rep["metrics"] == rep["horizons"][0]["metrics"]
    folder = trained_smoke.run / "eval-test-3-6-paper"
    assert (folder / "report.json").is_file() and (folder / "per_frame.png").is_file()


def test_two_checkpoints_two_rows(cli, trained_smoke, tmp_path: Path) -> None:
    other = tmp_path / "copy" / "other.pt"
    other.parent.mkdir()
    shutil.copy(trained_smoke.best, other)
    args = ("evaluate", trained_smoke.run, other, "--metrics", "mse,ssim", "--limit", "2", "--future", "3", "--out", tmp_path / "both", "-q")
    res = _json(cli(*args, "--json"))
    assert res["convention"] == "paper" and len(res["checkpoints"]) == 2
    assert res["checkpoints"][0]["metrics"] == res["checkpoints"][1]["metrics"]  # same weights
    assert json.loads((tmp_path / "both" / "report.json").read_text()) == res
    table = cli(*args, "--out", tmp_path / "both2")
    assert table.code == 0, table.err
    rows = [line for line in table.out.splitlines() if "run" in line or "other.pt" in line]
    assert any("other.pt" in r for r in rows) and any(trained_smoke.run.name in r for r in rows)
    assert "paper convention" in table.out


@pytest.mark.slow
def test_lpips_matches_direct_call(cli, trained_smoke, tmp_path: Path) -> None:
    weights = installed_lpips_weights()
    rep = _json(cli("evaluate", trained_smoke.run, "--metrics", "lpips,mse", "--lpips-weights", weights,
                    "--limit", "2", "--future", "3", "--convention", "standard", "--json", "--out", tmp_path, "-q"))
    values = rep["per_frame"]["lpips"]
    assert len(values) == 3 and all(np.isfinite(v) and v > 0 for v in values)
    from cttlstm_cli.evaluation.lpips import load_lpips

    lp = load_lpips(weights)
    model, recipe = load_model_and_recipe(trained_smoke.best)
    ds = open_dataset(recipe.data.model_copy(update={"path": str(trained_smoke.data)}), "test", mode="sequential", clip_frames=8)
    clips = torch.stack([ds[0], ds[1]])
    with torch.no_grad():
        pred = model(clips[:, :5], future_frames=3).clamp(0, 1)
    direct = [float(lp(pred[:, t], clips[:, 5 + t], rescale=True).double().mean()) for t in range(3)]
    assert values == pytest.approx(direct, rel=1e-5)


def test_authors_checkpoint_with_data(cli, trained_smoke, tmp_path: Path) -> None:
    from test_checkpoint import authors_state_dict

    from cttlstm_cli.evaluation.runner import data_config_for, evaluate_model

    torch.manual_seed(0)
    cfg = ConvRNNConfig(cell="convttlstm", ctt_order=2, history=3, rank=4, kernel=3, blocks=[1, 1], channels=[8, 8],
                      skip_stride=None, tt_padding="stepwise")
    model = create_model(cfg).eval()
    path = tmp_path / "convttlstm-mnist.pt"
    torch.save({"epoch": 3, "model_state_dict": authors_state_dict(model, "conv3d")}, path)

    no_data = cli("evaluate", path, "--metrics", "mse", "--limit", "2", "-q")
    one_error_line(no_data)
    assert "--data" in no_data.err

    rep = _json(cli("evaluate", path, "--data", trained_smoke.data, "--context", "5", "--future", "5",
                    "--metrics", "mse,ssim", "--limit", "4", "--json", "--out", tmp_path / "ev", "-q"))
    assert rep["context_frames"] == 5 and rep["model"] == "Conv-TT-LSTM" and rep["data"]["frame_size"] == [32, 32]
    direct = evaluate_model(model, data_config_for(None, trained_smoke.data, 5), future=[5], metrics="mse,ssim", limit=4)
    assert rep["metrics"] == pytest.approx(direct.primary.metrics, rel=1e-9)


def test_classifier_accuracy_overall_and_per_group(cli, tmp_path: Path) -> None:
    data = labelled_dataset(tmp_path / "ssv2")
    recipe = load_recipe(RECIPES / "smoke.yaml", [f"data.path={data}", "data.dataset=ssv2", "model.classes=3",
                                                  "data.observed_fraction=0.5", "data.input_frames=4", "data.future_frames=3"])
    torch.manual_seed(1)
    model = create_model(recipe.model, 1).eval()
    ckpt = tmp_path / "clf.pt"
    save_checkpoint(ckpt, model, recipe)
    rep = _json(cli("evaluate", ckpt, "--metrics", "mse", "--json", "--out", tmp_path / "ev", "-q"))
    acc = rep["accuracy"]
    assert acc["num_samples"] == 6 and set(acc["per_group"]) == {"moving", "falling"}
    assert acc["per_group"]["moving"]["num_samples"] == 4 and acc["per_group"]["falling"]["num_samples"] == 2
    ds = EarlyActivityDataset.from_recipe(recipe.data, "test")
    clips = torch.stack([ds[i][0] for i in range(6)])
    labels = torch.tensor([ds[i][1] for i in range(6)])
    with torch.no_grad():
        _, logits = model(clips, 3, context_frames=4, teacher_forcing=0.0, classify=True)
    correct = (logits.argmax(1) == labels).double()
    assert acc["top1"] == pytest.approx(float(correct.mean()))
    assert acc["per_group"]["falling"]["top1"] == pytest.approx(float(correct[labels == 2].mean()))
    assert len(rep["per_frame"]["mse"]) == 3
    table = cli("evaluate", ckpt, "--metrics", "mse", "--out", tmp_path / "ev2", "-q")
    assert table.code == 0 and "falling" in table.out and "top-1" in table.out


@pytest.mark.parametrize(
    "args",
    [
        ("--metrics", "mse,fid"),
        ("--future", "0"),
        ("--future", "x"),
        ("--convention", "nope"),
    ],
)
def test_bad_options_one_line(cli, trained_smoke, tmp_path: Path, args) -> None:
    out = tmp_path / "out"
    result = cli("evaluate", trained_smoke.run, *args, "--out", out, "-q")
    one_error_line(result)
    assert not out.exists()


def test_missing_and_corrupt_checkpoints(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    one_error_line(cli("evaluate", tmp_path / "nope.pt", "--out", out))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    result = cli("evaluate", corrupt, "--out", out)
    one_error_line(result)
    assert "corrupt.pt" in result.err
    empty_dir = tmp_path / "empty-run"
    empty_dir.mkdir()
    one_error_line(cli("evaluate", empty_dir, "--out", out))
    assert not out.exists()


def test_missing_lpips_weights_one_line(cli, trained_smoke, tmp_path: Path) -> None:
    result = cli("evaluate", trained_smoke.run, "--metrics", "lpips", "--lpips-weights", tmp_path / "none.ckpt", "--out", tmp_path / "o")
    one_error_line(result)
    assert "--lpips-weights" in result.err and "--metrics" in result.err


def test_verdict_names_every_metric_lost_to_a_trivial_predictor() -> None:
    """The verdict line: MSE against the better trivial predictor, then each metric a trivial predictor wins."""
    from cttlstm_cli.cli.evaluate import baseline_verdicts
    from cttlstm_cli.evaluation.verdict import verdict

    horizon = {
        "future_frames": 10,
        "metrics": {"mse": 20.0, "psnr": 19.0, "ssim": 0.56, "lpips": 90.0},
        "baselines": {
            "copy_last_frame": {"metrics": {"mse": 44.0, "psnr": 14.0, "ssim": 0.44, "lpips": 80.0}},
            "blank_frame": {"metrics": {"mse": 30.0, "psnr": 16.0, "ssim": 0.57, "lpips": 120.0}},
        },
    }
    v = verdict(horizon)
    assert v.best_trivial == "blank_frame" and v.mse_change == pytest.approx(-1 / 3)
    assert v.loses_to == {"ssim": [("blank_frame", 0.57)], "lpips": [("copy_last_frame", 80.0)]}
    [line] = baseline_verdicts([{"checkpoint": "runs/m/best.pt", "context_frames": 10, "horizons": [horizon]}])
    assert line == ("m 10→10: MSE 33% below the best trivial predictor (blank frame); worse than a trivial predictor in "
                    "SSIM 0.56 < blank frame 0.57; LPIPS 90 > copy last frame 80")
    # A model better in every metric gets the MSE sentence alone.
    horizon["metrics"].update(ssim=0.9, lpips=10.0)
    [line] = baseline_verdicts([{"checkpoint": "runs/m/best.pt", "context_frames": 10, "horizons": [horizon]}])
    assert line == "m 10→10: MSE 33% below the best trivial predictor (blank frame)"
