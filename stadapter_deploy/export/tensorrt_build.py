"""ONNX -> TensorRT FP16 engine (TensorRT 10 Python API), kept apart from inference (runtime/runners/trt_runner.py).

Engines are tied to one GPU model and one TensorRT version, so the plan file is named after both and
the manifest records them; the runtime only offers an engine built for the GPU it runs on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from ..runtime.bundle import INPUT_NAME
from ..runtime.runners.trt_runner import gpu_name, tensorrt_missing  # noqa: F401  (re-exported)

DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "stadapter-deploy" / "tensorrt-timing.cache"


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
    """e.g. 'model.fp16.nvidia-h100-80gb-hbm3.trt10.3.0.plan' (engines are not portable)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return f"model.{precision}.{slug}.trt{trt_version}.plan"


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    clip_shape: tuple[int, ...],
    profile: BatchProfile = BatchProfile(),
    timing_cache: Path | None = DEFAULT_TIMING_CACHE,
    workspace_gb: float = 4.0,
) -> Path:
    """Build an FP16 engine with LayerNorm (and softmax) kept in fp32; reuses and updates `timing_cache`."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    keep_fp32(network, trt)

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(clip_shape))
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


def keep_fp32(network, trt) -> int:
    """Pin LayerNorm (INormalizationLayer from opset-17 LayerNormalization) and softmax to fp32."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned
