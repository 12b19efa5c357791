"""The recipe schema shared by train, evaluate, predict and profile.

A recipe is one YAML file with four sections (``model``, ``data``, ``train``,
``eval``). It is validated strictly: unknown keys, wrong types and impossible
values are rejected with one line naming the key. ``--set a.b=value`` overrides
are applied to the raw mapping before validation, so they are checked the same way.

The ``model`` section belongs to a model family: ``model.arch`` (default ``convrnn``) picks
the family, whose own config class (beside its model, in ``cttlstm_cli/models/<family>/``)
validates the rest of the section.
"""

from __future__ import annotations

import difflib
import numbers
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.schema import MAX_WORKERS, StrictSection
from cttlstm_cli.models import DEFAULT_ARCH, ModelConfig, model_class
from cttlstm_cli.models.registry import config_class, validate_config

class Section(StrictSection):
    """Strict base: unknown keys, NaN, infinity and integers beyond int64 are errors (:mod:`cttlstm_cli.schema`)."""


class DataConfig(Section):
    """Where the prepared shards live and how clips are cut from them."""

    dataset: Literal["mmnist", "kth", "ssv2", "folder"] = "mmnist"
    path: str = "data/mmnist"
    frame_size: tuple[int, int] = (64, 64)
    channels: int = Field(1, ge=1)
    input_frames: int = Field(10, ge=1)
    future_frames: int = Field(10, ge=1)
    stride: int | None = Field(None, ge=1, description="frames between training windows; null: random offsets")
    observed_fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="activity recognition: the fraction of each video the model sees (0.25 or 0.5 in the paper)"
    )
    workers: int | None = Field(
        None, ge=0, le=MAX_WORKERS, description="DataLoader worker processes per training process; null: half the cores, at most 8"
    )
    train_sequences: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Moving-MNIST prepared on first use: training sequences to generate; null: 10,000 (1,000 for frames of 32 px or less)",
    )

    def resolved_workers(self, processes_per_machine: int = 1) -> int:
        """``workers``, or by default half of this machine's cores shared among its processes (at most 8 each)."""
        if self.workers is not None:
            return self.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(8, cores // (2 * max(1, processes_per_machine))))

    @field_validator("frame_size", mode="before")
    @classmethod
    def _positive_size(cls, v: Any) -> Any:
        # One message for every wrong shape of the value (a string such as 64x64, one number, three
        # numbers, fractions, true): pydantic's own would speak of tuples and name one element.
        pair = isinstance(v, (list, tuple)) and len(v) == 2
        if not (pair and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise ValueError(f"must be two positive integers [H, W], got {as_given(v)}")
        return v

    @property
    def clip_frames(self) -> int:
        """Frames per training clip: context plus targets."""
        return self.input_frames + self.future_frames


class ScheduledSampling(Section):
    """Ground-truth ratio: 1.0 until validation plateaus, then a linear decay to 0."""

    start: float = Field(1.0, ge=0.0, le=1.0)
    patience: int = Field(20, ge=0, description="epochs without improvement before the decay starts")
    decay: float = Field(0.004, ge=0.0, description="ratio subtracted per epoch once decaying")


class LRDecay(Section):
    """After a further plateau, multiply the learning rate by ``factor`` every ``every`` epochs."""

    patience: int = Field(20, ge=0)
    factor: float = Field(0.98, gt=0.0, le=1.0)
    every: int = Field(5, ge=1)


class OneCycle(Section):
    """The one-cycle learning rate (``train.lr_schedule: onecycle``): torch's ``OneCycleLR`` over the
    run's optimizer steps, with torch's defaults, which are what OpenSTL trains SimVP and TAU with."""

    warmup: float = Field(
        0.3, ge=0.0, lt=1.0, allow_inf_nan=False, description="fraction of the run's steps spent rising to train.lr (torch's pct_start)"
    )
    div_factor: float = Field(25.0, gt=0.0, allow_inf_nan=False, description="the first step's lr is train.lr / div_factor")
    final_div_factor: float = Field(
        1e4, gt=0.0, allow_inf_nan=False, description="the last step's lr is train.lr / (div_factor * final_div_factor)"
    )


class TrainConfig(Section):
    """The paper's training recipe (design §3)."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, description="learning rate (a diverging run stops with one line)")
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(16, ge=1)
    micro_batch: int | None = Field(
        None, ge=1, description="clips per forward/backward, gradients accumulated; null: the most that fit in memory"
    )
    epochs: int = Field(500, ge=1)
    epoch_clips: int = Field(10_000, ge=1, description="clips per 'epoch' (the paper's 10,000)")
    val_clips: int | None = Field(None, ge=1, description="validation clips per epoch; null: the whole split")
    grad_clip: float | None = Field(3.0, gt=0.0, description="max gradient norm; null: no clipping")
    loss: Literal["l1+l2", "l2", "l1"] = Field(
        "l1+l2", description="prediction loss over every predicted pixel: l1+l2 (the paper), l2 (MSE, as OpenSTL trains), l1"
    )
    scheduled_sampling: ScheduledSampling = Field(default_factory=ScheduledSampling)
    lr_decay: LRDecay = Field(default_factory=LRDecay)
    lr_schedule: Literal["plateau", "onecycle"] = Field(
        "plateau", description="plateau: the paper's (lr_decay, per epoch); onecycle: one_cycle, set every optimizer step"
    )
    one_cycle: OneCycle = Field(default_factory=OneCycle)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32", description="fp32, bf16 or fp16 (torch.amp autocast); auto: bf16 where the device computes it natively, else fp32"
    )
    compile: bool | Literal["default", "reduce-overhead", "max-autotune"] = Field(
        False, description="torch.compile the model; true is mode 'default', 'reduce-overhead' adds CUDA graphs"
    )
    channels_last: bool | None = Field(
        None, description="channels-last memory format; null: on under bf16/fp16, off in fp32"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds torch, numpy and Python's random (numpy takes 0 .. 2^32-1)")
    prediction_weight: float = Field(1.0, ge=0.0, description="lambda in lambda * L_prediction + cross-entropy (classifier models)")
    checkpoint_every: int = Field(1000, ge=1, description="optimizer steps between checkpoints")
    log_every: int = Field(50, ge=1, description="optimizer steps between metrics.jsonl lines")

    @field_validator("lr")
    @classmethod
    def _representable_lr(cls, v: float) -> float:
        # Adam's step is lr / (1 - beta1) in float32: beyond about 3e37 it overflows inside the optimizer.
        if v > 1e37:
            raise ValueError(f"must be at most 1e37 (the optimizer's float32 step overflows beyond it), got {v:g}")
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, v: Any) -> Any:
        modes = {"true": True, "false": False, "default": "default", "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in modes:
            return modes[v.lower()]
        raise ValueError("must be true, false, default, reduce-overhead or max-autotune")

    @model_validator(mode="after")
    def _micro_batch_divides_batch(self) -> TrainConfig:
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide batch_size ({self.batch_size})")
        return self

    def channels_last_under(self, precision: str) -> bool:
        """Whether training in ``precision`` (``precision`` as resolved for the device: fp32, bf16 or
        fp16) runs in channels-last memory format.

        By default only under mixed precision: there oneDNN's and cuDNN's low-precision
        kernels are native NHWC, while the fp32 CPU fast path's NNPACK convs need NCHW.
        """
        if self.channels_last is None:
            return precision != "fp32"
        return self.channels_last


class EvalConfig(Section):
    """What ``cttlstm evaluate`` reports by default."""

    future_frames: list[int] = Field(default_factory=lambda: [10, 30], min_length=1)
    metrics: list[Literal["mse", "mae", "psnr", "ssim", "lpips"]] = Field(
        default_factory=lambda: ["mse", "psnr", "ssim", "lpips"], min_length=1
    )
    convention: Literal["paper", "openstl", "standard"] = "paper"
    batch_size: int = Field(16, ge=1)

    @field_validator("future_frames")
    @classmethod
    def _positive_future(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every entry must be >= 1, got {v}")
        return v


class Recipe(Section):
    """A whole recipe file."""

    name: str = "recipe"
    model: SerializeAsAny[ModelConfig] = Field(default_factory=lambda: model_class(DEFAULT_ARCH).config_class())
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _family_config(cls, v: Any) -> Any:
        return validate_config(v)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe data (tuples become lists)."""
        return self.model_dump(mode="json")


def as_given(value: Any) -> str:
    """A recipe value as it is written in YAML, on one line (``[b, i]``, ``bxi``, ``true``, ``null``):
    how an error message echoes what the user wrote, not Python's repr of it."""
    plain = list(value) if isinstance(value, tuple) else value
    try:
        text = yaml.safe_dump(plain, default_flow_style=True, width=2**20, allow_unicode=True).strip()
    except yaml.YAMLError:
        return repr(value)
    return text.removesuffix("...").strip()  # a lone scalar ends with YAML's document-end marker


# pydantic's explanations after the first clause ("..., unable to parse string as an integer")
# speak of parsing and Python types; the key, the expected kind and the value say it all.
_MESSAGE_TAILS = (", unable to ", ", got a number with a fractional part", ", invalid ")
#: what a true or false where a number belongs is told (pydantic's lax mode reads them as 1 and 0)
NOT_A_BOOL = "must be a number, not true or false"
_NUMBER_CHECKS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of", "finite_number")


def _format_error(
    err: ValidationError, source: str, raw: Any = None, overrides: list[str] | None = None, overrides_source: str = "--set"
) -> str:
    """One line for the first problem: where it is (the override that wrote the key, as
    ``overrides_source KEY=VALUE``, else ``source``), the dotted key, what is wrong and the value given;
    an unknown key gets the nearest known one."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    blamed = _override_of(loc, overrides or [])
    if blamed is not None:
        source = f"{overrides_source} {blamed}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] != "value_error":  # our own validators' messages are kept whole
        for tail in _MESSAGE_TAILS:
            msg = msg.split(tail)[0]
    got = first.get("input")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        near = _nearest_key([str(p) for p in first["loc"]], raw)
        if near is not None:
            msg += f"; did you mean {near}?"
    elif first["type"] in ("dict_type", "model_type", "model_attributes_type"):
        msg = "must be a section (a mapping of keys)"
    elif isinstance(got, bool) and first["type"] in _NUMBER_CHECKS:  # false read as 0 failed "> 0"
        msg = NOT_A_BOOL
    where = f"{source}: " if source else ""
    if loc and not msg.startswith(loc.split(".")[0] + "."):
        quiet = first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) or ", got " in msg or msg == NOT_A_BOOL
        shown = "" if quiet else f" (got {as_given(got)})"
        return f"{where}{loc}: {msg}{shown}"
    return f"{where}{msg}"


def _override_of(loc: str, overrides: list[str]) -> str | None:
    """The last ``--set`` that wrote the dotted key ``loc``, a key inside it, or a section holding it."""
    for text in reversed(overrides):
        key = text.partition("=")[0].strip()
        if key == loc or key.startswith(loc + ".") or loc.startswith(key + "."):
            return text
    return None


def _known_keys(parents: list[str], raw: Any) -> list[str]:
    """The keys the section at ``parents`` takes (the model section's are its family's, by ``model.arch``)."""
    section: Any = Recipe
    for i, name in enumerate(parents):
        if i == 0 and name == "model":
            arch = raw.get("model", {}).get("arch", DEFAULT_ARCH) if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else DEFAULT_ARCH
            try:
                section = config_class(str(arch))
            except CttlstmError:
                return []
            continue
        field = getattr(section, "model_fields", {}).get(name)
        section = getattr(field, "annotation", None)
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
    return list(getattr(section, "model_fields", {}))


def _nearest_key(loc: list[str], raw: Any) -> str | None:
    """The dotted known key closest in spelling to the unknown last key of ``loc``, if one is close."""
    found = difflib.get_close_matches(loc[-1], _known_keys(loc[:-1], raw), n=1, cutoff=0.6)
    return ".".join([*loc[:-1], found[0]]) if found else None


def _coerced_bool(raw: Any, validated: Any, loc: str = "") -> str | None:
    """The key of the first ``true``/``false`` in ``raw`` that validation turned into a number
    (pydantic's lax mode reads true as 1), or None. Walks ``raw`` beside the validated sections."""
    if isinstance(raw, bool):
        return loc if not isinstance(validated, bool) and validated is not None else None
    if isinstance(raw, dict) and isinstance(validated, BaseModel):
        for key, value in raw.items():
            if isinstance(key, str) and key in type(validated).model_fields:
                found = _coerced_bool(value, getattr(validated, key), f"{loc}.{key}" if loc else key)
                if found:
                    return found
    elif isinstance(raw, (list, tuple)) and isinstance(validated, (list, tuple)) and len(raw) == len(validated):
        for i, (value, checked) in enumerate(zip(raw, validated)):
            found = _coerced_bool(value, checked, f"{loc}.{i}")
            if found:
                return found
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CttlstmError(f"--set expects KEY=VALUE (for example train.lr=1e-4), got {text!r}")
    try:
        if _yaml_deeper_than(raw, MAX_YAML_DEPTH):
            raise CttlstmError(f"--set {key.strip()}: the value is nested more than {MAX_YAML_DEPTH} levels deep")
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw recipe mapping (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CttlstmError(f"--set {text}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def recipe_from_dict(raw: Any, source: str = "", overrides: list[str] | None = None, overrides_source: str = "--set") -> Recipe:
    """Validate a raw mapping (plus overrides) into a :class:`Recipe`. A problem is one line naming
    ``source``, or the override that caused it, as ``overrides_source KEY=VALUE`` (``--set`` on the
    command line; a suite says which of its models set it)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CttlstmError(f"{source or 'recipe'}: expected a mapping of sections, got {type(raw).__name__}")
    apply_overrides(raw, overrides or [])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise CttlstmError(_format_error(err, source, raw, overrides, overrides_source)) from None
    coerced = _coerced_bool(raw, recipe)
    if coerced:
        blamed = _override_of(coerced, overrides or [])
        where = f"{overrides_source} {blamed}: " if blamed else f"{source}: " if source else ""
        raise CttlstmError(f"{where}{coerced}: {NOT_A_BOOL}")
    return recipe


#: the repository's recipes/ folder (present in a clone or editable install)
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def bundled_recipe(name: str) -> Path | None:
    """The bundled recipe a bare name stands for (``mmnist`` -> recipes/mmnist.yaml), or None."""
    if Path(name).suffix or "/" in name:
        return None
    path = RECIPES_DIR / f"{name}.yaml"
    return path if path.is_file() else None


#: how deep a YAML file may nest: far beyond any recipe or suite, far below Python's recursion limit
MAX_YAML_DEPTH = 64


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely; an unreadable file, bad YAML or absurd nesting is one line naming the file.

    The depth is checked on YAML's node tree before anything is built from it: PyYAML's composer
    and constructor recurse once per level, and a file of 100,000 ``[`` would end in a
    ``RecursionError`` in either.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CttlstmError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CttlstmError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        too_deep = _yaml_deeper_than(text, MAX_YAML_DEPTH)
        if too_deep:
            raise CttlstmError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep (line {too_deep}); a recipe needs at most a few")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CttlstmError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def _yaml_deeper_than(text: str, limit: int) -> int | None:
    """The 1-based line where ``text``'s YAML first nests deeper than ``limit``, from its event stream
    (flat: no recursion), or None."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > limit:
                return event.start_mark.line + 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. The recipe name defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"recipe not found: {path}")
    raw = read_yaml(path)
    if raw is None or raw == {}:
        # Every key has a default, so an empty file would silently be the full 500-epoch default run.
        raise CttlstmError(f"recipe {path} is empty (no sections); see docs/recipes.md, or start from recipes/smoke.yaml")
    if isinstance(raw, dict):
        raw.setdefault("name", path.stem)
    return recipe_from_dict(raw, str(path), overrides)
