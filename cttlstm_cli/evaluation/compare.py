"""Put several runs' evaluate reports side by side: the library behind ``cttlstm compare``.

Nothing here prints. :func:`build_comparison` reads ``report.json`` files written by
``cttlstm evaluate`` (named directly, found in run directories, or several checkpoints in one
combined report), each checked against the report format (:mod:`cttlstm_cli.evaluation.report`:
a broken report is refused in one line naming the file and the field), refuses reports that were
not measured the same way, and returns a
:class:`Comparison`: a Table-2-style table (every metric at every common horizon, parameters,
FLOPs per step, measured minutes per 10,000-clip epoch), optionally the paper's own published
rows (quoted, never measured here), and for activity-recognition reports the paper's Tables 1
and 3 (top-1 accuracy per activity group, and overall per observed fraction).
:func:`write_comparison` writes it as Markdown, CSV and JSON plus the SSIM-vs-LPIPS bubble
chart and one per-frame figure per metric, each file atomically.

Comparable means: the same metric convention, dataset and split, frame size and channels,
context length, at least one horizon in common, and the same number of clips at the common
horizons (a report made with ``--limit`` saw a different test set). Anything else stops with
one line naming the difference, before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cttlstm_cli.evaluation.verdict import HIGHER_IS_BETTER
from cttlstm_cli.atomic import require_output_folder, write_json_atomic, write_text_atomic
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation import paper_results as paper
from cttlstm_cli.evaluation.plots import bubble_figure, per_frame_figures, save_figure
from cttlstm_cli.evaluation.report import (
    DATASET_NAMES,
    METRIC_TITLES,
    REPORT_FILE,
    default_reports,
    format_count,
    load_json,
    read_report_file,
    report_label,
)
from cttlstm_cli.run_files import RECIPE_FILE

#: metric order in tables (the evaluate reports' names)
METRIC_ORDER = ("mse", "mae", "psnr", "ssim", "lpips")
DEFAULT_OUT = "comparison"


# --------------------------------------------------------------------------- reading reports


@dataclass
class LoadedReport:
    """One checkpoint's evaluate report and where it came from."""

    label: str
    path: Path
    report: dict[str, Any]  # checked against the report format (``report.read_report_file``)
    index: int | None = None  # position inside a combined {"checkpoints": [...]} report

    @property
    def source(self) -> str:
        """The report file, with ``#i`` for the i-th checkpoint of a combined report."""
        return str(self.path) if self.index is None else f"{self.path}#{self.index}"


#: checkpoint suffixes: such a file is looked up where ``cttlstm evaluate`` puts its reports
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar")


def _reports_for(path: Path) -> list[Path]:
    """The reports ``cttlstm evaluate PATH`` wrote without ``--out`` (:func:`~cttlstm_cli.evaluation.report.default_reports`);
    an evaluate output folder is its own ``report.json``."""
    if path.is_dir() and (path / REPORT_FILE).is_file():
        return [path / REPORT_FILE]
    folder, pattern = default_reports(path)
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _matches(reports: list[dict[str, Any]], convention: str | None, future: Sequence[int] | None) -> bool:
    for rep in reports:
        if convention is not None and rep["convention"] != convention:
            return False
        if future and not set(future) <= {int(h["future_frames"]) for h in rep["horizons"]}:
            return False
    return True


def _describe_reports(paths: list[Path]) -> str:
    parts = []
    for p in paths:
        try:
            rep = read_report_file(p)[0]
            hs = ",".join(str(h["future_frames"]) for h in rep["horizons"])
            parts.append(f"{p.parent.name} ({rep['convention']}, F={hs})")
        except CttlstmError:
            parts.append(f"{p.parent.name} (unreadable)")
    return "; ".join(parts)


