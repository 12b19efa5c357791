"""Damaged recipes, generated: every one is refused by ``train`` and ``profile`` in the same one line
naming the file and the key, with exit 2, no traceback and no file written or changed.

The damage (hypothesis) is applied to the smoke recipe: a number replaced by one beyond int64, a
negative one, NaN or infinity, text, a list or a mapping; a section replaced by a scalar; an unknown
key; a family that does not exist; nesting deeper than any recipe needs; bytes that are not UTF-8.
The same values given through ``--set`` are refused the same way.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttlstm_cli.recipe import MAX_YAML_DEPTH
from cttlstm_cli.schema import INT64_MAX

from conftest import RECIPES, assert_unchanged, file_snapshot, one_error_line

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMOKE = yaml.safe_load((RECIPES / "smoke.yaml").read_text())


def _leaves(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of the numbers in ``node`` (list entries included), never a boolean."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaves(value, (*at, key))]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _leaves(value, (*at, i))]
    return [at] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def _sections(node: Any, at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return []
    return [at] + [p for key, value in node.items() for p in _sections(value, (*at, key))]


NUMBERS = _leaves(SMOKE)
SECTIONS = [p for p in _sections(SMOKE) if p]  # the top level itself is "not a section" for another reason


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


#: a value no numeric key of a recipe takes (every count, size, rate and seed in the smoke recipe is
#: positive or non-negative; null is left out: several keys take it). Integers beyond int64 are bad
#: only where an integer is meant: 2^64 is a float like any other for a rate or a clip norm.
BAD_NUMBERS = st.one_of(
    st.integers(min_value=-(2**300), max_value=-1),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(st.characters(codec="utf-8", categories=["L", "P", "S", "Zs"]), min_size=1, max_size=12).filter(_not_a_number),
    st.lists(st.integers(min_value=1, max_value=9), min_size=0, max_size=3),
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), st.integers(min_value=1, max_value=9), min_size=1, max_size=2),
)
BEYOND_INT64 = st.integers(min_value=INT64_MAX + 1, max_value=2**300)
NOT_A_SECTION = st.one_of(st.integers(), st.text("abc", max_size=5), st.lists(st.integers(), max_size=3))


def _bad_number(path: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """What to put at ``path``: :data:`BAD_NUMBERS`, and beyond int64 where the smoke recipe holds an integer."""
    return st.one_of(BAD_NUMBERS, BEYOND_INT64) if type(_get(SMOKE, path)) is int else BAD_NUMBERS


def _set(tree: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def damaged_recipes(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(what was damaged, the recipe file's bytes)``."""
    tree = yaml.safe_load(yaml.safe_dump(SMOKE))
    kind = draw(st.sampled_from(["number", "section", "unknown key", "family", "nesting", "encoding"]))
    if kind == "number":
        path = draw(st.sampled_from(NUMBERS))
        _set(tree, path, draw(_bad_number(path)))
    elif kind == "section":
        path = draw(st.sampled_from(SECTIONS))
        _set(tree, path, draw(NOT_A_SECTION))
    elif kind == "unknown key":
        path = draw(st.sampled_from(SECTIONS))
        _set(tree, (*path, "x_" + draw(st.text("abcdefgh_", min_size=1, max_size=8))), draw(st.integers()))
    elif kind == "family":
        tree["model"]["arch"] = draw(st.text("abcdefghijklmnop_", min_size=1, max_size=10).filter(lambda s: s not in _families()))
    elif kind == "nesting":
        path = draw(st.sampled_from(NUMBERS + SECTIONS))
        _set(tree, path, _nested(1, draw(st.integers(min_value=MAX_YAML_DEPTH + 1, max_value=400))))
    text = yaml.safe_dump(tree, sort_keys=False, width=2**20).encode()
    if kind == "encoding":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + text[at:]
    return kind, text


def _families() -> set[str]:
    from cttlstm_cli.models.registry import model_names

    return set(model_names())


