"""The schema of ``manifest.json``, checked on every read: :func:`validate_manifest`.

One pydantic model describes what readers rely on (``frame_size``, ``channels``, ``dtype``,
``splits`` with their counts, shard names and checksums, labels, skipped files, the options
in ``provenance``). Anything else a manifest holds is kept and not checked (``extra="allow"``),
so manifests of older cttlstm versions, which lack ``dtype`` and ``checksums``, still read.

A manifest that breaks the schema is refused with one line naming the field, what was
expected and what was found::

    DIR/manifest.json: splits.train.videos: expected a non-negative integer, found 'x'

Counts and sizes are JSON integers from 0 to 2**63-1 (HDF5 and numpy index with int64): no
floats, no booleans, no numbers in strings. Shard names are plain file names inside the
dataset folder: a name with a slash, ``..`` or an absolute path is refused, so an edited
manifest can never make a reader open (or ``prepare`` delete) a file elsewhere.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from cttlstm_cli.schema import INT64_MAX, field_path

#: the only frame dtype format version 1 stores (readers scale it by 1/255)
DTYPE = "uint8"
#: the split names builders write, in order
SPLIT_NAMES = ("train", "val", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def found(value: Any, limit: int = 60) -> str:
    """A short, printable rendering of a JSON value for an error message: strings quoted as
    Python does (``'x'``), everything else as JSON (``NaN``, ``null``, ``[1, 2]``)."""
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # nesting too deep to print: its kind says enough
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(expected: str, value: Any) -> PydanticCustomError:
    # the message is final: braces in a found value must not be read as pydantic placeholders
    return PydanticCustomError("manifest", "{text}", {"text": f"expected {expected}, found {found(value)}"})


def _integer(low: int, what: str):
    """A validator of JSON integers in ``[low, 2**63-1]`` (bool and float are refused: JSON has no int/float
    distinction a reader could rely on otherwise)."""

    def check(value: Any) -> int:
        if type(value) is not int or value < low:
            raise _refuse(what, value)
        if value > INT64_MAX:
            raise _refuse(f"{what} below 2**63", value)
        return value

    return PlainValidator(check)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _refuse("a string", value)
    return value


def _shard_name(value: Any) -> str:
    if not isinstance(value, str):
        raise _refuse("a shard file name", value)
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise _refuse("a shard file name inside the dataset folder (no folders, no '..')", value)
    return value


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise _refuse("a sha256 of 64 lowercase hex digits", value)
    return value


def _split_name(value: Any) -> str:
    if value not in SPLIT_NAMES:
        raise _refuse("a split name (train, val or test)", value)
    return value


def _frame_size(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) is not int or not 1 <= v <= INT64_MAX for v in value)
    ):
        raise _refuse("[height, width], two positive integers", value)
    return value


def _dtype(value: Any) -> str:
    if value != DTYPE:
        raise _refuse(f"{DTYPE!r} (the frame type this format stores)", value)
    return value


Count = Annotated[int, _integer(0, "a non-negative integer")]
Positive = Annotated[int, _integer(1, "a positive integer")]
Label = Annotated[int, _integer(-1, "an integer of at least -1 (-1: no label)")]
Text = Annotated[str, PlainValidator(_text)]
ShardName = Annotated[str, PlainValidator(_shard_name)]
SplitName = Annotated[str, PlainValidator(_split_name)]


class _Model(BaseModel):
    # extra="allow": fields this schema does not know (dataset extras, newer keys) are kept unchecked
    model_config = ConfigDict(extra="allow", strict=True)


class Checksum(_Model):
    """Size and sha256 of one shard file."""

    bytes: Count
    sha256: Annotated[str, PlainValidator(_sha256)]


class Split(_Model):
    """One split: its counts, its shards (in order) and what they were made from."""

    videos: Count
    frames: Count
    shards: list[ShardName]
    sources: list[Text]
    # absent in some manifests (unlabelled data, older cttlstm), but never null: the default is not validated
    labels: list[Label] = None  # type: ignore[assignment]
    checksums: dict[ShardName, Checksum] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _labels_per_video(self) -> Split:
        if self.labels is not None and len(self.labels) != self.videos:
            text = f"'labels' lists {len(self.labels)} label(s) for {self.videos} videos"
            raise PydanticCustomError("manifest", "{text}", {"text": text})
        return self


class Skipped(_Model):
    """A source file the prepare could not use, and why."""

    source: Text
    reason: Text


class Provenance(_Model):
    """Who made the dataset and from what; ``options`` identify the prepare (a re-run must match them)."""

    options: dict[Text, Any] = Field(default_factory=dict)


class Manifest(_Model):
    """``manifest.json``: see docs/data-formats.md."""

    format_version: Count = 0
    dataset: Text
    frame_size: Annotated[list[int], PlainValidator(_frame_size)]
    channels: Positive
    dtype: Annotated[str, PlainValidator(_dtype)] = DTYPE
    splits: dict[SplitName, Split]
    # absent for datasets without them, but never null (see Split.labels)
    label_names: list[Text] = None  # type: ignore[assignment]
    groups: dict[Text, list[Count]] = None  # type: ignore[assignment]
    protocol: Text = None  # type: ignore[assignment]
    skipped: list[Skipped] = Field(default_factory=list)
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _each_shard_once(self) -> Manifest:
        # a shard listed twice (in one split or two) would serve its videos twice, across splits into both
        seen: dict[str, str] = {}
        for split, summary in self.splits.items():
            for i, name in enumerate(summary.shards):
                where = f"splits.{split}.shards[{i}]"
                if name in seen:
                    raise PydanticCustomError(
                        "manifest", "{text}", {"text": f"{where}: {name!r} is listed again (first in {seen[name]})"}
                    )
                seen[name] = where
        return self


_GENERIC = {
    "missing": "missing",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
}


def describe(err: ValidationError) -> str:
    """The first problem of a failed validation as ``FIELD: expected ..., found ...`` (and how many more)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    if loc and loc[-1] == "[key]":  # a bad dict key: the message is about the key itself
        loc = loc[:-2]
    kind = first["type"]
    if kind == "manifest":
        message = first["ctx"]["text"]
    elif kind == "missing":
        message = "missing"
    elif kind in _GENERIC:
        message = f"{_GENERIC[kind]}, found {found(first.get('input'))}"
    else:  # pragma: no cover - every field above has its own wording
        message = f"{first['msg']}, found {found(first.get('input'))}"
    where = field_path(loc)
    if message.startswith("splits.") or not where:  # a cross-field message names its own field
        text = message
    else:
        text = f"{where}: {message}"
    more = len(errors) - 1
    return f"{text} (and {more} more problem(s))" if more else text


def validate_manifest(data: Any) -> Manifest:
    """Check decoded ``manifest.json`` content against the schema; raises ``ValueError`` with
    :func:`describe`'s one line (the caller adds the file name)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {found(data)}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ValueError(describe(err)) from None
    except RecursionError:
        raise ValueError("nested too deeply to be a manifest") from None
