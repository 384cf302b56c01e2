"""`stadapter-export bench BUNDLE`: time every backend this machine can run on the bundle.

Flag parsing only; the benchmark is stadapter_deploy.export.bench.run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stadapter-export bench",
        description="Measure each available backend on BUNDLE at several batch sizes: clips/s, p50/p99 latency "
        "and the share of the FLOP floor (the machine's fp32 matmul rate, measured in the same run). Prints a "
        "markdown table; --png also draws it.",
    )
    p.add_argument("bundle", type=Path, help="model bundle directory made by stadapter-export")
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="which to time, e.g. torch-cpu onnxruntime-cpu torch-cuda onnxruntime-cuda tensorrt "
        "(default: every one this machine can run on the bundle, in every precision the bundle holds and "
        "this machine runs; int8 rows name their quantization and kernels, and the CPU kind is printed)",
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32], help="batch sizes (default 1 8 32)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per backend and batch, at most (default 10)")
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds per backend and batch after which no further call starts (default 60; "
        "at least one call always runs)",
    )
    p.add_argument("--repeats", type=int, default=1, help="sweeps over all backends, interleaved; medians reported")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--png", type=Path, default=None, help="also draw the rows as a plot in this PNG file")
    p.add_argument(
        "--matmul-seconds",
        type=float,
        default=1.0,
        help="seconds of matmul timing before each row (the FLOP-floor reference; default 1)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p


def run_bench(argv: list[str]) -> int:
    args = bench_parser().parse_args(argv)
    from stadapter_deploy.export.bench import BenchConfig, run

    cfg = BenchConfig(
        bundle=args.bundle,
        backends=args.backends,
        batches=tuple(args.batches),
        iters=args.iters,
        budget_s=args.budget,
        repeats=args.repeats,
        threads=args.threads,
        png=args.png,
        matmul_seconds=args.matmul_seconds,
        json=args.json,
    )
    run(cfg)
    return 0
