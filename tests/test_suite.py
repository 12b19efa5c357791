"""cttlstm suite: a two-model smoke suite end to end, kills at any phase and reruns, bad suites."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest
import yaml

from conftest import REPO, one_error_line
from hooks import PAUSE_AFTER_FIRST_CHECKPOINT, wait_for_first_checkpoint

pytestmark = pytest.mark.slow  # trains, kills and resumes whole suites: minutes

SMOKE_SUITE = REPO / "suites" / "smoke.yaml"


def _suite_file(folder: Path, data: Path, **changes: object) -> Path:
    """suites/smoke.yaml with its data in ``data`` (never the repository's data/) and ``changes``
    applied as dotted keys (``models``: the whole list)."""
    raw = yaml.safe_load(SMOKE_SUITE.read_text())
    raw["data"]["path"] = str(data)
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _numbers(out: Path) -> dict[str, object]:
    """Every measured number of a finished suite: each model's report (less its own path) and the
    comparison's rows."""
    reports = {}
    for name in ("convttlstm", "predrnnpp"):
        [report] = (out / name).glob("eval-*/report.json")
        rep = json.loads(report.read_text())
        rep.pop("checkpoint")
        reports[name] = rep
    rows = json.loads((out / "comparison" / "comparison.json").read_text())["rows"]
    for row in rows:
        for varies in ("source", "checkpoint", "minutes_per_epoch"):  # paths, and the probe's timing
            row.pop(varies, None)
    return {"reports": reports, "rows": rows}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The smoke suite run once, uninterrupted: ``(suite file, out, data)``."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("suite")
    data = root / "data"
    suite = _suite_file(root, data)
    out = root / "out"
    assert main(["suite", "run", str(suite), "--out", str(out), "--device", "cpu", "-q"]) == 0
    return suite, out, data


def test_smoke_suite_end_to_end(finished, cli) -> None:
    suite, out, _ = finished
    # Every model trained for the budget, evaluated at both horizons beside the trivial predictors.
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["convttlstm", "predrnnpp"]
    for model in summary["models"]:
        assert model["steps"] == 8 and model["train_seconds"] > 0
        assert [h["future_frames"] for h in model["horizons"]] == [5, 10]
        for h in model["horizons"]:
            assert h["best_trivial"] in ("copy_last_frame", "blank_frame")
            trivial_mse = h["trivial"][h["best_trivial"]]["mse"]
            assert h["mse_change"] == pytest.approx((h["metrics"]["mse"] - trivial_mse) / trivial_mse)
        metrics = json.loads((out / model["name"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert metrics["kind"] == "val" and metrics["step"] == 8
        recipe = yaml.safe_load((out / model["name"] / "recipe.yaml").read_text())
        assert recipe["train"]["batch_size"] == 4 and recipe["train"]["epochs"] == 2 and recipe["train"]["epoch_clips"] == 16
        assert recipe["data"]["frame_size"] == [32, 32] and recipe["eval"]["future_frames"] == [5, 10]
    # Table 2: both models, both horizons, the same clips; figures and the predict grid.
    cmp = json.loads((out / "comparison" / "comparison.json").read_text())
    assert [r["label"] for r in cmp["rows"]] == ["convttlstm", "predrnnpp"]
    assert cmp["horizons"] == [5, 10]
    table = (out / "comparison" / "comparison.md").read_text()
    assert "convttlstm" in table and "predrnnpp" in table
    assert (out / "comparison" / "per_frame_mse.png").stat().st_size > 0
    assert all(r["minutes_per_epoch"] and r["minutes_per_epoch"] > 0 for r in cmp["rows"])  # from the probes
    gif = iio.imread(out / "predictions.gif", index=None)
    assert gif.shape[0] == 5 + 10  # context then the longest horizon
    # ground truth, two models, two error panels side by side
    single = iio.imread(out / "predictions.gif", index=0)
    assert single.shape[1] > 4 * single.shape[0] / 2
    # status says it is done, and a rerun changes nothing
    status = json.loads(cli("suite", "status", out, "--json").out)
    assert status["done"] and all(m["trained"] and m["evaluated"] and m["step"] == 8 for m in status["models"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = cli("suite", "run", suite, "--out", out, "--device", "cpu", "-q")
    assert again.code == 0, again.err
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    shown = cli("suite", "status", out)
    assert shown.code == 0 and "convttlstm" in shown.out and "done" in shown.out


class Killed(BaseException):
    """What a SIGKILL does to the suite: it stops, and nothing of ours runs after it."""


@pytest.mark.parametrize("where", ["train", "evaluate", "compare", "pictures"])
def test_killed_in_any_phase_ends_with_the_same_numbers(finished, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Stopped for good in the second model's training step 5, in its evaluation, while writing the
    comparison or the pictures: the same command again ends with the uninterrupted run's numbers."""
    from cttlstm_cli import rendering
    from cttlstm_cli.evaluation import runner as eval_runner
    from cttlstm_cli.suite import runner as suite_runner
    from cttlstm_cli.training import trainer as trainer_module

    suite, reference, data = finished
    out = tmp_path / "out"
    calls: list[int] = []
    targets = {
        "train": (trainer_module, "train_step", 8 + 5),  # the first model's 8 steps, then the 5th of the second
        "evaluate": (eval_runner, "evaluate_model", 2),
        "compare": (suite_runner, "write_summary", 1),
        "pictures": (rendering, "write_animation", 1),
    }
    module, name, nth = targets[where]
    real = getattr(module, name)

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise Killed
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(module, name, killed)
        with pytest.raises(Killed):
            cli("suite", "run", suite, "--out", out, "--device", "cpu", "-q")
    assert not json.loads(cli("suite", "status", out, "--json").out)["done"]
    result = cli("suite", "run", suite, "--out", out, "--device", "cpu", "-q")
    assert result.code == 0, result.err
    assert _numbers(out) == _numbers(reference)


def test_sigkill_then_the_same_command(finished, tmp_path: Path) -> None:
    """A real SIGKILL of a suite process in its first training, then the same command: the same numbers."""
    suite, reference, _ = finished
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cttlstm_cli", "suite", "run", str(suite), "--out", str(out), "--device", "cpu", "-q"]
    paused = [sys.executable, "-c", PAUSE_AFTER_FIRST_CHECKPOINT, *command[3:]]
    proc = subprocess.Popen(paused, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_first_checkpoint(proc)  # the suite waits inside its first training, after its first last.pt
        assert (out / "convttlstm" / "last.pt").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr
    assert _numbers(out) == _numbers(reference)


def test_changed_evaluation_reevaluates_without_retraining(finished, cli, tmp_path: Path) -> None:
    suite, reference, data = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    trained = {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    changed = _suite_file(tmp_path / "changed", data, eval__clips=4)
    result = cli("suite", "run", changed, "--out", out, "--device", "cpu", "-q")
    assert result.code == 0, result.err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")} == trained
    rep = json.loads(next((out / "convttlstm").glob("eval-*/report.json")).read_text())
    assert [h["num_samples"] for h in rep["horizons"]] == [4, 4]
    # A changed model is another training: refused, nothing touched.
    other = _suite_file(tmp_path / "other", data, train__lr=0.01)
    line = one_error_line(cli("suite", "run", other, "--out", out, "--device", "cpu", "-q"))
    assert "trained with another train.lr" in line and "another --out" in line


# -- bad suites: one line, nothing trained, nothing written ---------------------------------------

BAD = {
    "unknown key": ({"bugdet": 1}, "bugdet: unknown key"),
    "unknown recipe": ({"models": [{"name": "a", "recipe": "no-such-recipe"}]}, "recipe not found: no-such-recipe"),
    "unknown recipe key": ({"models": [{"name": "a", "recipe": "smoke", "set": ["model.hiden=4"]}]}, "model.hiden"),
    "frame size differs": ({"models": [{"name": "a", "recipe": "smoke", "set": ["data.frame_size=[64,64]"]}]},
                           "model 'a': set changes data.frame_size to [64, 64], but every model of a suite has the suite's data ([32, 32])"),
    "channels differ": ({"models": [{"name": "a", "recipe": "smoke", "set": {"data.channels": 3}}]}, "set changes data.channels to 3"),
    "horizons differ": ({"models": [{"name": "a", "recipe": "smoke", "set": ["eval.future_frames=[5]"]}]},
                        "set changes eval.future_frames to [5], but every model of a suite has the suite's evaluation ([5, 10])"),
    "budget differs": ({"models": [{"name": "a", "recipe": "smoke"}, {"name": "b", "recipe": "smoke", "set": ["train.batch_size=16"]}]},
                       "model 'b': set changes train.batch_size to 16, but every model of a suite has the suite's budget (4)"),
    "seed differs": ({"models": [{"name": "a", "recipe": "smoke", "set": ["train.seed=3"]}]}, "set changes train.seed to 3"),
    "budget in train": ({"train": {"batch_size": 2}}, "train: batch_size belong(s) to the budget section"),
    "steps not in epochs": ({"budget": {"steps": 9, "batch_size": 4, "epochs": 2}}, "steps (9) must be a multiple of epochs (2)"),
    "duplicate names": ({"models": [{"name": "a", "recipe": "smoke"}, {"name": "a", "recipe": "smoke-predrnnpp"}]},
                        "two models are named 'a'"),
    "not a folder name": ({"models": [{"name": "../up", "recipe": "smoke"}]}, "must be a folder name"),
    "a classifier": ({"models": [{"name": "a", "recipe": "smoke-cnn3d"}]}, "is an activity classifier"),
    "negative steps": ({"budget": {"steps": -8, "batch_size": 4, "epochs": 2}}, "budget.steps"),
    "huge seed": ({"budget": {"steps": 8, "batch_size": 4, "epochs": 2, "seed": 2**70}}, "budget.seed"),
    "no models": ({"models": []}, "models"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_suite_is_one_line_before_anything_trains(cli, tmp_path: Path, case: str) -> None:
    changes, expected = BAD[case]
    raw = yaml.safe_load(SMOKE_SUITE.read_text())
    raw["data"]["path"] = str(tmp_path / "data")
    raw.update(changes)
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump(raw))
    line = one_error_line(cli("suite", "run", suite, "--out", tmp_path / "out", "--device", "cpu"))
    assert expected in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("models: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping of sections"),
    ("[" * 5000, "nested more than 64 levels deep"),
    ("name: x\n", "data: missing"),
])
def test_unreadable_suite_files(cli, tmp_path: Path, text: str, expected: str) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(text)
    assert expected in one_error_line(cli("suite", "run", suite, "--out", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_places(cli, tmp_path: Path, finished) -> None:
    suite, _, _ = finished
    assert "suite not found" in one_error_line(cli("suite", "run", tmp_path / "none.yaml", "--out", tmp_path / "o"))
    assert "is a folder, not a suite file" in one_error_line(cli("suite", "run", tmp_path, "--out", tmp_path / "o"))
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert "is a file, not a folder" in one_error_line(cli("suite", "run", suite, "--out", a_file, "--device", "cpu"))
    assert a_file.read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not a suite's folder" in one_error_line(cli("suite", "run", suite, "--out", foreign, "--device", "cpu"))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert "holds no suite run" in one_error_line(cli("suite", "status", foreign))


def test_help_has_examples(cli) -> None:
    result = cli("suite", "run", "--help")
    assert result.code == 0 and "suites/table2-cpu.yaml" in result.out and "Examples" in result.out


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_resolve(path: Path) -> None:
    """Every shipped suite names recipes that exist and agree on data, budget and evaluation."""
    from cttlstm_cli.suite import load_suite, resolve_models

    suite = load_suite(path)
    models = resolve_models(suite, path)
    assert len(models) == len(suite.models) >= 2
    steps = {m.recipe.train.epochs * m.recipe.train.epoch_clips // m.recipe.train.batch_size for m in models}
    assert steps == {suite.budget.steps}


def test_a_model_added_to_a_finished_suite_trains_alone(finished, cli, tmp_path: Path) -> None:
    suite, reference, data = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    trained = {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    raw = yaml.safe_load(suite.read_text())
    raw["models"].append({"name": "simvp", "recipe": "smoke-simvp", "set": {"model.frames": 5}})
    grown = tmp_path / "grown.yaml"
    grown.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = cli("suite", "run", grown, "--out", out, "--device", "cpu", "-q")
    assert result.code == 0, result.err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt") if p.parent.name != "simvp"} == trained
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["convttlstm", "predrnnpp", "simvp"]
    assert summary["models"][2]["steps"] == 8
    cmp = json.loads((out / "comparison" / "comparison.json").read_text())
    assert [r["label"] for r in cmp["rows"]] == ["convttlstm", "predrnnpp", "simvp"]
