"""Beyond one process: torchrun across two "nodes", an elastic restart after a killed worker, and
evaluate and suite with the clips shared among ranks — each through the real ``torchrun`` command line
on gloo, against one process doing the same work.

Every run uses one thread per process (OMP_NUM_THREADS=1), so that two processes share this machine's
cores without fighting over them and the single-process references compute alike.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import RECIPES, REPO, fail_if_guard_fired

SMOKE = str(RECIPES / "smoke.yaml")
#: the smoke recipe for two epochs: its scheduled sampling stays at 1.0 (the first epoch always improves
#: on no validation yet), so no step draws random numbers, and one process over the global batch of 8
#: clips computes what two processes of 4 do (the clips of each step are the same: Trainer's rank split)
TWO_EPOCHS = ["--set", "train.epochs=2"]
#: a generous bound on a whole launch, so that a bug that hangs a rank fails the test instead of CI
LAUNCH_LIMIT_S = 900
#: final weights of two processes against one, after 16 Adam steps at lr 3e-3: the runs differ only in
#: float32 summation order (two half-batch mean gradients averaged by all-reduce against one mean),
#: about 1e-7 relative per step, which Adam's normalised update can carry to a few 1e-6 in the weights
#: (measured: 2.8e-6 at most). The weights move by about 1e-2 from their initial values, so a wrong
#: batch, a missed gradient average or a rank's clips counted twice is far outside it.
WEIGHT_ATOL, WEIGHT_RTOL = 2e-5, 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str) -> list[str]:
    """The torchrun command of this environment (torch's console script, or the module it runs)."""
    script = Path(sys.executable).with_name("torchrun")
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=environment(), text=True, capture_output=True, timeout=LAUNCH_LIMIT_S)
    fail_if_guard_fired(proc.stderr)
    return proc


def cttlstm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = run([sys.executable, "-m", "cttlstm_cli", *args], cwd)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke Moving-MNIST, prepared once for the module (before any launch, so no rank waits on it)."""
    from cttlstm_cli.data.dataset import ensure_mmnist
    from cttlstm_cli.recipe import load_recipe

    data = tmp_path_factory.mktemp("dist-data") / "mmnist"
    ensure_mmnist(load_recipe(SMOKE, [f"data.path={data}"]).data, progress=False)
    return data


@pytest.fixture(scope="module")
def one_process(smoke_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process over the global batch of 8 clips."""
    out = tmp_path_factory.mktemp("dist-one") / "run"
    cttlstm("train", SMOKE, "--out", str(out), "--quiet", f"--set=data.path={smoke_data}", *TWO_EPOCHS,
            "--set", "train.batch_size=8", cwd=out.parent)
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from cttlstm_cli.checkpoint import read_checkpoint

    return read_checkpoint(run_dir / "last.pt")["model"]


def assert_same_training(run_dir: Path, reference: Path) -> None:
    """The same step count and log steps as the reference, and its weights to the tolerance above."""
    from cttlstm_cli.checkpoint import read_checkpoint

    mine, theirs = read_checkpoint(run_dir / "last.pt"), read_checkpoint(reference / "last.pt")
    assert mine["step"] == theirs["step"] == 16
    for key, value in theirs["model"].items():
        torch.testing.assert_close(mine["model"][key], value, atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL, msg=key)
    initial = initial_weights()
    moved = max(float((value - initial[key]).abs().max()) for key, value in theirs["model"].items())
    assert moved > 100 * WEIGHT_ATOL, moved  # the tolerance is far below what training changed

    def steps(path: Path) -> list[tuple[str, int]]:
        return [(r["kind"], r["step"]) for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())]

    assert steps(run_dir) == steps(reference)  # one log, written once (rank 0), reading as one run


def initial_weights() -> dict[str, torch.Tensor]:
    """The smoke model as the trainer builds it before its first step."""
    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.rng import seed_everything
    from cttlstm_cli.training.step import build_training_model

    recipe = load_recipe(SMOKE)
    seed_everything(recipe.train.seed)
    return {k: v.detach().clone() for k, v in build_training_model(recipe, torch.device("cpu")).state_dict().items()}


