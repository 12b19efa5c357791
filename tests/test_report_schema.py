"""The evaluate report's format (``evaluation/report.py``): what evaluate writes reads back unchanged, and
any damage to a real report is refused by ``cttlstm compare`` in one line, with nothing changed on disk."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttlstm_cli.evaluation.report import INT64_MAX, CombinedReport, Report, parse_report

from conftest import TrainedSmoke, assert_unchanged, field_name, file_snapshot, one_error_line

Path_ = tuple[Any, ...]


@pytest.fixture(scope="module")
def evaluated(trained_smoke: TrainedSmoke, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reports ``cttlstm evaluate`` wrote for the smoke run, two horizons with baselines: one checkpoint
    (``single``) and two together (``combined``, the run and a copy of its best.pt)."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("reports")
    copy_pt = root / "copy.pt"
    shutil.copy(trained_smoke.best, copy_pt)
    args = ["--metrics", "mse,psnr,ssim", "--limit", "4", "--future", "3,5", "--data", str(trained_smoke.data), "-q",
            "--device", "cpu"]
    assert main(["evaluate", str(trained_smoke.run), *args, "--out", str(root / "single")]) == 0
    assert main(["evaluate", str(trained_smoke.run), str(copy_pt), *args, "--out", str(root / "combined")]) == 0
    return {name: root / name / "report.json" for name in ("single", "combined")}


@pytest.mark.slow
def test_what_evaluate_writes_validates_and_round_trips(evaluated: dict[str, Path]) -> None:
    single = json.loads(evaluated["single"].read_text())
    assert [h["future_frames"] for h in single["horizons"]] == [3, 5]
    assert set(single["horizons"][1]["baselines"]) == {"copy_last_frame", "blank_frame"}
    report = Report.from_dict(single, evaluated["single"])
    assert report.to_dict() == single
    assert report.horizons[1].per_frame["ssim"] == single["horizons"][1]["per_frame"]["ssim"]
    combined = json.loads(evaluated["combined"].read_text())
    assert len(combined["checkpoints"]) == 2
    assert CombinedReport.from_dict(combined).to_dict() == combined
    # evaluate writes exactly what the schema gives back: the file's text is the schema's own JSON
    assert evaluated["single"].read_text() == json.dumps(report.to_dict(), indent=2) + "\n"
    again = CombinedReport.from_dict(combined).to_dict()
    assert evaluated["combined"].read_text() == json.dumps(again, indent=2) + "\n"
    assert [r.to_dict() for r in parse_report(combined, evaluated["combined"])] == combined["checkpoints"]


@pytest.mark.slow
def test_metric_that_is_not_finite_is_written_as_null_and_compared_as_dash(
    cli, evaluated: dict[str, Path], tmp_path: Path
) -> None:
    """JSON has no NaN: evaluate writes a diverged model's metric as null, and compare shows '-' for it."""
    from cttlstm_cli.evaluation.runner import write_reports

    rep = json.loads(evaluated["single"].read_text())
    h0 = rep["horizons"][0]
    h0["metrics"]["mse"] = math.nan
    h0["per_frame"]["mse"][1] = math.inf
    rep["metrics"], rep["per_frame"] = h0["metrics"], h0["per_frame"]  # the top level repeats horizon 0
    [written, _plot] = write_reports([rep], [rep["checkpoint"]], "test", tmp_path / "ev")
    saved = json.loads(written.read_text())  # plain JSON (json.loads would take NaN too, so look at the values)
    assert saved["horizons"][0]["metrics"]["mse"] is None and saved["metrics"]["mse"] is None
    assert saved["horizons"][0]["per_frame"]["mse"][1] is None and "NaN" not in written.read_text()
    result = cli("compare", written, "--out", tmp_path / "cmp", "--json", "--future", "3")
    assert result.code == 0, result.err
    row = json.loads(result.out)["rows"][0]
    assert row["horizons"]["3"]["mse"] is None and row["per_frame"]["3"]["mse"][1] is None
    assert "| - |" in (tmp_path / "cmp" / "comparison.md").read_text()


# --------------------------------------------------------------------------- damage


