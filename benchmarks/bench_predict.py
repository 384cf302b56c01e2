"""stadapter-predict with its defaults against a plain `Predictor.classify` loop, or (--engine ray) its Ray
engine against its local engine; start-up counted on every side.

All are whole commands on the same copies of one generated H.264 video (10 s, 640x360): the loop is a
Python process that loads the Predictor and classifies each video in turn; the others are
`stadapter-predict --bundle B FOLDER --out F [--engine ray]` with no tuning flag (the Ray engine starts
and stops its local cluster). Rounds alternate (A, B, A, ...) so both sides see the same machine load;
medians are reported. The bounds each figure is measured against come first: one video's decode alone
(one core) and its model time alone. With --engine ray, where Ray's time went is taken from the line
the engine prints (cluster start, first line, the rest). Each side's cost in CPU seconds is the whole
machine's (every process a command starts, a Ray cluster's included): run it where nothing else does.

    python benchmarks/bench_predict.py --model tiny [--videos 60] [--rounds 3]
    python benchmarks/bench_predict.py --model tiny --engine ray [--videos 120] [--rounds 3]
    python benchmarks/bench_predict.py --model tiny --engine ray --ray-address 127.0.0.1:6379  # a running cluster
    python benchmarks/bench_predict.py --model b16 [--videos 8] [--rounds 2]
    python benchmarks/bench_predict.py --bundle BUNDLE ...
    python benchmarks/bench_predict.py --model tiny --features   # --features-out against the same command without
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOOP = """
import sys
from stadapter_deploy.runtime.predictor import load_predictor
predictor = load_predictor(sys.argv[1])
for path in sys.argv[2:]:
    predictor.classify(path)
