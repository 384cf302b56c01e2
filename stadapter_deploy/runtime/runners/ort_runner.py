"""ONNX Runtime: the bundle's ONNX on the CPU, CUDA or TensorRT execution provider.

Device "tensorrt" puts ONNX Runtime's TensorRT provider first (it builds its own engine on first run),
with CUDA and CPU as fallbacks for unsupported nodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError
from ..bundle import Bundle
from ..runner import Runner, cpu_has_int8_dot, cuda_available

ORT_TRT_CACHE = Path.home() / ".cache" / "stadapter-deploy" / "ort-tensorrt"
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": [
        (
            "TensorrtExecutionProvider",
            {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(ORT_TRT_CACHE)},
        ),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ],
}
NEEDED_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def ort_providers() -> list[str]:
    """ONNX Runtime's available execution providers, [] when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def make_session(path, providers: list, threads: int | None = None):
    """An InferenceSession with full graph optimization; a corrupt file raises BundleError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise BundleError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from e


class OrtRunner(Runner):
    name = "onnxruntime"
    devices = ("cpu", "cuda", "tensorrt")
    precisions = ("fp32", "fp16", "int8")

    @classmethod
    def available(cls, bundle: Bundle, device: str) -> str | None:
        if not bundle.find("onnxruntime"):
            return "the bundle holds no onnxruntime artifact"
        providers = ort_providers()
        if not providers:
            return "onnxruntime is not installed"
        if device in NEEDED_PROVIDER and not cuda_available():
            return "no CUDA GPU"
        if device in NEEDED_PROVIDER and NEEDED_PROVIDER[device] not in providers:
            return f"onnxruntime has no {NEEDED_PROVIDER[device]} (install onnxruntime-gpu)"
        return None

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        # half precision only pays on a GPU; ONNX Runtime's TensorRT provider makes its own
        if device == "cuda" and bundle.find("onnxruntime", "fp16"):
            return "fp16", "the bundle's fp16 ONNX on the GPU"
        if device == "cpu" and bundle.find("onnxruntime", "int8"):
            if cpu_has_int8_dot():
                return "int8", "the bundle's int8 ONNX: this CPU has VNNI/AMX int8 dot products"
            return "fp32", "the bundle's int8 ONNX passed over: this CPU has no VNNI/AMX, where int8 is slower"
        return "fp32", "the default"

    @classmethod
    def usable_precisions(cls, bundle: Bundle, device: str) -> list[str]:
        held = [p for p in cls.precisions if bundle.find("onnxruntime", p)]
        return [p for p in held if p != "int8" or device == "cpu"]  # int8 kernels: the CPU provider's

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        if reason := self.available(bundle, device):
            raise ValueError(f"backend onnxruntime-{device} cannot run here: {reason}")
        found = bundle.find("onnxruntime", precision)
        if not found:
            raise BundleError(f"{bundle.path} holds no {precision} ONNX model")
        artifact = found[0]
        self.session = make_session(bundle.file(artifact), PROVIDERS[device], threads)
        self.input_name = self.session.get_inputs()[0].name
        self.device, self.precision, self.max_batch = device, precision, artifact["batch"]["max"]

    def run(self, clips: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: clips})[0]
