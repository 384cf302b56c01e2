"""Backend benchmark: clips/s, p50/p99 latency and the share of the FLOP floor per backend and batch.

The FLOP floor of a clip is its FLOPs divided by the machine's measured fp32 matmul rate (the best a
GEMM-bound model could do here); "share" is achieved GFLOP/s over that rate.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..model.config import ModelConfig


def model_gflops(cfg: ModelConfig, num_frames: int) -> float:
    """Forward GFLOP (1 multiply-add = 2 FLOP) of one clip: 303 for B/16 12x384 at 8 frames."""
    t = num_frames
    d, length, patches = cfg.width, cfg.tokens_per_frame, cfg.grid**2
    embed = 2 * patches * d * 3 * cfg.patch_size**2
    block = 24 * length * d * d + 4 * length * length * d  # qkv, out_proj, MLP 4x; q@k and attn@v
    adapters = cfg.adapter_layers * (int(cfg.adapter_pre_attn) + int(cfg.adapter_pre_mlp))
    adapter = 4 * patches * d * cfg.adapter_width + 2 * patches * cfg.adapter_width * cfg.adapter_kernel_t
    head = 2 * d * cfg.num_classes
    return (t * (embed + cfg.layers * block + adapters * adapter) + head) / 1e9


def matmul_shape(cfg: ModelConfig, num_frames: int) -> tuple[int, int, int]:
    """(M, K, N) of one clip's MLP up-projection: the GEMM shape the model spends most time in."""
    return cfg.tokens_per_frame * num_frames, cfg.width, 4 * cfg.width


def time_ms(fn, runs: int, warmup: int = 0) -> list[float]:
    """Wall milliseconds of `runs` calls of fn(), after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def median_ms(fn, runs: int, warmup: int = 1) -> float:
    """The benchmarks' one timer: median wall milliseconds of `runs` calls (machines here are noisy)."""
    return statistics.median(time_ms(fn, runs, warmup))


def _median_rate(run, flop: float, seconds: float) -> float:
    run()
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        t = time.perf_counter()
        run()
        rates.append(flop / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def torch_matmul_gflops(
    threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0, dtype=torch.float32
) -> float:
    """Median GEMM rate of torch.mm at one shape (default: a B/16 clip's MLP), fp32 unless `dtype` says."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        return _median_rate(lambda: torch.mm(a, b), 2 * m * k * n, seconds)
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
    return _median_rate(lambda: session.run(None, {"a": a}), 2 * m * k * n, seconds)


def matmul_gflops(threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0) -> float:
    """The machine's fp32 GEMM rate: the faster of torch.mm and ONNX Runtime's MatMul at this shape.

    Libraries differ a lot on one CPU (torch's BLAS may not use AVX-512 on AMD, ONNX Runtime's MLAS does),
    so the floor is set by the best GEMM available here, not by one library.
    """
    rates = [torch_matmul_gflops(threads, m, k, n, seconds / 2), ort_matmul_gflops(threads, m, k, n, seconds / 2)]
    return max(r for r in rates if r is not None)


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
    matmul_gflops: float  # the machine's fp32 matmul rate, measured just before this row
    floor_share: float  # achieved / matmul_gflops


def time_predictor(
    predictor, batch: int, iters: int, budget_s: float, gflop_per_clip: float, threads: int, matmul_s: float = 1.0
) -> Row:
    """`iters` timed predict() calls at `batch` (fewer once `budget_s` is spent, at least one).

    The matmul rate is measured right before, so the FLOP-floor share follows a shared machine's load.
    """
    clips = np.random.default_rng(0).standard_normal((batch, *predictor.input_shape)).astype(np.float32)
    predictor.predict(clips[:1])  # warm-up (first-call allocation), cheap at batch 1
    shape = matmul_shape(predictor.bundle.config, predictor.preprocessing.num_frames)
    peak = matmul_gflops(threads, *shape, seconds=matmul_s)
    times, start = [], time.perf_counter()
    for _ in range(iters):
        t = time.perf_counter()
        predictor.predict(clips)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    p50 = statistics.median(times)
    p99 = float(np.percentile(times, 99))
    achieved = gflop_per_clip * batch / p50
    return Row(
        predictor.backend,
        predictor.precision,
        batch,
        len(times),
        batch / p50,
        p50 * 1e3,
        p99 * 1e3,
        achieved,
        peak,
        achieved / peak,
    )


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| backend | precision | batch | iters | clips/s | p50 ms | p99 ms | GFLOP/s | GEMM rate (its precision) "
        "| share of FLOP floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.precision} | {r.batch} | {r.iters} | {r.clips_per_s:.2f} | {r.p50_ms:.0f} | "
            f"{r.p99_ms:.0f} | {r.gflops:.1f} | {r.matmul_gflops:.1f} | {r.floor_share:.0%} |"
        )
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
