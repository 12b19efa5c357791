"""What every registered model family must do, checked on each family's smoke recipe: teacher forcing
and scheduled sampling, causality, bf16 autocast, exact resume in-process, and DDP; exact resume after a
SIGKILL from the command line for three representative families (:data:`SIGKILLED`).

The families come from the registry, not from a list: a new family without a smoke recipe
(``recipes/smoke-<arch>.yaml``; the conv-RNN family's is ``recipes/smoke.yaml``) fails here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from cttlstm_cli.models import RecurrentVideoModel, create_model, model_names
from cttlstm_cli.checkpoint import read_checkpoint
from cttlstm_cli.models.registry import model_class, reference_model
from cttlstm_cli.recipe import Recipe, load_recipe
from cttlstm_cli.training.step import train_step
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES, REPO, assert_training_forward_matches, leave_ddp_worker
from hooks import PAUSE_AFTER_FIRST_CHECKPOINT, wait_for_first_checkpoint
from synthetic import BouncingSquares

pytestmark = pytest.mark.slow  # every family trained, killed, resumed and run under DDP: minutes

SIZE, CONTEXT, FUTURE = 16, 4, 4
#: the built-in families (plugins installed in this environment are tested by their own packages)
FAMILIES = [name for name in model_names() if model_class(name).__module__.startswith("cttlstm_cli.")]


def smoke_recipe_path(arch: str) -> Path:
    return RECIPES / ("smoke.yaml" if arch == "convrnn" else f"smoke-{arch}.yaml")


def smoke(arch: str, *overrides: str) -> Recipe:
    """The family's smoke recipe at 16x16, 4 -> 4, batches of 4 (two epochs of 8 steps over :func:`data_for`)."""
    sets = [f"data.frame_size=[{SIZE},{SIZE}]", f"data.input_frames={CONTEXT}", f"data.future_frames={FUTURE}",
            "train.batch_size=4", "train.micro_batch=4", "train.epochs=2", "train.epoch_clips=16", "train.val_clips=8",
            "train.checkpoint_every=2", "train.log_every=2", "data.workers=0", *overrides]  # fmt: skip
    return load_recipe(smoke_recipe_path(arch), sets)