def find_reports(
    source: str | Path, convention: str | None = None, future: Sequence[int] | None = None
) -> tuple[list[LoadedReport], str | None]:
    """The report(s) ``source`` names: a ``report.json``, an evaluate output folder, or a run
    directory whose ``eval-*/report.json`` are searched.

    Only reports under ``convention`` holding every horizon of ``future`` are considered. Of several
    left in one run directory the choice is deterministic: the test split first, then the most
    horizons, then the newest file, then the last name in sorted order; the returned note says
    which one was taken (None when there was no choice).
    """
    path = Path(source)
    if not path.exists():
        raise CttlstmError(f"not found: {path}")
    if path.is_file() and path.suffix not in _CHECKPOINT_SUFFIXES:
        reports = read_report_file(path)
        if not _matches(reports, convention, future):
            rep = reports[0]
            hs = ",".join(str(h["future_frames"]) for h in rep["horizons"])
            raise CttlstmError(
                f"{path} is a {rep['convention']} report of horizons {hs}, not what --convention/--future ask for"
            )
        return _loaded(path, reports), None
    found = _reports_for(path)
    if not found:
        where = default_reports(path)[1]
        raise CttlstmError(f"{path} has no evaluate report (no {where}); make one with: cttlstm evaluate {path}")
    candidates = [(p, read_report_file(p)) for p in found]
    kept = [(p, reps) for p, reps in candidates if _matches(reps, convention, future)]
    if not kept:
        asked, options = [], ""
        if convention:
            asked.append(f"convention {convention}")
            options += f" --convention {convention}"
        if future:
            asked.append(f"horizons {','.join(map(str, future))}")
            options += f" --future {','.join(map(str, future))}"
        raise CttlstmError(
            f"{path}: no evaluate report with {' and '.join(asked)} (found: {_describe_reports(found)}); "
            f"make one with: cttlstm evaluate {path}{options}"
        )
    if len(kept) == 1:
        return _loaded(kept[0][0], kept[0][1]), None

    def rank(item: tuple[Path, list[dict[str, Any]]]) -> tuple[int, int, float, str]:
        p, reps = item
        return (int(reps[0]["split"] == "test"), len(reps[0]["horizons"]), p.stat().st_mtime, p.parent.name)

    chosen = max(kept, key=rank)
    others = ", ".join(p.parent.name for p, _ in kept if p != chosen[0])
    note = (
        f"{path}: {len(kept)} evaluate reports; using {chosen[0].parent.name} (test split first, then the most "
        f"horizons, then the newest), not {others}; choose with --convention/--future or name a report.json"
    )
    return _loaded(chosen[0], chosen[1]), note


def _loaded(path: Path, reports: list[dict[str, Any]]) -> list[LoadedReport]:

    if len(reports) == 1:
        return [LoadedReport(report_label(reports[0]["checkpoint"]), path, reports[0])]
    return [LoadedReport(report_label(r["checkpoint"]), path, r, i) for i, r in enumerate(reports)]


def load_sources(
    sources: Sequence[str | Path], convention: str | None = None, future: Sequence[int] | None = None
) -> tuple[list[LoadedReport], list[str]]:
    """Every report the sources name, in order, with unique labels; plus notes on choices made."""
    if not sources:
        raise CttlstmError("name at least one run directory or report.json")
    loaded: list[LoadedReport] = []
    notes: list[str] = []
    for source in sources:
        reports, note = find_reports(source, convention, future)
        loaded.extend(reports)
        if note:
            notes.append(note)
    seen: dict[tuple[Path, int | None], str] = {}
    for item in loaded:
        key = (item.path.resolve(), item.index)
        if key in seen:
            raise CttlstmError(f"the same report is given twice: {item.source}")
        seen[key] = item.source
    # two runs may share a folder name (runs/a/x and runs/b/x): number the later ones
    counts: dict[str, int] = {}
    for item in loaded:
        counts[item.label] = counts.get(item.label, 0) + 1
        if counts[item.label] > 1:
            item.label = f"{item.label} #{counts[item.label]}"
    return loaded, notes


# --------------------------------------------------------------------------- comparability


def _differ(loaded: Sequence[LoadedReport], value: Any) -> str | None:
    """``"a: x; b, c: y"`` when ``value(report)`` is not the same for all, else None."""
    groups: dict[str, list[str]] = {}
    for item in loaded:
        groups.setdefault(str(value(item.report)), []).append(item.label)
    if len(groups) < 2:
        return None
    return "; ".join(f"{', '.join(labels)}: {v}" for v, labels in groups.items())


def _fmt_size(size: Any) -> str:
    return "x".join(str(int(s)) for s in size) if isinstance(size, (list, tuple)) else str(size)


def check_comparable(loaded: Sequence[LoadedReport], future: Sequence[int] | None = None) -> list[int]:
    """Refuse reports that were not measured the same way (one line naming the difference);
    returns the horizons to show: ``future`` if given, else those every report holds, ascending."""
    checks = (
        ("metric conventions differ", lambda r: r["convention"], " (re-evaluate with one --convention)"),
        ("datasets differ", lambda r: r["data"]["dataset"], ""),
        ("evaluated on different splits", lambda r: r["split"], " (re-evaluate with one --split)"),
        ("frame sizes differ", lambda r: _fmt_size(r["data"]["frame_size"]), ""),
        ("channels differ", lambda r: r["data"]["channels"], ""),
        ("context lengths differ", lambda r: r["context_frames"], " (re-evaluate with one --context)"),
    )
    for what, value, hint in checks:
        diff = _differ(loaded, value)
        if diff:
            raise CttlstmError(f"cannot compare: {what} ({diff}){hint}")
    common = set.intersection(*({int(h["future_frames"]) for h in it.report["horizons"]} for it in loaded))
    if not common:
        diff = _differ(loaded, lambda r: ",".join(str(h["future_frames"]) for h in r["horizons"]))
        raise CttlstmError(f"cannot compare: no horizon in common ({diff}); re-evaluate with a shared --future")
    horizons = sorted(common) if not future else [int(f) for f in future]
    for f in horizons:
        diff = _differ(loaded, lambda r: _horizon(r, f)["num_samples"])
        if diff:
            raise CttlstmError(f"cannot compare: different numbers of test clips at F={f} ({diff}); "
                               "a report made with --limit saw a different test set")
    return horizons


