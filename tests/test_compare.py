"""``cttlstm compare``: table numbers against the reports, figures, quoted paper rows, refusals, activity tables."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from cttlstm_cli.evaluation import paper_results
from cttlstm_cli.evaluation.compare import build_comparison, format_metric
from cttlstm_cli.evaluation.plots import MAX_BUBBLE_AREA, bubble_figure, per_frame_figures
from cttlstm_cli.evaluation.report import format_count

from conftest import assert_unchanged, file_snapshot, one_error_line

METRICS = ("mse", "psnr", "ssim", "lpips")


def _curve(metric: str, seed: float, frames: int) -> list[float]:
    """A made-up per-frame curve with distinct values per metric, model and frame."""
    base = {"mse": 20.0, "psnr": 18.0, "ssim": 0.6, "lpips": 120.0}[metric]
    step = {"mse": 1.5, "psnr": -0.3, "ssim": -0.01, "lpips": 7.0}[metric]
    spread = {"mse": 1.37, "psnr": 0.53, "ssim": 0.0137, "lpips": 13.7}[metric]
    return [base + seed * spread + step * t + 0.001 * seed * t for t in range(frames)]


def _report(
    *,
    model: str = "Conv-TT-LSTM",
    params: int = 1000,
    seed: float = 0.0,
    horizons: tuple[int, ...] = (5, 10),
    metrics: tuple[str, ...] = METRICS,
    dataset: str = "mmnist",
    convention: str = "paper",
    frame: tuple[int, int] = (32, 32),
    channels: int = 1,
    context: int = 5,
    split: str = "test",
    samples: int = 8,
    checkpoint: str = "nowhere/best.pt",
    accuracy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An evaluate report, written by hand with known numbers (headline = mean of its curve)."""
    hs = []
    for f in horizons:
        per_frame = {m: _curve(m, seed, f) for m in metrics}
        hs.append({"future_frames": f, "num_samples": samples, "per_frame": per_frame,
                   "metrics": {m: sum(v) / len(v) for m, v in per_frame.items()}})
    rep = {
        "convention": convention,
        "convention_description": f"{convention} convention (hand-made test report)",
        "metrics": hs[0]["metrics"],
        "per_frame": hs[0]["per_frame"],
        "future_frames": horizons[0],
        "num_samples": samples,
        "context_frames": context,
        "checkpoint": checkpoint,
        "model": model,
        "parameters": params,
        "data": {"path": "data/x", "dataset": dataset, "frame_size": list(frame), "channels": channels},
        "split": split,
        "horizons": hs,
    }
    if accuracy is not None:
        rep["accuracy"] = accuracy
    return rep


def _run(root: Path, name: str, report: dict[str, Any], folder: str | None = None, recipe: str | None = None) -> Path:
    """A run directory holding ``report`` where evaluate would put it (and optionally a recipe.yaml)."""
    run = root / name
    hs = "-".join(str(h["future_frames"]) for h in report["horizons"])
    path = run / (folder or f"eval-{report['split']}-{hs}-{report['convention']}") / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = dict(report, checkpoint=str(run / "best.pt"))
    path.write_text(json.dumps(report))
    if recipe is not None:
        (run / "recipe.yaml").write_text(recipe)
    return run


def _three_runs(root: Path, **kw: Any) -> tuple[list[Path], list[dict[str, Any]]]:
    reports = [
        _report(model="Conv-TT-LSTM", params=2000, seed=0, **kw),
        _report(model="ConvLSTM", params=3000, seed=1, **kw),
        _report(model="PredRNN++", params=9000, seed=2, **kw),
    ]
    runs = [_run(root, name, rep) for name, rep in zip(("ctt", "convlstm", "predrnnpp"), reports)]
    return runs, reports


def _ok(result) -> None:
    assert result.code == 0, result.err


def _md_rows(md: str) -> dict[str, list[str]]:
    """Markdown table rows of the first table, by their first cell."""
    rows: dict[str, list[str]] = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| run "):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[1] if cells[0] == "quoted (Table 2)" else cells[0], cells)  # quoted: by method
        elif rows and not line.startswith("|"):
            break
    return rows


# --------------------------------------------------------------------------- the table


