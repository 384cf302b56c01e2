"""stadapter-predict's batch path (decode pool + batched inference) against `Predictor.classify` in a loop.

Both classify the same copies of one generated H.264 video with the same Predictor; rounds alternate
(loop, pool, loop, pool, ...) so both see the same machine load. The pool is timed warm: its
processes start (seconds: each imports torch) while stadapter-predict loads the model.

    python benchmarks/bench_predict.py --bundle BUNDLE [--videos 16] [--views 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from stadapter_deploy.predict.batch import BatchOptions, classify_videos, decode_pool
from stadapter_deploy.predict.inputs import VideoInput
from stadapter_deploy.runtime.predictor import load_predictor


def make_videos(folder: Path, count: int, size: str, seconds: float) -> list[Path]:
    first = folder / "v000.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30"]
        + ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(first)],
        check=True,
    )
    paths = [first] + [folder / f"v{i:03d}.mp4" for i in range(1, count)]
    for path in paths[1:]:
        shutil.copy(first, path)
    return paths


def time_loop(predictor, paths: list[Path], views: int | None) -> float:
    start = time.perf_counter()
    for path in paths:
        predictor.classify(str(path), views=views)
    return time.perf_counter() - start


def time_pool(predictor, paths: list[Path], options: BatchOptions) -> float:
    """Steady state: the pool is started (as stadapter-predict starts it while the model loads) and warm."""
    pool = decode_pool(predictor.preprocessing, options)
    pool.submit(str(paths[0])).result()
    start = time.perf_counter()
    results = list(classify_videos(predictor, [VideoInput(str(p)) for p in paths], options, pool))
    seconds = time.perf_counter() - start
    assert all("labels" in r for r in results), results
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--size", default="640x360")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--views", type=int, help="clips per video (default: the recipe's)")
    p.add_argument("--workers", type=int, help="decode processes (default: stadapter-predict's)")
    p.add_argument("--batch-size", type=int, help="clips per model call (default: stadapter-predict's)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    print("uptime:", os.popen("uptime").read().strip())
    print("cpu:", " ".join(sorted(set(os.popen("lscpu | grep -o 'avx512[a-z_0-9]*\\|avx2'").read().split()))))
    predictor = load_predictor(args.bundle, backend=args.backend)
    options = BatchOptions(views=args.views, workers=args.workers, batch_clips=args.batch_size)
    clips_per_video = predictor.preprocessing.with_views(args.views).views
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_videos(Path(tmp), args.videos, args.size, args.seconds)
        predictor.classify(str(paths[0]), views=args.views)  # warm-up: the runtime's first call
        loop, pool = [], []
        for r in range(args.rounds):
            loop.append(time_loop(predictor, paths, args.views))
            pool.append(time_pool(predictor, paths, options))
            print(f"round {r + 1}: loop {loop[-1]:.1f} s, pool {pool[-1]:.1f} s")
    clips = args.videos * clips_per_video
    best_loop, best_pool = min(loop), min(pool)
    print(f"{predictor!r}, {args.videos} videos of {args.size} {args.seconds:g} s, {clips_per_video} clip(s) each")
    print(f"Predictor.classify loop: {clips / best_loop:.2f} clips/s (best of {args.rounds})")
    print(f"stadapter-predict batch: {clips / best_pool:.2f} clips/s (best of {args.rounds})")
    print(
        f"speed-up: {best_loop / best_pool:.2f}x; per round: "
        + ", ".join(f"{a / b:.2f}x" for a, b in zip(loop, pool, strict=True))
    )


if __name__ == "__main__":
    main()