@pytest.mark.slow  # torchrun launches and gloo groups: tens of seconds
def test_two_nodes_train_as_one_process_over_the_same_global_batch(smoke_data: Path, one_process: Path, tmp_path: Path) -> None:
    """``torchrun --nnodes 2 --rdzv-backend c10d`` launched twice on one machine (two "nodes" of one
    process each): the weights of one process over the global batch, one log, rank 0 alone writes."""
    out, port = tmp_path / "run", free_port()
    launch = torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                      "--rdzv-id", "two-nodes", "-m", "cttlstm_cli", "train", SMOKE, "--out", str(out), "--quiet",
                      f"--set=data.path={smoke_data}", *TWO_EPOCHS, "--set", "train.batch_size=4")
    nodes = [subprocess.Popen(launch, cwd=tmp_path, env=environment(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [node.communicate(timeout=LAUNCH_LIMIT_S) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, results):
        assert node.returncode == 0, stdout + stderr
        fail_if_guard_fired(stderr)
    summaries = [stdout for stdout, _ in results if "trained smoke" in stdout]
    assert len(summaries) == 1, results  # rank 0 alone speaks: one node printed the run's summary
    assert_same_training(out, one_process)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".lock", "best.pt", "last.pt", "metrics.jsonl", "previous.pt", "recipe.yaml", "torchrun-id"]
    )
    assert (out / "torchrun-id").read_text().strip() == "two-nodes"


#: torchrun runs this instead of ``python -m cttlstm_cli``: on its first attempt, rank 1 SIGKILLs itself
#: once rank 0 has written the first last.pt (step 4 of 8 in the first epoch); a restart runs unchanged
KILL_RANK_1_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys, time
from cttlstm_cli.training.trainer import Trainer
save = Trainer.save

def save_then_die(self, path=None):
    save(self, path)
    if path is None and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and self.dist.rank == 1:
        while not self.run.last.is_file():  # rank 0 writes it (atomically) while rank 1 waits here
            time.sleep(0.05)
        print(f"test hook: rank 1 killed at step {self.step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

Trainer.save = save_then_die
from cttlstm_cli.cli import entry_point
sys.argv[0] = "cttlstm"
entry_point()
"""


@pytest.mark.slow  # torchrun launches and gloo groups: tens of seconds
def test_a_worker_killed_mid_epoch_is_restarted_from_the_last_checkpoint(smoke_data: Path, one_process: Path, tmp_path: Path) -> None:
    """``torchrun --max-restarts 1``: rank 1 dies (SIGKILL) mid-epoch, torchrun stops rank 0 and starts
    both again; the run resumes from the last checkpoint and ends at the same step with the same weights.
    No checkpoint is lost or half-written."""
    hook = tmp_path / "kill_rank_1.py"
    hook.write_text(KILL_RANK_1_AFTER_FIRST_CHECKPOINT)
    out = tmp_path / "run"
    proc = run(torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--monitor-interval", "0.5", str(hook),
                        "train", SMOKE, "--out", str(out), "--quiet", f"--set=data.path={smoke_data}", *TWO_EPOCHS,
                        "--set", "train.batch_size=4"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test hook: rank 1 killed at step 4" in proc.stderr
    assert "torchrun restarted the workers (restart 1); resuming" in proc.stdout + proc.stderr
    assert f"resuming {out / 'last.pt'} at step 4" in proc.stdout + proc.stderr
    # rank 0, stopped by torchrun in a collective, says why in one line instead of a traceback
    assert "Traceback" not in proc.stderr.split("test hook:")[1].split("torchrun restarted")[0]
    assert_same_training(out, one_process)
    from cttlstm_cli.checkpoint import read_checkpoint, validate_checkpoint

    for name in ("last.pt", "previous.pt", "best.pt"):  # every checkpoint whole
        validate_checkpoint(read_checkpoint(out / name), out / name, training=True)
    assert not list(out.glob(".*.tmp-*"))


def test_a_restart_never_takes_over_a_run_another_launch_began(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the launch that began a run resumes it on a restart; another launch's run, or a folder the
    first attempt refused, is left alone (the user passes --resume to continue it)."""
    from cttlstm_cli.training.run_folder import begun_by_this_launch

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text((RECIPES / "smoke.yaml").read_text())
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not begun_by_this_launch(out)  # no launch id recorded: a run begun without torchrun
    (out / "torchrun-id").write_text("job-6\n")
    assert not begun_by_this_launch(out)  # another launch's run
    (out / "torchrun-id").write_text("job-7\n")
    assert begun_by_this_launch(out)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert not begun_by_this_launch(out)  # a first attempt never resumes on its own


@pytest.mark.slow  # torchrun launches and gloo groups: tens of seconds
def test_evaluate_under_torchrun_equals_one_process(one_process: Path, tmp_path: Path) -> None:
    """Two ranks share the clips (also fewer clips than ranks); the gathered report
    equals one process's to 1e-6, and rank 0 alone prints and writes it."""
    for limit in ([], ["--limit", "1"]):  # 400 clips, 200 a rank; one clip, none on rank 1
        name = "-".join(limit) or "all"
        args = ["evaluate", str(one_process), "--split", "val", "--metrics", "mse,mae,psnr,ssim", "--json", "-q", *limit]
        single = json.loads(cttlstm(*args, "--out", str(tmp_path / f"one-{name}"), cwd=tmp_path).stdout)
        proc = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "cttlstm_cli", *args, "--out", str(tmp_path / f"two-{name}")), tmp_path)
        assert proc.returncode == 0, proc.stderr
        shared = json.loads(proc.stdout)  # one JSON object: rank 1 printed nothing
        assert sorted(p.name for p in (tmp_path / f"two-{name}").iterdir()) == ["per_frame.png", "report.json"]
        assert json.loads((tmp_path / f"two-{name}" / "report.json").read_text()) == shared
        assert_reports_equal(shared, single)


