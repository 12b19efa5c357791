"""Time ``cttlstm prepare kth`` on 599 synthetic stand-ins for the KTH videos.

The real KTH cannot be downloaded everywhere; this writes 599 gray 160x120 MPEG-4 AVIs
with the real KTH file names (25 persons x 6 actions x 4 scenarios, minus the missing
person13_handclapping_d3) and 400-700 frames each at 25 fps, then times prepare on them.
A moving bright blob over noise keeps the decoder honest. Usage:

    python scripts/bench_prepare_kth.py /tmp/kth-synth --workers 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")


def names() -> list[str]:
    out = []
    for p in range(1, 26):
        for a in ACTIONS:
            for d in range(1, 5):
                if (p, a, d) != (13, "handclapping", 3):  # absent from the real KTH too: 599 videos
                    out.append(f"person{p:02d}_{a}_d{d}_uncomp.avi")
    return out


def write_one(args: tuple[Path, int]) -> None:
    path, seed = args
    rng = np.random.default_rng(seed)
    t = int(rng.integers(400, 701))
    background = rng.integers(40, 90, size=(120, 160), dtype=np.uint8)
    yy, xx = np.mgrid[:120, :160]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(t):
            cx = 80 + 60 * np.sin(i / 20 + seed)
            frame = background.copy()
            frame[(yy - 60) ** 2 + (xx - cx) ** 2 < 200] = 220
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    src = args.folder / "videos"
    src.mkdir(parents=True, exist_ok=True)
    todo = [(src / n, i) for i, n in enumerate(names()) if not (src / n).is_file()]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as ex:
        list(ex.map(write_one, todo, chunksize=8))
    print(f"wrote {len(todo)} videos in {time.perf_counter() - start:.1f} s")
    out = args.folder / "prepared"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cttlstm_cli", "prepare", "kth", str(src), "--out", str(out), "-j", str(args.workers)],
        check=True,
    )
    print(f"prepare kth: {time.perf_counter() - start:.1f} s wall for {len(names())} videos on {args.workers} workers")


if __name__ == "__main__":
    main()
