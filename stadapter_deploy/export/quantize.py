"""int8 ONNX for CPUs: the exporter's fp32 graph through onnxruntime.quantization.

What is quantized: the MatMuls whose second input is a weight (qkv, out_proj, the MLP), with int8
weights per output channel. What stays float, and why:
- LayerNormalization and Softmax: they are not in the quantized op list (per-token statistics and
  exponentials lose the most from 8 bits, and cost little);
- attention's two activation x activation MatMuls (q @ k^T, softmax @ v): no constant weight, and
  their inputs feed or leave the Softmax;
- the adapters (fc1, the temporal conv, fc2): the only trained part, reading the un-normalized
  residual stream; about 8% of the GEMM work in B/16 12x384 (quantize_adapters=True to include them);
- the patch-embedding Conv and the head Gemm: under 1% of the work.

Two methods: "dynamic" (activations quantized on the fly per tensor, from their own min/max) and
"static" (QDQ with ranges calibrated on decoded clips). benchmarks/bench_cpu_precision.py measures
both; on B/16 12x384 (AVX-512 VNNI, batch 1, 1-2 threads) dynamic took 0.37-0.39 of ORT fp32's CPU
time and static 0.40-0.48, with logits as close or closer for dynamic, and dynamic needs no
calibration clips: it is the default.
"""

from __future__ import annotations

import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..runtime.bundle import INPUT_NAME
from .onnx_export import INLINE_LIMIT, check_onnx

METHODS = ("dynamic", "static")
DEFAULT_METHOD = "dynamic"
KEPT_FLOAT_OPS = ("LayerNormalization", "Softmax")


def quantize_int8(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration_clips: np.ndarray | None = None,
    method: str = DEFAULT_METHOD,
    quantize_adapters: bool = False,
) -> dict:
    """Write an int8 copy of `fp32_onnx` to `out`; returns what was quantized and kept in float (for the manifest).

    calibration_clips: float32 [N, 3, T, S, S], model-ready (normalized) clips; "static" needs them,
    one clip per calibration run.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in METHODS:
        raise ValueError(f"unknown int8 method {method!r}; choose one of {METHODS}")
    if method == "static" and (calibration_clips is None or len(calibration_clips) == 0):
        raise ValueError("static int8 quantization needs calibration_clips [N, 3, T, S, S]")
    out = Path(out)
    big = Path(fp32_onnx).stat().st_size + _external_size(Path(fp32_onnx)) >= INLINE_LIMIT
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        prepare(fp32_onnx, prepared, big)
        plan = plan_matmuls(prepared, quantize_adapters)
        common = dict(
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=False,  # VNNI and AMX have no u8 x s8 saturation problem; see int8_gemm_gops
            weight_type=QuantType.QInt8,
            nodes_to_quantize=plan["quantized"],
            use_external_data_format=big,
            extra_options={"MatMulConstBOnly": True},
        )
        if method == "dynamic":
            quantize_dynamic(prepared, out, **common)
        else:
            reader = ClipReader(calibration_clips)
            quantize_static(
                prepared, out, reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, **common
            )
    check_onnx(out)
    return {
        "method": method,
        "weights": "int8, symmetric, per output channel",
        "activations": "uint8, per tensor, " + ("dynamic range" if method == "dynamic" else "calibrated min/max"),
        "calibration_clips": 0 if method == "dynamic" else len(calibration_clips),
        "quantized": {"MatMul (weights)": len(plan["quantized"])},
        "kept_float": {
            "MatMul (adapters)": len(plan["adapters"]),
            "MatMul (activation x activation)": plan["activation_matmuls"],
            **{op: plan["op_counts"].get(op, 0) for op in KEPT_FLOAT_OPS},
        },
    }


def _external_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return data.stat().st_size if data.exists() else 0


def prepare(fp32_onnx: str | Path, out: Path, big: bool) -> None:
    """ONNX Runtime's recommended pre-pass: shape inference and graph optimization, so every MatMul has shapes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(
        str(fp32_onnx),
        str(out),
        skip_symbolic_shape=True,  # it fails on the exporter's computed Reshape shapes; ONNX's own inference suffices
        save_as_external_data=big,
        all_tensors_to_one_file=True,
    )


def plan_matmuls(path: Path, quantize_adapters: bool) -> dict:
    """Which MatMul nodes to quantize: those with a constant weight, less the adapters' unless asked."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    with_weight = [n for n in matmuls if n.input[1] in weights]
    adapters = [n.name for n in with_weight if is_adapter_node(n)]
    quantized = [n.name for n in with_weight if quantize_adapters or n.name not in adapters]
    return {
        "quantized": quantized,
        "adapters": [] if quantize_adapters else adapters,
        "activation_matmuls": len(matmuls) - len(with_weight),
        "op_counts": collections.Counter(n.op_type for n in graph.node),
    }


def is_adapter_node(node) -> bool:
    # The torchscript exporter names nodes by module path: /transformer/resblocks.3/adapter_pre_mlp/fc1/MatMul
    return "adapter_pre_" in node.name


class ClipReader:
    """onnxruntime.quantization.CalibrationDataReader over clips [N, 3, T, S, S]: one clip per run."""

    def __init__(self, clips: np.ndarray):
        self.clips = np.asarray(clips, dtype=np.float32)
        self.next = 0

    def get_next(self) -> dict | None:
        if self.next == len(self.clips):
            return None
        self.next += 1
        return {INPUT_NAME: self.clips[self.next - 1 : self.next]}  # [1, 3, T, S, S]

    def rewind(self) -> None:
        self.next = 0


# ----------------------------------------------------------------------------- GEMM probe


def int8_gemm_gops(threads: int, m: int = 1576, k: int = 768, n: int = 3072, seconds: float = 2.0) -> float:
    """Median int8 GEMM rate (GOP/s, 1 multiply-add = 2 OP) of ONNX Runtime at one shape.

    One DynamicQuantizeMatMul node (com.microsoft): what a dynamically quantized weight MatMul runs
    as, including quantizing the fp32 activations. Compare with export.bench.ort_matmul_gflops at the
    same shape (default: a B/16 clip's MLP up-projection).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    scale = np.full(n, 0.01, dtype=np.float32)  # per output channel
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["a", "w", "s"], ["y"], domain="com.microsoft")],
        "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "s")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((m, k)).astype(np.float32)
    session.run(None, {"a": a})
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        start = time.perf_counter()
        session.run(None, {"a": a})
        rates.append(2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)
