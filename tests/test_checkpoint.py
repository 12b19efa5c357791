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
from cttlstm_cli import checkpoint as checkpoint_module
from cttlstm_cli.atomic import NoSpaceError
from cttlstm_cli.checkpoint import CheckpointRefusedError, load_model_and_recipe, read_checkpoint, save_checkpoint
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the schema of a checkpoint's payload (issue 23) -------------------------------------------------


def _training_file(tmp_path: Path) -> Path:
    """A training checkpoint as the trainer writes it (its fields made the way Trainer.save makes them),
    of a small ConvLSTM after one Adam step; written and read back, so it holds what a file holds."""
    from cttlstm_cli.training.schedule import PlateauSchedule
    from cttlstm_cli.training.rng import rng_state

    torch.manual_seed(0)
    recipe = Recipe(model=ConvRNNConfig(cell="convlstm", **SMALL))
    model = create_model(recipe.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 1, 8, 8), 1).mean().backward()
    optimizer.step()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, model, recipe, optimizer=optimizer.state_dict(), scaler=None, schedule=PlateauSchedule.from_config(recipe.train).state_dict(),
                    epoch=0, step=1, position=1, rng=rng_state())  # fmt: skip
    return path


@pytest.fixture(scope="module")
def written_training_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _training_file(tmp_path_factory.mktemp("training-checkpoint"))


@pytest.fixture
def training_file(written_training_file: Path, tmp_path: Path) -> Path:
    """A copy of the module's training checkpoint for a test to damage."""
    import shutil

    (tmp_path / "run").mkdir()
    return Path(shutil.copy(written_training_file, tmp_path / "run" / "last.pt"))


def test_a_training_checkpoint_as_written_is_valid(training_file: Path) -> None:
    from cttlstm_cli.checkpoint import validate_checkpoint

    data = read_checkpoint(training_file)
    payload = validate_checkpoint(data, training_file, training=True)
    assert (payload.epoch, payload.step, payload.position, payload.scaler, payload.image_channels) == (0, 1, 1, None, 1)
    assert payload.recipe.model.cell == "convlstm" and payload.model.keys() == data["model"].keys()
    assert payload.schedule.model_dump() == data["schedule"]
    # A weights-only file (no training state) is a checkpoint too, for evaluate and predict, not for --resume.
    weights_only = {k: data[k] for k in ("format", "model", "recipe", "image_channels")}
    assert validate_checkpoint(weights_only, training_file).step is None
    with pytest.raises(CttlstmError) as caught:
        validate_checkpoint(weights_only, training_file, training=True)
    assert str(caught.value) == f"{training_file}: optimizer: missing"


@pytest.mark.parametrize("key", ["format", "model", "recipe", "image_channels", "optimizer", "schedule", "epoch", "step", "position", "rng"])
def test_each_missing_key_is_named(training_file: Path, key: str) -> None:
    from cttlstm_cli.checkpoint import validate_checkpoint

    data = read_checkpoint(training_file)
    del data[key]
    with pytest.raises(CttlstmError) as caught:
        validate_checkpoint(data, training_file, training=True)
    assert str(caught.value) == f"{training_file}: {key}: missing"
    torch.save(data, training_file)
    if key in ("format", "model", "recipe", "image_channels"):  # what evaluate and predict need
        with pytest.raises(CttlstmError) as caught:
            load_model(training_file)
        assert str(caught.value) == f"{training_file}: {key}: missing"
    else:  # training state: a weights-only file loads
        assert load_model(training_file).image_channels == 1


def _first_weight(data: dict) -> str:
    return next(iter(data["model"]))


