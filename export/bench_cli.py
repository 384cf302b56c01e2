"""`stadapter-export bench BUNDLE`: time every backend this machine can run on the bundle."""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stadapter-export bench",
        description="Measure each available backend on BUNDLE at several batch sizes: clips/s, p50/p99 latency "
        "and the share of the FLOP floor (the machine's fp32 matmul rate, measured in the same run). Prints a "
        "markdown table and writes a PNG plot.",
    )
    p.add_argument("bundle", type=Path, help="model bundle directory made by stadapter-export")
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="which to time, e.g. torch-cpu onnxruntime-cpu torch-cuda onnxruntime-cuda tensorrt "
        "(default: every one this machine can run on the bundle)",
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
    p.add_argument(
        "--png", type=Path, default=Path("bench_backends.png"), help="plot file (default bench_backends.png)"
    )
    p.add_argument(
        "--matmul-seconds",
        type=float,
        default=1.0,
        help="seconds of matmul timing before each row (the FLOP-floor reference; default 1)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p


def candidates(bundle, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(backend, precision) for every backend this machine can run on the bundle, in every precision
    the bundle holds for it and the machine supports."""
    from stadapter_deploy.runtime import RUNNERS
    from stadapter_deploy.runtime.predictor import AUTO_ORDER, runnable

    out = []
    for name in names or [n for n in AUTO_ORDER if runnable(bundle, n) is None]:
        base, _, device = name.partition("-")
        runner = RUNNERS[base]
        out += [(name, p) for p in runner.usable_precisions(bundle, device or runner.devices[0])]
    return out


def load(bundle, name: str, precision: str, threads: int, trimmed: bool = True):
    from stadapter_deploy.runtime import load_predictor

    predictor = load_predictor(bundle, backend=name, precision=precision, threads=threads)
    if not trimmed:  # the same weights with the last block computed in full (the trimming's saving)
        predictor.runner.model.trim_last_block = False
        predictor.runner.label_note = " untrimmed"
    return predictor


def run_bench(argv: list[str]) -> int:
    args = bench_parser().parse_args(argv)
    import torch

    from stadapter_deploy.export import bench
    from stadapter_deploy.export.quantize import int8_gemm_gops
    from stadapter_deploy.runtime import load_bundle

    if min(args.batches) < 1 or args.iters < 1 or args.repeats < 1 or args.threads < 1:
        raise ValueError("--batches, --iters, --repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    b = load_bundle(args.bundle)
    pairs = candidates(b, args.backends)
    predictors = [load(b, name, precision, args.threads) for name, precision in pairs]
    if ("torch-cpu", "fp32") in pairs:
        predictors.append(load(b, "torch-cpu", "fp32", args.threads, trimmed=False))
    gflop = bench.model_gflops(b.config, b.preprocessing.num_frames)
    shape = bench.matmul_shape(b.config, b.preprocessing.num_frames)
    peak = bench.matmul_gflops(args.threads, *shape)
    by_lib = {
        "torch.mm": bench.torch_matmul_gflops(args.threads, *shape),
        "onnxruntime MatMul": bench.ort_matmul_gflops(args.threads, *shape),
    }
    libs = ", ".join(f"{k} {v:.1f}" for k, v in by_lib.items() if v is not None)
    print(f"# fp32 GEMM {shape[0]}x{shape[1]}x{shape[2]}, {args.threads} threads: {libs} GFLOP/s", flush=True)
    int8_peak = int8_gemm_gops(args.threads, *shape) if any(p == "int8" for _, p in pairs) else None
    if int8_peak:
        print(f"# int8 GEMM (onnxruntime DynamicQuantizeMatMul), same shape: {int8_peak:.1f} GOP/s", flush=True)
    bf16_peak = None
    if any(p == "bf16" for _, p in pairs):
        bf16_peak = bench.torch_matmul_gflops(args.threads, *shape, dtype=torch.bfloat16)
        print(f"# bf16 GEMM (torch.mm), same shape: {bf16_peak:.1f} GFLOP/s", flush=True)
    peaks = {"int8": int8_peak, "bf16": bf16_peak}
    print(f"# CPU flags: {' '.join(sorted(cpu_simd_flags()))}", flush=True)
    print(
        f"# {b.model_name}: {gflop:.1f} GFLOP per clip; machine fp32 matmul {peak:.1f} GFLOP/s "
        f"({args.threads} threads) -> FLOP floor {gflop / peak * 1e3:.0f} ms per clip",
        flush=True,
    )
    rows = []
    for _ in range(args.repeats):
        for batch in args.batches:
            for p in predictors:
                row = bench.time_predictor(p, batch, args.iters, args.budget, gflop, args.threads, args.matmul_seconds)
                if peaks.get(p.precision):  # an int8 or bf16 row's floor is that precision's GEMM rate
                    row.matmul_gflops, row.floor_share = peaks[p.precision], row.gflops / peaks[p.precision]
                print(
                    f"  {row.backend:<20} {row.precision:<5} batch {batch:>3}: {row.clips_per_s:8.2f} clips/s, "
                    f"p50 {row.p50_ms:8.0f} ms ({row.iters} calls)",
                    flush=True,
                )
                rows.append(row)
    rows = median_rows(rows)
    info = bench.machine_info(args.threads)
    print()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads"
        + (f", GPU {info['gpu']}" if "gpu" in info else ", no GPU")
    )
    rates = [r.matmul_gflops for r in rows]
    print(
        f"fp32 matmul: {peak:.1f} GFLOP/s at the start, {statistics.median(rates):.1f} median before the rows "
        f"(range {min(rates):.1f}-{max(rates):.1f}); model: {gflop:.1f} GFLOP/clip; "
        f"medians over {args.repeats} sweep(s)"
    )
    print()
    print(bench.markdown_table(rows))
    print()
    print(ratios(rows))
    title = (
        f"{b.model_name} - {info['cpu']}, {args.threads} threads, median matmul {statistics.median(rates):.0f} GFLOP/s"
    )
    bench.plot(rows, args.png, title)
    print(f"\nplot: {args.png}")
    if args.json:
        payload = {
            "machine": info,
            "matmul_gflops": peak,
            "matmul_by_library": by_lib,
            "gemm_shape": shape,
            "gflop_per_clip": gflop,
            "rows": bench.rows_to_dicts(rows),
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def median_rows(rows):
    from stadapter_deploy.export.bench import Row

    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.backend, r.precision, r.batch), []).append(r)
    out = []
    for (backend, precision, batch), rs in groups.items():
        med = lambda field: statistics.median(getattr(r, field) for r in rs)  # noqa: B023
        out.append(
            Row(
                backend,
                precision,
                batch,
                sum(r.iters for r in rs),
                med("clips_per_s"),
                med("p50_ms"),
                med("p99_ms"),
                med("gflops"),
                med("matmul_gflops"),
                med("floor_share"),
            )
        )
    return sorted(out, key=lambda r: (r.backend, r.batch))


def ratios(rows) -> str:
    """Throughput of each row relative to ONNX Runtime fp32 and to torch eager fp32 on the same device
    and batch, in one table."""
    by = {(r.backend, r.precision, r.batch): r.clips_per_s for r in rows}
    lines = ["| backend | precision | batch | vs onnxruntime fp32 | vs torch fp32 |", "|---|---|---|---|---|"]
    for (backend, precision, batch), rate in by.items():
        device = "cuda" if "cuda" in backend or backend.startswith("tensorrt") else "cpu"
        cells = []
        for base in (f"onnxruntime-{device}", f"torch-{device}"):
            ref = by.get((base, "fp32", batch))
            cells.append(f"{rate / ref:.2f}x" if ref else "-")
        lines.append(f"| {backend} | {precision} | {batch} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def cpu_simd_flags() -> set[str]:
    from stadapter_deploy.runtime.runner import cpu_flags

    return {f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))}