def _horizon(rep: dict[str, Any], f: int) -> dict[str, Any]:
    for h in rep["horizons"]:
        if int(h["future_frames"]) == f:
            return h
    raise KeyError(f)


# --------------------------------------------------------------------------- checkpoints and profiles


@dataclass
class CheckpointInfo:
    """What compare reads from the checkpoint a report names (each part None when unreadable)."""

    flops_per_step: int | None = None
    recipe_name: str | None = None
    observed_fraction: float | None = None
    problem: str | None = None


def _checkpoint_path(loaded: LoadedReport) -> Path | None:
    """The report's checkpoint as written, or relative to the report (run folders move)."""
    ckpt = Path(loaded.report["checkpoint"])
    candidates = [ckpt]
    if not ckpt.is_absolute():
        candidates += [loaded.path.parent / ckpt, loaded.path.parent.parent / ckpt]
    if loaded.index is None:  # one checkpoint's report: <run>/eval-*/report.json -> <run>/best.pt
        candidates.append(loaded.path.parent.parent / ckpt.name)
    # os.path.isfile, not Path.is_file: a report may name any string, and a name too long for the
    # file system raises from Path.is_file (ENAMETOOLONG) where it only means "no such checkpoint"
    return next((c for c in candidates if os.path.isfile(c)), None)


def _recipe_yaml(path: Path) -> dict[str, Any] | None:
    from cttlstm_cli.recipe import read_yaml

    try:
        raw = read_yaml(path)
    except CttlstmError:
        return None
    return raw if isinstance(raw, dict) else None


def checkpoint_info(loaded: LoadedReport, flops: bool = True) -> CheckpointInfo:
    """FLOPs per one-step prediction at the report's frame size (``model.macs_per_step``), the
    recipe's name and ``data.observed_fraction``, from the checkpoint the report names or, failing
    that, the ``recipe.yaml`` beside it."""
    info = CheckpointInfo()
    data = loaded.report["data"]
    if data.get("observed_fraction") is not None:
        info.observed_fraction = float(data["observed_fraction"])
    path = _checkpoint_path(loaded)
    if path is None:
        info.problem = "checkpoint not found (neither where the report says nor beside it)"
    elif flops:
        from cttlstm_cli.checkpoint import load_model_and_recipe

        try:
            with warnings.catch_warnings():  # a broken file is reported in a note, not in torch's words
                warnings.simplefilter("ignore")
                model, recipe = load_model_and_recipe(path)
            h, w = (int(s) for s in data["frame_size"])
            info.flops_per_step = int(model.macs_per_step(h, w))
            if recipe is not None:
                info.recipe_name = recipe.name
                if info.observed_fraction is None and recipe.data.observed_fraction is not None:
                    info.observed_fraction = float(recipe.data.observed_fraction)
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint only costs its FLOPs column
            info.problem = f"checkpoint unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if info.recipe_name is None or info.observed_fraction is None:
        # beside the checkpoint, else (one checkpoint's report) the run directory above the report's folder
        folders = [p for p in (path.parent if path else None, loaded.path.parent.parent) if p is not None]
        if loaded.index is not None:
            folders = folders[:1] if path else []
        for folder in folders:
            raw = _recipe_yaml(folder / RECIPE_FILE)
            if raw is None:
                continue
            info.recipe_name = info.recipe_name or (str(raw["name"]) if raw.get("name") else None)
            fraction = (raw.get("data") or {}).get("observed_fraction") if isinstance(raw.get("data"), dict) else None
            if info.observed_fraction is None and fraction is not None:
                info.observed_fraction = float(fraction)
            break
    return info


def load_profile(path: str | Path) -> list[dict[str, Any]]:
    """The JSON list ``cttlstm profile --json`` prints, checked."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"--profile: not found: {path}")
    rows = load_json(path)
    if isinstance(rows, dict):  # a single row saved on its own
        rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "recipe" in r and "model" in r for r in rows):
        raise CttlstmError(
            f"--profile {path}: expected the JSON list 'cttlstm profile --json' prints (objects with recipe, model)"
        )
    return rows


def match_profile(
    rows: Sequence[dict[str, Any]], recipe: str | None, model: str, frame_size: Sequence[int]
) -> dict[str, Any] | None:
    """The profile row for a run: same recipe and model, else the same recipe, else the same model;
    only rows measured at the run's frame size count (epoch time grows with the frame area)."""
    size = [int(s) for s in frame_size]
    usable = [r for r in rows if r.get("frame_size") is None or [int(s) for s in r["frame_size"]] == size]
    for keep in (
        lambda r: recipe is not None and r["recipe"] == recipe and r["model"] == model,
        lambda r: recipe is not None and r["recipe"] == recipe,
        lambda r: r["model"] == model,
    ):
        found = [r for r in usable if keep(r)]
        if found:
            return found[0]
    return None


