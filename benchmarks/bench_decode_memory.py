"""Memory one decode takes at the largest frames the decode limits allow, beside the bound the service sizes
its decode workers with (`DecodeLimits.decode_bound_bytes`).

    python benchmarks/bench_decode_memory.py [--size 4096] [--frames 48]

Encodes a SIZExSIZE H.264 (B-frames) and VP9 video (ffmpeg), then, each in a fresh process, decodes it the
way a decode worker does (`prepare_eval_views`) for a 1-view and a 3-temporal-view recipe, and reports the
peak resident memory over what the process held after its imports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import json, resource, sys
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.video import prepare_eval_views
from stadapter_deploy.video.limits import DecodeLimits
import torch
torch.set_num_threads(1)  # as a decode worker runs
video, views, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pre = Preprocessing(num_frames=8, sampling_rate=2 if views > 1 else 0, size=size, temporal_views=views)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
prepare_eval_views(video, pre, limits=DecodeLimits())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_over_imports": peak - before, "bound": DecodeLimits().decode_bound_bytes(8 * views, size)}))
"""


def encode(path: Path, size: int, frames: int, codec: list[str]) -> Path:
    source = ["-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate=25", "-frames:v", str(frames)]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *source, *codec, str(path)], check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="frame side in pixels (default: the 4096 limit)")
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args(argv)
    from stadapter_deploy.hardware import cpu_name, simd_flags

    print(f"machine: {cpu_name()}; flags: {' '.join(simd_flags())}")
    with tempfile.TemporaryDirectory() as tmp:
        videos = {
            "h264 B-frames .mp4": encode(Path(tmp, "v.mp4"), args.size, args.frames, ["-c:v", "libx264", "-bf", "3"]),
            "vp9 .webm": encode(
                Path(tmp, "v.webm"), args.size, args.frames, ["-c:v", "libvpx-vp9", "-deadline", "realtime"]
            ),
        }
        print("| video | views x frames held | size | peak over imports (MB) | bound (MB) |\n|---|---|---|---|---|")
        for name, path in videos.items():
            for views, size in ((1, 224), (3, 224)):
                out = subprocess.run(
                    [sys.executable, "-c", MEASURE, str(path), str(views), str(size)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got = json.loads(out.stdout)
                peak, bound = got["peak_over_imports"] / 2**20, got["bound"] / 2**20
                print(f"| {name} | {views} x 8 | {size} | {peak:.0f} | {bound:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
