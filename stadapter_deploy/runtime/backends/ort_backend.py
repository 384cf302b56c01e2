"""ONNX Runtime backend: the bundle's ONNX on the CPU, CUDA or TensorRT execution provider.

device "cpu" and "cuda" pick the CPU / CUDA providers; "tensorrt" puts ONNX Runtime's TensorRT provider
first (it builds its own engine on first run), with CUDA and CPU as fallbacks for unsupported nodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BundleError
from ..bundle import Bundle
from ..predictor import Predictor, cuda_available

ORT_TRT_CACHE = Path.home() / ".cache" / "stadapter-deploy" / "ort-tensorrt"


def make_session(path, providers: list[str], threads: int | None = None):
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


class OrtPredictor(Predictor):
    def __init__(
        self, bundle: Bundle, device: str | None = None, precision: str | None = None, threads: int | None = None
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("backend onnxruntime asked for, but onnxruntime is not installed") from None
        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available and cuda_available()
        device = device or ("cuda" if has_cuda else "cpu")
        if device in ("cuda", "tensorrt") and not has_cuda:
            raise ValueError(f"backend onnxruntime-{device} asked for, but onnxruntime has no usable CUDA provider")
        if device == "tensorrt" and "TensorrtExecutionProvider" not in available:
            raise ValueError("backend onnxruntime-tensorrt asked for, but onnxruntime has no TensorRT provider")
        if precision is None:  # half precision only pays on a GPU; the TensorRT provider makes its own
            precision = "fp16" if device == "cuda" and bundle.find("onnxruntime", "fp16") else "fp32"
        found = bundle.find("onnxruntime", precision)
        if not found:
            raise BundleError(f"{bundle.path} holds no {precision} ONNX model")
        artifact = found[0]
        providers = {
            "cpu": ["CPUExecutionProvider"],
            "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "tensorrt": [
                (
                    "TensorrtExecutionProvider",
                    {
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(ORT_TRT_CACHE),
                    },
                ),
                "CUDAExecutionProvider",
                "CPUExecutionProvider",
            ],
        }[device]
        super().__init__(bundle, max_batch=artifact["batch"]["max"])
        self.session = make_session(bundle.file(artifact), providers, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision
        self.backend = f"onnxruntime-{device}"

    def _infer(self, clips: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: clips})[0]
