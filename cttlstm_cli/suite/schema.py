"""The suite file: several models trained, evaluated and compared under one protocol.

A suite names one dataset (``data``), one training budget (``budget``: optimizer steps, clips per
step, epochs, seed) that every model gets, training keys common to all (``train``), the evaluation
(``eval``: horizons, metrics, convention, split, test clips) and a clip for pictures (``pictures``);
``models`` lists recipes, each with ``--set``-style overrides of its own. :func:`load_suite` reads
and checks the file; :func:`resolve_models` turns every entry into the full recipe it trains with,
and refuses, in one line, a model whose data, budget or evaluation differs from the suite's (the
whole point of a suite is that those are equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.recipe import DataConfig, Recipe, as_given, load_recipe, read_yaml, recipe_from_dict
from cttlstm_cli.schema import INT64_MAX, StrictSection

#: the train keys the budget owns: a suite's ``train`` section and a model's ``set`` may not change them
BUDGET_KEYS = frozenset({"batch_size", "epochs", "epoch_clips", "seed"})
#: the eval keys the suite owns
EVAL_KEYS = ("future_frames", "metrics", "convention", "batch_size")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Strict(StrictSection):
    """Unknown keys, NaN, infinity and integers beyond int64 are errors (:mod:`cttlstm_cli.schema`)."""


class Budget(_Strict):
    """The training every model of the suite gets: the same steps, clips per step and seed."""

    steps: int = Field(ge=1, le=10**9, description="optimizer steps per model")
    batch_size: int = Field(ge=1, le=10**6, description="clips per optimizer step")
    epochs: int = Field(ge=1, le=10**6, description="epochs (validations) the steps are split into; the schedules count epochs")
    seed: int = Field(0, ge=0, le=INT64_MAX)

    @model_validator(mode="after")
    def _whole_epochs(self) -> Budget:
        if self.steps % self.epochs:
            raise ValueError(f"steps ({self.steps}) must be a multiple of epochs ({self.epochs}): every epoch has the same steps")
        return self

    @property
    def epoch_clips(self) -> int:
        """Clips per epoch: the steps of one epoch times the clips per step."""
        return self.steps // self.epochs * self.batch_size

    def train_keys(self) -> dict[str, int]:
        """The budget as the recipe's train keys (:data:`BUDGET_KEYS`)."""
        return {"batch_size": self.batch_size, "epochs": self.epochs, "epoch_clips": self.epoch_clips, "seed": self.seed}


class SuiteEval(_Strict):
    """How every model is scored, on the same clips."""

    future_frames: list[int] = Field(default_factory=lambda: [10, 30], min_length=1)
    metrics: list[Literal["mse", "mae", "psnr", "ssim", "lpips"]] = Field(default_factory=lambda: ["mse", "psnr", "ssim", "lpips"], min_length=1)
    convention: Literal["paper", "openstl", "standard"] = "paper"
    split: Literal["test", "val"] = "test"
    clips: int | None = Field(None, ge=1, le=10**9, description="clips per horizon (the first ones of the split); null: all")
    batch_size: int = Field(16, ge=1, le=10**6)

    @field_validator("future_frames")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(f < 1 or f > 10**6 for f in v):
            raise ValueError(f"every horizon must be between 1 and 1,000,000 frames, got {v}")
        return sorted(set(v))


class Pictures(_Strict):
    """The clip every model continues in the suite's predict grid."""

    test_clip: int = Field(0, ge=0, le=10**9, description="clip of the eval split, cut as for the longest horizon")
    steps: int | None = Field(None, ge=1, le=10**6, description="frames to predict; null: the longest horizon")
    fps: float = Field(4.0, gt=0.0, le=1000.0)


class SuiteModel(_Strict):
    """One model: a recipe (a path, relative to the suite file or the working directory, or a bundled
    name) and overrides in ``--set`` form (a list of ``key=value`` or a mapping of dotted keys)."""

    name: str
    recipe: str
    set: list[str] | dict[str, Any] = Field(default_factory=list)
    note: str = ""

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not _NAME.match(v) or len(v) > 100:
            raise ValueError(f"must be a folder name (letters, digits, '.', '_', '-'), got {v!r}")
        return v

    def overrides(self) -> list[str]:
        """``set`` as ``key=value`` strings (a mapping's values written as YAML)."""
        if isinstance(self.set, list):
            return list(self.set)
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}" for key, value in self.set.items()]


