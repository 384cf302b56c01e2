"""TensorRT: a prebuilt FP16 engine run through the tensor-by-name API of TensorRT 10.12+ and 11.

Engines are tied to one GPU model and one TensorRT version; the manifest records both, and an
engine built for another GPU or version is refused with one line that gives the command to rebuild it
here. Device buffers are torch CUDA tensors (no pycuda), allocated once at the profile's maximum
batch, as NVIDIA's samples do; a call only copies in and out.
"""

from __future__ import annotations

import shlex

import numpy as np

from ...errors import BundleError
from ...hardware import gpu_name
from ..bundle import FEATURES_NAME, LABELS_FILE, OUTPUT_NAME, Bundle
from ..runner import Outputs, Runner

# Strongly typed networks (how engines are built, export/tensorrt_build.py) need 10.12 or newer.
MIN_TENSORRT = (10, 12)


def tensorrt_version_problem(version: str) -> str | None:
    """None when TensorRT `version` ("10.12.0.36", "11.4.0.106") is new enough, else why not."""
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return f"TensorRT reports an unreadable version {version!r}"
    if major_minor < MIN_TENSORRT:
        return f"TensorRT {version} is too old: strongly typed engines need 10.12 or newer (pip install -U tensorrt)"
    return None


def tensorrt_missing() -> str | None:
    """None when TensorRT 10.12+ and a CUDA GPU are usable here, else what is missing, in words."""
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt from NVIDIA's index; see README)"
    if problem := tensorrt_version_problem(tensorrt.__version__):
        return problem
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def rebuild_command(bundle: Bundle) -> str:
    """The stadapter-export line that rebuilds this bundle with an engine for the machine it runs on."""
    path = str(bundle.path)
    out = path.rstrip("/") + "-trt"
    args = ["stadapter-export", "--checkpoint", path, "--labels", f"{path}/{LABELS_FILE}"]
    args += ["--name", bundle.model_name, "--out", out, "--trt"]
    return shlex.join(args)


def select_engine(bundle: Bundle, gpu: str, trt_version: str) -> dict:
    """The bundle's engine built for `gpu` and `trt_version`; BundleError (one line, with the rebuild
    command) when it holds none."""
    engines = bundle.find("tensorrt")
    for artifact in engines:
        if artifact.get("gpu") == gpu and artifact.get("tensorrt_version") == trt_version:
            return artifact
    built = "; ".join(f"{a['file']} for {a.get('gpu')} / TensorRT {a.get('tensorrt_version')}" for a in engines)
    raise BundleError(
        f"{bundle.path} holds no TensorRT engine for this machine ({gpu} / TensorRT {trt_version}); "
        f"it holds {built or 'none'}, and an engine runs only on the GPU model and TensorRT version it was "
        f"built with. Rebuild here: {rebuild_command(bundle)}"
    )


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
        if missing := tensorrt_missing():
            return missing
        import tensorrt as trt

        try:
            select_engine(bundle, gpu_name(), trt.__version__)
        except BundleError as e:
            return str(e)
        return None

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        return "fp16", "the engine's precision"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp16", threads: int | None = None):
        if missing := tensorrt_missing():
            raise ValueError(f"backend tensorrt asked for, but {missing}")
        import tensorrt as trt
        import torch

        artifact = select_engine(bundle, gpu_name(), trt.__version__)
        plan = bundle.file(artifact)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot deserialize {plan}; rebuild it: {rebuild_command(bundle)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        self.input_name = next(n for n in names if is_input(n))
        outputs = [n for n in names if not is_input(n)]
        cfg, clip_shape = bundle.config, bundle.preprocessing.clip_shape
        widths = {OUTPUT_NAME: cfg.num_classes, FEATURES_NAME: cfg.width}
        if OUTPUT_NAME not in outputs or set(outputs) - set(widths):
            raise BundleError(f"{plan}: the engine's outputs are {outputs}, not {OUTPUT_NAME} (and {FEATURES_NAME})")
        self.has_features = FEATURES_NAME in outputs  # engines built before issue 26 have the logits only
        for n in (self.input_name, *outputs):  # the fp16 ONNX keeps float32 I/O (keep_io_types)
            if self.engine.get_tensor_dtype(n) != trt.float32:
                raise BundleError(f"{plan}: engine tensor {n!r} is {self.engine.get_tensor_dtype(n)}, not float32")
        # Buffers at the profile's maximum batch, allocated once, one per output (TensorRT writes every
        # output on every call); a call copies back only the rows it ran.
        self.max_batch = int(artifact["batch"]["max"])
        self.input = torch.empty((self.max_batch, *clip_shape), dtype=torch.float32, device="cuda")
        self.buffers = {n: torch.empty((self.max_batch, widths[n]), device="cuda") for n in outputs}  # float32
        self.context.set_tensor_address(self.input_name, self.input.data_ptr())
        for n, buffer in self.buffers.items():
            self.context.set_tensor_address(n, buffer.data_ptr())
        self.stream = torch.cuda.Stream()

    def outputs(self, clips: np.ndarray) -> Outputs:
        import torch

        n = len(clips)
        with torch.cuda.stream(self.stream):
            self.input[:n].copy_(torch.from_numpy(clips))  # float32 I/O, fp16 inside
            self.context.set_input_shape(self.input_name, (n, *clips.shape[1:]))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            logits = self.buffers[OUTPUT_NAME][:n].cpu()  # synchronizes the stream
            features = self.buffers[FEATURES_NAME][:n].cpu() if self.has_features else None
        return Outputs(logits.numpy(), None if features is None else features.numpy())
