"""Checkpoint I/O: this project's checkpoints and the authors' released ones.

Every file is read with ``torch.load(weights_only=True)``, so a checkpoint can
never run code. Our checkpoints are dicts with ``format``, ``model`` (state dict),
``recipe`` (plain data) and ``image_channels``; training adds optimizer and
schedule state. The authors' files (design §7) carry only ``model_state_dict``,
so their hyper-parameters are inferred from the tensor shapes.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cttlstm_cli.atomic import atomic_path
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.network import VideoPredictionNetwork, skip_source
from cttlstm_cli.recipe import ModelConfig, Recipe, recipe_from_dict

CHECKPOINT_FORMAT = "cttlstm-checkpoint-v1"
_LAYER = re.compile(r"^b(\d+)l(\d+)$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | Path, model: VideoPredictionNetwork, recipe: Recipe, **extra: Any) -> None:
    """Write a checkpoint that :func:`load_model` reads back into the same network."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "recipe": recipe.to_dict(),
        "image_channels": unwrap(model).image_channels,
        **extra,
    }
    atomic_save(payload, path)


def unwrap(model: torch.nn.Module) -> VideoPredictionNetwork:
    """The network inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model  # type: ignore[return-value]
        model = inner


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain data only) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CttlstmError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CttlstmError(
                f"{path}: refused to load: it references code ({found.group(1)}), and checkpoints may hold only tensors and plain data"
            ) from None
        raise CttlstmError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a checkpoint)") from None
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere inside the unpickler
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CttlstmError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(data, dict):
        raise CttlstmError(f"{path}: expected a checkpoint dict, found {type(data).__name__}")
    return data


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_to_model(state: Mapping[str, Tensor]) -> tuple[ModelConfig, int, dict[str, Tensor]]:
    """Infer the configuration of an authors' state dict and map it to our parameter names.

    Returns ``(model config, image channels, state dict for VideoPredictionNetwork)``.
    """
    state = _strip_prefix(state)
    if "layers.output.weight" not in state:
        raise CttlstmError("not a Conv-TT-LSTM/ConvLSTM checkpoint: no 'layers.output.weight'")
    per_layer: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "layers" and len(parts) > 2 and _LAYER.match(parts[1]):
            per_layer.setdefault(parts[1], {})[".".join(parts[2:])] = value
    if not per_layer:
        raise CttlstmError("checkpoint holds no recurrent layers named 'layers.b{block}l{layer}'")
    names = sorted(per_layer, key=lambda n: tuple(int(x) for x in _LAYER.match(n).groups()))  # type: ignore[union-attr]
    blocks: list[int] = []
    for name in names:
        b, l = (int(x) for x in _LAYER.match(name).groups())  # type: ignore[union-attr]
        if b == len(blocks) and l == 0:
            blocks.append(1)
        elif b == len(blocks) - 1 and l == blocks[-1]:
            blocks[-1] += 1
        else:
            raise CttlstmError(f"unexpected layer layout near {name}")
    first = per_layer[names[0]]
    is_ctt = "layers_.0.weight" in first
    gate_key = f"layers.{_count(first, 'layers_') - 1}.weight" if is_ctt else "conv.weight"
    widths, in_channels = [], []
    for b in range(len(blocks)):
        gate = per_layer[f"b{b}l0"][gate_key]
        widths.append(gate.shape[0] // 4)
    kernel = first[gate_key].shape[-1]
    out: dict[str, Tensor] = {}
    if is_ctt:
        order = _count(first, "layers_")
        rank = first["layers_.0.weight"].shape[0]
        pre = first["layers_.0.weight"]
        window = pre.shape[-1] if pre.dim() == 5 else pre.shape[1] // widths[0]
        cfg_kwargs: dict[str, Any] = dict(cell="convttlstm", order=order, steps=order + window - 1, rank=rank, tt_padding="stepwise")
        state_dim = rank
    else:
        cfg_kwargs = dict(cell="convlstm")
    for name in names:
        layer = per_layer[name]
        b = int(_LAYER.match(name).group(1))  # type: ignore[union-attr]
        gate_w = layer[gate_key]
        hidden = gate_w.shape[0] // 4
        in_channels.append(gate_w.shape[1] - (state_dim if is_ctt else hidden))
        prefix = f"cells.{name}."
        if is_ctt:
            n = cfg_kwargs["order"]
            for j in range(n - 1):
                out[prefix + f"tt.cores.{j}.weight"] = layer[f"layers.{j}.weight"]
                out[prefix + f"tt.cores.{j}.bias"] = layer[f"layers.{j}.bias"]
            _split_gates(out, prefix, gate_w, layer[f"layers.{n - 1}.bias"], in_channels[-1])
            for i in range(n):
                w = layer[f"layers_.{i}.weight"]
                if w.dim() == 5:  # Conv3d [R, C_h, k, k, K], time last -> channel concat, oldest first
                    w = w.permute(0, 4, 1, 2, 3).reshape(w.shape[0], -1, w.shape[2], w.shape[3])
                out[prefix + f"tt.preprocess.{i}.weight"] = w
                out[prefix + f"tt.preprocess.{i}.bias"] = layer[f"layers_.{i}.bias"]
        else:
            _split_gates(out, prefix, gate_w, layer["conv.bias"], in_channels[-1])
    out["head.weight"] = state["layers.output.weight"]
    out["head.bias"] = state["layers.output.bias"]
    image_channels = out["head.weight"].shape[0]
    skip = _infer_skip_stride(blocks, widths, in_channels, out["head.weight"].shape[1], image_channels)
    cfg = ModelConfig(kernel=kernel, blocks=blocks, channels=widths, skip_stride=skip, **cfg_kwargs)
    return cfg, image_channels, out


def _split_gates(out: dict[str, Tensor], prefix: str, weight: Tensor, bias: Tensor, in_channels: int) -> None:
    """The authors' single gate conv over ``[x ; state]`` is our input_conv + state_conv."""
    out[prefix + "input_conv.weight"] = weight[:, :in_channels].contiguous()
    out[prefix + "input_conv.bias"] = bias
    out[prefix + "state_conv.weight"] = weight[:, in_channels:].contiguous()