class Suite(_Strict):
    """A whole suite file."""

    name: str
    description: str = ""
    data: DataConfig
    budget: Budget
    train: dict[str, Any] = Field(default_factory=dict, description="train keys set for every model (before its own set)")
    eval: SuiteEval = Field(default_factory=SuiteEval)
    pictures: Pictures = Field(default_factory=Pictures)
    models: list[SuiteModel] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("train")
    @classmethod
    def _not_the_budget(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(k for k in v if k in BUDGET_KEYS)
        if owned:
            raise ValueError(f"{', '.join(owned)} belong(s) to the budget section (every model trains on the same budget)")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"two models are named {m.name!r}; every model needs a name of its own (its run folder)")
            seen.add(m.name)
        return self


@dataclass
class ResolvedModel:
    """A suite entry with the recipe it trains with (the suite's data, budget and eval applied)."""

    name: str
    recipe: Recipe
    source: Path
    note: str = ""


def _validation_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the file"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (see docs/suite.md)"
    elif first["type"] == "missing":
        message = "missing (see docs/suite.md)"
    return f"{source}: {where}: {message}"


def suite_from_dict(raw: Any, source: str = "suite") -> Suite:
    """Validate a raw mapping into a :class:`Suite`; one :class:`CttlstmError` line for anything wrong."""
    if not isinstance(raw, dict):
        raise CttlstmError(f"{source}: expected a mapping of sections (name, data, budget, eval, models), got {type(raw).__name__}")
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise CttlstmError(_validation_line(err, source)) from None


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (:func:`resolve_models` checks its models)."""
    path = Path(path)
    if path.is_dir():
        raise CttlstmError(f"{path} is a folder, not a suite file")
    if not path.exists():
        raise CttlstmError(f"suite not found: {path}")
    raw = read_yaml(path)
    if raw is None:
        raise CttlstmError(f"suite {path} is empty; see docs/suite.md or start from suites/smoke.yaml")
    return suite_from_dict(raw, str(path))


def find_recipe(text: str, suite_dir: Path) -> Path:
    """A suite entry's recipe: a path relative to the suite file, else to the working directory, else a
    bundled recipe's name (``tutorial`` -> recipes/tutorial.yaml)."""
    from cttlstm_cli.recipe import bundled_recipe

    for candidate in (suite_dir / text, Path(text)):
        if candidate.is_file():
            return candidate
    found = bundled_recipe(text)
    if found is None:
        raise CttlstmError(f"recipe not found: {text} (looked beside the suite file, in the working directory and among the bundled recipes)")
    return found


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_models(suite: Suite, suite_path: str | Path) -> list[ResolvedModel]:
    """Every model's full recipe, in the suite's order: the recipe file, the suite's ``data`` (in
    place of the recipe's), ``train`` keys, ``budget`` and ``eval``, then the model's own ``set``.

    Refuses, in one line naming the model and the key, an entry whose recipe is missing or invalid,
    whose ``set`` changes the data, the budget or the evaluation, a classifier (suites compare frame
    prediction), and frames the model cannot take."""
    from cttlstm_cli.models import create_model

    suite_path = Path(suite_path)
    data = suite.data.model_dump(mode="json")
    budget = suite.budget.train_keys()
    evaluation = {k: getattr(suite.eval, k) for k in EVAL_KEYS}
    shared = _dotted({"data": data, "train": budget, "eval": evaluation})
    resolved = []
    for entry in suite.models:
        where = f"{suite_path}: model '{entry.name}'"
        path = find_recipe(entry.recipe, suite_path.parent)
        try:
            raw = load_recipe(path).to_dict()
        except CttlstmError as err:
            raise CttlstmError(f"{where}: {err}") from None
        raw["name"] = entry.name
        raw["data"] = dict(data)
        raw["train"] = {**raw["train"], **suite.train, **budget}
        raw["eval"] = {**raw["eval"], **evaluation}
        recipe = recipe_from_dict(raw, f"{where} ({path})", entry.overrides(), overrides_source=f"{where}: set")
        got = _dotted(recipe.to_dict())
        for key, value in shared.items():
            if got.get(key) != value:
                what = "data" if key.startswith("data.") else "budget" if key.startswith("train.") else "evaluation"
                raise CttlstmError(
                    f"{where}: set changes {key} to {as_given(got.get(key))}, but every model of a suite has the suite's "
                    f"{what} ({as_given(value)}); change it in the suite's own section instead"
                )
        model = create_model(recipe.model, recipe.data.channels)
        if not model.predicts_frames or model.num_classes is not None:
            raise CttlstmError(f"{where}: {model.name} is an activity classifier; a suite compares frame prediction")
        try:
            model.check_data(*recipe.data.frame_size, recipe.data.input_frames)
        except CttlstmError as err:
            raise CttlstmError(f"{where}: {err}") from None
        resolved.append(ResolvedModel(entry.name, recipe, path, entry.note))
    return resolved


__all__ = [
    "Budget", "Pictures", "ResolvedModel", "Suite", "SuiteEval", "SuiteModel",
    "find_recipe", "load_suite", "resolve_models", "suite_from_dict",
]
