"""Properties of reading a damaged checkpoint (issue 23): start from the real ``best.pt``/``last.pt`` of a
trained run, damage one key or value anywhere in it (delete it, or put another type in its place), and
read it the ways the commands do. Whatever the damage, the outcome is one of: it loads (the damage was
harmless to that reader), one ``error: ...`` line with exit 2 and no file changed, or, for ``--resume``
of a damaged ``last.pt``, a warning naming the field and the run going on from ``previous.pt``.

The schema (:func:`~cttlstm_cli.checkpoint.validate_checkpoint`) is the oracle of which: where it
names a problem, the command's line is exactly that problem; where it accepts the file, the command
either works or refuses in one line naming the file (weights of another shape, an optimizer state that
does not fit), never with a traceback.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.checkpoint import load_model_and_recipe, validate_checkpoint
from cttlstm_cli.checkpoint_schema import RngState
from cttlstm_cli.training.schedule import PlateauSchedule

from conftest import RECIPES, assert_unchanged, file_snapshot, one_error_line

SMOKE = str(RECIPES / "smoke.yaml")

#: what a damaged value becomes; the tensors keep the shape of the tensor they replace
REPLACEMENTS = ("delete", "str", "None", "list", "huge int", "negative int", "NaN", "bool", "complex tensor", "int tensor",
                "bool tensor", "reshaped tensor", "empty dict")  # fmt: skip

#: the fields a weights-only reader (evaluate, predict) needs whole: any damage there is refused
WEIGHT_FIELDS = ("format", "model", "image_channels")


def _replacement(kind: str, original: Any) -> Any:
    like = original if torch.is_tensor(original) and original.numel() > 0 else torch.ones(3)
    return {
        "str": lambda: "abc",
        "None": lambda: None,
        "list": lambda: [1, 2],
        "huge int": lambda: 2**70,
        "negative int": lambda: -1,
        "NaN": lambda: math.nan,
        "bool": lambda: True,
        "complex tensor": lambda: like.to(torch.complex64),
        "int tensor": lambda: like.to(torch.int64),
        "bool tensor": lambda: like != 0,
        "reshaped tensor": lambda: torch.zeros(*(n + 1 for n in like.shape)) if like.dim() else torch.zeros(2),
        "empty dict": lambda: {},
    }[kind]()


def damage(draw: st.DataObject, payload: dict) -> tuple[Any, ...]:
    """Damage ``payload`` in place at one place, drawn by walking down from the top (a key at each level,
    then whether to go deeper), so that short and deep paths are both drawn and a 626-item list does not
    outweigh the rest. Returns the path of keys to the damaged place."""
    node: Any = payload
    path: list[Any] = []
    while True:
        key = draw.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))), label="key")
        path.append(key)
        child = node[key]
        if isinstance(child, (dict, list, tuple)) and len(child) and draw.draw(st.booleans(), label="deeper"):
            if isinstance(child, tuple):  # torch.load gives Adam's betas as a tuple: made a list to change it
                node[key] = child = list(child)
            node = child
            continue
        kind = draw.draw(st.sampled_from(REPLACEMENTS), label="damage")
        if kind == "delete":
            del node[key]
        else:
            node[key] = _replacement(kind, child)
        return tuple(path)


def verdict(payload: dict, path: Path, training: bool) -> str | None:
    """The schema's line for ``payload`` (None: valid)."""
    try:
        validate_checkpoint(payload, path, training=training)
    except CttlstmError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def originals(trained_smoke) -> dict[str, dict]:
    return {name: torch.load(trained_smoke.run / name, map_location="cpu", weights_only=True) for name in ("best.pt", "last.pt")}


SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.slow
@settings(max_examples=150, **SETTINGS)
@given(draw=st.data())
def test_the_schema_and_the_loader_accept_or_name_any_damage(originals, tmp_path: Path, draw: st.DataObject) -> None:
    """In the library (no command, so many examples): the schema gives a line or a checkpoint, never another
    exception; what it accepts as training state restores without an error; the loader agrees with it."""
    payload = copy.deepcopy(originals[draw.draw(st.sampled_from(sorted(originals)), label="file")])
    where = damage(draw, payload)
    file = Path(tempfile.mkdtemp(dir=tmp_path)) / "x.pt"
    torch.save(payload, file)
    problem = verdict(payload, file, training=True)
    if problem is None:  # every part of it can be put into a trainer: nothing in it can raise there
        valid = validate_checkpoint(payload, file, training=True)
        saved = RngState.capture()
        try:
            valid.rng.restore()
        finally:
            RngState.model_validate(saved).restore()
        PlateauSchedule(ratio=1.0).load_state_dict(valid.schedule.model_dump())
    else:
        assert problem.startswith(f"{file}: {where[0]}"), (where, problem)
    weights_problem = verdict(payload, file, training=False)
    assert weights_problem is None or weights_problem == problem  # training needs everything weights-only reading does
    try:
        model, recipe = load_model_and_recipe(file)
    except CttlstmError as err:  # the schema's line, or one of the loader's own (weights of another shape)
        assert str(err) == weights_problem if weights_problem is not None else str(err).startswith(f"{file}: "), (where, str(err))
    else:
        assert weights_problem is None and where[0] not in WEIGHT_FIELDS, where
        assert recipe is not None and not model.training


@pytest.mark.slow
@settings(max_examples=30, **SETTINGS)
@given(draw=st.data())
def test_evaluate_of_any_damaged_checkpoint_works_or_is_one_line(cli, trained_smoke, originals, tmp_path: Path, draw: st.DataObject) -> None:
    payload = copy.deepcopy(originals["best.pt"])
    where = damage(draw, payload)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    checkpoint = folder / "best.pt"
    torch.save(payload, checkpoint)
    before = file_snapshot(checkpoint, trained_smoke.data)
    result = cli("evaluate", checkpoint, "--data", trained_smoke.data, "--limit", "2", "--metrics", "mse", "--no-baselines",
                 "--json", "--out", folder / "evaluation", "-q")  # fmt: skip
    problem = verdict(payload, checkpoint, training=False)
    if problem is not None:
        assert one_error_line(result) == f"error: {problem}", where
    elif result.code != 0:
        assert one_error_line(result).startswith(f"error: {checkpoint}: "), where
    else:
        assert where[0] not in WEIGHT_FIELDS, where
        assert json.loads(result.out)["num_samples"] == 2
    assert_unchanged(before)


@pytest.mark.slow
@settings(max_examples=12, **SETTINGS)
@given(draw=st.data())
def test_resume_from_any_damaged_last_checkpoint_goes_on_or_is_one_line(cli, trained_smoke, originals, tmp_path: Path, draw: st.DataObject) -> None:
    """Only last.pt is damaged; previous.pt and best.pt are the run's own, at step 2 like it."""
    payload = copy.deepcopy(originals["last.pt"])
    where = damage(draw, payload)
    run = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    shutil.copytree(trained_smoke.run, run)
    torch.save(payload, run / "last.pt")
    before = file_snapshot(run)
    result = cli("train", SMOKE, "--out", run, "--set", f"data.path={trained_smoke.data}", "--set", "train.epoch_clips=16",
                 "--set", "train.val_clips=8", "--device", "cpu", "--quiet", "--max-steps", "2", "--resume")  # fmt: skip
    problem = verdict(payload, run / "last.pt", training=True)
    if problem is not None:  # damaged: passed over, with the warning, for the previous one
        assert result.code == 0, (where, result.err)
        assert f"warning: last.pt is unusable ({problem}); falling back to previous.pt" in result.out.splitlines(), where
        assert f"resuming {run / 'previous.pt'} at step 2;" in result.out
    elif result.code != 0:  # valid, but not this run's or not fitting its optimizer: refused, as another run's file is
        assert one_error_line(result).startswith(f"error: --resume: {run / 'last.pt'}"), where
        assert_unchanged(before)
    else:  # valid and harmless (an option torch fills in, a disabled scaler's {} for none)
        assert f"resuming {run / 'last.pt'} at step 2;" in result.out, where
        assert "warning:" not in result.out

