"""TensorRT: a prebuilt FP16 engine run through the TensorRT 10 tensor-by-name API.

Engines are tied to one GPU model and one TensorRT version; the manifest records both and only an
engine built for this GPU is offered. Device buffers are torch CUDA tensors (no pycuda), allocated
once at the profile's maximum batch, as NVIDIA's samples do; a call only copies in and out.
"""

from __future__ import annotations

import numpy as np

from ...errors import BundleError
from ..bundle import Bundle
from ..runner import Runner


def tensorrt_missing() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else what is missing, in words."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt from NVIDIA's index; see README)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def engine_for_this_machine(bundle: Bundle) -> dict | None:
    """The bundle's TensorRT artifact built for this GPU and TensorRT version, if any."""
    import tensorrt as trt

    here = gpu_name()
    for a in bundle.find("tensorrt"):
        if a.get("gpu") == here and a.get("tensorrt_version") == trt.__version__:
            return a
    return None


class TensorRTRunner(Runner):
    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp16",)
    device = "cuda"
    precision = "fp16"

    @classmethod
    def available(cls, bundle: Bundle, device: str) -> str | None:
        if not bundle.find("tensorrt"):
            return "the bundle holds no tensorrt artifact"
        return tensorrt_missing() or (None if engine_for_this_machine(bundle) else "no engine for this GPU")

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        return "fp16", "the engine's precision"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp16", threads: int | None = None):
        if missing := tensorrt_missing():
            raise ValueError(f"backend tensorrt asked for, but {missing}")
        import tensorrt as trt
        import torch

        artifact = engine_for_this_machine(bundle)
        if artifact is None:
            built = [f"{a.get('gpu')} / TensorRT {a.get('tensorrt_version')}" for a in bundle.find("tensorrt")]
            raise BundleError(
                f"{bundle.path} holds no TensorRT engine for {gpu_name()} / TensorRT {trt.__version__} "
                f"(engines in the bundle: {built or 'none'}); rebuild with stadapter-export --trt on this machine"
            )
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            bundle.file(artifact).read_bytes()
        )
        if self.engine is None:
            raise BundleError(f"TensorRT cannot deserialize {bundle.file(artifact)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if is_input(n))
        self.output_name = next(n for n in names if not is_input(n))
        self.max_batch = int(artifact["batch"]["max"])
        clip_shape = bundle.preprocessing.clip_shape
        self.input = torch.empty((self.max_batch, *clip_shape), dtype=torch.float32, device="cuda")
        self.output = torch.empty((self.max_batch, bundle.config.num_classes), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, self.input.data_ptr())
        self.context.set_tensor_address(self.output_name, self.output.data_ptr())
        self.stream = torch.cuda.Stream()

    def run(self, clips: np.ndarray) -> np.ndarray:
        import torch

        n = len(clips)
        with torch.cuda.stream(self.stream):
            self.input[:n].copy_(torch.from_numpy(clips), non_blocking=False)  # float32 I/O, fp16 inside
            self.context.set_input_shape(self.input_name, (n, *clips.shape[1:]))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            logits = self.output[:n].cpu()  # synchronizes the stream
        return logits.numpy()