def assert_reports_equal(got: dict, expected: dict) -> None:
    """Equal clip counts; every headline and per-frame value of the model and of the trivial predictors to 1e-6."""
    assert len(got["horizons"]) == len(expected["horizons"])
    for mine, theirs in zip(got["horizons"], expected["horizons"]):
        assert mine["num_samples"] == theirs["num_samples"]
        pairs = [(mine, theirs)] + [(mine["baselines"][n], theirs["baselines"][n]) for n in theirs["baselines"]]
        for a, b in pairs:
            assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-6, abs=1e-6)
            for metric, curve in b["per_frame"].items():
                assert a["per_frame"][metric] == pytest.approx(curve, rel=1e-6, abs=1e-6)


@pytest.mark.slow  # torchrun launches and gloo groups: tens of seconds
def test_suite_under_torchrun_trains_each_model_on_the_suites_budget_and_shares_the_test_clips(smoke_data: Path, tmp_path: Path) -> None:
    """``torchrun -m cttlstm_cli suite run``: each model trains with DDP on the suite's budget (each rank
    half of every step's clips), its test report equals one process's evaluation of the same checkpoint,
    and rank 0 alone writes the folder and prints the summary."""
    suite = tmp_path / "suite.yaml"
    suite.write_text((REPO / "suites" / "smoke.yaml").read_text().replace("path: data/smoke-mmnist", f"path: {smoke_data}"))
    out = tmp_path / "suite"
    proc = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "cttlstm_cli", "suite", "run", str(suite), "--out", str(out), "-q"), REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("# Suite smoke") == 1
    state = json.loads((out / "state.json").read_text())
    for name, model in state["models"].items():
        assert model["steps"] == 8 and model["trained"]  # the suite's 8 steps, as one process takes them
        from cttlstm_cli.recipe import read_yaml

        assert read_yaml(out / name / "recipe.yaml")["train"]["batch_size"] == 2  # 4 clips a step, 2 per rank
        report = json.loads((out / model["report"]).read_text())
        again = json.loads(cttlstm("evaluate", str(out / name), "--split", "test", "--future", "5,10", "--limit", "8",
                                   "--batch-size", "8", "--json", "-q", "--out", str(tmp_path / f"again-{name}"), cwd=tmp_path).stdout)
        assert_reports_equal(report, again)
    assert (out / "comparison" / "comparison.md").is_file() and (out / "predictions.gif").is_file()


