"""Backend benchmark: clips/s, p50/p99 latency and the share of the FLOP floor per backend and batch.

The FLOP floor of a clip is its FLOPs divided by the machine's measured GEMM rate in the row's own
precision (the best a GEMM-bound model could do here); "share" is achieved GFLOP/s over that rate.
`stadapter-export bench` (export/bench_cli.py) parses its flags into a BenchConfig and calls `run`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import hardware
from ..model.config import ModelConfig
from ..timing import median_rate, time_ms


def model_gflops(cfg: ModelConfig, num_frames: int) -> float:
    """Forward GFLOP (1 multiply-add = 2 FLOP) of one clip: 303 for B/16 12x384 at 8 frames."""
    return cfg.clip_gflops(num_frames)


def matmul_shape(cfg: ModelConfig, num_frames: int) -> tuple[int, int, int]:
    """(M, K, N) of one clip's MLP up-projection: the GEMM shape the model spends most time in."""
    return cfg.tokens_per_frame * num_frames, cfg.width, 4 * cfg.width


# ----------------------------------------------------------------------------- GEMM probes


def torch_matmul_gflops(
    threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0, dtype=torch.float32
) -> float:
    """Median GEMM rate of torch.mm at one shape (default: a B/16 clip's MLP), fp32 unless `dtype` says."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        return median_rate(lambda: torch.mm(a, b), 2 * m * k * n / 1e9, seconds)
    finally:
        torch.set_num_threads(old)


def ort_matmul_gflops(threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0) -> float | None:
    """The same GEMM through ONNX Runtime's MatMul (its own kernels); None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return median_rate(lambda: session.run(None, {"a": a}), 2 * m * k * n / 1e9, seconds)


def matmul_gflops(threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0) -> float:
    """The machine's fp32 GEMM rate: the faster of torch.mm and ONNX Runtime's MatMul at this shape.

    Libraries differ a lot on one CPU (torch's BLAS may not use AVX-512 on AMD, ONNX Runtime's MLAS does),
    so the floor is set by the best GEMM available here, not by one library.
    """
    rates = [torch_matmul_gflops(threads, m, k, n, seconds / 2), ort_matmul_gflops(threads, m, k, n, seconds / 2)]
    return max(r for r in rates if r is not None)


# ----------------------------------------------------------------------------- rows


@dataclass
class Row:
    backend: str
    precision: str
    batch: int
    iters: int
    clips_per_s: float
    p50_ms: float
    p99_ms: float
    gflops: float  # achieved
    matmul_gflops: float  # the machine's GEMM rate in this row's precision, measured just before this row
    floor_share: float  # achieved / matmul_gflops
    method: str = ""  # how the precision is computed (int8: quantization and kernels), from the runner


def time_predictor(
    predictor, batch: int, iters: int, budget_s: float, gflop_per_clip: float, threads: int, matmul_s: float = 1.0
) -> Row:
    """`iters` timed predict() calls at `batch` (fewer once `budget_s` is spent, at least one).

    The fp32 matmul rate is measured right before, so the FLOP-floor share follows a shared machine's load.
    """
    clips = np.random.default_rng(0).standard_normal((batch, *predictor.input_shape)).astype(np.float32)
    predictor.predict(clips[:1])  # warm-up (first-call allocation), cheap at batch 1
    shape = matmul_shape(predictor.bundle.config, predictor.preprocessing.num_frames)
    peak = matmul_gflops(threads, *shape, seconds=matmul_s)
    times = np.array(time_ms(lambda: predictor.predict(clips), iters, budget_s=budget_s)) / 1e3
    p50 = float(np.median(times))
    achieved = gflop_per_clip * batch / p50
    return Row(
        predictor.backend,
        predictor.precision,
        batch,
        len(times),
        batch / p50,
        p50 * 1e3,
        float(np.percentile(times, 99)) * 1e3,
        achieved,
        peak,
        achieved / peak,
        precision_method(predictor),
    )


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (backend, precision, batch): the medians over the sweeps."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.backend, r.precision, r.batch), []).append(r)
    out = []
    for (backend, precision, batch), rs in groups.items():
        med = {f: statistics.median(getattr(r, f) for r in rs) for f in ("clips_per_s", "p50_ms", "p99_ms")}
        med |= {f: statistics.median(getattr(r, f) for r in rs) for f in ("gflops", "matmul_gflops", "floor_share")}
        out.append(Row(backend, precision, batch, sum(r.iters for r in rs), **med, method=rs[0].method))
    return sorted(out, key=lambda r: (r.backend, r.batch))


