"""The learning goal of every model family: suites/table2-cpu.yaml, measured.

Runs (or finishes: the suite is restartable) ``cttlstm suite run suites/table2-cpu.yaml`` and checks,
per model, on the suite's test clips under the paper's convention:

- 10 -> 10 MSE at least 20% below the best trivial predictor (copy the last frame, a blank frame);
- 10 -> 30 MSE below the best trivial predictor as well;
- every number finite (nothing diverged);

and that the whole suite trained in at most 60 minutes. Prints one line per model and goal, then
PASS or FAIL; exits 1 when a goal is missed.

    python benchmarks/bench_suite.py                         # into runs/table2-cpu
    python benchmarks/bench_suite.py --out runs/t2 --suite suites/table2-cpu.yaml
    python benchmarks/bench_suite.py --check-only            # read a finished suite, train nothing
    python benchmarks/bench_suite.py --models tau predrnnv2 --out runs/t2-new   # some models alone, same budget
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: 10 -> 10 MSE at most this fraction of the best trivial predictor's (20% below it)
SHORT_GOAL = -0.20
#: minutes of training the whole suite may take on a 2-core CPU
MINUTES_GOAL = 60.0


def check(summary: dict, short: int, long: int) -> list[tuple[str, bool, str]]:
    """(model, met, line) for every model's goals, and one for the suite's training time."""
    results = []
    for m in summary["models"]:
        by_f = {h["future_frames"]: h for h in m["horizons"]}
        numbers = [v for h in m["horizons"] for v in h["metrics"].values()]
        finite = bool(numbers) and all(math.isfinite(v) for v in numbers)
        for f, goal in ((short, SHORT_GOAL), (long, 0.0)):
            h = by_f.get(f)
            if h is None or h.get("mse_change") is None:
                results.append((m["name"], False, f"{m['name']}: no 10->{f} result"))
                continue
            met = finite and h["mse_change"] < goal if goal == 0.0 else finite and h["mse_change"] <= goal
            ssim = h["metrics"].get("ssim")
            blank_ssim = h["trivial"].get("blank_frame", {}).get("ssim")
            ssim_text = f", SSIM {ssim:.3f} (blank frame {blank_ssim:.3f})" if ssim is not None and blank_ssim is not None else ""
            results.append((m["name"], met,
                            f"{m['name']:<14} {m['parameters']:>9,} params  10->{f:<3} MSE {h['metrics']['mse']:7.2f} "
                            f"vs {h['trivial'][h['best_trivial']]['mse']:7.2f} ({h['best_trivial']}): "
                            f"{100 * h['mse_change']:+5.1f}% (goal {'<=' if goal else '<'} {100 * goal:+.0f}%){ssim_text}"
                            f"  {'met' if met else 'MISSED'}"))
    minutes = summary["train_seconds"] / 60
    results.append(("suite", minutes <= MINUTES_GOAL, f"training time of the whole suite: {minutes:.1f} min "
                    f"(goal <= {MINUTES_GOAL:.0f} min)  {'met' if minutes <= MINUTES_GOAL else 'MISSED'}"))
    return results


def subset_suite(path: Path, names: list[str]) -> Path:
    """A copy of suite ``path`` with only the models ``names``, written beside it as ``.NAME.subset.yaml`` so
    that its recipes resolve as the original's do; an unknown name exits with one line."""
    import yaml

    suite = yaml.safe_load(path.read_text(encoding="utf-8"))
    known = [m["name"] for m in suite["models"]]
    unknown = sorted(set(names) - set(known))
    if unknown:
        sys.exit(f"error: {path} has no model {', '.join(unknown)}; its models: {', '.join(known)}")
    suite["models"] = [m for m in suite["models"] if m["name"] in names]
    subset = path.with_name(f".{path.stem}.subset.yaml")
    subset.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return subset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=str(REPO / "suites" / "table2-cpu.yaml"))
    parser.add_argument("--out", default="runs/table2-cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check-only", action="store_true", help="Read a finished suite's summary; train nothing.")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="train and check only these models of the suite (the same data, budget and evaluation)")
    parser.add_argument("--short", type=int, default=10, help="the horizon held to 20%% below (default 10)")
    parser.add_argument("--long", type=int, default=30, help="the horizon held to below (default 30)")
    args = parser.parse_args()
    suite = subset_suite(Path(args.suite), args.models) if args.models else args.suite
    if not args.check_only:
        command = [sys.executable, "-m", "cttlstm_cli", "suite", "run", str(suite), "--out", args.out, "--device", args.device]
        print("$", " ".join(command[2:]), flush=True)
        if subprocess.call(command) != 0:
            print("FAIL: the suite did not finish")
            return 1
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    import torch

    print(f"\nbench_suite {date.today()}  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"torch {torch.__version__}  threads {torch.get_num_threads()}  suite {summary['suite']}")
    results = check(summary, args.short, args.long)
    for _, _, line in results:
        print(line)
    failed = sorted({name for name, met, _ in results if not met})
    print("PASS: every goal met" if not failed else f"FAIL: goals missed by {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
