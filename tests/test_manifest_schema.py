"""manifest.json against its schema: every damaged manifest is refused in one line, by
``cttlstm prepare --verify`` and by opening the dataset, changing no file.

The damaged manifests are generated (hypothesis) from one small dataset prepared by the CLI:
a required key deleted, a value replaced by one of another type, negative or beyond-int64
counts, NaN, nested junk, shard names that leave the folder, and another frame size, channel
count or dtype than the shards hold.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttlstm_cli.data import shards as fmt
from cttlstm_cli.data.dataset import ClipDataset
from cttlstm_cli.data.manifest import INT64_MAX, validate_manifest
from cttlstm_cli.errors import CttlstmError

from conftest import assert_unchanged, field_name, file_snapshot, one_error_line

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """``cttlstm prepare folder`` of four 6-frame .npy clips and one file that is no clip: 2/1/1 videos, 3 shards."""
    from cttlstm_cli.cli import main

    src = tmp_path_factory.mktemp("clips")
    for i in range(4):
        np.save(src / f"c{i}.npy", np.full((6, 8, 8), 40 * i, dtype=np.uint8))
    (src / "notes.txt").write_text("no clip")
    out = tmp_path_factory.mktemp("schema") / "data"
    args = ["prepare", "folder", src, "--out", out, "--size", "8", "--gray", "--split", "0.5,0.25,0.25", "-j", "1", "-q"]
    assert main([str(a) for a in args]) == 0
    return out


@pytest.fixture(scope="module")
def manifest(prepared: Path) -> dict[str, Any]:
    return json.loads((prepared / fmt.MANIFEST_NAME).read_text())


@pytest.fixture
def damaged(prepared: Path, tmp_path: Path, cli):
    """``check(manifest)``: write ``manifest`` into a fresh copy of the dataset and assert that verify and
    an open refuse it in the same one line, changing nothing; returns the line."""

    def check(content: Any, text: str | None = None) -> str:
        root = Path(tempfile.mkdtemp(dir=tmp_path)) / "data"
        shutil.copytree(prepared, root)
        (root / fmt.MANIFEST_NAME).write_text(text if text is not None else json.dumps(content))
        snapshot = file_snapshot(root)
        line = one_error_line(cli("prepare", "--verify", root, "-q"))
        with pytest.raises(CttlstmError) as info:
            ClipDataset(root, "train", 2, mode="sequential")
        assert f"error: {info.value}" == line
        assert_unchanged(snapshot)
        return line.replace(str(root), "DIR")

    return check


# ---------------------------------------------------------------------------- what a manifest's fields are


def _kinds(manifest: dict[str, Any]) -> dict[tuple, str]:
    """``{path: kind}`` of every field the schema checks in ``manifest``."""
    kinds: dict[tuple, str] = {
        ("format_version",): "count", ("dataset",): "text", ("frame_size",): "frame_size", ("channels",): "positive",
        ("dtype",): "dtype", ("splits",): "object", ("skipped",): "list", ("provenance",): "object",
        ("provenance", "options"): "object",
    }  # fmt: skip
    for i in range(len(manifest["skipped"])):
        kinds[("skipped", i)] = "object"
        kinds[("skipped", i, "source")] = kinds[("skipped", i, "reason")] = "text"
    for split, summary in manifest["splits"].items():
        base = ("splits", split)
        kinds[base] = "object"
        kinds[base + ("videos",)] = kinds[base + ("frames",)] = "count"
        kinds[base + ("shards",)] = kinds[base + ("sources",)] = "list"
        kinds[base + ("checksums",)] = "object"
        for i in range(len(summary["shards"])):
            kinds[base + ("shards", i)] = "shard"
        for i in range(len(summary["sources"])):
            kinds[base + ("sources", i)] = "text"
        for name in summary["checksums"]:
            kinds[base + ("checksums", name)] = "object"
            kinds[base + ("checksums", name, "bytes")] = "count"
            kinds[base + ("checksums", name, "sha256")] = "sha256"
    return kinds


#: keys whose deletion must be refused (dtype, checksums, skipped and provenance may be absent: older manifests)
REQUIRED = {"dataset", "frame_size", "channels", "splits", "videos", "frames", "shards", "sources", "bytes", "sha256", "source", "reason"}


def _valid(kind: str, value: Any) -> bool:
    """Whether ``value`` is acceptable for a field of ``kind`` (what a replacement must not be)."""
    integer = type(value) is int and value <= INT64_MAX
    return {
        "count": integer and value >= 0,
        "positive": integer and value >= 1,
        "text": isinstance(value, str),
        "dtype": value == "uint8",
        "shard": isinstance(value, str) and value not in ("", ".", "..") and not re.search(r"[/\\\0]", value),
        "sha256": isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None,
        "frame_size": isinstance(value, list) and len(value) == 2 and all(type(v) is int and 1 <= v <= INT64_MAX for v in value),
        "list": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: Any, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
bad_ints = st.one_of(st.integers(max_value=-2), st.integers(min_value=INT64_MAX + 1, max_value=2**80), st.just(-1))
escaping = st.sampled_from(["../x.h5", "/etc/passwd", "sub/train-00000.h5", "..", ".", "", "a\\b.h5", "x\0.h5", "../../data/manifest.json"])


# ---------------------------------------------------------------------------- properties


@SETTINGS
@given(data=st.data())
def test_a_deleted_key_is_refused(damaged, manifest, data) -> None:
    paths = sorted((p for p in _kinds(manifest) if isinstance(p[-1], str) and p[-1] in REQUIRED), key=repr)
    path = data.draw(st.sampled_from(paths))
    edited = copy.deepcopy(manifest)
    del _get(edited, path[:-1])[path[-1]]
    line = damaged(edited)
    assert line.startswith(f"error: DIR/manifest.json: {field_name(path)}: missing"), (path, line)


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_a_value_of_another_type_is_refused(damaged, manifest, data) -> None:
    kinds = _kinds(manifest)
    path = data.draw(st.sampled_from(sorted(kinds, key=repr)))
    value = data.draw(junk.filter(lambda v: not _valid(kinds[path], v)))
    edited = copy.deepcopy(manifest)
    _set(edited, path, value)
    line = damaged(edited)
    if path == ("format_version",) and type(value) is int and value > fmt.FORMAT_VERSION:
        assert line == f"error: DIR/manifest.json has format version {value}; this cttlstm reads up to 1, please upgrade"
    else:
        assert line.startswith(f"error: DIR/manifest.json: {field_name(path)}: expected "), (path, value, line)


@SETTINGS
@given(data=st.data())
def test_negative_huge_and_nan_numbers_are_refused(damaged, manifest, data) -> None:
    kinds = _kinds(manifest)
    numeric = sorted((p for p, k in kinds.items() if k in ("count", "positive") and p != ("format_version",)), key=repr)
    path = data.draw(st.sampled_from(numeric))
    value = data.draw(st.one_of(bad_ints, st.sampled_from([math.nan, math.inf, -math.inf, 1.5, 2.0])))
    edited = copy.deepcopy(manifest)
    _set(edited, path, value)
    line = damaged(edited)
    shown = json.dumps(value)
    assert line.startswith(f"error: DIR/manifest.json: {field_name(path)}: expected a ") and line.endswith(f", found {shown}"), line


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_shard_names_that_leave_the_folder_are_refused(damaged, manifest, data) -> None:
    split = data.draw(st.sampled_from(sorted(manifest["splits"])))
    name = data.draw(escaping)
    edited = copy.deepcopy(manifest)
    summary = edited["splits"][split]
    old = summary["shards"][0]
    if data.draw(st.booleans()):  # the list, and the checksums with it, or the checksums key alone
        summary["shards"][0] = name
        where = f"splits.{split}.shards[0]"
    else:
        where = f"splits.{split}.checksums"
    summary["checksums"][name] = summary["checksums"].pop(old)
    line = damaged(edited)
    assert line.startswith(f"error: DIR/manifest.json: {where}: expected a shard file name inside the dataset folder"), line


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_another_frame_size_channel_count_or_dtype_is_refused(damaged, manifest, data) -> None:
    field = data.draw(st.sampled_from(["frame_size", "channels", "dtype"]))
    edited = copy.deepcopy(manifest)
    if field == "frame_size":
        value: Any = data.draw(st.lists(st.integers(1, 4096), min_size=2, max_size=2).filter(lambda v: v != [8, 8]))
        expect = f"frame_size is {value} but shard train-00000.h5 holds [8, 8]"
    elif field == "channels":
        value = data.draw(st.integers(2, 2**40))
        expect = f"channels is {value} but shard train-00000.h5 holds 1"
    else:
        value = data.draw(st.sampled_from(["float32", "uint16", "int8", "UINT8", ""]))
        expect = f"dtype: expected 'uint8' (the frame type this format stores), found {value!r}"
    edited[field] = value
    assert damaged(edited).startswith(f"error: DIR/manifest.json: {expect}")


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_nested_junk_anywhere_is_refused(damaged, manifest, data) -> None:
    kinds = _kinds(manifest)
    path = data.draw(st.sampled_from(sorted(kinds, key=repr)))
    value = data.draw(st.one_of(st.lists(junk, min_size=1, max_size=3), st.dictionaries(st.text(max_size=3), junk, min_size=1, max_size=3)))
    if _valid(kinds[path], value):  # a list where a list belongs: junk one level down instead
        value = [value] if kinds[path] == "object" else {"junk": value}
    edited = copy.deepcopy(manifest)
    _set(edited, path, value)
    assert damaged(edited).startswith(f"error: DIR/manifest.json: {field_name(path)}: expected ")


@pytest.mark.slow
@SETTINGS
@given(cut=st.integers(min_value=0, max_value=10_000), whole=st.one_of(st.lists(junk, max_size=2), st.text(max_size=5), st.integers()))
def test_a_cut_or_foreign_file_is_refused(damaged, manifest, cut: int, whole) -> None:
    text = json.dumps(manifest, indent=2)
    line = damaged(None, text=text[: cut % len(text)])
    assert line.startswith("error: unreadable manifest DIR/manifest.json: "), line
    assert damaged(whole).startswith("error: DIR/manifest.json: expected a JSON object, found ")


# ---------------------------------------------------------------------------- examples


def test_the_prepared_manifest_reads(prepared: Path, manifest: dict[str, Any], cli) -> None:
    assert manifest["dtype"] == "uint8" and fmt.read_manifest(prepared) == manifest
    assert manifest["provenance"]["source_fingerprint"]["files"] == 4
    result = cli("prepare", "--verify", prepared, "-q")
    assert result.code == 0 and result.out.strip().endswith("all 3 shard(s) verified"), result.err


def test_the_documented_example(damaged, manifest) -> None:
    edited = copy.deepcopy(manifest)
    edited["splits"]["train"]["videos"] = "x"
    assert damaged(edited) == "error: DIR/manifest.json: splits.train.videos: expected a non-negative integer, found 'x'"


def test_one_shard_in_two_splits_is_refused(damaged, manifest) -> None:
    edited = copy.deepcopy(manifest)
    edited["splits"]["test"]["shards"] = ["val-00000.h5"]
    assert damaged(edited) == (
        "error: DIR/manifest.json: splits.test.shards[0]: 'val-00000.h5' is listed again (first in splits.val.shards[0])"
    )


def test_labels_groups_and_names() -> None:
    base = {
        "dataset": "ssv2", "frame_size": [8, 8], "channels": 3, "label_names": ["a", "b"], "groups": {"A": [0], "B": [1]},
        "splits": {"train": {"videos": 2, "frames": 8, "shards": ["train-00000.h5"], "sources": ["1.webm", "2.webm"], "labels": [0, 1]}},
    }  # fmt: skip
    validate_manifest(base)  # no format_version, dtype, checksums, skipped or provenance: an older manifest
    for path, value, expect in (
        (("splits", "train", "labels"), [0], "splits.train: 'labels' lists 1 label(s) for 2 videos"),
        (("splits", "train", "labels", 1), -2, "splits.train.labels[1]: expected an integer of at least -1 (-1: no label), found -2"),
        (("label_names", 0), 3, "label_names[0]: expected a string, found 3"),
        (("groups", "A", 0), -1, "groups.A[0]: expected a non-negative integer, found -1"),
        (("splits", "val"), {}, "splits.val.videos: missing (and 3 more problem(s))"),
        (("splits", "validation"), base["splits"]["train"], "splits: expected a split name (train, val or test), found 'validation'"),
    ):  # fmt: skip
        edited = copy.deepcopy(base)
        _set(edited, path, value)
        with pytest.raises(ValueError) as info:
            validate_manifest(edited)
        assert str(info.value) == expect