def minutes_per_epoch(row: dict[str, Any]) -> float | None:
    """Minutes of one 10,000-clip training epoch (the paper's Time(m)) from a profile row:
    seconds per step × steps per 10,000 clips; the row's own ``epoch_seconds`` when it lacks a step time."""
    from cttlstm_cli.timing import PAPER_EPOCH_CLIPS, epoch_time

    step, batch = row.get("step_seconds"), row.get("batch_size")
    if step is not None and batch:
        return epoch_time(float(step), int(batch), PAPER_EPOCH_CLIPS) / 60.0
    if row.get("epoch_seconds") is not None:
        return float(row["epoch_seconds"]) / 60.0
    return None


# --------------------------------------------------------------------------- the comparison


@dataclass
class Row:
    """One model of the table: measured (from a report) or quoted (from the paper)."""

    label: str
    model: str
    quoted: bool
    convention: str
    source: str
    horizons: dict[int, dict[str, float | None]]
    parameters: int | None = None
    flops_per_step: int | None = None
    minutes_per_epoch: float | None = None
    per_frame: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    num_samples: dict[int, int] = field(default_factory=dict)
    checkpoint: str | None = None
    recipe: str | None = None
    observed_fraction: float | None = None
    accuracy: dict[str, Any] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "model": self.model,
            "quoted": self.quoted,
            "convention": self.convention,
            "source": self.source,
            "horizons": {str(f): dict(m) for f, m in self.horizons.items()},
            "parameters": self.parameters,
            "flops_per_step": self.flops_per_step,
            "minutes_per_epoch": self.minutes_per_epoch,
        }
        if not self.quoted:
            out["num_samples"] = {str(f): n for f, n in self.num_samples.items()}
            out["per_frame"] = {str(f): {m: list(v) for m, v in c.items()} for f, c in self.per_frame.items()}
            out["checkpoint"] = self.checkpoint
            out["recipe"] = self.recipe
        if self.observed_fraction is not None:
            out["observed_fraction"] = self.observed_fraction
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class ActivityRow:
    """One model's top-1 accuracy (in %) at one observed fraction: measured, or quoted from Tables 1/3."""

    label: str
    model: str
    observed_fraction: float | None
    top1: float | None
    per_group: dict[str, float | None]
    quoted: bool = False
    num_samples: int | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.model,
            "observed_fraction": self.observed_fraction,
            "top1_percent": self.top1,
            "per_group_percent": dict(self.per_group),
            "quoted": self.quoted,
            "num_samples": self.num_samples,
            "source": self.source,
        }