@pytest.mark.slow
def test_table_numbers_equal_reports(cli, tmp_path: Path) -> None:
    runs, reports = _three_runs(tmp_path)
    out = tmp_path / "cmp"
    result = cli("compare", *runs, "--out", out)
    _ok(result)
    assert "ctt" in result.out and "5→10" in result.out and "wrote" in result.out
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["horizons"] == [5, 10] and saved["metrics"] == list(METRICS) and saved["convention"] == "paper"
    assert [r["label"] for r in saved["rows"]] == ["ctt", "convlstm", "predrnnpp"]
    with open(out / "comparison.csv", newline="") as fh:
        csv_rows = {r["label"]: r for r in csv.DictReader(fh)}
    md = _md_rows((out / "comparison.md").read_text())
    for row, rep in zip(saved["rows"], reports):
        assert row["quoted"] is False and row["parameters"] == rep["parameters"] and row["model"] == rep["model"]
        assert row["flops_per_step"] is None  # no checkpoint behind these reports
        cells = iter(md[row["label"]][2:])
        for h in rep["horizons"]:
            f = str(h["future_frames"])
            assert row["num_samples"][f] == h["num_samples"]
            assert row["per_frame"][f] == h["per_frame"]
            for m in METRICS:
                value = h["metrics"][m]
                assert row["horizons"][f][m] == value  # JSON: exactly the report's number
                assert float(csv_rows[row["label"]][f"5->{f} {m}"]) == value  # CSV: full precision
                assert next(cells) == format_metric(value)  # Markdown: the same number, rounded for reading
        assert md[row["label"]][-3:] == [format_count(rep["parameters"]), "-", "-"]
        assert int(csv_rows[row["label"]]["parameters"]) == rep["parameters"]
        assert csv_rows[row["label"]]["numbers"] == "measured"
    # the printed --json is the same comparison
    printed = json.loads(cli("compare", *runs, "--out", tmp_path / "cmp2", "--json").out)
    assert printed["rows"] == saved["rows"]


