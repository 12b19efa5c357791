"""The payload of this project's checkpoint files, field by field: one pydantic schema, checked on every read.

A checkpoint is plain data from a file (``torch.load(weights_only=True)`` runs no code, but it hands back
whatever types the file holds), so every field is checked for its type *and* its range before anything
uses it: a string where a step count belongs, complex weights, a random-generator state of the wrong
length would otherwise surface as a traceback deep in torch, numpy or the training loop, or, worse, be
accepted (complex weights loaded silently, their imaginary part dropped).

:func:`validate_payload` is the one entry point; it names the first problem as ``FIELD: PROBLEM`` (``FIELD``
in Python's subscript notation, ``model['cells.0.weight']``, ``rng['python'][624]``) and the caller puts
the file's name in front. Fields of training state (optimizer, schedule, counters, random generators) may
be absent from a weights-only file, but are checked whenever present; :class:`TrainingCheckpoint`
requires them, for ``train --resume``.

Every leaf is checked by a validator of ours rather than by pydantic's coercion: pydantic's lax mode
would read ``True`` as 1 and ``"3"`` as 3, and its messages speak of "Input should be ...".
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError
from torch import Tensor

from cttlstm_cli.errors import CttlstmError, RecipeNotice
from cttlstm_cli.recipe import Recipe, recipe_from_dict
from cttlstm_cli.schema import INT64_MAX  # torch and numpy keep steps and positions as int64

CHECKPOINT_FORMAT = "cttlstm-checkpoint-v1"


#: the integer buffers torch modules keep beside their floating-point weights (BatchNorm's count of the
#: batches it has seen, in the simvp and tau families): the only integer tensors a model's state holds
INTEGER_BUFFERS = frozenset({"num_batches_tracked"})

#: the error type of this module's own checks (pydantic's own types are ``missing``, ``extra_forbidden``, ...)
_ERROR = "checkpoint"


def _fail(problem: str, *at: Any) -> PydanticCustomError:
    """The error of a field's validator; ``at``: the keys below the field where the problem is (pydantic
    knows the location of fields, not of the entries of a mapping a validator walks itself)."""
    return PydanticCustomError(_ERROR, "{problem}", {"problem": problem, "at": at})


def shown(value: Any) -> str:
    """A value as an error line shows it: short, and never a whole tensor or list."""
    if torch.is_tensor(value):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, (list, tuple)):
        plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
        return repr(value) if plain and len(repr(value)) <= 40 else f"a list of {len(value)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    """An integer of the file (a bool is not one, though Python counts it as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_between(low: int, high: int, what: str) -> PlainValidator:
    def check(value: Any) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise _fail(f"expected {what}, found {shown(value)}")
        return value

    return PlainValidator(check)


def _real(what: str, low: float = -math.inf, high: float = math.inf, infinite: bool = False) -> PlainValidator:
    """A real number in ``[low, high]`` (an int counts); NaN never, infinity only where ``infinite``."""

    def check(value: Any) -> float:
        ok = _is_number(value) and not math.isnan(value) and (infinite or math.isfinite(value)) and low <= value <= high
        if not ok:
            raise _fail(f"expected {what}, found {shown(value)}")
        return float(value)

    return PlainValidator(check)


Count = Annotated[int, _int_between(0, INT64_MAX, "a non-negative integer")]


def _is_real_float(value: Any) -> bool:
    """A dense floating-point tensor (not complex) on the CPU, where ``map_location`` puts every tensor."""
    return torch.is_tensor(value) and value.layout == torch.strided and value.is_floating_point()


# --------------------------------------------------------------------------- the weights


def weight_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` as the tensor ``name`` of a model's state dict, or None: a real
    floating-point tensor, or an integer one for the :data:`INTEGER_BUFFERS`. Shapes are checked against
    the model (:func:`~cttlstm_cli.checkpoint.state_dict_mismatch`), finiteness by the loaders."""
    if not torch.is_tensor(value):
        return f"expected a tensor, found {shown(value)}"
    if value.layout != torch.strided:
        return f"a {str(value.layout).removeprefix('torch.')} tensor; a checkpoint holds dense tensors"
    dtype = str(value.dtype).removeprefix("torch.")
    if name.rsplit(".", 1)[-1] in INTEGER_BUFFERS:
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            return f"expected an integer tensor (a count), found {dtype}"
        return None
    if value.dtype.is_complex:
        return f"complex weights ({dtype}); a checkpoint holds real floating-point tensors"
    if value.dtype == torch.bool:
        return "boolean weights; a checkpoint holds real floating-point tensors"
    if not value.dtype.is_floating_point:
        kind = f"integer weights ({dtype})" if dtype.startswith(("int", "uint")) else f"{dtype} weights"
        return f"{kind}; a checkpoint holds real floating-point tensors"
    return None


def _weights(value: Any) -> dict[str, Tensor]:
    if not isinstance(value, Mapping):
        raise _fail(f"expected a mapping of parameter names to tensors, found {shown(value)}")
    for name, tensor in value.items():
        if not isinstance(name, str):
            raise _fail(f"{shown(name)} is no parameter name (a string)")
        problem = weight_problem(name, tensor)
        if problem is not None:
            raise _fail(problem, name)
    return dict(value)


# --------------------------------------------------------------------------- format, recipe, channels


def _format(value: Any) -> str:
    if not isinstance(value, str) or value != CHECKPOINT_FORMAT:
        raise _fail(f"expected {CHECKPOINT_FORMAT!r} (the checkpoints this version writes and reads), found {shown(value)}")
    return value


def stored_recipe(raw: Any, source: str) -> Recipe:
    """The recipe a checkpoint or run directory stored, read quietly: renamed keys of older
    versions are expected there, and the user cannot edit them away."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeNotice)
        return recipe_from_dict(raw, source)


def _recipe(value: Any) -> Recipe:
    if not isinstance(value, dict):
        raise _fail(f"expected a mapping of recipe sections, found {shown(value)}")
    try:
        return stored_recipe(value, "")
    except CttlstmError as err:  # the recipe code's own line: "model.channels: ..."
        raise _fail(str(err)) from None


# --------------------------------------------------------------------------- training state


def _optimizer(value: Any) -> dict[str, Any]:
    """torch's ``Optimizer.state_dict()``: ``state`` (parameter index -> its tensors and numbers) and
    ``param_groups`` (hyper-parameters, and the indices of their parameters). Whether it fits the run's
    optimizer (group sizes, tensor shapes) is :func:`~cttlstm_cli.checkpoint.optimizer_state_mismatch`'s."""
    if not isinstance(value, Mapping):
        raise _fail(f"expected torch's optimizer state (a mapping with 'state' and 'param_groups'), found {shown(value)}")
    for key in ("state", "param_groups"):
        if key not in value:
            raise _fail("missing", key)
    state, groups = value["state"], value["param_groups"]
    if not isinstance(state, Mapping):
        raise _fail(f"expected a mapping of parameter indices to their state, found {shown(state)}", "state")
    for index, entry in state.items():
        if not _is_int(index) or not 0 <= index <= INT64_MAX:
            raise _fail(f"{shown(index)} is no parameter index (a non-negative integer)", "state")
        if not isinstance(entry, Mapping):
            raise _fail(f"expected a mapping of state names to tensors, found {shown(entry)}", "state", index)
        for name, item in entry.items():
            if not (_is_real_float(item) or (_is_number(item) and math.isfinite(item))):
                raise _fail(f"expected a real floating-point tensor or a finite number, found {shown(item)}", "state", index, name)
    if not isinstance(groups, list) or not groups:
        raise _fail(f"expected a non-empty list of parameter groups, found {shown(groups)}", "param_groups")
    listed: set[int] = set()
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping):
            raise _fail(f"expected a mapping of hyper-parameters, found {shown(group)}", "param_groups", i)
        if "params" not in group:
            raise _fail("missing", "param_groups", i, "params")
        params = group["params"]
        if not isinstance(params, list) or not all(_is_int(p) and 0 <= p <= INT64_MAX for p in params):
            raise _fail(f"expected a list of parameter indices, found {shown(params)}", "param_groups", i, "params")
        if listed & set(params) or len(set(params)) != len(params):
            raise _fail("lists a parameter twice", "param_groups", i, "params")
        listed |= set(params)
        for name, item in group.items():
            if name != "params" and not _hyper_parameter(item):
                raise _fail(f"expected a number, a flag, a name or a list of numbers, found {shown(item)}", "param_groups", i, name)
    for index in state:
        if index not in listed:
            raise _fail("the state of a parameter that no parameter group lists", "state", index)
    return dict(value)


def _hyper_parameter(value: Any) -> bool:
    """A value torch's optimizers keep in a parameter group: a finite number (or a 0-d tensor of one, as
    a ``capturable`` learning rate), a flag, None, a name, or a tuple of numbers (Adam's ``betas``)."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if _is_number(value):
        return math.isfinite(value)
    if _is_real_float(value):
        return value.numel() == 1 and bool(value.isfinite().all())
    if isinstance(value, (list, tuple)):
        return all(_is_number(v) and math.isfinite(v) for v in value)
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True)


class ScalerState(_Strict):
    """``GradScaler.state_dict()`` of an fp16 run (an fp32 or bf16 run stores None, a disabled scaler ``{}``)."""

    scale: Annotated[float, _real("a positive number", low=math.ulp(0.0))]
    growth_factor: Annotated[float, _real("a positive number", low=math.ulp(0.0))]
    backoff_factor: Annotated[float, _real("a positive number", low=math.ulp(0.0))]
    growth_interval: Annotated[int, _int_between(1, INT64_MAX, "a positive integer")]
    growth_tracker: Count = Field(alias="_growth_tracker")


class ScheduleState(_Strict):
    """:meth:`~cttlstm_cli.training.schedule.PlateauSchedule.state_dict`: every field, none other
    (``load_state_dict`` sets each key as an attribute)."""

    ratio: Annotated[float, _real("a ground-truth ratio between 0 and 1", 0.0, 1.0)]
    lr_scale: Annotated[float, _real("a positive number", low=math.ulp(0.0))]
    phase: Annotated[int, _int_between(0, 2, "a phase of the schedule (0, 1 or 2)")]
    best_loss: Annotated[float, _real("a loss (infinity before the first validation)", infinite=True)]
    best_epoch: Annotated[int, _int_between(-1, INT64_MAX, "an epoch (-1 before the first validation)")]
    stale: Count
    epochs_in_phase: Count


# --------------------------------------------------------------------------- random generators

#: numpy's MT19937 state: 624 32-bit words and a position in them (624: all used, the next draw refills)
NUMPY_WORDS = 624


def _torch_state(value: Any) -> Tensor:
    want = torch.get_rng_state().numel()
    if not torch.is_tensor(value) or value.dtype != torch.uint8 or tuple(value.shape) != (want,):
        raise _fail(f"expected torch's generator state (a uint8 tensor of {want} bytes), found {shown(value)}")
    try:
        torch.Generator().set_state(value)  # a throwaway generator: torch checks the content here
    except RuntimeError as err:
        raise _fail(f"not a state of torch's generator ({str(err).strip().splitlines()[0]})") from None
    return value


def _python_state(value: Any) -> list[int | float]:
    """``random.getstate()`` as :meth:`RngState.capture` writes it: its 625 words (the last one the
    position, 0 to 624) and the cached Gaussian (-1: none)."""
    if not isinstance(value, list) or len(value) != 626:
        raise _fail(f"expected Python's generator state (a list of 626 numbers), found {shown(value)}")
    for i, word in enumerate(value[:625]):
        high = 624 if i == 624 else 2**32 - 1
        if not _is_int(word) or not 0 <= word <= high:
            raise _fail(f"expected an integer from 0 to {high}, found {shown(word)}", i)
    if not _is_number(value[625]) or not math.isfinite(value[625]):
        raise _fail(f"expected a finite number, found {shown(value[625])}", 625)
    random.Random().setstate(_python_tuple(value))  # cannot fail after the checks above; proves it
    return value


def _python_tuple(words: list[int | float]) -> tuple[Any, ...]:
    return (3, tuple(int(x) for x in words[:-1]), None if words[-1] == -1 else float(words[-1]))


def _numpy_words(value: Any) -> Tensor:
    if not torch.is_tensor(value) or value.dtype != torch.int64 or tuple(value.shape) != (NUMPY_WORDS,):
        raise _fail(f"expected numpy's generator words (an int64 tensor of {NUMPY_WORDS}), found {shown(value)}")
    if bool(((value < 0) | (value > 2**32 - 1)).any()):
        raise _fail("expected 32-bit words (0 to 2**32 - 1)")
    return value


def _cuda_states(value: Any) -> list[Tensor]:
    """One state per GPU: the seed and the Philox offset, 8 bytes each (torch refuses an offset that
    is not a multiple of 4)."""
    if not isinstance(value, list):
        raise _fail(f"expected a list of CUDA generator states, found {shown(value)}")
    for i, state in enumerate(value):
        if not torch.is_tensor(state) or state.dtype != torch.uint8 or tuple(state.shape) != (16,):
            raise _fail(f"expected a CUDA generator state (a uint8 tensor of 16 bytes), found {shown(state)}", i)
        if int(state[8]) % 4:
            raise _fail("a CUDA generator offset that is not a multiple of 4", i)
    return value


class RngState(_Strict):
    """``rng`` of a training checkpoint: every random generator a training process draws from.

    Validation checks each part the way its generator does when it is set (torch's by setting it on a
    throwaway generator), so that :meth:`restore` of a validated state cannot fail half-way, with some
    generators set and others not. numpy checks nothing of its position: one past 624 would read past
    its words, so the range is ours.
    """

    torch_state: Annotated[Tensor, PlainValidator(_torch_state)] = Field(alias="torch")
    python: Annotated[list, PlainValidator(_python_state)]
    numpy: Annotated[Tensor, PlainValidator(_numpy_words)]
    numpy_pos: Annotated[int, _int_between(0, NUMPY_WORDS, f"a position from 0 to {NUMPY_WORDS}")]
    cuda: Annotated[list, PlainValidator(_cuda_states)] = None  # type: ignore[assignment] # absent: no GPU

    @staticmethod
    def capture() -> dict[str, Any]:
        """The state of every generator this process uses, as tensors and plain data."""
        internal, gauss = random.getstate()[1:]
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": list(internal) + [gauss if gauss is not None else -1],
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def restore(self) -> None:
        """Set every generator to this state; the GPUs' as far as this machine has them."""
        torch.set_rng_state(self.torch_state)
        random.setstate(_python_tuple(self.python))
        np.random.set_state(("MT19937", self.numpy.numpy().astype(np.uint32), self.numpy_pos, 0, 0.0))
        if self.cuda is not None and torch.cuda.is_available():
            for device, state in zip(range(torch.cuda.device_count()), self.cuda):
                torch.cuda.set_rng_state(state, device)


# --------------------------------------------------------------------------- the payload


def _no_scaler_state(value: Any) -> Any:
    """A disabled GradScaler's state is ``{}``: the same as none."""
    return None if isinstance(value, dict) and not value else value


class Checkpoint(BaseModel):
    """A checkpoint as this project writes it (:func:`~cttlstm_cli.checkpoint.save_checkpoint`).
    Training state may be absent (a weights-only file) but is checked when present; keys of no field are
    ignored. An explicit None is refused where the field is no optional one."""

    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)

    format: Annotated[str, PlainValidator(_format)]
    model: Annotated[dict, PlainValidator(_weights)]
    recipe: Annotated[Recipe, PlainValidator(_recipe)]
    image_channels: Annotated[int, _int_between(1, INT64_MAX, "a positive integer")]
    optimizer: Annotated[dict, PlainValidator(_optimizer)] = None  # type: ignore[assignment]
    scaler: Annotated[ScalerState | None, BeforeValidator(_no_scaler_state)] = None
    schedule: ScheduleState = None  # type: ignore[assignment]
    epoch: Count = None  # type: ignore[assignment]
    step: Count = None  # type: ignore[assignment]
    position: Count = None  # type: ignore[assignment]
    rng: RngState = None  # type: ignore[assignment]


class TrainingCheckpoint(Checkpoint):
    """A checkpoint training can continue from (``train --resume``): the training state is required."""

    optimizer: Annotated[dict, PlainValidator(_optimizer)]
    schedule: ScheduleState
    epoch: Count
    step: Count
    position: Count
    rng: RngState


def is_own_format(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` claims to be this project's checkpoint (then it is validated as one, rather than
    handed to the importers of foreign formats): it names a format, or holds our weights and recipe."""
    return "format" in data or ("model" in data and "recipe" in data)


def validate_payload(data: Any, training: bool = False) -> Checkpoint:
    """``data`` as a :class:`Checkpoint` (a :class:`TrainingCheckpoint` with ``training``); a
    ``ValueError`` names its first problem as ``FIELD: PROBLEM``."""
    schema = TrainingCheckpoint if training else Checkpoint
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ValueError(describe(err)) from None


def describe(err: ValidationError) -> str:
    """The first problem of ``err`` in one line: where (``rng['python'][624]``), then what."""
    first = err.errors(include_url=False)[0]
    ctx = first.get("ctx") or {}
    where = list(first["loc"]) + list(ctx.get("at", ()))
    path = str(where[0]) + "".join(f"[{key!r}]" for key in where[1:]) if where else "the checkpoint"
    kind = first["type"]
    if kind == _ERROR:
        problem = ctx["problem"]
    elif kind == "missing":
        problem = "missing"
    elif kind == "extra_forbidden":
        problem = "an unknown key"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        problem = f"expected a mapping, found {shown(first.get('input'))}"
    else:  # none of our fields leaves its checks to pydantic; a safe wording should one ever do
        problem = f"{first['msg']}, found {shown(first.get('input'))}"
    return f"{path}: {problem}"