def machine_info(threads: int) -> dict:
    """The machine (hardware.describe: CPU, its kind and flags, cores, GPU) and the run's threads and torch."""
    return {**hardware.describe(), "threads": threads, "torch": torch.__version__}


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| backend | precision | batch | iters | clips/s | p50 ms | p99 ms | GFLOP/s | GEMM rate (its precision) "
        "| share of FLOP floor | method |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.precision} | {r.batch} | {r.iters} | {r.clips_per_s:.2f} | {r.p50_ms:.0f} | "
            f"{r.p99_ms:.0f} | {r.gflops:.1f} | {r.matmul_gflops:.1f} | {r.floor_share:.0%} | {r.method or '-'} |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
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


def plot(rows: list[Row], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(f"{r.backend} {r.precision}" for r in rows):
        mine = [r for r in rows if f"{r.backend} {r.precision}" == name]
        ax1.plot([r.batch for r in mine], [r.clips_per_s for r in mine], marker="o", label=name)
        ax2.plot([r.batch for r in mine], [100 * r.floor_share for r in mine], marker="o", label=name)
    for ax, label in ((ax1, "clips/s"), (ax2, "% of FLOP floor (matmul rate)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (clips)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax2.set_ylim(0, 110)
    ax1.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows_to_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


# ----------------------------------------------------------------------------- the whole run


@dataclass
class BenchConfig:
    bundle: Path
    backends: list[str] | None = None  # None: every backend this machine can run on the bundle
    batches: tuple[int, ...] = (1, 8, 32)
    iters: int = 10
    budget_s: float = 60.0
    repeats: int = 1
    threads: int = 1
    png: Path | None = None  # where to draw the plot; None: no plot
    matmul_seconds: float = 1.0
    json: Path | None = None

    def __post_init__(self):
        if min(self.batches) < 1 or self.iters < 1 or self.repeats < 1 or self.threads < 1:
            raise ValueError("--batches, --iters, --repeats and --threads must be positive")


def candidates(bundle, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(backend, precision) for every backend this machine can run on the bundle, in every precision
    the bundle holds for it and the machine supports."""
    from ..runtime import RUNNERS
    from ..runtime.predictor import AUTO_ORDER, runnable
    from ..runtime.runner import parse_backend

    out = []
    for name in names or [n for n in AUTO_ORDER if runnable(bundle, n) is None]:
        base, device = parse_backend(name, RUNNERS)
        runner = RUNNERS[base]
        out += [(name, p) for p in usable_precisions(runner, bundle, device or runner.devices[0])]
    return out


def usable_precisions(runner, bundle, device: str) -> list[str]:
    """The precisions `runner` can run `bundle` in on `device` here: those an artifact of the bundle holds
    (one per precision for the ONNX and TensorRT runners; torch casts its fp32 weights), int8 on a CPU only,
    and none the runner would refuse."""
    wanted = [p for p in runner.precisions if p != "int8" or device == "cpu"]
    if runner.name != "torch":
        wanted = [p for p in wanted if bundle.find(runner.name, p)]
    return [p for p in wanted if runner.precision_refusal(bundle, device, p) is None]


def precision_method(predictor) -> str:
    """How an int8 predictor computes (its weights and the CPU kernels it gets), for the table; else ""."""
    if predictor.precision != "int8":
        return ""
    from ..runtime.runners.ort_runner import exact_int8_needed, int8_method

    return int8_method(predictor.bundle.find("onnxruntime", "int8")[0], exact_int8_needed())


def load(bundle, name: str, precision: str, threads: int):
    from ..runtime import load_predictor

    return load_predictor(bundle, backend=name, precision=precision, threads=threads)


def gemm_rates(cfg: BenchConfig, shape: tuple[int, int, int], precisions: set[str]) -> dict:
    """fp32 (best library, and each), int8 and bf16 GEMM rates at `shape`, for the precisions timed."""
    from .quantize import int8_gemm_gops

    rates = {
        "fp32": matmul_gflops(cfg.threads, *shape),
        "torch.mm": torch_matmul_gflops(cfg.threads, *shape),
        "onnxruntime MatMul": ort_matmul_gflops(cfg.threads, *shape),
    }
    rates["int8"] = int8_gemm_gops(cfg.threads, *shape) if "int8" in precisions else None
    rates["bf16"] = torch_matmul_gflops(cfg.threads, *shape, dtype=torch.bfloat16) if "bf16" in precisions else None
    return rates


def run(cfg: BenchConfig) -> list[Row]:
    """Time every (backend, precision) at every batch, `cfg.repeats` interleaved sweeps; print the tables,
    write the plot (and the JSON). Returns the median rows."""
    from ..runtime import load_bundle

    torch.set_num_threads(cfg.threads)
    b = load_bundle(cfg.bundle)
    pairs = candidates(b, cfg.backends)
    predictors = [load(b, name, precision, cfg.threads) for name, precision in pairs]
    gflop = model_gflops(b.config, b.preprocessing.num_frames)
    shape = matmul_shape(b.config, b.preprocessing.num_frames)
    info = machine_info(cfg.threads)
    print(f"# CPU {info['cpu']}: kind {info['cpu_kind']}, flags {' '.join(info['cpu_flags'])}", flush=True)
    rates = gemm_rates(cfg, shape, {p for _, p in pairs})
    libs = ", ".join(f"{k} {rates[k]:.1f}" for k in ("torch.mm", "onnxruntime MatMul") if rates[k] is not None)
    print(f"# fp32 GEMM {shape[0]}x{shape[1]}x{shape[2]}, {cfg.threads} threads: {libs} GFLOP/s", flush=True)
    if rates["int8"]:
        print(f"# int8 GEMM (onnxruntime DynamicQuantizeMatMul), same shape: {rates['int8']:.1f} GOP/s", flush=True)
    if rates["bf16"]:
        print(f"# bf16 GEMM (torch.mm), same shape: {rates['bf16']:.1f} GFLOP/s", flush=True)
    print(
        f"# {b.model_name}: {gflop:.1f} GFLOP per clip; machine fp32 matmul {rates['fp32']:.1f} GFLOP/s "
        f"({cfg.threads} threads) -> FLOP floor {gflop / rates['fp32'] * 1e3:.0f} ms per clip",
        flush=True,
    )
    rows = []
    for _ in range(cfg.repeats):
        for batch in cfg.batches:
            for p in predictors:
                row = time_predictor(p, batch, cfg.iters, cfg.budget_s, gflop, cfg.threads, cfg.matmul_seconds)
                if rates.get(p.precision) and p.precision != "fp32":  # an int8/bf16 row's floor: its own GEMM rate
                    row.matmul_gflops, row.floor_share = rates[p.precision], row.gflops / rates[p.precision]
                print(
                    f"  {row.backend:<20} {row.precision:<5} batch {batch:>3}: {row.clips_per_s:8.2f} clips/s, "
                    f"p50 {row.p50_ms:8.0f} ms ({row.iters} calls)",
                    flush=True,
                )
                rows.append(row)
    rows = median_rows(rows)
    report(cfg, b, info, rates, gflop, rows)
    if cfg.json:
        payload = {
            "machine": info,
            "matmul_gflops": rates["fp32"],
            "matmul_by_library": {k: rates[k] for k in ("torch.mm", "onnxruntime MatMul")},
            "gemm_shape": shape,
            "gflop_per_clip": gflop,
            "rows": rows_to_dicts(rows),
        }
        cfg.json.write_text(json.dumps(payload, indent=2) + "\n")
    return rows


def report(cfg: BenchConfig, bundle, info: dict, rates: dict, gflop: float, rows: list[Row]) -> None:
    fp32 = [r.matmul_gflops for r in rows if r.precision == "fp32"] or [rates["fp32"]]
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    print(f"\nMachine: {info['cpu']} (CPU kind {info['cpu_kind']}), {info['cores']} cores, {cfg.threads} threads{gpu}")
    print(f"CPU flags: {' '.join(info['cpu_flags'])}")
    print(
        f"fp32 matmul: {rates['fp32']:.1f} GFLOP/s at the start, {statistics.median(fp32):.1f} median before the "
        f"fp32 rows (range {min(fp32):.1f}-{max(fp32):.1f}); model: {gflop:.1f} GFLOP/clip; "
        f"medians over {cfg.repeats} sweep(s)\n"
    )
    print(markdown_table(rows) + "\n")
    print(ratios(rows))
    if cfg.png is not None:
        title = f"{bundle.model_name} - {info['cpu']} ({info['cpu_kind']}), {cfg.threads} threads"
        plot(rows, cfg.png, title)
        print(f"\nplot: {cfg.png}")
