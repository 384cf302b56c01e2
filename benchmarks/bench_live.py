"""Live lag, before and after: the same stream and bundle through `stadapter-predict --timeline URL` with
--live-policy all (every window in order: the behaviour before the drop policy) and drop (the default).

    python benchmarks/bench_live.py --bundle BUNDLE [--seconds 40] [--window 2 --stride 1] [--threads 2]

An MPEG-TS stream of a testsrc2 video is sent at real time over HTTP by ffmpeg (-re -listen 1). Each
line's lag_s is the wall-clock time since its window's last frame arrived, as it was written; the table
gives it at 10 s, 20 s and 40 s of wall time, its median and maximum while the stream is live, and the
windows skipped.
Without --bundle a model about 0.5 s a clip on one thread is exported first (as tests/test_live.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stadapter_deploy.net import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_video(path: Path, seconds: int) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"]
        + ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", str(path)],
        check=True,
    )
    return path


def make_bundle(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_tiny_bundle

    return make_tiny_bundle(
        folder, width=384, layers=6, heads=6, patch_size=16, image_size=224, adapter_width=64, adapter_layers=6
    )


def run(bundle: Path, video: Path, policy: str, args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    sender = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(video), "-c", "copy"]
        + ["-f", "mpegts", "-listen", "1", url]
    )
    time.sleep(1.0)
    command = [str(BIN / "stadapter-predict"), "--bundle", str(bundle), "--timeline", url, "--no-progress"]
    command += ["--window", str(args.window), "--stride", str(args.stride), "--live-policy", policy]
    command += ["--threads", str(args.threads)]
    start = time.monotonic()
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [(time.monotonic() - start, json.loads(line)) for line in cli.stdout]
    cli.wait()
    sender.kill()
    lags = [(t, r["lag_s"]) for t, r in lines]

    def lag_at(seconds: float) -> float:
        before = [lag for t, lag in lags if t <= seconds]
        return before[-1] if before else float("nan")

    live = [lag for t, lag in lags if t <= args.seconds]  # while the stream was still coming in
    return {
        "policy": policy,
        "lines": len(lines),
        "skipped": sum(r.get("skipped", 0) for _, r in lines),
        "lag_10s": lag_at(10),
        "lag_20s": lag_at(20),
        "lag_40s": lag_at(args.seconds),
        "lag_median": statistics.median(live),
        "lag_max": max(live),
        "latency_ms": statistics.median(r["latency_ms"] for _, r in lines),
        "wall_s": time.monotonic() - start,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="model bundle (default: export a ~0.5 s/clip model first)")
    p.add_argument("--seconds", type=int, default=40, help="stream length (default 40)")
    p.add_argument("--window", type=float, default=2.0, help="window seconds (default 2)")
    p.add_argument("--stride", type=float, default=1.0, help="stride seconds (default 1)")
    p.add_argument("--threads", type=int, default=2, help="model threads (default 2)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or make_bundle(Path(tmp))
        video = make_video(Path(tmp) / "live.mp4", args.seconds)
        rows = [run(bundle, video, policy, args) for policy in ("all", "drop")]
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Flags:")[-1].split()
    print("CPU flags:", " ".join(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))))
    print(
        f"stream {args.seconds} s at 25 fps, window {args.window} s, stride {args.stride} s, {args.threads} threads\n"
    )
    print("lag_s of the last line written by each wall-clock time (from the command's start), and over the lines")
    print(f"written while the stream was live (the first {args.seconds} s); latency_ms: window decoded to its line\n")
    print(f"| policy | lines | skipped | lag at 10 s | at 20 s | at {args.seconds} s | median | max | latency ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['lines']} | {r['skipped']} | {r['lag_10s']:.1f} | {r['lag_20s']:.1f} | "
            f"{r['lag_40s']:.1f} | {r['lag_median']:.1f} | {r['lag_max']:.1f} | {r['latency_ms']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
