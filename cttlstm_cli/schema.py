"""The strict pydantic base of every section a user writes: recipes and the families' model configs.

What it adds to pydantic's defaults, once for every field of every section:

- unknown keys are errors (a typo never silently falls back to a default);
- no NaN or infinity in any float (pydantic accepts ``.nan`` for ``lr: float`` otherwise, and
  ``gt=0`` lets ``.inf`` through);
- every integer, also inside lists and pairs, fits a signed 64-bit integer: torch, numpy and
  HDF5 index with int64, and a larger Python int fails deep inside them (``OverflowError:
  cannot fit 'int' into an index-sized integer``) instead of at the key that holds it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

#: the largest integer torch, numpy and HDF5 take as a count or an index
INT64_MAX = 2**63 - 1
#: the most worker processes any option or recipe asks for: beyond what a machine can use, and a
#: typo of 100000 would otherwise fork until the machine stops
MAX_WORKERS = 256


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(loc: Sequence[Any]) -> str:
    """Where a JSON or YAML value sits, from pydantic's location: ``('splits', 'train', 'shards', 0)`` ->
    ``splits.train.shards[0]``; a key that is no identifier quoted (``per_class['a b']``). pydantic's
    ``[key]`` marker (the key itself is wrong) is left out: the part before it names the key."""
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{part!r}]"
    return text


def beyond_int64(value: Any) -> int | None:
    """The first integer in ``value`` (an int, or lists/tuples of them) outside the int64 range, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if not -INT64_MAX - 1 <= value <= INT64_MAX else None
    if isinstance(value, (list, tuple)):
        for item in value:
            found = beyond_int64(item)
            if found is not None:
                return found
    return None


class StrictSection(BaseModel):
    """Base of every recipe section and model config: see the module docstring."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        found = beyond_int64(value)
        if found is not None:
            raise ValueError(f"must be at most {INT64_MAX:,} (the int64 range)")
        return value
