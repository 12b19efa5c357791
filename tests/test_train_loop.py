"""The training loop with in-memory data: loss falls, exact resume, DDP on gloo, schedules, bf16."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cttlstm_cli.errors import CttlstmError
from cttlstm_cli.models import create_model
from cttlstm_cli.models.convrnn import cells
from cttlstm_cli.checkpoint import read_checkpoint
from cttlstm_cli.recipe import TrainConfig, load_recipe
from cttlstm_cli.training.schedule import PlateauSchedule
from cttlstm_cli.training.step import train_step
from cttlstm_cli.training.trainer import Trainer

from conftest import RECIPES, leave_ddp_worker
from synthetic import BouncingSquares


def smoke(**over):
    sets = [f"{k.replace('__', '.')}={v}" for k, v in over.items()]
    return load_recipe(RECIPES / "smoke.yaml", sets)


def data(frames: int = 10):
    return BouncingSquares(64, frames, 32, seed=0), BouncingSquares(16, frames, 32, seed=1)


class EpochClips(torch.utils.data.Dataset):
    """Clips that depend on (epoch, index), tagged with (pid of the reader, epoch, index)."""

    def __init__(self, clips: int = 64) -> None:
        self.clips, self.epoch = clips, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.clips

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(1000 * self.epoch + index)
        return torch.rand(10, 1, 32, 32, generator=g), torch.tensor([os.getpid(), self.epoch, index])


@pytest.mark.slow
def test_persistent_workers_see_every_epoch_and_resume_mid_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[int, int, int]]] = []
    to_device = Trainer._to_device

    def spy(self, batch):
        if isinstance(batch, list):  # training batches; validation clips are bare tensors
            seen[-1].extend(tuple(int(v) for v in tag) for tag in batch[1])
        return to_device(self, batch)

    def run(name: str, workers: int, **kw) -> Trainer:
        seen.append([])
        recipe = smoke(data__workers=workers, train__epochs=3)
        trainer = Trainer(recipe, tmp_path / name, torch.device("cpu"), EpochClips(), data()[1], log=lambda _m: None, **kw)
        return trainer

    monkeypatch.setattr(Trainer, "_to_device", spy)
    in_process = run("w0", 0)
    in_process.fit()
    persistent = run("w2", 2)
    persistent.fit()
    # Every epoch reads all 64 clips of that epoch, in order, with or without workers ...
    expected = [(e, i) for e in range(3) for i in range(64)]
    assert [(e, i) for _, e, i in seen[0]] == [(e, i) for _, e, i in seen[1]] == expected
    # ... and the two worker processes persist for the whole run.
    assert {p for p, _, _ in seen[0]} == {os.getpid()}
    workers = {p for p, _, _ in seen[1]}
    assert len(workers) == 2 and os.getpid() not in workers
    # ... and stop when fit() returns: left to the garbage collector, each one's stop timed out (5 s a worker).
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for key, value in in_process.net.state_dict().items():
        assert torch.equal(value, persistent.net.state_dict()[key]), key
    # Stopped after 5 steps of 8 clips (mid-epoch 0) and resumed: the rest of epoch 0, then on.
    run("cut", 2).fit(max_steps=5)
    resumed = run("cut", 2, resume=True)
    resumed.fit()
    assert [(e, i) for _, e, i in seen[-2] + seen[-1]] == expected
    for key, value in resumed.net.state_dict().items():
        assert torch.equal(value, in_process.net.state_dict()[key]), key


@pytest.mark.slow
def test_loss_falls_and_run_dir_is_complete(tmp_path: Path) -> None:
    recipe = smoke()
    result = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data()).fit()
    assert (result.epochs, result.steps) == (3, 24)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 3 and {"step", "epoch", "loss", "lr", "teacher_forcing", "clips_per_s"} <= set(train[0])
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == 24 and last["epoch"] == 3 and "optimizer" in last and "rng" in last
    assert best["epoch"] == result.best_epoch + 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "best.pt", "last.pt", "metrics.jsonl", "previous.pt", "recipe.yaml"]


@pytest.mark.slow
def test_best_checkpoint_is_only_replaced_by_a_better_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(smoke(train__epochs=1), run, torch.device("cpu"), *data(), log=lambda _m: None).fit()
    first = read_checkpoint(run / "best.pt")
    # A best.pt that holds a better validation loss than anything this run reaches (put there by hand,
    # or by an older version) is kept: the run's later, worse "improvements" do not replace it.
    better = {**first, "schedule": {**first["schedule"], "best_loss": 1e-9}}
    torch.save(better, run / "best.pt")
    kept = (run / "best.pt").read_bytes()
    result = Trainer(smoke(train__epochs=3), run, torch.device("cpu"), *data(), resume=True, log=lambda _m: None).fit()
    assert result.epochs == 3 and result.best_val_loss < first["schedule"]["best_loss"]  # the run did improve
    assert (run / "best.pt").read_bytes() == kept


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    recipe = smoke()
    Trainer(recipe, tmp_path / "full", torch.device("cpu"), *data()).fit()
    Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data()).fit(max_steps=11)  # stops mid-epoch 1
    resumed = Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data(), resume=True)
    assert (resumed.step, resumed.epoch, resumed.position) == (11, 1, 3)
    resumed.fit()
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The resumed log reads as one run: the same records, except timing and the training-loss
    # average of the one logging window that the interruption split.
    def records(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        drop = {"clips_per_s", "loss"}
        return [{k: v for k, v in json.loads(ln).items() if k not in drop} for ln in lines]

    assert records("part") == records("full")


@pytest.mark.slow
def test_corrupt_last_falls_back_to_previous(tmp_path: Path) -> None:
    recipe = smoke()
    Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data()).fit(max_steps=9)
    (tmp_path / "run" / "last.pt").write_bytes(b"truncated")
    logs: list[str] = []
    trainer = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data(), resume=True, log=logs.append)
    assert trainer.resumed_from == tmp_path / "run" / "previous.pt"
    assert trainer.step == 8 and any("last.pt is unusable" in m for m in logs)


def test_out_dir_with_another_run_is_refused(tmp_path: Path) -> None:
    recipe = smoke()
    Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data()).fit(max_steps=1)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(CttlstmError, match="already holds a run"):
        Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data())
    with pytest.raises(CttlstmError, match="recipe differs from the run .* at 'model.rank'"):
        Trainer(smoke(model__rank=2), tmp_path / "run", torch.device("cpu"), *data(), resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    with pytest.raises(CttlstmError, match="holds no run"):
        Trainer(recipe, tmp_path / "empty", torch.device("cpu"), *data(), resume=True)


def test_plateau_schedule() -> None:
    cfg = TrainConfig(scheduled_sampling={"start": 1.0, "patience": 2, "decay": 0.25}, lr_decay={"patience": 2, "factor": 0.5, "every": 2})
    s = PlateauSchedule.from_config(cfg)
    history = []
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]):
        s.end_epoch(epoch, loss, cfg)
        history.append((s.phase, s.ratio, s.lr_scale))
    assert history == [
        (0, 1.0, 1.0),
        (0, 1.0, 1.0),
        (0, 1.0, 1.0),
        (1, 0.75, 1.0),  # 2 epochs without improvement: decay starts
        (1, 0.5, 1.0),
        (2, 0.25, 1.0),  # a further 2-epoch plateau: lr decay phase
        (2, 0.0, 0.5),  # every 2 epochs in phase 2
        (2, 0.0, 0.5),
        (2, 0.0, 0.25),
        (2, 0.0, 0.25),
    ]
    restored = PlateauSchedule.from_config(cfg)
    restored.load_state_dict(s.state_dict())
    assert restored == s


def test_bf16_autocast_step_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = smoke(train__precision="bf16")
    torch.manual_seed(0)
    model = create_model(recipe.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clips = BouncingSquares(4, 10, 32)[0:4]
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, opt, clips, recipe, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # The step really ran in bf16: under autocast every gate pre-activation is bf16.
    seen = []
    update = cells.lstm_update
    monkeypatch.setattr(cells, "lstm_update", lambda gates, c: (seen.append(gates.dtype), update(gates, c))[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(clips[:, :5], future_frames=1)
    assert len(seen) == 5 * len(model.cells) and all(d == torch.bfloat16 for d in seen)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_device_computes_it(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    from cttlstm_cli.training import step
    from cttlstm_cli.training.run import precision_note

    monkeypatch.setattr(step, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    recipe = smoke(train__precision="auto")
    assert step.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert step.resolve_precision("fp16", cpu) == "fp16" and step.resolve_precision("fp32", cpu) == "fp32"
    with step.autocast("auto", cpu):
        assert torch.is_autocast_enabled("cpu") is native
        if native:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    # channels-last follows the precision auto chose: NCHW for fp32 (the NNPACK path)
    net = step.build_training_model(recipe, cpu)
    assert net.cells["b1l0"].state_conv.weight.is_contiguous(memory_format=torch.channels_last) is native
    assert precision_note("auto", cpu) == (", precision bf16 (auto: native on this device)" if native else ", precision fp32 (auto: no native bf16 on this device)")
    assert precision_note("fp32", cpu) == "" and precision_note("bf16", cpu) == ", precision bf16"


def test_native_bf16_reads_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    from cttlstm_cli.devices import native_bf16

    for avx512_bf16, amx, expected in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert native_bf16(torch.device("cpu")) is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert native_bf16(torch.device("cpu")) is False  # a build without the probes: fp32, the safe choice
    assert native_bf16(torch.device("meta")) is False


def _ddp_worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    recipe = smoke(train__epochs=2)
    trainer = Trainer(recipe, Path(out), torch.device("cpu"), *data(), log=lambda _m: None)
    result = trainer.fit()
    torch.save({"state": trainer.net.state_dict(), "steps": result.steps, "best": result.best_val_loss}, Path(result_dir) / f"rank{rank}.pt")
    leave_ddp_worker()


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(results)), nprocs=2, join=True)
    r0, r1 = (torch.load(results / f"rank{i}.pt", weights_only=True) for i in range(2))
    # Each rank takes half of the 64 clips per epoch: 4 steps of 8 per epoch.
    assert r0["steps"] == r1["steps"] == 8
    assert r0["best"] == r1["best"]  # validation loss is reduced across ranks
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    written = read_checkpoint(tmp_path / "run" / "last.pt")
    assert written["step"] == 8
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"val"' in ln]) == 2  # rank 0 alone writes the log


def test_activity_classifier_shapes_and_loss() -> None:
    from cttlstm_cli.training.step import model_loss

    recipe = load_recipe(
        RECIPES / "ssv2.yaml",
        ["model.blocks=[1,1]", "model.channels=[8,8]", "model.encoder_channels=[4,8]", "model.classes=5", "data.input_frames=3", "data.future_frames=2"],
    )
    torch.manual_seed(0)
    model = create_model(recipe.model, image_channels=3)
    assert model.cells["b0l0"].in_channels == 8  # the encoder's output, at 1/4 resolution
    clips = torch.rand(4, 5, 3, 32, 24)
    outputs, logits = model(clips, 2, 3, 0.0, classify=True)
    assert outputs.shape == (4, 4, 3, 32, 24) and logits.shape == (4, 5)
    labels = torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        pred_only = model_loss(model, clips, recipe, 0.0)
        total = model_loss(model, clips, recipe, 0.0, labels=labels)
        ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(total, recipe.train.prediction_weight * pred_only + ce)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = [float(train_step(model, opt, clips, recipe, 0.0, labels=labels)) for _ in range(8)]
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.classifier.parameters())


@pytest.mark.slow
def test_bf16_channels_last_training_runs_and_learns(tmp_path: Path) -> None:
    recipe = smoke(train__precision="bf16", train__epochs=2)
    trainer = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data())
    # channels-last is the default under mixed precision, NCHW in fp32 (the NNPACK path)
    assert trainer.net.cells["b1l0"].state_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not smoke().train.channels_last_under("fp32")
    assert not smoke(train__precision="bf16", train__channels_last="false").train.channels_last_under("bf16")
    result = trainer.fit()
    assert result.steps == 16
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if r["kind"] == "val"]
    assert val[-1] < val[0]


@pytest.mark.slow
def test_fp16_with_grad_scaler_saves_and_resumes_scaler_state(tmp_path: Path) -> None:
    recipe = smoke(train__precision="fp16")
    trainer = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data())
    assert trainer.scaler is not None
    trainer.fit(max_steps=3)
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    resumed = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data(), resume=True)
    assert resumed.scaler.get_scale() == saved["scale"]


@pytest.mark.slow
def test_compile_option_trains_like_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile wraps the model in torch.compile with the recipe's mode. Inductor's code
    generation takes about a minute on two cores, so the graph is run by the aot_eager
    backend here: it still traces the whole rollout through dynamo and AOT autograd."""
    modes = []
    real_compile = torch.compile

    def compile_for_test(model, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_for_test)
    eager = Trainer(smoke(), tmp_path / "eager", torch.device("cpu"), *data(), log=lambda _m: None)
    compiled = Trainer(smoke(train__compile="reduce-overhead"), tmp_path / "compiled", torch.device("cpu"), *data(), log=lambda _m: None)
    assert compiled.model is not compiled.net and modes == ["reduce-overhead"]
    eager.fit(max_steps=3)
    compiled.fit(max_steps=3)
    for (name, a), b in zip(eager.net.named_parameters(), compiled.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert smoke(train__compile="true").train.compile is True
    with pytest.raises(CttlstmError, match=r"train.compile: .*must be true, false, default, reduce-overhead or max-autotune \(got '?fastest'?\)"):
        smoke(train__compile="fastest")


def test_ctrl_c_stops_after_the_step_it_lands_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT in the middle of step 3 lets that step finish, then saves and stops; a second one is not needed."""
    import signal

    from cttlstm_cli.training import trainer as trainer_module

    calls = []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the step is running
        return train_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step_then_signal)
    recipe = smoke(train__epochs=5, train__checkpoint_every=100)
    result = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data(), log=lambda _m: None).fit()
    assert result.interrupted and result.steps == 3 and len(calls) == 3
    assert read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_weights_gone_non_finite_are_never_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Divergence at step 3 (after the step-2 checkpoint): the run stops, last.pt stays the step-2 one."""
    from cttlstm_cli.training import trainer as trainer_module
    from cttlstm_cli.training.trainer import DivergedError

    calls = []

    def diverge_at_step_3(model, *args, **kwargs):
        loss = train_step(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(trainer_module, "train_step", diverge_at_step_3)
    recipe = smoke(train__checkpoint_every=2, train__log_every=100)
    trainer = Trainer(recipe, tmp_path / "run", torch.device("cpu"), *data(), log=lambda _m: None)
    with pytest.raises(DivergedError, match=r"the training loss is nan at step 4; .*last\.pt \(step 2\) is kept"):
        trainer.fit()
    saved = read_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 2 and all(t.isfinite().all() for t in saved["model"].values())


def test_ctrl_c_in_the_first_step_stops_at_once_and_saves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the first step has finished there is nothing to save: Ctrl-C does not wait for it."""
    import signal

    from cttlstm_cli.training import trainer as trainer_module

    calls = []

    def signal_in_step(*args, **kwargs):
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # the handler raises before this step can finish
        return train_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", signal_in_step)
    trainer = Trainer(smoke(), tmp_path / "run", torch.device("cpu"), *data(), log=lambda _m: None)
    result = trainer.fit()
    assert result.interrupted and result.saved is None and result.steps == 0 and len(calls) == 1
    assert trainer.session_steps == 0 and not list((tmp_path / "run").glob("*.pt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_ctrl_c_in_validation_saves_the_epochs_training_and_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT during the first validation: its batch finishes, last.pt holds the epoch's whole training,
    and --resume validates that epoch again and ends where an uninterrupted run ends."""
    import signal

    from cttlstm_cli.training import trainer as trainer_module

    recipe = smoke(train__epochs=2, train__checkpoint_every=100)  # 8 steps an epoch (64 clips)
    Trainer(recipe, tmp_path / "full", torch.device("cpu"), *data(), log=lambda _m: None).fit()

    loss = trainer_module.model_loss
    calls = []

    def signal_in_validation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "model_loss", signal_in_validation)  # validation's, not train_step's
    statuses: list[str] = []
    result = Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data(), log=lambda _m: None, status=statuses.append).fit()
    assert result.interrupted and result.saved == tmp_path / "part" / "last.pt" and len(calls) == 1
    assert "stopping once this validation batch is done, to save the run (Ctrl-C again stops at once)" in statuses
    saved = read_checkpoint(tmp_path / "part" / "last.pt")
    assert (saved["step"], saved["epoch"], saved["position"]) == (8, 0, 8)
    monkeypatch.setattr(trainer_module, "model_loss", loss)
    resumed = Trainer(recipe, tmp_path / "part", torch.device("cpu"), *data(), resume=True, log=lambda _m: None)
    assert resumed.fit().steps == 16
    a = read_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    val = [json.loads(ln) for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines() if '"val"' in ln]
    assert [r["epoch"] for r in val] == [0, 1]