def test_suite_budget_must_divide_among_the_processes() -> None:
    from cttlstm_cli.errors import CttlstmError
    from cttlstm_cli.suite.runner import _per_process
    from cttlstm_cli.suite.schema import load_suite, resolve_models

    models = resolve_models(load_suite(REPO / "suites" / "smoke.yaml"), REPO / "suites" / "smoke.yaml")
    assert _per_process(models[0], 2).recipe.train.batch_size == 2
    with pytest.raises(CttlstmError, match=r"budget.batch_size \(4\) does not divide among the 3 processes"):
        _per_process(models[0], 3)


def test_collectives_time_out_in_minutes_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from cttlstm_cli.distributed import DEFAULT_TIMEOUT_S, collective_timeout
    from cttlstm_cli.errors import CttlstmError

    monkeypatch.delenv("CTTLSTM_DIST_TIMEOUT", raising=False)
    assert collective_timeout() == timedelta(seconds=DEFAULT_TIMEOUT_S) == timedelta(minutes=10)
    monkeypatch.setenv("CTTLSTM_DIST_TIMEOUT", "90")
    assert collective_timeout() == timedelta(seconds=90)
    for bad in ("0", "-5", "ten", "inf", "nan"):
        monkeypatch.setenv("CTTLSTM_DIST_TIMEOUT", bad)
        with pytest.raises(CttlstmError, match=r"^CTTLSTM_DIST_TIMEOUT="):
            collective_timeout()


def test_a_failed_collective_is_one_line_naming_the_group_not_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a rank sees when another one dies: the CLI says so (exit 75, torchrun may restart) instead of
    its last-resort "internal error"."""
    import torch.distributed as dist

    from cttlstm_cli.distributed import collective_failure

    peer = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:50389")
    timeout = dist.DistBackendError("[c10d] ProcessGroup gloo timed out after 600000 ms waiting for recv")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert collective_failure(peer) is None  # one process: an error like any other
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert collective_failure(peer).startswith("rank 0: another process of the torchrun group stopped (RuntimeError: ")
    assert collective_failure(timeout).startswith("rank 0: a collective waited longer than 600 s (CTTLSTM_DIST_TIMEOUT)")
    # seen when restarted ranks read the dead workers' addresses: a refusal, not a slow collective
    refused = dist.DistBackendError("[../third_party/gloo/gloo/transport/tcp/pair.cc:144] Gloo connectFullMesh failed "
                                    "with [../third_party/gloo/gloo/transport/tcp/pair.cc:144] timed out connecting: Connection refused")
    assert collective_failure(refused).startswith("rank 0: could not connect to another process of the torchrun group")
    assert collective_failure(RuntimeError("shape mismatch")) is None  # a bug here stays a bug


def test_the_cli_exits_75_with_one_line_when_the_group_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cttlstm_cli import cli
    from cttlstm_cli.cli import GROUP_FAILED

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(cli, "app", broken)
    assert cli.main(["train", "smoke"]) == GROUP_FAILED == 75
    err = capsys.readouterr().err
    assert err.startswith("error: rank 1: another process of the torchrun group stopped") and err.count("\n") == 1


def test_under_torchrun_a_run_folder_must_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank would pick its own timestamped folder (and a restarted group yet another one)."""
    from cttlstm_cli.errors import CttlstmError
    from cttlstm_cli.recipe import load_recipe
    from cttlstm_cli.training.run import resolve_run_dir

    recipe = load_recipe(SMOKE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CttlstmError, match="under torchrun, pass --out DIR"):
        resolve_run_dir(recipe, None, resume=False)
    assert resolve_run_dir(recipe, Path("runs/x"), resume=False) == Path("runs/x")


