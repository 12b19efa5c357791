"""The evaluate report's format: what ``report.json`` holds, checked on every write and every read.

``cttlstm evaluate`` writes one report per checkpoint (:class:`Report`), or several checkpoints
together as ``{"convention", "checkpoints": [...]}`` (:class:`CombinedReport`); ``cttlstm compare``
and the suite read them back. Both sides go through the schemas here, so that the writer and the
readers cannot drift apart: :func:`report_payload` builds the object evaluate writes and prints,
:func:`read_report_file` is the only way a report is read, and a report evaluate wrote reads back
unchanged (``Report.from_dict(d).to_dict() == d``).

What is checked, beyond every field's JSON type (whole numbers are not floats, strings are not
numbers, no unknown field anywhere):

* whole numbers fit in int64 and are at least 1 where zero means nothing was measured (horizons,
  clips, context, frame sizes, channels); ``parameters`` may be 0;
* metric names are the metrics evaluate knows (:data:`~cttlstm_cli.evaluation.metrics.METRIC_NAMES`),
  conventions, datasets and splits the ones it knows, baselines the trivial predictors it scores;
* every per-frame curve has exactly one value per predicted frame (``future_frames``), and each
  metric has both a headline value and a curve;
* metric values are finite numbers or ``null``. JSON has no NaN or infinity, so evaluate writes a
  metric that was not finite (a diverged model's MSE) as ``null``, which compare shows as ``-``;
* the top level repeats the first horizon (``future_frames``, ``num_samples``, ``metrics``,
  ``per_frame``), as evaluate writes it;
* optional fields (``accuracy``, ``limit``, ``notes``, ``baselines``, ``data.observed_fraction``,
  ``accuracy.per_group``) are either left out or hold a value: ``null`` is refused, so readers
  never meet a None where they expect a mapping.

A report that breaks any of this is refused in one line naming the file and the field, e.g.
``out/report.json: horizons[0].per_frame.mse: 7 values for a 10-frame horizon``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from cttlstm_cli.data.shards import SPLITS
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.evaluation.metrics import CONVENTIONS, METRIC_NAMES
from cttlstm_cli.recipe import DataConfig
# the largest whole number a report may hold, as everywhere else: readers of the JSON (numpy, pandas,
# torch) keep int64 at best, and no count evaluate makes comes near it
from cttlstm_cli.schema import INT64_MAX, field_path
from cttlstm_cli.run_files import BEST_CHECKPOINT

# Literal[...] of a tuple is the Literal of its items: the names stay defined once, where they are used.
MetricName = Literal[METRIC_NAMES]  # type: ignore[valid-type]
ConventionName = Literal[tuple(CONVENTIONS)]  # type: ignore[valid-type]
SplitName = Literal[SPLITS]  # type: ignore[valid-type]
#: the trivial predictors evaluate scores beside every model (:data:`~cttlstm_cli.evaluation.runner.TRIVIAL_PREDICTORS`)
BASELINE_NAMES = ("copy_last_frame", "blank_frame")
BaselineName = Literal[BASELINE_NAMES]  # type: ignore[valid-type]
#: the datasets a recipe may name (``data.dataset``)
DatasetName = DataConfig.model_fields["dataset"].annotation

#: a count that is at least 1 (horizons, clips, context frames, pixels, channels)
Count = Annotated[int, Field(ge=1, le=INT64_MAX)]
#: a count that may be 0 (parameters, clips of an activity group that has none)
Size = Annotated[int, Field(ge=0, le=INT64_MAX)]
#: a metric value; null where it was not finite (JSON has no NaN)
Value = Annotated[float, Field(allow_inf_nan=False)] | None
#: a top-1 accuracy; null for an activity group without clips
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None
Headlines = dict[MetricName, Value]
Curves = dict[MetricName, list[Value]]


def _bad(at: tuple[str | int, ...], why: str) -> PydanticCustomError:
    """A consistency error of a field below the model that finds it (``at``: its path from there),
    so that the one-line message still names the exact field."""
    return PydanticCustomError("report", "{why}", {"why": why, "at": at})


class _Strict(BaseModel):
    """No unknown fields, no conversions (``"5"`` is not 5, ``5.0`` is not a count, ``true`` not a
    number), and an optional field is left out rather than ``null``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _absent_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                if not info.is_required() and name in data and data[name] is None:
                    raise _bad((name,), "null (leave the field out instead)")
        return data

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, with exactly the fields that were given (optional ones left out stay out)."""
        return self.model_dump(mode="python", exclude_unset=True)


class Scores(_Strict):
    """Headline values and per-frame curves of one predictor (a trivial baseline's)."""

    metrics: Headlines
    per_frame: Curves

    @model_validator(mode="after")
    def _same_metrics(self) -> Scores:
        _check_same_metrics(self.metrics, self.per_frame)
        return self


def _check_same_metrics(metrics: Mapping[str, Any], per_frame: Mapping[str, Any]) -> None:
    """Each headline value is the mean of its curve: a metric has both or neither."""
    for name in metrics:
        if name not in per_frame:
            raise _bad(("per_frame", name), f"missing (metrics has {name}, so it has a per-frame curve)")
    for name in per_frame:
        if name not in metrics:
            raise _bad(("metrics", name), f"missing (per_frame has {name}, so it has a headline value)")


class Horizon(_Strict):
    """One prediction horizon F: the model's metrics and, beside it, the trivial predictors'."""

    future_frames: Count
    num_samples: Count
    metrics: Headlines
    per_frame: Curves
    baselines: dict[BaselineName, Scores] | None = None

    @model_validator(mode="after")
    def _curves_fit(self) -> Horizon:
        _check_same_metrics(self.metrics, self.per_frame)
        curves: list[tuple[tuple[str | int, ...], list[Value]]] = [
            (("per_frame", m), c) for m, c in self.per_frame.items()
        ]
        if self.baselines is not None:
            for name in BASELINE_NAMES:
                if name not in self.baselines:
                    raise _bad(("baselines", name), "missing (evaluate scores every trivial predictor or none)")
            for name, scores in self.baselines.items():
                if set(scores.metrics) != set(self.metrics):
                    raise _bad(("baselines", name, "metrics"),
                               f"metrics {_names(scores.metrics)}, but the model's are {_names(self.metrics)}")
                curves += [(("baselines", name, "per_frame", m), c) for m, c in scores.per_frame.items()]
        for at, curve in curves:
            if len(curve) != self.future_frames:
                values = f"{len(curve)} value{'' if len(curve) == 1 else 's'}"
                raise _bad(at, f"{values} for a {self.future_frames}-frame horizon")
        return self


def _names(metrics: Mapping[str, Any]) -> str:
    return ", ".join(metrics) or "none"


class DataInfo(_Strict):
    """What the report was measured on (compare refuses reports that differ here)."""

    path: str
    dataset: DatasetName  # type: ignore[valid-type]
    frame_size: Annotated[list[Count], Field(min_length=2, max_length=2)]
    channels: Count
    #: activity recognition: the fraction of each video seen (evaluate leaves it to the recipe; compare reads it)
    observed_fraction: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None


class GroupAccuracy(_Strict):
    """Top-1 accuracy of one activity group or class."""

    top1: Fraction
    num_samples: Size


class Accuracy(_Strict):
    """Activity recognition: top-1 accuracy overall, per activity group (when the data has groups), per class."""

    top1: Fraction
    num_samples: Count
    per_group: dict[str, GroupAccuracy] | None = None
    per_class: dict[str, GroupAccuracy]


#: the top-level fields that repeat the first horizon's
_REPEATED = ("future_frames", "num_samples", "metrics", "per_frame")


class Report(_Strict):
    """One checkpoint's evaluation (``EvaluationReport.to_dict()``)."""

    convention: ConventionName  # type: ignore[valid-type]
    convention_description: str
    metrics: Headlines
    per_frame: Curves
    future_frames: Count
    num_samples: Count
    context_frames: Count
    checkpoint: str
    model: str
    parameters: Size
    data: DataInfo
    split: SplitName  # type: ignore[valid-type]
    horizons: Annotated[list[Horizon], Field(min_length=1)]
    accuracy: Accuracy | None = None
    limit: Count | None = None
    notes: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Report:
        seen: set[int] = set()
        for i, h in enumerate(self.horizons):
            if h.future_frames in seen:
                raise _bad(("horizons", i, "future_frames"), f"F={h.future_frames} appears twice")
            seen.add(h.future_frames)
        first = self.horizons[0]
        for name in _REPEATED:
            if getattr(self, name) != getattr(first, name):
                raise _bad((name,), f"differs from horizons[0].{name} (the top level repeats the first horizon)")
        return self

    @classmethod
    def from_dict(cls, raw: Any, where: str | Path = "report") -> Report:
        """``raw`` checked against the format, or a one-line :class:`CttlstmError` naming ``where`` and the field."""
        return _validated(cls, raw, where)


class CombinedReport(_Strict):
    """Several checkpoints evaluated together (``cttlstm evaluate A B --out DIR``)."""

    convention: ConventionName  # type: ignore[valid-type]
    checkpoints: Annotated[list[Report], Field(min_length=1)]

    @model_validator(mode="after")
    def _first_convention(self) -> CombinedReport:
        if self.convention != self.checkpoints[0].convention:
            raise _bad(("convention",), f"{self.convention!r} differs from checkpoints[0].convention "
                                        f"{self.checkpoints[0].convention!r}")
        return self

    @classmethod
    def from_dict(cls, raw: Any, where: str | Path = "report") -> CombinedReport:
        """``raw`` checked against the format, or a one-line :class:`CttlstmError` naming ``where`` and the field."""
        return _validated(cls, raw, where)


def parse_report(raw: Any, where: str | Path = "report") -> list[Report]:
    """The checkpoints' reports in a ``report.json``'s content: one, or several for a combined report."""
    if not isinstance(raw, dict):
        raise CttlstmError(f"{where}: not an evaluate report (expected a JSON object, got {_shown(raw)})")
    if "checkpoints" in raw:
        return CombinedReport.from_dict(raw, where).checkpoints
    return [Report.from_dict(raw, where)]


# ---- where reports live ------------------------------------------------------------------------------------------------

#: the file evaluate writes into its output folder
REPORT_FILE = "report.json"


def default_output_dir(checkpoint: str | Path, split: str, future: Sequence[int], convention: str) -> Path:
    """Where a report goes without ``--out``: ``<run dir>/eval-<split>-<F>-<convention>`` for a
    run directory or its ``best.pt``, else ``<dir>/<stem>-eval-<split>-<F>-<convention>`` beside
    the checkpoint file (``F`` joined by ``-`` for several horizons). The convention is in the
    name so that reports under different conventions never overwrite each other."""
    path = Path(checkpoint)
    name = f"eval-{split}-{'-'.join(str(f) for f in future)}-{convention}"
    if path.is_dir():
        return path / name
    if path.name == BEST_CHECKPOINT:
        return path.parent / name
    return path.parent / f"{path.stem}-{name}"


def report_label(checkpoint: str | Path) -> str:
    """A short name for a checkpoint in tables and plots: the run directory's, or the file's."""
    path = Path(checkpoint)
    return path.parent.name if path.name == BEST_CHECKPOINT and path.parent.name else path.name


def default_reports(path: Path) -> tuple[Path, str]:
    """Where :func:`default_output_dir` put the reports of the checkpoint or run folder ``path`` (any split,
    horizons and convention), as ``(folder, glob pattern)``: ``eval-*/report.json`` in a run folder (or beside
    its ``best.pt``), ``<stem>-eval-*/report.json`` beside any other checkpoint file."""
    if path.is_dir():
        return path, f"eval-*/{REPORT_FILE}"
    stem = "" if path.name == BEST_CHECKPOINT else f"{path.stem}-"
    return path.parent, f"{stem}eval-*/{REPORT_FILE}"


def read_report_file(path: str | Path) -> list[dict[str, Any]]:
    """The checked reports of one ``report.json`` as plain dicts (what compare and the suite read)."""
    path = Path(path)
    return [r.to_dict() for r in parse_report(load_json(path), path)]


def report_payload(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON object ``cttlstm evaluate`` writes and prints for evaluated checkpoints
    (``EvaluationReport.to_dict()`` each): the report itself for one, ``{"convention", "checkpoints"}``
    with the first one's convention for several.

    Built through the same schema every reader uses, with metrics that were not finite written as
    null. A report the schema refuses here is a bug of evaluate's, said in one line.
    """
    items = [_finite_or_null(r) for r in reports]
    try:
        if len(items) == 1:
            return Report.from_dict(items[0], "the new report").to_dict()
        combined = {"convention": items[0]["convention"], "checkpoints": items}
        return CombinedReport.from_dict(combined, "the new report").to_dict()
    except CttlstmError as err:
        raise CttlstmError(f"evaluate made a report its own format refuses (a bug): {err}") from None


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def load_json(path: str | Path) -> Any:
    """The content of a JSON file, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise CttlstmError(f"{path}: cannot read ({err.__class__.__name__}: {err})") from None
    except json.JSONDecodeError as err:
        raise CttlstmError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise CttlstmError(f"{path}: not readable JSON (nested too deeply)") from None


# --------------------------------------------------------------------------- one-line errors


def _validated(schema: type[Report] | type[CombinedReport], raw: Any, where: str | Path) -> Any:
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise CttlstmError(f"{where}: {_first_problem(err.errors())}") from None


def _first_problem(errors: list[Any]) -> str:
    """``field: why`` for the first error, with how many more problems there are; or ``not an
    evaluate report (missing ...)`` when a report lacks several fields at its top (some other JSON
    file, most likely)."""
    first = errors[0]
    loc = tuple(first["loc"])
    root = loc[:-1]
    if first["type"] == "missing" and (root == () or (len(root) == 2 and root[0] == "checkpoints")):
        names = [e["loc"][-1] for e in errors if e["type"] == "missing" and tuple(e["loc"][:-1]) == root]
        if len(names) > 1:
            where = f"{field_path(root)}: " if root else ""
            return f"{where}not an evaluate report (missing {', '.join(repr(n) for n in names)})"
    text = f"{(field_path(loc + tuple((first.get('ctx') or {}).get('at', ()))) or '(top level)')}: {_why(first)}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def _why(error: Mapping[str, Any]) -> str:
    kind, ctx, got = error["type"], error.get("ctx") or {}, _shown(error.get("input"))
    if kind == "report":
        return str(ctx["why"])
    if tuple(error["loc"])[-1:] == ("[key]",):
        return f"unknown name (expected {ctx.get('expected', 'another name')})"
    simple = {
        "missing": "missing",
        "extra_forbidden": "unknown field",
        "int_type": f"expected a whole number, got {got}",
        "float_type": f"expected a number, got {got}",
        "finite_number": f"expected a finite number, got {got}",
        "string_type": f"expected a string, got {got}",
        "list_type": f"expected a list, got {got}",
        "dict_type": f"expected an object, got {got}",
        "model_type": f"expected an object, got {got}",
        "model_attributes_type": f"expected an object, got {got}",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {got}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx[key]}, got {got}"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} item(s), got {ctx['actual_length']}"
    if kind == "too_long":
        return f"allows at most {ctx['max_length']} item(s), got {ctx['actual_length']}"
    return f"{error['msg']}, got {got}"


#: a metric's name in tables and figure titles
METRIC_TITLES = {"mse": "MSE", "mae": "MAE", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}
#: a report's ``data.dataset`` as tables and figures name it
DATASET_NAMES = {"mmnist": "Moving-MNIST-2", "kth": "KTH action", "ssv2": "Something-Something V2", "folder": "folder"}


def format_count(value: int | None, as_printed: bool = False) -> str:
    """Parameters or FLOPs with a unit: ``2.69M``, ``37.83G``, ``12.3k`` (``as_printed``: ``106.6G``)."""
    if value is None:
        return "-"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.1f}{unit}" if as_printed and abs(scaled) >= 100 else f"{scaled:.2f}{unit}"
    return str(int(value))


def _shown(value: Any) -> str:
    """A value as JSON would show it, short and on one line (nested junk is only named)."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    scalar = isinstance(value, (str, int, float, bool, type(None)))
    text = json.dumps(value, ensure_ascii=True) if scalar else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "BASELINE_NAMES",
    "DATASET_NAMES",
    "METRIC_TITLES",
    "REPORT_FILE",
    "Accuracy",
    "CombinedReport",
    "DataInfo",
    "GroupAccuracy",
    "Horizon",
    "INT64_MAX",
    "Report",
    "Scores",
    "default_output_dir",
    "format_count",
    "default_reports",
    "load_json",
    "parse_report",
    "read_report_file",
    "report_label",
    "report_payload",
]
