"""fp16 ONNX -> TensorRT engine, strongly typed (TensorRT 10.12+ and 11), kept apart from inference
(runtime/runners/trt_runner.py).

The network is strongly typed: every tensor keeps the type the ONNX gives it, so the precision is
decided once, in the fp16 ONNX the exporter writes (LayerNorm and softmax in fp32 through explicit
casts, everything else fp16), and no builder flag can change it. TensorRT 11 removed weak typing
(BuilderFlag.FP16 and the precision-constraint flags); STRONGLY_TYPED is required on 10.x to opt in
and is accepted and ignored on 11, where every network is strongly typed.

Engines are tied to one GPU model and one TensorRT version, so the plan file is named after both and
the manifest records them; the runtime refuses an engine built for another GPU or version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from ..runtime.bundle import INPUT_NAME

DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "stadapter-deploy" / "tensorrt-timing.cache"
# Ops that must compute in float32 inside the fp16 graph (fp16 LayerNorm is what broke CLIP ViTs in
# TensorRT's weak-typed --fp16 builds, NVIDIA/TensorRT#2709; softmax stays fp32 as in the fp16 ONNX).
FP32_OPS = ("LayerNormalization", "Softmax")
FP16_OPS = ("MatMul", "Gemm")  # the bulk of the compute: they must be fp16 for an fp16 engine


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the engine's one optimization profile (min <= opt <= max)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"TensorRT batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )

    def shapes(self, clip_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for one clip shape (3, T, S, S)."""
        return tuple((b, *clip_shape) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]


def plan_name(gpu: str, trt_version: str, precision: str = "fp16") -> str:
    """e.g. 'model.fp16.nvidia-h100-80gb-hbm3.trt10.12.0.36.plan' (engines are not portable)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return f"model.{precision}.{slug}.trt{trt_version}.plan"


def onnx_op_types(path: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(op type, node name, input element types, output element types) of every node, from ONNX type
    inference over the graph (weights are not loaded)."""
    import onnx
    from onnx import TensorProto

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    name = lambda t: TensorProto.DataType.Name(t).lower() if t else "unknown"
    return [
        (n.op_type, n.name, [name(types.get(i, 0)) for i in n.input if i], [name(types.get(o, 0)) for o in n.output])
        for n in graph.node
    ]


def fp16_graph_problems(path: Path) -> list[str]:
    """Why `path` is not an fp16 graph a strongly typed engine can be built from ([] = it is)."""
    nodes = onnx_op_types(path)
    problems = [
        f"{op} {name or '?'} computes in {'/'.join(sorted(set(ins + outs)))}, not float"
        for op, name, ins, outs in nodes
        if op in FP32_OPS and set(ins[:1] + outs) != {"float"}
    ]
    if not any(op in FP16_OPS and ins[:1] == ["float16"] for op, _, ins, _ in nodes):
        problems.append("no MatMul or Gemm computes in float16: the engine would not be fp16")
    return problems


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    clip_shape: tuple[int, ...],
    profile: BatchProfile = BatchProfile(),
    timing_cache: Path | None = DEFAULT_TIMING_CACHE,
    workspace_gb: float = 4.0,
) -> Path:
    """Build a strongly typed engine from the fp16 ONNX `onnx_path`; reuses and updates `timing_cache`."""
    if problems := fp16_graph_problems(onnx_path):
        raise BundleError(f"{onnx_path} cannot be built as an fp16 engine: " + "; ".join(problems[:3]))
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    min_shape, opt_shape, max_shape = profile.shapes(clip_shape)
    opt_profile.set_shape(INPUT_NAME, min_shape, opt_shape, max_shape)
    config.add_optimization_profile(opt_profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path.write_bytes(memoryview(plan))
    if timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return plan_path