#: (what is damaged, how, the line that names it after "PATH: ")
WRONG_TYPES = [
    ("complex weights", lambda d: d["model"].update({_first_weight(d): d["model"][_first_weight(d)].to(torch.complex64)}),
     "model['cells.b0l0.input_conv.weight']: complex weights (complex64); a checkpoint holds real floating-point tensors"),
    ("int weights", lambda d: d["model"].update({_first_weight(d): d["model"][_first_weight(d)].to(torch.int32)}),
     "model['cells.b0l0.input_conv.weight']: integer weights (int32); a checkpoint holds real floating-point tensors"),
    ("bool weights", lambda d: d["model"].update({_first_weight(d): d["model"][_first_weight(d)] > 0}),
     "model['cells.b0l0.input_conv.weight']: boolean weights; a checkpoint holds real floating-point tensors"),
    ("a number for a weight", lambda d: d["model"].update({_first_weight(d): 1.5}), "model['cells.b0l0.input_conv.weight']: expected a tensor, found 1.5"),
    ("weights not a mapping", lambda d: d.update(model=[1, 2]), "model: expected a mapping of parameter names to tensors, found [1, 2]"),
    ("format", lambda d: d.update(format="cttlstm-checkpoint-v2"),
     "format: expected 'cttlstm-checkpoint-v1' (the checkpoints this version writes and reads), found 'cttlstm-checkpoint-v2'"),
    ("recipe a string", lambda d: d.update(recipe="mmnist"), "recipe: expected a mapping of recipe sections, found 'mmnist'"),
    ("recipe invalid", lambda d: d["recipe"]["train"].update(lr="fast"), "recipe: train.lr: Input should be a valid number (got fast)"),
    ("image_channels", lambda d: d.update(image_channels="1"), "image_channels: expected a positive integer, found '1'"),
    ("image_channels 0", lambda d: d.update(image_channels=0), "image_channels: expected a positive integer, found 0"),
    ("step a string", lambda d: d.update(step="abc"), "step: expected a non-negative integer, found 'abc'"),
    ("step a bool", lambda d: d.update(step=True), "step: expected a non-negative integer, found True"),
    ("step past int64", lambda d: d.update(step=2**70), "step: expected a non-negative integer, found 1180591620717411303424"),
    ("epoch negative", lambda d: d.update(epoch=-1), "epoch: expected a non-negative integer, found -1"),
    ("position a float", lambda d: d.update(position=1.0), "position: expected a non-negative integer, found 1.0"),
    ("optimizer", lambda d: d.update(optimizer=None), "optimizer: expected torch's optimizer state (a mapping with 'state' and 'param_groups'), found None"),
    ("optimizer moments", lambda d: d["optimizer"]["state"][0].update(exp_avg=d["optimizer"]["state"][0]["exp_avg"].to(torch.complex64)),
     "optimizer['state'][0]['exp_avg']: expected a real floating-point tensor or a finite number, found a complex64 tensor of shape [16, 1, 3, 3]"),
    ("optimizer groups", lambda d: d["optimizer"].update(param_groups={}), "optimizer['param_groups']: expected a non-empty list of parameter groups, found an empty mapping"),
    ("optimizer lr", lambda d: d["optimizer"]["param_groups"][0].update(lr=float("nan")),
     "optimizer['param_groups'][0]['lr']: expected a number, a flag, a name or a list of numbers, found nan"),
    ("scaler", lambda d: d.update(scaler={"scale": 1.0}), "scaler['growth_factor']: missing"),
    ("schedule", lambda d: d.update(schedule=[]), "schedule: expected a mapping, found []"),
    ("schedule ratio", lambda d: d["schedule"].update(ratio=1.5), "schedule['ratio']: expected a ground-truth ratio between 0 and 1, found 1.5"),
    ("schedule key", lambda d: d["schedule"].update(patience=3), "schedule['patience']: an unknown key"),
    ("rng", lambda d: d.update(rng="seed"), "rng: expected a mapping, found 'seed'"),
    ("rng torch", lambda d: d["rng"].update(torch=d["rng"]["torch"].to(torch.int64)),
     "rng['torch']: expected torch's generator state (a uint8 tensor of 5056 bytes), found an int64 tensor of shape [5056]"),
    ("rng torch content", lambda d: d["rng"].update(torch=torch.zeros(5056, dtype=torch.uint8)),
     "rng['torch']: not a state of torch's generator (Invalid mt19937 state)"),
    ("rng python", lambda d: d["rng"]["python"].__setitem__(624, 625), "rng['python'][624]: expected an integer from 0 to 624, found 625"),
    ("rng numpy position", lambda d: d["rng"].update(numpy_pos=625), "rng['numpy_pos']: expected a position from 0 to 624, found 625"),
    ("rng numpy words", lambda d: d["rng"].update(numpy=d["rng"]["numpy"][:10]),
     "rng['numpy']: expected numpy's generator words (an int64 tensor of 624), found an int64 tensor of shape [10]"),
]


@pytest.mark.parametrize("damage,expected", [(d, e) for _, d, e in WRONG_TYPES], ids=[name for name, _, _ in WRONG_TYPES])
def test_each_wrong_type_is_named(training_file: Path, damage, expected: str) -> None:
    from cttlstm_cli.checkpoint import validate_checkpoint

    data = read_checkpoint(training_file)
    damage(data)
    with pytest.raises(CttlstmError) as caught:
        validate_checkpoint(data, training_file, training=True)
    assert str(caught.value) == f"{training_file}: {expected}"


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_load_model_refuses_weights_that_are_not_real_floats(tmp_path: Path, training_file: Path, dtype: torch.dtype) -> None:
    """Complex weights used to load (their imaginary part dropped with a warning), integer ones too."""
    data = read_checkpoint(training_file)
    name = _first_weight(data)
    data["model"][name] = data["model"][name].to(dtype)
    torch.save(data, tmp_path / "x.pt")
    with pytest.raises(CttlstmError) as caught:
        load_model_and_recipe(tmp_path / "x.pt")
    kind = {torch.complex64: "complex weights (complex64)", torch.int64: "integer weights (int64)", torch.bool: "boolean weights"}[dtype]
    assert str(caught.value) == f"{tmp_path / 'x.pt'}: model[{name!r}]: {kind}; a checkpoint holds real floating-point tensors"