@dataclass
class Comparison:
    """Everything ``cttlstm compare`` shows and writes (see the module doc)."""

    dataset: str
    split: str
    frame_size: list[int]
    channels: int
    context_frames: int
    convention: str
    convention_description: str
    horizons: list[int]
    metrics: list[str]
    rows: list[Row]
    activity: list[ActivityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quoted_from: str | None = None

    @property
    def measured(self) -> list[Row]:
        return [r for r in self.rows if not r.quoted]

    @property
    def has_quoted(self) -> bool:
        return any(r.quoted for r in self.rows) or any(a.quoted for a in self.activity)

    def column_title(self, f: int, metric: str, unicode: bool = True) -> str:
        """``10→10 MSE ×10³ ↓`` (``10->10 mse`` with ``unicode=False``, the CSV/JSON key)."""
        if not unicode:
            return f"{self.context_frames}->{f} {metric}"
        scale = " ×10³" if self.convention == "paper" and metric in ("mse", "mae", "lpips") else ""
        arrow = "↑" if metric in HIGHER_IS_BETTER else "↓"
        return f"{self.context_frames}→{f} {METRIC_TITLES.get(metric, metric)}{scale} {arrow}"

    # ----- tables as plain cells

    def table_header(self, horizons: Sequence[int] | None = None, with_horizon: bool = True) -> list[str]:
        """Column titles of the Table-2-style table (the terminal, Markdown); ``horizons`` picks some,
        ``with_horizon=False`` leaves the ``10→10`` prefix out (for a table of one horizon titled with it)."""
        shown = self.horizons if horizons is None else horizons
        titles = [self.column_title(f, m) for f in shown for m in self.metrics]
        if not with_horizon:
            titles = [t.split(" ", 1)[1] for t in titles]
        head = ["run", "model"] + titles
        head += ["params", "FLOPs / step", "min / epoch"]
        if self.has_quoted:
            head.append("numbers")
        return head

    def table_cells(self, horizons: Sequence[int] | None = None) -> list[list[str]]:
        """The table's rows as formatted text, in the header's order."""
        shown = self.horizons if horizons is None else horizons
        out = []
        for row in self.rows:
            # quoted numbers are shown as the paper printed them (less trailing zeros), measured ones rounded
            q = row.quoted
            cells = ["quoted (Table 2)" if q else row.label, row.model]
            values = [(row.horizons.get(f, {}).get(m), m) for f in shown for m in self.metrics]
            cells += [format_metric(v, m if q else None) for v, m in values]
            minutes = row.minutes_per_epoch
            cells += [format_count(row.parameters, q), format_count(row.flops_per_step, q),
                      "-" if minutes is None else f"{minutes:.1f}" if q else f"{minutes:.2f}"]
            if self.has_quoted:
                cells.append(f"quoted ({row.convention} convention)" if row.quoted else "measured")
            out.append(cells)
        return out

    def activity_groups(self) -> list[str]:
        """Activity groups of Table 1: the paper's order first, then any other group, as met."""
        groups: list[str] = []
        for a in self.activity:
            for g in a.per_group:
                if g not in groups:
                    groups.append(g)
        return [g for g in paper.SSV2_GROUPS if g in groups] + [g for g in groups if g not in paper.SSV2_GROUPS]

    def table1(self) -> tuple[list[str], list[list[str]]]:
        """Table 1: per-activity-group top-1 accuracy (%), one row per model and observed fraction."""
        groups = self.activity_groups()
        head = ["model", "run", "observed"] + groups + ["overall", "videos"]
        rows = []
        for a in sorted(self.activity, key=lambda a: (_fraction_key(a.observed_fraction), a.quoted)):
            if not a.per_group and a.quoted:
                continue  # Table 3-only quoted rows
            cells = [a.model, "quoted (Table 1)" if a.quoted else a.label, format_fraction(a.observed_fraction)]
            cells += [format_percent(a.per_group.get(g)) for g in groups]
            cells += [format_percent(a.top1), "-" if a.num_samples is None else str(a.num_samples)]
            rows.append(cells)
        return head, rows

    def table3(self) -> tuple[list[str], list[list[str]]]:
        """Table 3: overall top-1 accuracy (%), one row per model, one column per observed fraction."""
        fractions = sorted({a.observed_fraction for a in self.activity}, key=_fraction_key)
        measured = [a for a in self.activity if not a.quoted]
        # a row per model; runs of one model at one fraction twice get a row each, by run name
        clash = len({(a.model, a.observed_fraction) for a in measured}) < len(measured)
        table: dict[tuple[str, bool], dict[float | None, float | None]] = {}
        for a in self.activity:
            if a.quoted and a.per_group:
                continue  # Table 1 rows: their overall number is Table 3's own quoted row
            key = (a.model if a.quoted or not clash else f"{a.model} ({a.label})", a.quoted)
            table.setdefault(key, {})[a.observed_fraction] = a.top1
        head = ["model"] + [f"front {format_fraction(f)}" for f in fractions] + ["numbers"]
        rows = [[name] + [format_percent(v.get(f)) for f in fractions] + ["quoted (Table 3)" if q else "measured"]
                for (name, q), v in table.items()]
        return head, rows

    # ----- serialisations

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``comparison.json``, ``--json``): full-precision numbers, as in the reports."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "frame_size": list(self.frame_size),
            "channels": self.channels,
            "context_frames": self.context_frames,
            "convention": self.convention,
            "convention_description": self.convention_description,
            "horizons": list(self.horizons),
            "metrics": list(self.metrics),
            "rows": [r.to_dict() for r in self.rows],
        }
        if self.activity:
            out["activity"] = [a.to_dict() for a in self.activity]
        if self.quoted_from:
            out["quoted_from"] = self.quoted_from
        out["notes"] = list(self.notes)
        return out

    def to_csv(self) -> str:
        """The table as CSV: one row per model, full-precision numbers, empty cells where there is none."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = [self.column_title(f, m, unicode=False) for f in self.horizons for m in self.metrics]
        writer.writerow(["label", "model", "numbers", "convention", "source", *cols, "parameters", "flops_per_step",
                         "minutes_per_epoch"])
        for r in self.rows:
            values = [r.horizons.get(f, {}).get(m) for f in self.horizons for m in self.metrics]
            writer.writerow([r.label, r.model, "quoted" if r.quoted else "measured", r.convention, r.source,
                             *(_csv(v) for v in values), _csv(r.parameters), _csv(r.flops_per_step),
                             _csv(r.minutes_per_epoch)])
        return buf.getvalue()

    def activity_csv(self) -> str:
        """Tables 1 and 3 as one CSV: one row per model and observed fraction, accuracies in %."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        groups = self.activity_groups()
        writer.writerow(["label", "model", "numbers", "observed_fraction", "top1_percent", *groups, "videos", "source"])
        for a in self.activity:
            writer.writerow([a.label, a.model, "quoted" if a.quoted else "measured", _csv(a.observed_fraction),
                             _csv(a.top1), *(_csv(a.per_group.get(g)) for g in groups), _csv(a.num_samples), a.source])
        return buf.getvalue()

    def title(self) -> str:
        name = DATASET_NAMES.get(self.dataset, self.dataset)
        return f"{name} ({self.dataset}), {self.split} split"

    def subtitle(self) -> str:
        first = self.measured[0].num_samples if self.measured else {}
        clips = ", ".join(f"{first[f]} ({self.context_frames}→{f})" for f in self.horizons if f in first)
        return (f"{_fmt_size(self.frame_size)} frames, {self.channels} channel(s), {self.context_frames} context "
                f"frames; clips per horizon {clips}; {self.convention_description}")

    def to_markdown(self) -> str:
        """The tables as Markdown, with what was measured how, and which rows are quoted."""
        lines = [f"# Comparison: {self.title()}", "", self.subtitle(), ""]
        if self.horizons and (self.metrics or any(r.parameters for r in self.rows)):
            lines += _md_table(self.table_header(), self.table_cells())
            lines += ["", "FLOPs/step: multiply-accumulates of one-step prediction per sample (the paper's Table 2 "
                      "definition) at the reports' frame size; min/epoch: minutes per 10,000-clip training epoch "
                      "(measured rows: from --profile)."]
        if self.activity:
            head, rows = self.table1()
            if rows:
                lines += ["", "## Early activity recognition: top-1 accuracy (%) per activity group (Table 1)", ""]
                lines += _md_table(head, rows)
            head, rows = self.table3()
            lines += ["", "## Early activity recognition: overall top-1 accuracy (%) by observed fraction (Table 3)",
                      ""]
            lines += _md_table(head, rows)
        if self.quoted_from:
            lines += ["", f"Rows marked *quoted* are the published numbers of {self.quoted_from}, copied as printed "
                      "(frame metrics under the paper convention), not measured by this toolkit."]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    right = ["---"] * len(head)
    return ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join(right) + "|"] + [
        "| " + " | ".join(esc(c) for c in r) + " |" for r in rows
    ]


