"""The model-family registry: ``register_model("name")`` and ``create_model(config)``.

Built-in families register when :mod:`cttlstm_cli.models` is imported. Third-party families
register through the Python entry-point group ``cttlstm.models``: an installed package that
declares ``name = "package.module"`` (or ``"package.module:Class"``) there is imported the
first time a recipe asks for ``arch: name``, and its module registers the family with
:func:`register_model`. cttlstm itself is never edited (docs/model.md, "Adding a model family").

A family can also teach checkpoint loading to read foreign files (such as the authors'
released Conv-TT-LSTM checkpoints) with :func:`register_importer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

import torch
from torch import Tensor

from cttlstm_cli.devices import allocation_size, available_memory, is_allocation_failure
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.interface import ModelConfig, VideoModel, like_parameters

ENTRY_POINT_GROUP = "cttlstm.models"
#: the family a recipe without ``model.arch`` selects (every recipe written before families existed)
DEFAULT_ARCH = "convrnn"

M = TypeVar("M", bound=type[VideoModel])

#: ``importer(checkpoint dict) -> (config, image channels, state dict)``, or None when not its format
Importer = Callable[[Mapping[str, Any]], "tuple[ModelConfig, int, dict[str, Tensor]] | None"]

_FAMILIES: dict[str, type[VideoModel]] = {}
_IMPORTERS: list[Importer] = []


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`VideoModel` subclass as the family ``name``.

    The class's ``config_class`` must be a :class:`ModelConfig` whose ``arch`` defaults to ``name``.
    """

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, VideoModel)):
            raise TypeError(f"model family {name!r}: {cls!r} is not a VideoModel subclass")
        config_class = getattr(cls, "config_class", None)
        if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
            raise TypeError(f"model family {name!r}: {cls.__name__}.config_class must be a ModelConfig subclass")
        default = config_class.model_fields["arch"].default
        if default != name:
            raise TypeError(f"model family {name!r}: {config_class.__name__}.arch must default to {name!r}, not {default!r}")
        existing = _FAMILIES.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"model family {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        _FAMILIES[name] = cls
        return cls

    return decorate


def register_importer(importer: Importer) -> Importer:
    """Let :func:`~cttlstm_cli.checkpoint.load_model` read a foreign checkpoint format."""
    if importer not in _IMPORTERS:
        _IMPORTERS.append(importer)
    return importer


def importers() -> tuple[Importer, ...]:
    """The registered foreign-checkpoint importers, in registration order."""
    return tuple(_IMPORTERS)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(ep: metadata.EntryPoint) -> None:
    try:
        ep.load()
    except Exception as err:  # noqa: BLE001 - a plugin can fail in any way; report it in one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CttlstmError(
            f"model family {ep.name!r}: its plugin {ep.value!r} failed to import ({type(err).__name__}: {detail})"
        ) from None
    if ep.name not in _FAMILIES:
        raise CttlstmError(f"model family {ep.name!r}: its plugin {ep.value!r} registered no family of that name")


def model_names() -> list[str]:
    """Every family a recipe can select: the registered ones and the installed plugins (not imported)."""
    return sorted(set(_FAMILIES) | set(_entry_points()))


def model_class(name: str) -> type[VideoModel]:
    """The :class:`VideoModel` subclass of family ``name``, importing its plugin if need be."""
    if name not in _FAMILIES:
        ep = _entry_points().get(name)
        if ep is None:
            raise CttlstmError(f"model.arch: unknown model family {name!r}; registered: {', '.join(model_names())}")
        _load_plugin(ep)
    return _FAMILIES[name]


def reference_model(name: str) -> Callable[[VideoModel], VideoModel] | None:
    """Family ``name``'s literal per-step reference (``reference_model(network)`` in the ``reference``
    module beside its model), or None when the family has none. Tests and benchmarks use it as the oracle."""
    package = model_class(name).__module__.rsplit(".", 1)[0]
    try:
        module = importlib.import_module(f"{package}.reference")
    except ModuleNotFoundError:
        return None
    return getattr(module, "reference_model", None)


def config_class(name: str) -> type[ModelConfig]:
    """The config class of family ``name``."""
    return model_class(name).config_class


@dataclass(frozen=True)
class _Probe:
    size: int
    context: int = 2
    future: int = 2


