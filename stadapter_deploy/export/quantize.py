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

Weights keep 7 bits of range ([-64, 64], ONNX Runtime's reduce_range) by default. ONNX Runtime's x86
int8 GEMMs multiply uint8 activations by int8 weights; without VNNI/AMX (AVX2, AVX-512 without VNNI)
they add each pair of products in a saturating int16 (VPMADDUBSW): 2 x 255 x 127 overflows it, and
the logits move (B/16 12x384 on AVX2: max |logit diff| 0.125 of the largest logit). With 7-bit weights
a pair is at most 2 x 255 x 64 = 32640 < 32767, so every x86 kernel sums exactly and the artifact gives
the same figures on every CPU kind, at the speed of 8-bit weights on VNNI; the export gate's figures
then hold wherever the bundle runs. docs/benchmarks.md ("int8 on every x86 CPU") measures this against
the other ways out (U8U8, static QDQ, MatMuls kept in float).

Two methods: "dynamic" (activations quantized on the fly per tensor, from their own min/max) and
"static" (QDQ with ranges calibrated on decoded clips). benchmarks/bench_cpu_precision.py measures
both; dynamic was as fast or faster and as accurate on B/16 12x384, and needs no calibration clips:
it is the default.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..runtime.bundle import INPUT_NAME
from ..timing import median_rate
from .onnx_export import INLINE_LIMIT, check_onnx

METHODS = ("dynamic", "static")
KEPT_FLOAT_OPS = ("LayerNormalization", "Softmax")


@dataclass(frozen=True)
class Int8Recipe:
    """How quantize_int8 quantizes; the defaults are what `stadapter-export --int8` writes. Weights are
    int8, symmetric, one scale per output channel (the class attributes below: a benchmark that weighs
    other choices subclasses this with fields of those names)."""

    method: str = "dynamic"  # or "static": QDQ with calibrated activation ranges
    weight_bits: int = 7  # 7: weights in [-64, 64], exact on every x86 kernel; 8: [-127, 127] (older bundles)
    quantize_adapters: bool = False
    per_channel = True  # one weight scale per output channel
    weight_type = "s8"  # int8 weights ("u8": uint8 ones, ONNX Runtime's exact but slower U8U8 kernels)
    keep_float = ()  # weight MatMul node names left in float as well

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown int8 method {self.method!r}; choose one of {METHODS}")
        if self.weight_bits not in (7, 8) or self.weight_type not in ("s8", "u8"):
            raise ValueError(f"weight_bits must be 7 or 8 and weight_type s8 or u8, got {self}")

    @property
    def saturation_free(self) -> bool:
        """True when no x86 int8 kernel can saturate on this artifact: the numbers are the same on every CPU."""
        return self.weight_bits == 7 or self.weight_type == "u8"


def quantize_int8(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration_clips: np.ndarray | None = None,
    recipe: Int8Recipe = Int8Recipe(),
) -> dict:
    """Write an int8 copy of `fp32_onnx` to `out`; returns what was quantized and kept in float (for the manifest).

    calibration_clips: float32 [N, 3, T, S, S], model-ready (normalized) clips; "static" needs them,
    one clip per calibration run.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if recipe.method == "static" and (calibration_clips is None or len(calibration_clips) == 0):
        raise ValueError("static int8 quantization needs calibration_clips [N, 3, T, S, S]")
    out = Path(out)
    big = Path(fp32_onnx).stat().st_size + _external_size(Path(fp32_onnx)) >= INLINE_LIMIT
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        prepare(fp32_onnx, prepared, big)
        plan = plan_matmuls(prepared, recipe.quantize_adapters, recipe.keep_float)
        common = dict(
            op_types_to_quantize=["MatMul"],
            per_channel=recipe.per_channel,
            reduce_range=recipe.weight_bits == 7,
            weight_type=QuantType.QInt8 if recipe.weight_type == "s8" else QuantType.QUInt8,
            nodes_to_quantize=plan["quantized"],
            use_external_data_format=big,
            extra_options={"MatMulConstBOnly": True},
        )
        if recipe.method == "dynamic":
            quantize_dynamic(prepared, out, **common)
        else:
            reader = ClipReader(calibration_clips)
            quantize_static(
                prepared, out, reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, **common
            )
    check_onnx(out)
    granularity = "per output channel" if recipe.per_channel else "per tensor"
    if recipe.weight_type == "s8":
        weights = f"int8 {'[-64, 64]' if recipe.weight_bits == 7 else '[-127, 127]'}, symmetric, {granularity}"
    else:
        weights = f"uint8 {'[0, 127]' if recipe.weight_bits == 7 else '[0, 255]'}, asymmetric, {granularity}"
    return {
        "method": recipe.method,
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()},
        "weights": weights,
        "activations": "uint8, per tensor, "
        + ("dynamic range" if recipe.method == "dynamic" else "calibrated min/max"),
        "saturation_free": recipe.saturation_free,
        "calibration_clips": 0 if recipe.method == "dynamic" else len(calibration_clips),
        "quantized": {"MatMul (weights)": len(plan["quantized"])},
        "kept_float": {
            "MatMul (adapters)": len(plan["adapters"]),
            "MatMul (weights, asked)": len(plan["asked"]),
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


def plan_matmuls(path: Path, quantize_adapters: bool, keep_float: tuple[str, ...] = ()) -> dict:
    """Which MatMul nodes to quantize: those with a constant weight, less the adapters' unless asked,
    less the `keep_float` ones."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    with_weight = [n for n in matmuls if n.input[1] in weights]
    adapters = [n.name for n in with_weight if is_adapter_node(n)]
    unknown = set(keep_float) - {n.name for n in with_weight}
    if unknown:
        raise ValueError(f"keep_float names no weight MatMul of {path.name}: {sorted(unknown)}")
    quantized = [
        n.name for n in with_weight if (quantize_adapters or n.name not in adapters) and n.name not in keep_float
    ]
    return {
        "quantized": quantized,
        "adapters": [] if quantize_adapters else adapters,
        "asked": [n for n in keep_float if n not in adapters or quantize_adapters],
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
    return median_rate(lambda: session.run(None, {"a": a}), 2 * m * k * n / 1e9, seconds)
