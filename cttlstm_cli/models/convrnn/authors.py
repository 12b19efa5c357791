"""Import of the authors' released Conv-TT-LSTM and ConvLSTM checkpoints (design §7).

Their files carry only ``model_state_dict`` (a DataParallel ``module.`` prefix is allowed), so
the hyper-parameters are inferred from the tensor shapes and the tensors renamed to ours.
Their CTT module zero-pads inside every core, so the import sets ``tt_padding: stepwise``
and the model predicts exactly what it predicted in their code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models.convrnn.config import ConvRNNConfig, skip_source
from cttlstm_cli.models.registry import register_importer

_LAYER = re.compile(r"^b(\d+)l(\d+)$")


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_to_model(state: Mapping[str, Tensor]) -> tuple[ConvRNNConfig, int, dict[str, Tensor]]:
    """Infer the configuration of an authors' state dict and map it to our parameter names.

    Returns ``(model config, image channels, state dict for ConvRNN)``.
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
        cfg_kwargs: dict[str, Any] = dict(cell="convttlstm", ctt_order=order, history=order + window - 1, rank=rank, tt_padding="stepwise")
        ctt_kernel = pre.shape[2]  # the preprocessing convs' (and cores') spatial size
        if ctt_kernel != kernel:
            cfg_kwargs["ctt_kernel"] = ctt_kernel
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
            n = cfg_kwargs["ctt_order"]
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
    cfg = ConvRNNConfig(kernel=kernel, blocks=blocks, channels=widths, skip_stride=skip, **cfg_kwargs)
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


@register_importer
def import_authors_checkpoint(data: Mapping[str, Any]) -> tuple[ConvRNNConfig, int, dict[str, Tensor]] | None:
    """A checkpoint of the authors' code as ``(config, image channels, state dict)``; None for other files."""
    if "model_state_dict" in data:
        return official_to_model(data["model_state_dict"])
    if "layers.output.weight" in _strip_prefix(data):
        return official_to_model(data)
    return None