def check_contract(model: VideoModel) -> None:
    """Run a tiny forward in each form of the contract and check the shapes; a family that
    breaks it is named in one line (a CttlstmError) before anything is trained or written."""
    probe = _Probe(size=4 * max(1, int(model.downsampling)), context=model.fixed_context or 2)
    arch = model.config.arch
    frames = torch.zeros(1, probe.context + probe.future, model.image_channels, probe.size, probe.size, **like_parameters(model))
    c, s = model.image_channels, probe.size
    expected: dict[str, tuple[int, ...]] = {}
    got: dict[str, Any] = {}
    if not model.predicts_frames and model.num_classes is None:
        raise CttlstmError(f"model family {arch!r} broke the model contract: it predicts no frames and has no classifier")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if model.predicts_frames:
                expected["prediction"] = (1, probe.future, c, s, s)
                expected["training"] = tuple(model.training_targets(frames, probe.context).shape)
                got["prediction"] = model(frames[:, : probe.context], future_frames=probe.future)
                got["training"] = model(frames, future_frames=probe.future, context_frames=probe.context, teacher_forcing=1.0)
            if model.num_classes is not None:
                outputs, got["logits"] = model(frames[:, : probe.context], future_frames=probe.future, classify=True)
                expected["logits"] = (1, model.num_classes)
                if model.predicts_frames:
                    got["classify"], expected["classify"] = outputs, expected["prediction"]
    except CttlstmError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a family's forward is reported as its own
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CttlstmError(f"model family {arch!r} broke the model contract: its forward failed ({type(err).__name__}: {detail})") from None
    finally:
        model.train(was_training)
    for form, shape in expected.items():
        out = got[form]
        if not isinstance(out, Tensor) or tuple(out.shape) != shape:
            found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise CttlstmError(
                f"model family {arch!r} broke the model contract: {form} output should be {list(shape)}, got {list(found) if isinstance(found, tuple) else found}"
            )


def create_model(config: ModelConfig, image_channels: int = 1, check: bool = True) -> VideoModel:
    """Build the model a recipe's ``model`` section describes (``check``: verify the contract)."""
    cls = model_class(config.arch)
    if not isinstance(config, cls.config_class):
        raise CttlstmError(f"model family {config.arch!r} expects a {cls.config_class.__name__}, got {type(config).__name__}")
    _require_weight_memory(cls, config, image_channels)
    try:
        model = cls(config, image_channels)
    except (RuntimeError, MemoryError) as err:
        if not is_allocation_failure(err):
            raise
        raise CttlstmError(
            f"the {config.display_name} model the recipe describes cannot be allocated ({allocation_size(err)}); "
            "check its widths (model.channels, model.rank, model.kernel ...)"
        ) from None
    if check:
        check_contract(model)
    return model


def _require_weight_memory(cls: type[VideoModel], config: ModelConfig, image_channels: int) -> None:
    """Refuse, in one line, a model whose weights alone would not fit in the host's memory: built
    first on the meta device (shapes, no storage), so that absurd widths never reach an allocation
    the kernel grants and then kills the process for touching."""
    try:
        with torch.device("meta"):
            shell = cls(config, image_channels)
    except Exception:  # noqa: BLE001 - a family that cannot be built on meta is simply not checked here
        return
    need = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
    free = available_memory(torch.device("cpu"))
    if need > free // 2:  # the weights, then as much again for gradients, optimizer state and a copy while loading
        raise CttlstmError(
            f"the {config.display_name} model the recipe describes cannot be allocated: its weights alone take "
            f"{need / 1e9:,.1f} GB, and this machine has {free / 1e9:,.1f} GB available; check its widths "
            "(model.channels, model.rank, model.kernel ...)"
        )


def validate_config(raw: Any) -> Any:
    """A recipe's raw ``model`` mapping validated into its family's config (``arch`` defaults
    to :data:`DEFAULT_ARCH`); config objects pass through unchanged."""
    if isinstance(raw, ModelConfig) or not isinstance(raw, dict):
        return raw
    arch = raw.get("arch", DEFAULT_ARCH)
    if not isinstance(arch, str):
        raise ValueError(f"model.arch: must be a family name, got {arch!r}")
    try:
        cls = config_class(arch)
    except CttlstmError as err:
        text = str(err)
        raise ValueError(text if text.startswith("model.arch") else f"model.arch: {text}") from None
    return cls.model_validate({**raw, "arch": arch})