@pytest.fixture
def refused(cli, tmp_path: Path):
    """``check(text)``: ``train`` and ``profile`` both refuse the recipe ``text`` in the same one line naming
    the file, and nothing is written or changed; returns the line with the file shown as RECIPE."""

    def check(text: bytes) -> str:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        recipe, out = folder / "recipe.yaml", folder / "run"
        recipe.write_bytes(text)
        before = file_snapshot(folder)
        line = one_error_line(cli("train", recipe, "--out", out, "--device", "cpu", "--quiet"))
        assert one_error_line(cli("profile", recipe, "--no-time")) == line
        assert str(recipe) in line
        assert_unchanged(before)
        assert sorted(folder.iterdir()) == [recipe]
        return line.replace(str(recipe), "RECIPE")

    return check


@pytest.mark.slow
@SETTINGS
@given(damaged_recipes())
def test_every_damaged_recipe_is_one_line_and_changes_nothing(refused, damage: tuple[str, bytes]) -> None:
    kind, text = damage
    line = refused(text)
    expected = {
        "unknown key": "unknown key",
        "family": "model.arch",
        "nesting": f"nested more than {MAX_YAML_DEPTH} levels deep",
        "encoding": "not a UTF-8 text file",
        "section": "must be a section",
    }
    if kind in expected:
        assert expected[kind] in line, line


@pytest.mark.slow
@SETTINGS
@given(st.data())
def test_bad_numbers_through_set_are_refused_like_the_file(cli, tmp_path: Path, data: st.DataObject) -> None:
    """``--set key=value`` writes the value in YAML; it is checked like the same value in the file."""
    path = data.draw(st.sampled_from(NUMBERS))
    value = data.draw(_bad_number(path))
    if isinstance(path[-1], int):  # --set replaces whole keys: put the bad value into the list
        key, listed = ".".join(path[:-1]), list(_get(SMOKE, path[:-1]))
        listed[path[-1]] = value
        value = listed
    else:
        key = ".".join(path)
    written = yaml.safe_dump(value, default_flow_style=True, width=2**20).strip().removesuffix("\n...").strip()
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    line = one_error_line(cli("train", RECIPES / "smoke.yaml", "--set", f"{key}={written}", "--set", f"data.path={out}-data", "--out", out, "--quiet"))
    assert f": {key}" in line, line
    assert not out.exists()


def _get(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


# ---- the classes, one example each with the exact line ---------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ("train.seed=-1", "train.seed: Input should be greater than or equal to 0 (got -1)"),
    ("train.seed=4294967296", "train.seed: Input should be less than or equal to 4294967295 (got 4294967296)"),
    ("train.epochs=9223372036854775808", "train.epochs: must be at most 9,223,372,036,854,775,807 (the int64 range) (got 9223372036854775808)"),
    ("model.channels=[8, 99999999999999999999]", "model.channels: must be at most 9,223,372,036,854,775,807 (the int64 range) (got [8, 99999999999999999999])"),
    ("train.lr=.nan", "train.lr: Input should be a finite number (got .nan)"),
    ("train.grad_clip=.inf", "train.grad_clip: Input should be a finite number (got .inf)"),
    ("data.workers=100000", "data.workers: Input should be less than or equal to 256 (got 100000)"),
])
def test_numbers_are_bounded_to_what_can_run(cli, tmp_path: Path, override: str, message: str) -> None:
    line = one_error_line(cli("train", RECIPES / "smoke.yaml", "--set", override, "--set", f"data.path={tmp_path / 'data'}", "--out", tmp_path / "run"))
    assert line.endswith(message), line
    assert not (tmp_path / "run").exists()


def test_a_deeply_nested_recipe_is_refused_before_it_is_parsed(cli, tmp_path: Path) -> None:
    """100,000 ``[`` used to end in a RecursionError inside PyYAML's composer."""
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("model: " + "[" * 100_000)
    line = one_error_line(cli("train", recipe, "--out", tmp_path / "run"))
    assert line == f"error: {recipe}: nested more than {MAX_YAML_DEPTH} levels deep (line 1); a recipe needs at most a few"