@pytest.mark.slow
def test_flops_from_the_checkpoint_and_profile_time(cli, trained_smoke, tmp_path: Path) -> None:
    """The one real path: a trained smoke run, evaluated, then compared (a combined report counts as two)."""
    from cttlstm_cli.checkpoint import load_model_and_recipe

    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        run.mkdir()
        shutil.copy(trained_smoke.best, run / "best.pt")
        shutil.copy(trained_smoke.run / "recipe.yaml", run / "recipe.yaml")
    ev = tmp_path / "ev"
    args = ("--metrics", "mse,psnr,ssim", "--limit", "4", "--future", "5", "--data", trained_smoke.data, "-q",
            "--device", "cpu")
    _ok(cli("evaluate", a, b, *args, "--out", ev))
    combined = json.loads((ev / "report.json").read_text())
    assert len(combined["checkpoints"]) == 2
    model, recipe = load_model_and_recipe(a / "best.pt")
    profile = [{"recipe": recipe.name, "model": model.name, "frame_size": [32, 32], "step_seconds": 0.5,
                "batch_size": 8, "epoch_seconds": 4.0, "device": "cpu"}]
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    out = tmp_path / "cmp"
    result = cli("compare", ev / "report.json", "--out", out, "--profile", tmp_path / "profile.json", "--json")
    _ok(result)
    cmp = json.loads(result.out)
    assert [r["label"] for r in cmp["rows"]] == ["a", "b"]
    for row, rep in zip(cmp["rows"], combined["checkpoints"]):
        assert row["horizons"]["5"] == rep["metrics"]
        assert row["flops_per_step"] == model.macs_per_step(32, 32) > 0
        assert row["minutes_per_epoch"] == pytest.approx(0.5 * (10_000 // 8) / 60)  # per 10,000 clips, like Table 2
    written = {p.name for p in out.iterdir()}
    assert {"comparison.md", "comparison.csv", "comparison.json", "per_frame_mse.png"} <= written
    assert not (out / "bubbles.png").exists()  # no LPIPS in these reports
    # a run directory: its eval-*/report.json
    _ok(cli("evaluate", a, *args))
    result = cli("compare", a, ev / "report.json", "--out", tmp_path / "cmp2", "--json")
    _ok(result)
    labels = [r["label"] for r in json.loads(result.out)["rows"]]
    assert labels == ["a", "a #2", "b"]


@pytest.mark.slow
def test_several_reports_in_a_run_pick_one_and_say_so(cli, tmp_path: Path) -> None:
    run = _run(tmp_path, "r", _report(horizons=(5,)))
    _run(tmp_path, "r", _report(horizons=(5, 10), seed=3))
    _run(tmp_path, "r", _report(horizons=(5,), convention="standard", seed=4))
    other = _run(tmp_path, "o", _report(horizons=(5, 10), seed=5))
    result = cli("compare", run, other, "--out", tmp_path / "c")
    _ok(result)
    assert "3 evaluate reports; using eval-test-5-10-paper" in result.out  # the most horizons
    chosen = json.loads((tmp_path / "c" / "comparison.json").read_text())["rows"][0]
    assert chosen["source"].endswith("eval-test-5-10-paper/report.json")
    # --convention/--future choose among them instead
    result = cli("compare", run, "--convention", "standard", "--out", tmp_path / "s", "--json")
    _ok(result)
    assert json.loads(result.out)["rows"][0]["source"].endswith("eval-test-5-standard/report.json")
    result = cli("compare", run, other, "--future", "10", "--out", tmp_path / "f", "--json")
    _ok(result)
    assert json.loads(result.out)["horizons"] == [10]


# --------------------------------------------------------------------------- figures


@pytest.mark.slow
def test_bubble_chart_one_bubble_per_model_area_proportional_to_parameters(cli, tmp_path: Path) -> None:
    runs, reports = _three_runs(tmp_path)
    cmp = build_comparison(runs, flops=False)
    fig, bubbles = bubble_figure(cmp)
    axes = fig.axes
    assert len(axes) == 2  # one panel per horizon
    for ax, f in zip(axes, (5, 10)):
        mine = [b for b in bubbles if b.horizon == f]
        assert [b.label for b in mine] == ["ctt", "convlstm", "predrnnpp"]  # one bubble per model
        sizes = [float(c.get_sizes()[0]) for c in ax.collections]
        points = [tuple(c.get_offsets()[0]) for c in ax.collections]
        assert len(sizes) == 3
        for b, size, (x, y), rep in zip(mine, sizes, points, reports):
            h = next(h for h in rep["horizons"] if h["future_frames"] == f)
            assert (x, y) == (h["metrics"]["lpips"], h["metrics"]["ssim"])
            assert size == pytest.approx(b.area) and b.parameters == rep["parameters"]
            assert size / rep["parameters"] == pytest.approx(MAX_BUBBLE_AREA / 9000)  # area ∝ parameters
        assert {t.get_text().split(" (")[0] for t in ax.texts} == {"ctt", "convlstm", "predrnnpp"}  # labelled
    _ok(cli("compare", *runs, "--out", tmp_path / "out"))
    assert (tmp_path / "out" / "bubbles.png").stat().st_size > 0
    # without LPIPS there is no chart (and an earlier one in the folder is removed)
    runs2, _ = _three_runs(tmp_path / "nolpips", metrics=("mse", "ssim"))
    assert bubble_figure(build_comparison(runs2, flops=False)) is None
    without = cli("compare", *runs2, "--out", tmp_path / "out")
    _ok(without)
    assert not (tmp_path / "out" / "bubbles.png").exists() and not (tmp_path / "out" / "per_frame_lpips.png").exists()
    # and it says so, with the command that measures what the chart needs
    assert ("note: no bubbles.png (SSIM against LPIPS, the paper's Figure 2): the reports hold no LPIPS; "
            "'cttlstm evaluate RUN --metrics mse,psnr,ssim,lpips' measures both") in without.out
    assert "no bubbles.png" not in cli("compare", *runs, "--out", tmp_path / "out2").out


@pytest.mark.slow
def test_compare_replaces_and_removes_only_what_it_wrote(cli, tmp_path: Path) -> None:
    from conftest import one_error_line

    runs, _ = _three_runs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    mine = {"notes.txt": b"my notes", "per_frame_mae.png": b"my own figure"}  # a name compare may write
    for name, data in mine.items():
        (out / name).write_bytes(data)
    _ok(cli("compare", *runs, "--out", out))  # no per_frame_mae.png written: the user's stays
    assert {n: (out / n).read_bytes() for n in mine} == mine
    # A user's file under a name this comparison writes is refused before anything is written.
    (out / "bubbles.png").unlink()
    (out / "bubbles.png").write_bytes(b"my own chart")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_error_line(cli("compare", *runs, "--out", out))
    assert "holds bubbles.png, which compare did not write" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Its own earlier files are replaced or, when this comparison has none of them, removed; no one else's.
    (out / "bubbles.png").unlink()
    _ok(cli("compare", *runs, "--out", out))
    runs2, _ = _three_runs(tmp_path / "nolpips", metrics=("mse", "ssim"))
    _ok(cli("compare", *runs2, "--out", out))
    assert not (out / "bubbles.png").exists() and {n: (out / n).read_bytes() for n in mine} == mine


@pytest.mark.slow
def test_per_frame_figure_one_line_per_model_and_horizon(cli, tmp_path: Path) -> None:
    runs, reports = _three_runs(tmp_path)
    figures = per_frame_figures(build_comparison(runs, flops=False))
    assert list(figures) == list(METRICS)
    for metric, fig in figures.items():
        lines = fig.axes[0].get_lines()
        assert len(lines) == 3 * 2
        expected = [h["per_frame"][metric] for rep in reports for h in rep["horizons"]]
        assert [list(line.get_ydata()) for line in lines] == expected
        assert [list(line.get_xdata()) for line in lines][1] == list(range(6, 16))  # frames after the 5 of context
    out = tmp_path / "out"
    _ok(cli("compare", *runs, "--out", out))
    for metric in METRICS:
        assert (out / f"per_frame_{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the paper's rows


@pytest.mark.slow
def test_paper_rows_quoted_mmnist_and_kth(cli, tmp_path: Path) -> None:
    common = {"context": 10, "metrics": ("mse", "psnr", "ssim", "lpips")}
    runs, _ = _three_runs(tmp_path / "m", frame=(64, 64), horizons=(10, 30), **common)
    result = cli("compare", *runs, "--paper", "--out", tmp_path / "out", "--json")
    _ok(result)
    cmp = json.loads(result.out)
    quoted = {r["label"]: r for r in cmp["rows"] if r["quoted"]}
    assert len(quoted) == len(paper_results.MMNIST.rows) and cmp["quoted_from"] == paper_results.CITATION
    assert all(r["convention"] == "paper" and "Table 2" in r["source"] for r in quoted.values())
    ours = quoted["Conv-TT-LSTM (Ours)"]  # the paper's numbers, typed in (Table 2, Moving-MNIST-2)
    assert ours["horizons"]["10"] == {"mse": 12.96, "psnr": None, "ssim": 0.915, "lpips": 40.54}
    assert ours["horizons"]["30"] == {"mse": 25.81, "psnr": None, "ssim": 0.840, "lpips": 90.38}
    assert ours["parameters"] == 2_690_000 and ours["flops_per_step"] == 10_760_000_000
    base = quoted["ConvLSTM (baseline)"]
    assert base["horizons"]["10"] == {"mse": 18.17, "psnr": None, "ssim": 0.882, "lpips": 67.13}
    assert base["horizons"]["30"] == {"mse": 33.08, "psnr": None, "ssim": 0.806, "lpips": 140.1}
    predrnn = quoted["PredRNN++ [6] (retrained [25])"]["horizons"]
    assert predrnn["10"] == {"mse": 10.29, "psnr": None, "ssim": 0.913, "lpips": 59.51}
    assert predrnn["30"] == {"mse": 20.53, "psnr": None, "ssim": 0.834, "lpips": None}  # illegible in our copy
    md = (tmp_path / "out" / "comparison.md").read_text()
    row = _md_rows(md)["Conv-TT-LSTM (Ours)"]
    assert row[-1] == "quoted (paper convention)" and "12.96" in row and "40.54" in row
    assert _md_rows(md)["ctt"][-1] == "measured" and "not measured by this toolkit" in md
    # the measured rows are untouched by --paper
    assert len([r for r in cmp["rows"] if not r["quoted"]]) == 3

    kth_runs, _ = _three_runs(tmp_path / "k", dataset="kth", frame=(128, 128), horizons=(20, 40), **common)
    cmp = json.loads(cli("compare", *kth_runs, "--paper", "--out", tmp_path / "kout", "--json").out)
    quoted = {r["label"]: r for r in cmp["rows"] if r["quoted"]}
    ours = quoted["Conv-TT-LSTM (Ours)"]
    assert ours["horizons"]["20"] == {"mse": None, "psnr": 28.36, "ssim": 0.907, "lpips": 133.4}
    assert ours["horizons"]["40"] == {"mse": None, "psnr": 26.11, "ssim": 0.882, "lpips": 191.2}
    assert (ours["parameters"], ours["flops_per_step"], ours["minutes_per_epoch"]) == (2_690_000, 37_830_000_000, 74.8)
    base = quoted["ConvLSTM (baseline)"]
    assert (base["parameters"], base["flops_per_step"], base["minutes_per_epoch"]) == (3_970_000, 55_830_000_000, 28.9)
    assert quoted["E3D-LSTM [7] (retrained [26])"]["horizons"]["40"]["lpips"] == 328.8
    # quoted bubbles join the chart, hollow, on the same area scale
    _, bubbles = bubble_figure(build_comparison(kth_runs, paper_rows=True, flops=False))
    paper_bubbles = [b for b in bubbles if b.quoted and b.horizon == 20]
    assert {b.label for b in paper_bubbles} == {  # the rows with SSIM, LPIPS and a parameter count
        "PredRNN++ [6] (retrained [25])", "E3D-LSTM [7] (retrained [26])", "ConvLSTM (baseline)",
        "ConvLSTM (classic TTD [27, 28])", "Conv-TT-LSTM (Ours)",
    }
    assert max(b.area for b in bubbles) == pytest.approx(MAX_BUBBLE_AREA)  # E3D-LSTM's 41.94M is the largest


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw, why",
    [
        ({"convention": "openstl", "context": 10, "frame": (64, 64), "horizons": (10, 30)}, "openstl convention"),
        ({"context": 5, "frame": (64, 64), "horizons": (5, 10)}, "10→10, 10→30"),
        ({"context": 10, "frame": (32, 32), "horizons": (10,)}, "32x32"),
    ],
)
def test_paper_rows_refused_with_one_line(cli, tmp_path: Path, kw: dict[str, Any], why: str) -> None:
    runs, _ = _three_runs(tmp_path, **kw)
    result = cli("compare", *runs, "--paper", "--out", tmp_path / "out")
    _ok(result)
    notes = [line for line in result.out.splitlines() if line.startswith("note: --paper")]
    assert len(notes) == 1 and why in notes[0], result.out
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert not any(r["quoted"] for r in saved["rows"]) and "quoted_from" not in saved


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "other, words",
    [
        ({"convention": "openstl"}, "metric conventions differ"),
        ({"dataset": "kth"}, "datasets differ"),
        ({"split": "val"}, "different splits"),
        ({"frame": (64, 64)}, "frame sizes differ"),
        ({"channels": 3}, "channels differ"),
        ({"context": 10}, "context lengths differ"),
        ({"horizons": (20, 40)}, "no horizon in common"),
        ({"samples": 4}, "different numbers of test clips"),
    ],
)
def test_not_comparable_one_line_nothing_written(cli, tmp_path: Path, other: dict[str, Any], words: str) -> None:
    a = _run(tmp_path, "a", _report())
    b = _run(tmp_path, "b", _report(seed=1, **other))
    out = tmp_path / "out"
    line = one_error_line(cli("compare", a, b, "--out", out))
    assert words in line and "a:" in line and "b:" in line
    assert not out.exists()


def test_run_without_report_and_bad_inputs(cli, tmp_path: Path) -> None:
    run = tmp_path / "trained"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: smoke\n")
    good = _run(tmp_path, "good", _report())
    out = tmp_path / "out"
    line = one_error_line(cli("compare", good, run, "--out", out))
    assert str(run) in line and f"cttlstm evaluate {run}" in line
    assert "not found" in one_error_line(cli("compare", good, tmp_path / "missing", "--out", out))
    bad = tmp_path / "bad.json"
    bad.write_text('{"convention": "paper"}')
    assert "not an evaluate report" in one_error_line(cli("compare", good, bad, "--out", out))
    assert "given twice" in one_error_line(cli("compare", good, good, "--out", out))
    assert "--profile" in one_error_line(cli("compare", good, "--profile", tmp_path / "none.json", "--out", out))
    assert "convention" in one_error_line(cli("compare", good, "--convention", "nope", "--out", out))
    line = one_error_line(cli("compare", good, "--future", "30", "--out", out))
    assert "F=5,10" in line and "--future 30" in line
    assert not out.exists()


def _damaged(root: Path, change: Any, name: str = "r") -> Path:
    """A run whose report ``change(report)`` broke after it was written as evaluate writes it."""
    run = _run(root, name, _report())
    path = next(run.glob("eval-*/report.json"))
    rep = json.loads(path.read_text())
    change(rep)
    path.write_text(json.dumps(rep))
    return path


def test_per_frame_curve_shorter_than_its_horizon_is_refused(cli, tmp_path: Path) -> None:
    """Accepted before (exit 0, a table from a curve that stopped short): now one line naming file and field."""
    good = _run(tmp_path, "good", _report())
    path = _damaged(tmp_path, lambda r: r["horizons"][1]["per_frame"].update(mse=r["horizons"][1]["per_frame"]["mse"][:7]))
    before = file_snapshot(tmp_path)
    out = tmp_path / "out"
    for source in (path, path.parent.parent):  # the report itself, or the run directory it is found in
        line = one_error_line(cli("compare", good, source, "--out", out))
        assert line == f"error: {path}: horizons[1].per_frame.mse: 7 values for a 10-frame horizon"
    assert_unchanged(before)
    assert not out.exists()


@pytest.mark.parametrize(
    "change, field, why",
    [
        (lambda r: r.update(parameters="1000"), "parameters", 'expected a whole number, got "1000"'),
        (lambda r: r["horizons"][1].update(num_samples=8.0), "horizons[1].num_samples", "expected a whole number, got 8.0"),
        (lambda r: r["horizons"][1].update(future_frames=None), "horizons[1].future_frames",
         "expected a whole number, got null"),
        (lambda r: r.update(context_frames=True), "context_frames", "expected a whole number, got true"),
        (lambda r: r.update(data=["mmnist", [32, 32], 1]), "data", "expected an object, got a list of 3 items"),
        (lambda r: r["data"].update(frame_size="32x32"), "data.frame_size", 'expected a list, got "32x32"'),
        (lambda r: r["data"].update(channels=-1), "data.channels", "must be at least 1, got -1"),
        (lambda r: r.update(horizons={"5": {}}), "horizons", "expected a list, got an object"),
        (lambda r: r["horizons"][1]["metrics"].update(ssim="0.6"), "horizons[1].metrics.ssim", 'expected a number, got "0.6"'),
        (lambda r: r["horizons"][1]["per_frame"]["psnr"].__setitem__(2, math.nan), "horizons[1].per_frame.psnr[2]",
         "expected a finite number, got NaN"),
        (lambda r: r.update(parameters=2**63), "parameters", f"must be at most {2**63 - 1}, got {2**63}"),
        (lambda r: r.update(split="testing"), "split", "expected 'train', 'val' or 'test', got \"testing\""),
        (lambda r: r["horizons"][1]["metrics"].update(fid=1.0), "horizons[1].metrics.fid",
         "unknown name (expected 'mse', 'mae', 'psnr', 'ssim' or 'lpips')"),
        (lambda r: r.update(num_samples=4), "num_samples",
         "differs from horizons[0].num_samples (the top level repeats the first horizon)"),
        (lambda r: r.update(limit=None), "limit", "null (leave the field out instead)"),
        (lambda r: r.pop("split"), "split", "missing"),
        (lambda r: r["horizons"][0].update(shape=[1]), "horizons[0].shape", "unknown field"),
    ],
)
def test_wrong_field_types_are_one_line_naming_the_field(cli, tmp_path: Path, change: Any, field: str, why: str) -> None:
    """Types compare read blindly before (tracebacks, or a table of strings): each refused, the field named."""
    good = _run(tmp_path, "good", _report())
    path = _damaged(tmp_path, change)
    before = file_snapshot(tmp_path)
    line = one_error_line(cli("compare", good, path, "--out", tmp_path / "out"))
    assert line == f"error: {path}: {field}: {why}"
    assert_unchanged(before)
    assert not (tmp_path / "out").exists()


def test_broken_checkpoint_of_a_combined_report_is_named(cli, tmp_path: Path) -> None:
    combined = {"convention": "paper", "checkpoints": [_report(), _report(seed=1)]}
    combined["checkpoints"][1]["horizons"][0]["per_frame"]["lpips"].append(1.0)
    path = tmp_path / "both" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(combined))
    line = one_error_line(cli("compare", path, "--out", tmp_path / "out"))
    assert line == f"error: {path}: checkpoints[1].horizons[0].per_frame.lpips: 6 values for a 5-frame horizon"
    path.write_text(json.dumps(dict(combined, checkpoints=[_report(), {"model": "x"}])))
    line = one_error_line(cli("compare", path, "--out", tmp_path / "out"))
    assert line.startswith(f"error: {path}: checkpoints[1]: not an evaluate report (missing 'convention', ")