def _nodes(value: Any, at: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every node of a JSON value with its path: the value itself, then its children, depth first."""
    out = [(at, value)]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _nodes(child, (*at, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _nodes(child, (*at, i))
    return out


def _kind(value: Any) -> str:
    """The JSON type of a value (bool before int: True is an int in Python)."""
    for name, types in (("null", type(None)), ("bool", bool), ("int", int), ("float", float), ("str", str),
                        ("list", list), ("dict", dict)):
        if isinstance(value, types):
            return name
    raise TypeError(value)


_SCALARS = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers(-(2**70), 2**70),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text(max_size=12),
}
_JUNK = st.recursive(
    st.one_of(*_SCALARS.values()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("abc :'\n", max_size=4), inner, max_size=3),
    max_leaves=6,
)
_OF_KIND = {
    **_SCALARS,
    "list": st.lists(_JUNK, max_size=3),
    "dict": st.dictionaries(st.text(max_size=4), _JUNK, max_size=3),
}


def _not_alike(original: Any) -> list[str]:
    """JSON types that can never stand where ``original`` stood (metric values may be null, and a whole
    number is a fine float)."""
    kind = _kind(original)
    alike = {kind} | ({"int", "null"} if kind == "float" else set())
    return [k for k in _OF_KIND if k not in alike]


#: the fields evaluate writes only sometimes: leaving them out is no damage
_OPTIONAL = {"limit", "baselines", "accuracy", "notes", "observed_fraction", "per_group"}


def _set(doc: Any, at: Path_, value: Any) -> Any:
    if not at:
        return value
    parent = doc
    for key in at[:-1]:
        parent = parent[key]
    parent[at[-1]] = value
    return doc


def _get(doc: Any, at: Path_) -> Any:
    for key in at:
        doc = doc[key]
    return doc


@st.composite
def damaged(draw: st.DrawFn, bases: dict[str, Any]) -> tuple[str, str, Path_, Any]:
    """``(base name, what was done, where, the damaged report)``: one fault in a real report, each of
    which the format refuses."""
    name = draw(st.sampled_from(sorted(bases)))
    doc = copy.deepcopy(bases[name])
    every = _nodes(doc)
    # curve values are most of a report's nodes: half the time only the others are drawn from
    fields = [(p, v) for p, v in every if p[-3:-2] != ("per_frame",)]
    nodes = draw(st.sampled_from([every, fields]))
    how = draw(st.sampled_from(["delete", "retype", "curve", "int", "nonfinite", "junk", "junk key"]))
    if how == "delete":
        at = draw(st.sampled_from([p for p, _ in nodes if p and isinstance(p[-1], str) and p[-1] not in _OPTIONAL]))
        del _get(doc, at[:-1])[at[-1]]
    elif how == "retype":
        at, value = draw(st.sampled_from(nodes))
        doc = _set(doc, at, draw(_OF_KIND[draw(st.sampled_from(_not_alike(value)))]))
    elif how == "curve":
        at, curve = draw(st.sampled_from([(p, v) for p, v in nodes if len(p) > 1 and p[-2] == "per_frame"]))
        length = draw(st.integers(0, len(curve) + 4).filter(lambda n: n != len(curve)))
        _set(doc, at, (curve + [0.5] * length)[:length])
    elif how == "int":
        at, _ = draw(st.sampled_from([(p, v) for p, v in nodes if _kind(v) == "int"]))
        low = 0 if at[-1] == "parameters" else 1  # parameters may be 0; every other count is at least 1
        _set(doc, at, draw(st.integers(-(2**80), low - 1) | st.integers(INT64_MAX + 1, 2**80)))
    elif how == "nonfinite":
        at, _ = draw(st.sampled_from([(p, v) for p, v in nodes if _kind(v) == "float"]))
        _set(doc, at, draw(st.sampled_from([math.nan, math.inf, -math.inf])))
    elif how == "junk":  # nested junk of another type than what stood there
        at, value = draw(st.sampled_from(nodes))
        junk = st.dictionaries(st.text(max_size=4), _JUNK, min_size=1, max_size=3) if isinstance(value, list) else (
            st.lists(_JUNK, min_size=1, max_size=3))
        doc = _set(doc, at, draw(junk))
    else:  # an unknown key, with junk in it, in any object
        at, obj = draw(st.sampled_from([(p, v) for p, v in nodes if isinstance(v, dict)]))
        obj["junk_" + draw(st.text("ab :'\n", max_size=4))] = draw(_JUNK)
    return name, how, at, doc


@pytest.fixture
def battery(cli, evaluated: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    """The real reports, a folder for damaged copies, and an --out folder holding an earlier comparison
    (made from the undamaged single report) that a refused compare must leave exactly as it is."""
    out = tmp_path / "cmp"
    result = cli("compare", evaluated["single"], "--out", out)
    assert result.code == 0, result.err
    assert (out / "comparison.json").is_file()
    bases = {name: json.loads(path.read_text()) for name, path in evaluated.items()}
    return {"bases": bases, "report": tmp_path / "damaged" / "report.json", "out": out, "root": tmp_path}


@pytest.mark.slow
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_is_one_line_and_changes_nothing(cli, battery: dict[str, Any], data: st.DataObject) -> None:
    name, how, at, doc = data.draw(damaged(battery["bases"]))
    report: Path = battery["report"]
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps(doc, indent=2))  # NaN and Infinity as Python's json writes them
    before = file_snapshot(report, battery["out"])
    files = sorted(battery["root"].rglob("*"))
    line = one_error_line(cli("compare", report, "--out", battery["out"]))
    prefix = f"error: {report}: "
    assert line.startswith(prefix), line
    named = line[len(prefix):].split(": ")[0]
    # the line names the damaged field, a field inside it, or the field that holds it
    expected = field_name(at)
    root_replaced = len(at) <= 1 and named.startswith("not an evaluate report")
    assert named.startswith(expected) or expected.startswith(named) or root_replaced, (name, how, at, line)
    assert_unchanged(before)
    assert sorted(battery["root"].rglob("*")) == files  # nothing new either (no lock, no half-written file)