def _csv(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _fraction_key(f: float | None) -> float:
    return 2.0 if f is None else float(f)


def format_metric(value: float | None, quoted: str | None = None) -> str:
    """A metric as the tables print it: 1 decimal from 100, 2 from 1, else 4 significant digits.
    ``quoted`` names the metric of a number quoted from the paper, printed with the paper's digits
    (SSIM with 3 decimals)."""
    if value is None:
        return "-"
    v = float(value)
    if quoted == "ssim":
        return f"{v:.3f}"
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:#.4g}"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_fraction(value: float | None) -> str:
    return "unknown" if value is None else f"{100 * value:g}%"


def _measured_row(item: LoadedReport, horizons: Sequence[int], info: CheckpointInfo, minutes: float | None) -> Row:
    rep = item.report
    chosen = {f: _horizon(rep, f) for f in horizons}
    return Row(
        label=item.label,
        model=str(rep["model"]),
        quoted=False,
        convention=str(rep["convention"]),
        source=item.source,
        horizons={f: dict(h["metrics"]) for f, h in chosen.items()},
        parameters=int(rep["parameters"]) if rep.get("parameters") is not None else None,
        flops_per_step=info.flops_per_step,
        minutes_per_epoch=minutes,
        per_frame={f: {m: list(v) for m, v in h["per_frame"].items()} for f, h in chosen.items()},
        num_samples={f: int(h["num_samples"]) for f, h in chosen.items()},
        checkpoint=str(rep["checkpoint"]),
        recipe=info.recipe_name,
        observed_fraction=info.observed_fraction,
        accuracy=rep.get("accuracy"),
    )


def _paper_rows(cmp: Comparison) -> tuple[list[Row], str | None]:
    """Table 2's quoted rows for the comparison's dataset, or why they are not comparable."""
    table = paper.paper_table(cmp.dataset)
    if table is None:
        if cmp.dataset == "ssv2":
            return [], None  # Tables 1 and 3 cover it
        return [], f"--paper: the paper's Table 2 has no rows for dataset {cmp.dataset!r}"
    name = DATASET_NAMES.get(cmp.dataset, cmp.dataset)
    paper_hs = ", ".join(f"{table.context_frames}→{f}" for f in table.horizons)
    if cmp.convention != table.convention:
        return [], (f"--paper: not added: the reports use the {cmp.convention} convention and the paper's {name} rows "
                    f"the {table.convention} convention (re-evaluate with --convention {table.convention})")
    if cmp.context_frames != table.context_frames or not set(cmp.horizons) & set(table.horizons):
        ours = ", ".join(f"{cmp.context_frames}→{f}" for f in cmp.horizons)
        return [], (f"--paper: not added: the reports predict {ours} and the paper's {name} rows are {paper_hs} "
                    f"(evaluate with --context {table.context_frames} --future {','.join(map(str, table.horizons))})")
    if tuple(int(s) for s in cmp.frame_size) != table.frame_size:
        return [], (f"--paper: not added: the reports are on {_fmt_size(cmp.frame_size)} frames and the paper's {name} "
                    f"rows on {_fmt_size(table.frame_size)}")
    rows = [
        Row(
            label=r.method,
            model=r.method,
            quoted=True,
            convention=table.convention,
            source=f"{paper.CITATION}, {table.title}",
            horizons={f: {m: r.horizons[f].get(m) for m in cmp.metrics} for f in cmp.horizons if f in r.horizons},
            parameters=r.parameters,
            flops_per_step=r.flops_per_step,
            minutes_per_epoch=r.minutes_per_epoch,
            note=r.note,
        )
        for r in table.rows
    ]
    return rows, None


def _paper_activity(cmp: Comparison) -> tuple[list[ActivityRow], str | None]:
    """Tables 1 and 3's quoted rows at the observed fractions the reports have, or why not."""
    fractions = {a.observed_fraction for a in cmp.activity if not a.quoted}
    if not fractions:
        return [], None
    if cmp.dataset != "ssv2":
        return [], f"--paper: the paper's activity tables (1, 3) are for Something-Something V2, not {cmp.dataset!r}"
    shared = sorted(f for f in paper.SSV2_FRACTIONS if f in fractions)
    if not shared:
        seen = ", ".join(format_fraction(f) for f in sorted(fractions, key=_fraction_key))
        return [], (f"--paper: Tables 1 and 3 not added: the reports observe {seen} of each video and the paper "
                    "25% and 50% (data.observed_fraction)")
    groups = {g for a in cmp.activity if not a.quoted for g in a.per_group}
    out: list[ActivityRow] = []
    for f in shared:
        if groups and groups <= set(paper.SSV2_GROUPS):
            for method, per_group in paper.TABLE1[f].items():
                source = f"{paper.CITATION}, Table 1"
                out.append(ActivityRow(method, method, f, None, dict(per_group), True, None, source))
        for method, by_f in paper.TABLE3.items():
            if f in by_f:
                out.append(ActivityRow(method, method, f, by_f[f], {}, True, None, f"{paper.CITATION}, Table 3"))
    note = None
    if not (groups and groups <= set(paper.SSV2_GROUPS)):
        note = "--paper: Table 1 not added: the reports' activity groups are not the paper's ten"
    return out, note


def build_comparison(
    sources: Sequence[str | Path],
    *,
    paper_rows: bool = False,
    profile: str | Path | Sequence[dict[str, Any]] | None = None,
    convention: str | None = None,
    future: Sequence[int] | None = None,
    flops: bool = True,
) -> Comparison:
    """Read, check and tabulate the reports ``sources`` name (run directories or ``report.json``).

    ``paper_rows`` adds the paper's published rows when the reports are comparable with them,
    ``profile`` (a ``cttlstm profile --json`` file or its rows) supplies measured epoch times,
    ``convention``/``future`` choose among a run's reports and restrict the horizons shown,
    ``flops=False`` skips loading checkpoints (no FLOPs, observed fractions from recipe.yaml only).
    Raises :class:`CttlstmError` (one line) for anything not comparable; writes nothing.
    """
    from cttlstm_cli.evaluation.metrics import get_convention

    if convention is not None:
        convention = get_convention(convention).name
    profile_rows = load_profile(profile) if isinstance(profile, (str, Path)) else list(profile or [])
    loaded, notes = load_sources(sources, convention, future)
    horizons = check_comparable(loaded, future)
    first = loaded[0].report
    present = {m for it in loaded for f in horizons for m in _horizon(it.report, f)["metrics"]}
    metrics = [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))
    all_hs = {int(h["future_frames"]) for it in loaded for h in it.report["horizons"]}
    if all_hs - set(horizons):
        left = ", ".join(f"{first['context_frames']}→{f}" for f in sorted(all_hs - set(horizons)))
        notes.append(f"horizons not shared by every report are left out: {left}")

    rows: list[Row] = []
    matched: set[int] = set()
    problems: dict[str, list[str]] = {}
    for item in loaded:
        info = checkpoint_info(item, flops)
        if info.problem and flops:
            problems.setdefault(info.problem, []).append(item.label)
        minutes = None
        if profile_rows:
            rep = item.report
            found = match_profile(profile_rows, info.recipe_name, str(rep["model"]), rep["data"]["frame_size"])
            if found is not None:
                matched.add(id(found))
                minutes = minutes_per_epoch(found)
        rows.append(_measured_row(item, horizons, info, minutes))
    for problem, labels in problems.items():
        notes.append(f"FLOPs unknown for {', '.join(labels)}: {problem}")
    if profile_rows:
        devices = sorted({str(r.get("device")) for r in profile_rows if id(r) in matched})
        unmatched = [r["recipe"] for r in profile_rows if id(r) not in matched]
        if devices:
            notes.append(f"min/epoch of measured rows: cttlstm profile on {', '.join(devices)}, per 10,000 clips")
        if unmatched:
            notes.append(f"profile rows matching no run (by recipe, model and frame size): {', '.join(unmatched)}")

    cmp = Comparison(
        dataset=str(first["data"]["dataset"]),
        split=str(first["split"]),
        frame_size=[int(s) for s in first["data"]["frame_size"]],
        channels=int(first["data"]["channels"]),
        context_frames=int(first["context_frames"]),
        convention=str(first["convention"]),
        convention_description=str(first.get("convention_description") or f"{first['convention']} convention"),
        horizons=horizons,
        metrics=metrics,
        rows=rows,
        notes=notes,
    )
    for row in rows:
        acc = row.accuracy
        if not acc:
            continue
        groups = acc.get("per_group") or {}
        per_group = {g: (None if v.get("top1") is None else 100.0 * float(v["top1"])) for g, v in groups.items()}
        cmp.activity.append(ActivityRow(row.label, row.model, row.observed_fraction,
                                        None if acc.get("top1") is None else 100.0 * float(acc["top1"]),
                                        per_group, False, acc.get("num_samples"), row.source))
    if any(a.observed_fraction is None for a in cmp.activity):
        cmp.notes.append(
            "observed fraction unknown for some runs (neither the report nor a recipe.yaml beside the checkpoint "
            "has it)"
        )

    if paper_rows:
        quoted, why = _paper_rows(cmp)
        quoted_acc, why_acc = _paper_activity(cmp)
        cmp.rows.extend(quoted)
        cmp.activity.extend(quoted_acc)
        cmp.notes += [w for w in (why, why_acc) if w]
        if quoted or quoted_acc:
            cmp.quoted_from = paper.CITATION
            table = paper.paper_table(cmp.dataset)
            if quoted and table is not None:
                cmp.notes += [f"quoted: {n}" for n in table.notes]
                cmp.notes += [f"quoted {r.label}: {r.note}" for r in quoted if r.note]
    return cmp