# --------------------------------------------------------------------------- early activity recognition


def _accuracy(top1: float, groups: dict[str, float], n: int = 40) -> dict[str, Any]:
    return {"top1": top1, "num_samples": n,
            "per_group": {g: {"top1": v, "num_samples": n // len(groups)} for g, v in groups.items()},
            "per_class": {}}


def test_activity_tables_equal_reports_and_paper(cli, tmp_path: Path) -> None:
    groups = ("Dropping", "Holding", "MovingLR", "Tearing")
    kw = {"dataset": "ssv2", "frame": (32, 32), "context": 10, "horizons": (10,), "samples": 40,
          "metrics": ("mse", "ssim")}
    specs = [  # run, model, observed fraction (only in its recipe.yaml, as evaluate reports lack it), top-1
        ("ctt-25", "Conv-TT-LSTM", 0.25, 0.175),
        ("ctt-50", "Conv-TT-LSTM", 0.5, 0.3),
        ("cnn-50", "3D-CNN", 0.5, 0.2),
    ]
    runs, reports = [], []
    for i, (name, model, fraction, top1) in enumerate(specs):
        acc = _accuracy(top1, {g: top1 + 0.01 * j for j, g in enumerate(groups)})
        rep = _report(model=model, seed=i, accuracy=acc, **kw)
        if model == "3D-CNN":  # a classifier only: no frame metrics (the top level repeats horizon 0, as evaluate writes)
            for h in rep["horizons"]:
                h["metrics"], h["per_frame"] = {}, {}
            rep["metrics"], rep["per_frame"] = {}, {}
        runs.append(_run(tmp_path, name, rep, recipe=f"name: {name}\ndata:\n  observed_fraction: {fraction}\n"))
        reports.append(rep)
    out = tmp_path / "out"
    result = cli("compare", *runs, "--paper", "--out", out, "--json")
    _ok(result)
    cmp = json.loads(result.out)
    measured = [a for a in cmp["activity"] if not a["quoted"]]
    assert [a["observed_fraction"] for a in measured] == [0.25, 0.5, 0.5]
    for a, rep in zip(measured, reports):
        assert a["top1_percent"] == pytest.approx(100 * rep["accuracy"]["top1"], rel=1e-12)
        assert a["num_samples"] == 40
        for g, v in rep["accuracy"]["per_group"].items():
            assert a["per_group_percent"][g] == pytest.approx(100 * v["top1"], rel=1e-12)
    # quoted rows: the paper's Tables 1 and 3 at 25% and 50%
    quoted = [a for a in cmp["activity"] if a["quoted"]]
    t3 = {(a["model"], a["observed_fraction"]): a["top1_percent"] for a in quoted if "Table 3" in a["source"]}
    assert t3[("Conv-TT-LSTM (ours)", 0.25)] == 19.53 and t3[("Conv-TT-LSTM (ours)", 0.5)] == 30.05
    assert t3[("E3D-LSTM* [7]", 0.5)] == 22.73 and t3[("3D-CNN", 0.25)] == 13.26
    t1 = {(a["model"], a["observed_fraction"]): a["per_group_percent"] for a in quoted if "Table 1" in a["source"]}
    assert t1[("Conv-TT-LSTM", 0.5)]["Tearing"] == 46.2 and t1[("ConvLSTM", 0.25)]["MovingRL"] == 38.8
    assert t1[("3D-CNN", 0.5)]["Dropping"] == 14.6

    md = (out / "comparison.md").read_text()
    assert "Table 1" in md and "Table 3" in md
    t3_lines = [line for line in md.split("(Table 3)")[1].splitlines() if line.startswith("| Conv-TT-LSTM |")]
    assert t3_lines == ["| Conv-TT-LSTM | 17.50 | 30.00 | measured |"]  # one row per model, a column per fraction
    assert "| 3D-CNN | - | 20.00 | measured |" in md
    with open(out / "activity.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["numbers"] == "measured"]
    assert [float(r["top1_percent"]) for r in rows] == [pytest.approx(17.5), pytest.approx(30.0), pytest.approx(20.0)]
    assert float(rows[1]["Tearing"]) == pytest.approx(100 * (0.3 + 0.03))
    printed = cli("compare", *runs, "--out", tmp_path / "o2")
    _ok(printed)
    assert "front 25%" in printed.out and "33.00" in printed.out  # Tables 3 and 1 printed too


def test_activity_from_real_classifier_reports(cli, tmp_path: Path) -> None:
    """Classifier checkpoints through evaluate: compare finds the observed fraction in each checkpoint's recipe."""
    import torch

    from cttlstm_cli.models import create_model
    from cttlstm_cli.checkpoint import save_checkpoint
    from cttlstm_cli.recipe import load_recipe

    from conftest import RECIPES
    from synthetic import labelled_dataset

    data = labelled_dataset(tmp_path / "ssv2")
    runs = []
    for fraction in (0.25, 0.5):
        recipe = load_recipe(RECIPES / "smoke.yaml", [f"data.path={data}", "data.dataset=ssv2", "model.classes=3",
                                                      f"data.observed_fraction={fraction}", "data.input_frames=4",
                                                      "data.future_frames=3"])
        torch.manual_seed(int(fraction * 100))
        run = tmp_path / f"clf-{int(fraction * 100)}"
        save_checkpoint(run / "best.pt", create_model(recipe.model, 1).eval(), recipe)
        _ok(cli("evaluate", run, "--metrics", "mse", "-q", "--device", "cpu"))
        runs.append(run)
    result = cli("compare", *runs, "--out", tmp_path / "out", "--json")
    _ok(result)
    cmp = json.loads(result.out)
    for a, run, fraction in zip(cmp["activity"], runs, (0.25, 0.5)):
        rep = json.loads(next(run.glob("eval-*/report.json")).read_text())
        assert a["observed_fraction"] == fraction and a["label"] == run.name
        assert a["top1_percent"] == pytest.approx(100 * rep["accuracy"]["top1"], rel=1e-12)
        groups = rep["accuracy"]["per_group"]
        assert a["per_group_percent"] == pytest.approx({g: 100 * v["top1"] for g, v in groups.items()})
    assert all(r["flops_per_step"] > 0 for r in cmp["rows"])


@pytest.mark.slow
def test_checkpoint_file_finds_its_reports(cli, tmp_path: Path) -> None:
    """A checkpoint named instead of its run: best.pt -> eval-*/, other.pt -> other-eval-*/ (evaluate's defaults)."""
    a = _run(tmp_path, "a", _report())
    other = tmp_path / "b" / "step100-eval-test-5-10-paper" / "report.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(_report(seed=2, checkpoint=str(tmp_path / "b" / "step100.pt"))))
    (tmp_path / "b" / "step100.pt").write_bytes(b"\x80 not read")
    (a / "best.pt").write_bytes(b"\x80 not a checkpoint either: FLOPs become '-'")
    result = cli("compare", a / "best.pt", tmp_path / "b" / "step100.pt", "--out", tmp_path / "out", "--json")
    _ok(result)
    assert [r["label"] for r in json.loads(result.out)["rows"]] == ["a", "step100.pt"]
    line = one_error_line(cli("compare", a, tmp_path / "b" / "last.pt", "--out", tmp_path / "o2"))
    assert "not found" in line
    (tmp_path / "b" / "last.pt").write_bytes(b"x")
    line = one_error_line(cli("compare", a, tmp_path / "b" / "last.pt", "--out", tmp_path / "o2"))
    assert "last-eval-*/report.json" in line and "cttlstm evaluate" in line