def test_an_authors_checkpoint_with_complex_weights_is_refused(tmp_path: Path) -> None:
    model = create_model(ConvRNNConfig(cell="convlstm", **SMALL))
    state = authors_state_dict(model, "conv2d")
    state["layers.output.weight"] = state["layers.output.weight"].to(torch.complex64)
    torch.save({"model_state_dict": state}, tmp_path / "authors.pt")
    with pytest.raises(CttlstmError) as caught:
        load_model(tmp_path / "authors.pt")
    assert str(caught.value) == f"{tmp_path / 'authors.pt'}: head.weight: complex weights (complex64); a checkpoint holds real floating-point tensors"


def test_the_integer_buffers_are_the_only_integer_tensors_of_every_family() -> None:
    """What the weights check lets through as integer, every family's models hold, and nothing else."""
    from cttlstm_cli.checkpoint_schema import INTEGER_BUFFERS, weight_problem
    from cttlstm_cli.recipe import load_recipe

    from conftest import RECIPES

    seen = set()
    for path in sorted(RECIPES.glob("smoke*.yaml")):
        recipe = load_recipe(path)
        for name, tensor in create_model(recipe.model, recipe.data.channels, check=False).state_dict().items():
            assert weight_problem(name, tensor) is None, (path.name, name)
            if not tensor.is_floating_point():
                seen.add(name.rsplit(".", 1)[-1])
    assert seen == INTEGER_BUFFERS  # BatchNorm's counter (simvp, tau): the list is neither short nor stale
    assert weight_problem("encoder.0.bn.num_batches_tracked", torch.tensor(1.0)) == "expected an integer tensor (a count), found float32"


def test_the_schedule_schema_lists_every_field_of_the_schedule() -> None:
    import dataclasses

    from cttlstm_cli.checkpoint_schema import ScheduleState
    from cttlstm_cli.training.schedule import PlateauSchedule

    assert list(ScheduleState.model_fields) == [f.name for f in dataclasses.fields(PlateauSchedule)]


def test_a_validated_random_state_restores_every_generator() -> None:
    import random

    import numpy as np

    from cttlstm_cli.checkpoint_schema import RngState

    saved = RngState.capture()
    state = RngState.model_validate(saved)
    first = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(3))
    state.restore()
    again = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and first[1:3] == again[1:3] and np.array_equal(first[3], again[3])


def test_optimizer_state_that_does_not_fit_is_named() -> None:
    from cttlstm_cli.checkpoint import optimizer_state_mismatch

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.rand(2, 3))

    def loaded(change) -> str | None:
        optimizer = torch.optim.Adam([weight], lr=0.1)
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        state = optimizer.state_dict()
        change(state)
        fresh = [dict(group) for group in torch.optim.Adam([weight], lr=0.1).param_groups]
        optimizer.load_state_dict(state)
        return optimizer_state_mismatch(optimizer, fresh, required=("max_lr",) if "max_lr" in state["param_groups"][0] else ())

    assert loaded(lambda s: None) is None
    assert loaded(lambda s: s["param_groups"][0].update(betas="abc")) == "param group 0 holds 'betas' = 'abc' where the optimizer keeps (0.9, 0.999)"
    assert loaded(lambda s: s["param_groups"][0].pop("eps")) == "param group 0 lacks 'eps'"
    assert loaded(lambda s: s["param_groups"][0].update(amsgrad=1.0)) == "param group 0 holds 'amsgrad' = 1.0 where the optimizer keeps False"
    assert loaded(lambda s: s["param_groups"][0].update(max_lr="x")) == "param group 0 holds 'max_lr' = 'x' where a learning-rate schedule keeps a number"
    assert loaded(lambda s: s["state"][0].update(exp_avg=torch.zeros(3))) == "a state 'exp_avg' of shape [3] for a parameter of shape [2, 3]"
    assert loaded(lambda s: s["state"][0].update(step=torch.zeros(2))) == "a state 'step' of shape [2] for a parameter of shape [2, 3]"
    # Keys a newer torch added to the groups are filled in by the load: a file without them still fits.
    assert loaded(lambda s: s["param_groups"][0].pop("foreach")) is None