"""


def make_videos(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "v000.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"]
        + ["-t", "10", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(first)],
        check=True,
    )
    paths = [first] + [folder / f"v{i:03d}.mp4" for i in range(1, count)]
    for path in paths[1:]:
        shutil.copy(first, path)
    return paths


def make_bundle(folder: Path, model: str) -> Path:
    """A random-weight bundle through the real export path (tiny: the test helper's; b16: B/16 12x384)."""
    import torch

    from stadapter_deploy import build_model
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.model import save_checkpoint
    from stadapter_deploy.recipes import get_recipe

    torch.manual_seed(0)
    net = build_model("tiny" if model == "tiny" else "vit_b16_adapter12x384", num_classes=6)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".adapter_pre_" in name:
                p.normal_(std=0.05)
    pre = get_recipe("synthetic").preprocessing.replace(size=net.cfg.image_size)
    checkpoint = save_checkpoint(
        net, folder / "checkpoint", extra={"dataset": "synthetic", "preprocessing": pre.to_dict()}
    )
    options = ExportOptions(progress=False, check_videos=1, check_random=1)
    return export_bundle(load_source(checkpoint=checkpoint), folder / "bundle", options).path


def bounds(bundle: Path, video: Path) -> tuple[float, float]:
    """(one video's decode + preprocess alone on one core, its model time alone), seconds, medians of 3."""
    import torch

    from stadapter_deploy.runtime.predictor import load_predictor
    from stadapter_deploy.timing import median_ms

    predictor = load_predictor(bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode_ms = median_ms(lambda: predictor.preprocess(str(video)), 3)
    torch.set_num_threads(threads)
    clips = predictor.preprocess(str(video)).clips
    model_ms = median_ms(lambda: predictor.predict(clips), 3)
    return decode_ms / 1e3, model_ms / 1e3


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent (user, system, interrupts), from /proc/stat: a command's cost
    with every process it starts (a Ray cluster's too), on a machine where nothing else runs."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return float("nan")  # not Linux
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, machine CPU seconds, the finished command)."""
    start, cpu = time.perf_counter(), machine_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, machine_cpu_s() - cpu, done


def run_loop(bundle: Path, paths: list[Path]) -> tuple[float, float]:
    seconds, cpu_s, _ = timed([sys.executable, "-c", LOOP, str(bundle), *map(str, paths)])
    return seconds, cpu_s


def run_predict(bundle: Path, folder: Path, out: Path, engine="local", extra=()) -> tuple[float, float, str, str]:
    """(seconds, machine CPU seconds, what the command chose, where the Ray engine's time went)."""
    for old in (out, out.with_suffix(".npy"), out.with_suffix(".json")):
        old.unlink(missing_ok=True)
    seconds, cpu_s, done = timed(
        [str(BIN / "stadapter-predict"), "--bundle", str(bundle), str(folder), "--out", str(out), "--no-progress"]
        + ["--engine", engine, *extra]
    )
    chose = next((line for line in done.stderr.splitlines() if "decode worker" in line or "ray:" in line), "")
    spent = next((line for line in done.stderr.splitlines() if line.startswith("ray: the cluster took")), "")
    return seconds, cpu_s, chose, spent


def cpu_cores() -> int:
    from stadapter_deploy.hardware import cpu_cores

    return cpu_cores()


def cpu_flags() -> str:
    from stadapter_deploy.hardware import cpu_kind, simd_flags

    return f"{cpu_kind()} ({' '.join(simd_flags())})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="a bundle (default: one made with --model)")
    p.add_argument("--model", choices=("tiny", "b16"), default="tiny", help="random-weight model to export")
    p.add_argument("--videos", type=int, help="videos (default: 60 for tiny, 8 otherwise)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="ray: the Ray engine against the local")
    p.add_argument(
        "--ray-address",
        help="with --engine ray: join this running cluster (`ray start --head --port 6379 --num-cpus N`) "
        "instead of starting a local one each round",
    )
    p.add_argument("--features", action="store_true", help="the command with --features-out against it without")
    args = p.parse_args()
    count = args.videos or ((120 if args.engine == "ray" else 60) if args.model == "tiny" and not args.bundle else 8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or make_bundle(tmp, args.model)
        paths = make_videos(tmp / "videos", count)
        decode_s, model_s = bounds(bundle, paths[0])
        base, predict, chose, spent = [], [], ["", ""], []  # base and predict: (seconds, machine CPU s) a round
        base_name = "stadapter-predict (local engine)" if args.engine == "ray" else "Predictor.classify loop"
        name = "stadapter-predict --engine ray" if args.engine == "ray" else "stadapter-predict (defaults)"
        if args.features:
            base_name, name = "stadapter-predict", "stadapter-predict --features-out"
        extra = ["--features-out", str(tmp / "out.npy")] if args.features else []
        extra += ["--ray-address", args.ray_address] if args.ray_address and args.engine == "ray" else []
        for r in range(args.rounds):
            if args.engine == "ray" or args.features:
                base_engine = args.engine if args.features else "local"  # --features: the same engine both ways
                seconds, cpu_s, chose[0], _ = run_predict(bundle, tmp / "videos", tmp / "out.jsonl", base_engine)
                base.append((seconds, cpu_s))
            else:
                base.append(run_loop(bundle, paths))
            seconds, cpu_s, chose[1], where = run_predict(bundle, tmp / "videos", tmp / "out.jsonl", args.engine, extra)
            predict.append((seconds, cpu_s))
            spent.append(where)
            print(f"round {r + 1}: {base_name} {base[-1][0]:.1f} s, {name} {predict[-1][0]:.1f} s", flush=True)
            if where:
                print(f"  {where}", flush=True)
    print(f"\nCPU: {cpu_flags()}; {cpu_cores()} cores; bundle {bundle.name if args.bundle else args.model}; ", end="")
    print(f"{count} videos of 10 s 640x360")
    print(f"one video alone: decode + preprocess {decode_s * 1e3:.0f} ms (one core), model {model_s * 1e3:.0f} ms")
    for line in filter(None, chose):
        print(f"stadapter-predict chose: {line.removeprefix('stadapter-predict: ')}")
    print("\n| side | median s | videos/s | machine CPU s (median) |\n|---|---:|---:|---:|")
    for side, rounds in ((base_name, base), (name, predict)):
        seconds, cpu_s = (statistics.median(x) for x in zip(*rounds, strict=True))
        print(f"| {side} | {seconds:.1f} | {count / seconds:.2f} | {cpu_s:.1f} |")
    ratios = [a / b for (a, _), (b, _) in zip(base, predict, strict=True)]
    what = "ray / local throughput" if args.engine == "ray" else "speed-up"
    what = "throughput with / without --features-out" if args.features else what
    print(f"\n{what}: {statistics.median(ratios):.2f}x (median of rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