# --------------------------------------------------------------------------- writing

#: every file name compare may write
_OWN_FILES = ("comparison.md", "comparison.csv", "comparison.json", "activity.csv", "bubbles.png",
              *(f"per_frame_{m}.png" for m in METRIC_ORDER))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_written_before(out: Path) -> set[str]:
    """The files of ``out`` that an earlier comparison wrote and nobody has changed since: those its
    ``comparison.json`` records (``files``, and their ``sha256`` where recorded: a file replaced since by
    someone else's is not compare's any more), limited to the names compare writes; empty when there is no
    comparison.json of compare's."""
    try:
        record = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
        names, hashes = record.get("files"), record.get("sha256", {})
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(names, list) or "comparison.json" not in names or not isinstance(hashes, dict):
        return set()
    ours = set()
    for name in names:
        if not isinstance(name, str) or name not in _OWN_FILES:
            continue
        path = out / name
        if name in hashes and path.is_file() and _sha256(path) != hashes[name]:
            continue
        ours.add(name)
    return ours


def write_comparison(cmp: Comparison, out: str | Path = DEFAULT_OUT) -> list[Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``comparison.json``, ``activity.csv`` (activity
    reports), ``bubbles.png`` (SSIM and LPIPS present) and ``per_frame_<metric>.png`` into ``out``,
    each atomically. Only what compare wrote is ever replaced or removed: files of an earlier comparison
    (recorded with their sha256 in its ``comparison.json``) that this one does not produce are removed, so the folder
    describes one comparison, and a file of the same name that compare did not write (a user's own
    ``bubbles.png``) is refused in one line before anything is written. Returns the files written."""
    out = require_output_folder(out)
    figures = per_frame_figures(cmp)
    bubbles = bubble_figure(cmp)
    names = ["comparison.md", "comparison.csv", *(["activity.csv"] if cmp.activity else []),
             *(["bubbles.png"] if bubbles is not None else []), *(f"per_frame_{m}.png" for m in figures), "comparison.json"]
    ours = files_written_before(out)
    foreign = [name for name in names if (out / name).exists() and name not in ours]
    if foreign:
        raise CttlstmError(
            f"--out {out} holds {', '.join(foreign)}, which compare did not write (no comparison.json of its own "
            "records it); move it or choose another --out"
        )
    written = [
        write_text_atomic(out / "comparison.md", cmp.to_markdown()),
        write_text_atomic(out / "comparison.csv", cmp.to_csv()),
    ]
    if cmp.activity:
        written.append(write_text_atomic(out / "activity.csv", cmp.activity_csv()))
    if bubbles is not None:
        written.append(save_figure(bubbles[0], out / "bubbles.png"))
    for metric, fig in figures.items():
        written.append(save_figure(fig, out / f"per_frame_{metric}.png"))
    payload = cmp.to_dict()
    payload["files"] = [p.name for p in written] + ["comparison.json"]
    payload["sha256"] = {p.name: _sha256(p) for p in written}  # what is ours on a rerun (files_written_before)
    written.append(write_json_atomic(out / "comparison.json", payload))
    for stale in ours - {p.name for p in written}:
        (out / stale).unlink(missing_ok=True)
    return written


__all__ = [
    "ActivityRow",
    "CheckpointInfo",
    "Comparison",
    "DEFAULT_OUT",
    "LoadedReport",
    "Row",
    "build_comparison",
    "check_comparable",
    "checkpoint_info",
    "find_reports",
    "load_profile",
    "load_sources",
    "match_profile",
    "minutes_per_epoch",
    "read_report_file",
    "write_comparison",
]
