"""Checkpoint I/O: our format, and the authors' released layouts (design §7)."""

from __future__ import annotations

from pathlib import Path

import pickle
from contextlib import contextmanager

import pytest
import torch

from cttlstm_cli import load_model
from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.models import checkpoint as checkpoint_module
from cttlstm_cli.atomic import NoSpaceError
from cttlstm_cli.models.checkpoint import CheckpointRefusedError, load_model_and_recipe, read_checkpoint, save_checkpoint
from cttlstm_cli.models.convrnn import ConvRNNConfig
from cttlstm_cli.recipe import Recipe

SMALL = dict(blocks=[2, 1, 1, 2], channels=[4, 6, 6, 4], rank=3, kernel=3)


def authors_state_dict(model, layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Write our network's weights under the authors' key names (design §7)."""
    cfg = model.config
    out = {}
    for name, cell in model.cells.items():
        base = f"{prefix}layers.{name}."
        gate_weight = torch.cat([cell.input_conv.weight, cell.state_conv.weight], dim=1)  # conv over [x ; state]
        if cfg.cell == "convlstm":
            out[base + "conv.weight"] = gate_weight
            out[base + "conv.bias"] = cell.input_conv.bias
            continue
        n = cfg.ctt_order
        for j, core in enumerate(cell.tt.cores):
            out[base + f"layers.{j}.weight"] = core.weight
            out[base + f"layers.{j}.bias"] = core.bias
        out[base + f"layers.{n - 1}.weight"] = gate_weight
        out[base + f"layers.{n - 1}.bias"] = cell.input_conv.bias
        for i, conv in enumerate(cell.tt.preprocess):
            w = conv.weight
            if layout == "conv3d":  # [R, K*C_h, k, k] -> [R, C_h, k, k, K], time last, oldest first
                k_win = cell.tt.window
                w = w.reshape(w.shape[0], k_win, -1, w.shape[2], w.shape[3]).permute(0, 2, 3, 4, 1)
            out[base + f"layers_.{i}.weight"] = w
            out[base + f"layers_.{i}.bias"] = conv.bias
    out[prefix + "layers.output.weight"] = model.head.weight
    out[prefix + "layers.output.bias"] = model.head.bias
    return {k: v.detach().clone() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["conv3d", "conv2d"])
@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("ctt_kernel", [None, 1])
def test_import_authors_convttlstm(tmp_path: Path, layout: str, prefix: str, ctt_kernel: int | None) -> None:
    torch.manual_seed(0)
    cfg = ConvRNNConfig(cell="convttlstm", ctt_order=3, history=4, tt_padding="stepwise", ctt_kernel=ctt_kernel, **SMALL)
    model = create_model(cfg)
    path = tmp_path / "convttlstm-mnist.pt"
    torch.save({"epoch": 7, "model_state_dict": authors_state_dict(model, layout, prefix)}, path)
    loaded = load_model(path)
    assert not loaded.training
    got = loaded.config
    assert (got.ctt_order, got.history, got.rank, got.kernel, got.blocks, got.channels, got.skip_stride) == (3, 4, 3, 3, [2, 1, 1, 2], [4, 6, 6, 4], 2)
    assert got.tt_padding == "stepwise"  # the authors' border behaviour
    assert got.ctt_kernel == ctt_kernel  # inferred from the preprocessing convs when it differs from the gates'
    frames = torch.rand(2, 3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, future_frames=2), model(frames, future_frames=2))


def test_import_authors_convlstm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(ConvRNNConfig(cell="convlstm", **SMALL), image_channels=3)
    path = tmp_path / "convlstm.pt"
    torch.save({"model_state_dict": authors_state_dict(model, "conv2d")}, path)
    loaded = load_model(path)
    assert loaded.config.cell == "convlstm" and loaded.image_channels == 3
    frames = torch.rand(1, 3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(frames, 2), model(frames, 2))


def test_roundtrip_own_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    recipe = Recipe(model=ConvRNNConfig(cell="convlstm_ttd", **SMALL))
    model = create_model(recipe.model)
    save_checkpoint(tmp_path / "run" / "best.pt", model, recipe, epoch=3)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt"]  # no temporary left
    loaded, stored = load_model_and_recipe(tmp_path / "run" / "best.pt")
    assert stored == recipe
    frames = torch.rand(1, 2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "run")(frames, 2), model(frames, 2))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": Evil()}, path, )
    with pytest.raises(CttlstmError, match="refused to load"):
        load_model(path)


@pytest.mark.parametrize(
    "message,reference",
    [
        ("Unsupported global: GLOBAL __main__.Evil was not an allowed global by default. Please use ...", "__main__.Evil"),
        ("Trying to load unsupported GLOBAL posix.system whose module posix is blocked.", "posix.system"),
        ("Trying to call reduce for unrecognized function <built-in function system> which belongs to <module 'posix'>", "<built-in function system>"),
        ("Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got <class 'x.Y'>", "<class 'x.Y'>"),
    ],
)
def test_every_wording_of_a_code_reference_is_refused_not_called_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str, reference: str
) -> None:
    """The torch versions word a refused global differently; each is "references code", never "corrupt"."""
    path = tmp_path / "x.pt"
    path.write_bytes(b"PK")

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(f"Weights only load failed. ... weights_only ... \n\n{message}\n\nCheck the documentation")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointRefusedError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == f"{path}: refused to load: it references code ({reference}), and checkpoints may hold only tensors and plain data"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_keeps_the_checkpoints_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ENOSPC (the temporary file is /dev/full): one line, the temporary file gone, last.pt
    and previous.pt as they were (last.pt becomes previous.pt only once the new one is complete)."""
    recipe = Recipe(model=ConvRNNConfig(cell="convlstm", **SMALL))
    model = create_model(recipe.model)
    last, previous = tmp_path / "run" / "last.pt", tmp_path / "run" / "previous.pt"
    save_checkpoint(last, model, recipe, step=1)
    save_checkpoint(last, model, recipe, keep_previous_as=previous, step=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    real_atomic_path = checkpoint_module.atomic_path

    @contextmanager
    def onto_dev_full(path):
        with real_atomic_path(path) as tmp:
            tmp.symlink_to("/dev/full")  # every write to it fails with ENOSPC
            yield tmp

    monkeypatch.setattr(checkpoint_module, "atomic_path", onto_dev_full)
    with pytest.raises(NoSpaceError) as caught:
        save_checkpoint(last, model, recipe, keep_previous_as=previous, step=3)
    assert str(caught.value) == f"no space left on device writing {last} (ENOSPC)"
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    assert read_checkpoint(last)["step"] == 2 and read_checkpoint(previous)["step"] == 1


@pytest.mark.parametrize(
    "content,match",
    [(b"", "not a readable"), (b"garbage" * 10, "not a readable"), (None, "not found")],
)
def test_broken_checkpoints(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CttlstmError, match=match):
        load_model(path)


def test_unrelated_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CttlstmError, match="not a cttlstm or Conv-TT-LSTM checkpoint"):
        load_model(path)


def test_last_checkpoint_exists_at_every_moment_of_a_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """previous.pt takes last.pt's content without last.pt ever being moved away: a kill at any point of
    a save leaves a last.pt (the old one or the new one), never only a previous.pt."""
    import os

    recipe = Recipe(model=ConvRNNConfig(cell="convlstm", **SMALL))
    model = create_model(recipe.model)
    last, previous = tmp_path / "run" / "last.pt", tmp_path / "run" / "previous.pt"
    save_checkpoint(last, model, recipe, step=1)
    real_replace, seen = os.replace, []

    def watched_replace(src, dst):
        seen.append(last.is_file())
        real_replace(src, dst)
        seen.append(last.is_file())

    monkeypatch.setattr(os, "replace", watched_replace)
    save_checkpoint(last, model, recipe, keep_previous_as=previous, step=2)
    monkeypatch.undo()
    assert len(seen) == 4 and all(seen)  # previous.pt's rename, then the new last.pt's
    assert read_checkpoint(last)["step"] == 2 and read_checkpoint(previous)["step"] == 1