def test_each_rank_takes_every_world_th_item() -> None:
    from cttlstm_cli.distributed import Distributed

    shares = [list(Distributed(rank=r, world=3).share(8)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sorted(i for share in shares for i in share) == list(range(8))
    assert list(Distributed().share(4)) == [0, 1, 2, 3]


#: stands in for SLURM's srun on this machine: the command once per node (``--ntasks-per-node=1``),
#: all at once, each with its node's variables; srun's own options are skipped
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$FAKE_SLURM_LOGS/node$node.out" 2> "$FAKE_SLURM_LOGS/node$node.err" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
#: stands in for ``scontrol show hostnames``: both "nodes" are this machine. The second line comes after a
#: pause, as a long node list would come in several writes: a script that reads the first line through
#: ``| head -n 1`` under pipefail then dies of SIGPIPE (exit 141) every time, not one CI run in many.
FAKE_SCONTROL = """#!/bin/bash
echo 127.0.0.1
sleep 0.5
echo 127.0.0.1
"""


@pytest.mark.slow  # two torchrun agents: tens of seconds
def test_the_slurm_script_runs_as_written(smoke_data: Path, one_process: Path, tmp_path: Path) -> None:
    """scripts/slurm/train.sbatch, run as SLURM would run its batch step (its environment, srun and scontrol
    standing in), trains across two "nodes" to the weights of one process over the same global batch;
    submitted again it resumes the run instead of refusing the folder."""
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "run"
    env = dict(environment(), PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node[1-2]", FAKE_SLURM_LOGS=str(logs), RECIPE=SMOKE, OUT=str(out),
               GPUS_PER_NODE="1", DEVICE="cpu", RDZV_PORT=str(free_port()), PYTHON=sys.executable)
    script = [str(REPO / "scripts" / "slurm" / "train.sbatch"), f"--set=data.path={smoke_data}", *TWO_EPOCHS,
              "--set", "train.batch_size=4", "--quiet"]
    proc = subprocess.run(script, cwd=REPO, env=env, text=True, capture_output=True, timeout=LAUNCH_LIMIT_S)
    node_logs = "\n".join(f"{p.name}: {p.read_text()}" for p in sorted(logs.iterdir()))
    assert proc.returncode == 0, proc.stderr + node_logs
    assert_same_training(out, one_process)
    assert (out / "torchrun-id").read_text().strip() == "4242"  # the job's id is the rendezvous id
    # Submitted again (a requeue): the script passes --resume, and the finished run stays as it was.
    env["RDZV_PORT"] = str(free_port())
    again = subprocess.run(script, cwd=REPO, env=env, text=True, capture_output=True, timeout=LAUNCH_LIMIT_S)
    node_logs = "\n".join(f"{p.name}: {p.read_text()}" for p in sorted(logs.iterdir()))
    assert again.returncode == 0, again.stderr + node_logs
    assert "resuming" in node_logs and "already holds a run" not in node_logs
    assert_same_training(out, one_process)


@pytest.mark.slow  # a torchrun launch: seconds
def test_activity_accuracy_under_torchrun_gathers_every_rank_s_videos(tmp_path: Path) -> None:
    """A classifier's labels and predicted classes are gathered from both ranks: accuracy overall, per
    group and per class equal one process's (6 videos: 3 per rank)."""
    from cttlstm_cli.checkpoint import save_checkpoint
    from cttlstm_cli.models import create_model
    from cttlstm_cli.recipe import load_recipe
    from synthetic import labelled_dataset

    data = labelled_dataset(tmp_path / "ssv2")
    recipe = load_recipe(SMOKE, [f"data.path={data}", "data.dataset=ssv2", "model.classes=3", "data.observed_fraction=0.5",
                                 "data.input_frames=4", "data.future_frames=3"])
    torch.manual_seed(1)
    checkpoint = tmp_path / "clf.pt"
    save_checkpoint(checkpoint, create_model(recipe.model, 1).eval(), recipe)
    args = ["evaluate", str(checkpoint), "--metrics", "mse", "--json", "-q"]
    single = json.loads(cttlstm(*args, "--out", str(tmp_path / "one"), cwd=tmp_path).stdout)
    proc = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "cttlstm_cli", *args, "--out", str(tmp_path / "two")), tmp_path)
    assert proc.returncode == 0, proc.stderr
    shared = json.loads(proc.stdout)
    assert single["accuracy"]["num_samples"] == 6
    assert shared["accuracy"] == single["accuracy"]
    assert_reports_equal(shared, single)