class Labelled(Dataset):
    """Clips with labels, for classifier families: the label is the clip's brightness class."""

    def __init__(self, clips: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(clips) % 3
        self.clips = (0.2 + 0.3 * self.labels[:, None, None, None, None] + 0.1 * torch.rand(clips, CONTEXT + FUTURE, 1, SIZE, SIZE, generator=g))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.clips[index], self.labels[index]


def data_for(recipe: Recipe) -> tuple[Dataset, Dataset]:
    if recipe.model.num_classes is not None:
        return Labelled(32, 0), Labelled(8, 1)
    return BouncingSquares(32, CONTEXT + FUTURE, SIZE, seed=0), BouncingSquares(8, CONTEXT + FUTURE, SIZE, seed=1)


#: the families whose smoke model predicts frames (the others are classifiers only)
PREDICTORS = [arch for arch in FAMILIES if create_model(load_recipe(smoke_recipe_path(arch)).model, check=False).predicts_frames]
#: the predictors that advance one frame at a time (scheduled sampling and per-step causality apply)
RECURRENT = [arch for arch in PREDICTORS if issubclass(model_class(arch), RecurrentVideoModel)]
#: BatchNorm's running statistics are each rank's own (DDP broadcasts rank 0's before every forward, and
#: only rank 0 saves): the parameters are what every rank must share
PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def test_every_builtin_family_has_a_smoke_recipe() -> None:
    assert {"convrnn", "cnn3d"} <= set(FAMILIES) and "convrnn" in PREDICTORS and "cnn3d" not in PREDICTORS
    for arch in FAMILIES:
        assert load_recipe(smoke_recipe_path(arch)).model.arch == arch


@pytest.mark.parametrize("arch", RECURRENT)
def test_teacher_forcing_scheduled_sampling_and_causality(arch: str) -> None:
    recipe = smoke(arch)
    torch.manual_seed(0)
    model = create_model(recipe.model, 1).double().eval()
    clips = torch.rand(2, CONTEXT + FUTURE, 1, SIZE, SIZE, dtype=torch.float64)
    steps = CONTEXT + FUTURE - 1
    with torch.no_grad():
        free = model(clips, FUTURE, context_frames=CONTEXT, teacher_forcing=0.0)
        forced = model(clips, FUTURE, context_frames=CONTEXT, teacher_forcing=1.0)
        all_true = model(clips, FUTURE, context_frames=CONTEXT, teacher_forcing=torch.ones(2, FUTURE - 1, dtype=torch.bool))
        mask = torch.tensor([[True, False, True], [False, False, False]])
        mixed = model(clips, FUTURE, context_frames=CONTEXT, teacher_forcing=mask)
        predicted = model(clips[:, :CONTEXT], future_frames=FUTURE)
    assert free.shape == forced.shape == (2, steps, 1, SIZE, SIZE)
    # Free running is prediction; full teacher forcing is the mask of all True.
    torch.testing.assert_close(free[:, CONTEXT - 1 :], predicted, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forced, all_true, rtol=1e-12, atol=1e-12)
    # The context is the same either way; the ground truth fed at step CONTEXT changes what follows.
    torch.testing.assert_close(free[:, :CONTEXT], forced[:, :CONTEXT], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(free[:, CONTEXT:], forced[:, CONTEXT:])
    # Scheduled sampling per sample: sample 1 never takes the truth, so it runs free.
    torch.testing.assert_close(mixed[1], free[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixed[0, : CONTEXT + 1], forced[0, : CONTEXT + 1], rtol=1e-12, atol=1e-12)
    # Causality: output t never sees frames after t.
    for t in (1, CONTEXT, steps - 2):
        later = clips.clone()
        later[:, t + 1 :] = torch.rand_like(later[:, t + 1 :])
        with torch.no_grad():
            again = model(later, FUTURE, context_frames=CONTEXT, teacher_forcing=1.0)
        torch.testing.assert_close(again[:, : t + 1], forced[:, : t + 1], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(again[:, t + 1 :], forced[:, t + 1 :])


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_autocast_training_step(arch: str) -> None:
    recipe = smoke(arch, "train.precision=bf16")
    torch.manual_seed(0)
    model = create_model(recipe.model, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train, _ = data_for(recipe)
    batch = [train[i] for i in range(4)]
    if isinstance(batch[0], tuple):
        clips, labels = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    else:
        clips, labels = torch.stack(batch), None
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, optimizer, clips.float(), recipe, 0.5, generator=torch.Generator().manual_seed(0), labels=labels)
    assert torch.isfinite(loss) and loss > 0
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert sum(changed) >= 0.9 * len(changed)  # (almost) every parameter had a gradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(clips[:, :CONTEXT].float(), FUTURE, classify=model.num_classes is not None)
    logits = out[1] if isinstance(out, tuple) else None
    frames = out[0] if isinstance(out, tuple) else out
    assert frames is None or frames.dtype == torch.bfloat16
    assert logits is None or logits.dtype == torch.bfloat16


@pytest.mark.parametrize("arch", FAMILIES)
def test_interrupted_then_resumed_equals_uninterrupted(arch: str, tmp_path: Path) -> None:
    recipe = smoke(arch)
    quiet = {"log": lambda _m: None}
    full = Trainer(recipe, tmp_path / "full", torch.device("cpu"), *data_for(recipe), **quiet).fit()
    assert full.steps == 16
    Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data_for(recipe), **quiet).fit(max_steps=11)  # mid-epoch 1
    resumed = Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data_for(recipe), resume=True, **quiet)
    assert (resumed.step, resumed.epoch, resumed.position) == (11, 1, 3)
    resumed.fit()
    a = read_checkpoint(tmp_path / "full" / "last.pt")
    b = read_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 16
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def _ddp_worker(rank: int, world: int, port: int, arch: str, out: str, result_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    recipe = smoke(arch, "train.batch_size=2", "train.micro_batch=2")
    trainer = Trainer(recipe, Path(out), torch.device("cpu"), *data_for(recipe), log=lambda _m: None)
    result = trainer.fit(max_steps=3)
    torch.save({"state": trainer.net.state_dict(), "steps": result.steps}, Path(result_dir) / f"rank{rank}.pt")
    leave_ddp_worker()


@pytest.mark.parametrize("arch", FAMILIES)
def test_ddp_two_processes_on_gloo_keep_one_model(arch: str, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, port, arch, str(tmp_path / "run"), str(results)), nprocs=2, join=True)
    r0, r1 = (torch.load(results / f"rank{i}.pt", weights_only=True) for i in range(2))
    assert r0["steps"] == r1["steps"] == 3
    for key in r0["state"]:
        if not key.endswith(PER_RANK_BUFFERS):
            assert torch.equal(r0["state"][key], r1["state"][key]), key


# -- SIGKILL, then --resume, from the command line -------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Moving-MNIST at 16x16, prepared on disk (every family in :data:`SIGKILLED` predicts frames)."""
    from cttlstm_cli.cli import main

    root = tmp_path_factory.mktemp("every-family")
    args = ["prepare", "mmnist", "--out", str(root / "mmnist"), "--size", str(SIZE), "--train", "32", "--val", "8",
            "--test", "8", "--frames", "12", "--offline", "--quiet"]  # fmt: skip
    assert main(args) == 0
    return root / "mmnist"


def _train(arch: str, out: Path, data: Path, *extra: str, paused: bool = False) -> subprocess.Popen:
    sets = [f"data.path={data}", f"data.frame_size=[{SIZE},{SIZE}]", f"data.input_frames={CONTEXT}", f"data.future_frames={FUTURE}",
            "train.batch_size=4", "train.micro_batch=4", "train.epochs=2", "train.epoch_clips=16", "train.val_clips=8",
            "train.checkpoint_every=2", "data.workers=0"]  # fmt: skip
    start = ["-c", PAUSE_AFTER_FIRST_CHECKPOINT] if paused else ["-m", "cttlstm_cli"]
    args = [sys.executable, *start, "train", str(smoke_recipe_path(arch)), "--out", str(out), "--device", "cpu", "--quiet"]
    for s in sets:
        args += ["--set", s]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


#: The families killed by a real SIGKILL and resumed from the command line. What a SIGKILL adds to the in-process
#: interruption above (which every family passes) is family-independent (nothing of ours runs at the kill; the
#: resume reads last.pt through the same Trainer), and each of these runs costs three processes' start-up
#: (~4 s each, torch and its compiler stack). So: a recurrent family with scheduled sampling, one with BatchNorm
#: buffers, and one whose reverse scheduled sampling draws random numbers after the kill.
SIGKILLED = {"convrnn": (), "simvp": (), "predrnnv2": ("--set", "model.sampling_start=2", "--set", "model.sampling_end=6")}


@pytest.mark.parametrize("arch", SIGKILLED)
def test_sigkill_then_resume_equals_uninterrupted(arch: str, prepared: Path, tmp_path: Path) -> None:
    assert set(SIGKILLED) <= set(PREDICTORS)
    full = _train(arch, tmp_path / "full", prepared, *SIGKILLED[arch])
    assert full.wait(timeout=600) == 0, full.stderr.read().decode()

    killed = _train(arch, tmp_path / "killed", prepared, *SIGKILLED[arch], paused=True)
    last = tmp_path / "killed" / "last.pt"
    wait_for_first_checkpoint(killed)  # the run waits after its first checkpoint (step 2 of 8): always mid-epoch 0
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()
    assert read_checkpoint(last)["step"] == 2

    resumed = _train(arch, tmp_path / "killed", prepared, *SIGKILLED[arch], "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    a = read_checkpoint(tmp_path / "full" / "last.pt")
    b = read_checkpoint(last)
    assert a["step"] == b["step"] == 8  # the resumed run crossed the end of epoch 0 (validation, best.pt)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


#: the families with a fast path and a literal per-step reference to check it against
WITH_REFERENCE = [arch for arch in FAMILIES if reference_model(arch) is not None]


@pytest.mark.parametrize("arch", WITH_REFERENCE)
def test_fast_path_equals_its_reference_in_values_and_gradients(arch: str) -> None:
    import copy

    assert {"convrnn", "predrnnpp", "e3dlstm"} <= set(WITH_REFERENCE)
    torch.manual_seed(0)
    fast = create_model(smoke(arch).model, 1).double()
    reference = reference_model(arch)(copy.deepcopy(fast))
    clips = torch.rand(2, CONTEXT + FUTURE, 1, SIZE, SIZE, dtype=torch.float64)
    # Both in training mode: BatchNorm (SimVP, TAU) normalises by the batch and updates each model's own copy
    # of the running statistics once per forward.
    for teacher_forcing in (1.0, 0.5):
        assert_training_forward_matches(fast, reference, clips, FUTURE, CONTEXT, teacher_forcing)