def _count(layer: Mapping[str, Tensor], group: str) -> int:
    return sum(1 for k in layer if k.startswith(group + ".") and k.endswith(".weight"))


def _infer_skip_stride(blocks: list[int], widths: list[int], in_channels: list[int], head_in: int, image_channels: int) -> int | None:
    firsts = [sum(blocks[:b]) for b in range(len(blocks))]
    for stride in [None, *range(1, len(blocks) + 1)]:
        expected = []
        for b in range(len(blocks)):
            ch = image_channels if b == 0 else widths[b - 1]
            src = skip_source(b, stride) if b > 0 else None
            expected.append(ch + (widths[src] if src is not None else 0))
        src = skip_source(len(blocks), stride)
        head = widths[-1] + (widths[src] if src is not None else 0)
        if [in_channels[i] for i in firsts] == expected and head == head_in:
            return stride
    raise CttlstmError("cannot infer the skip connections from the layer input widths")


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt``; a missing one is a CttlstmError."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise CttlstmError(f"{path} is a directory without best.pt (not a run directory?)")
        return best
    if not path.exists():
        raise CttlstmError(f"checkpoint not found: {path}")
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> VideoPredictionNetwork:
    """Load a checkpoint (this project's, or the authors' released one) as an eval-mode network.

    ``path`` may also be a run directory, in which case its ``best.pt`` is used.
    """
    model, _ = load_model_and_recipe(resolve_checkpoint_path(path), device)
    return model


def load_model_and_recipe(path: str | Path, device: str | torch.device = "cpu") -> tuple[VideoPredictionNetwork, Recipe | None]:
    """Like :func:`load_model`, also returning the stored recipe (``None`` for the authors' files)."""
    data = read_checkpoint(path)
    recipe: Recipe | None = None
    if data.get("format") == CHECKPOINT_FORMAT:
        recipe = recipe_from_dict(data["recipe"], f"{path} (stored recipe)")
        cfg, channels, state = recipe.model, int(data["image_channels"]), _strip_prefix(data["model"])
    elif "model_state_dict" in data or "layers.output.weight" in _strip_prefix(data):
        raw = data.get("model_state_dict", data)
        try:
            cfg, channels, state = official_to_model(raw)
        except CttlstmError as err:
            raise CttlstmError(f"{path}: {err}") from None
    else:
        raise CttlstmError(f"{path}: not a cttlstm or Conv-TT-LSTM checkpoint (keys: {', '.join(list(data)[:5])})")
    model = VideoPredictionNetwork(cfg, channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CttlstmError(f"{path}: weights do not fit the model ({str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err})") from None
    return model.to(device).eval(), recipe
