"""ONNX Runtime: the bundle's ONNX on the CPU, CUDA or TensorRT execution provider.

Device "tensorrt" puts ONNX Runtime's TensorRT provider first (it builds its own engine on first run),
with CUDA and CPU as fallbacks for unsupported nodes.

int8 on x86 CPUs: ONNX Runtime multiplies uint8 activations by int8 weights. With VNNI or AMX the
products are summed exactly in int32; without (AVX2, AVX-512 without VNNI) each pair of products is
summed in a saturating int16 first, which 8-bit weights overflow. An artifact exported with 7-bit
weights (quantize.py, the default since issue 17) never overflows it; for an older one with 8-bit
weights the session asks for ONNX Runtime's U8U8 kernels instead (exact, slower). Either way every
x86 CPU computes the integer sums the export gate checked, so the gate's figures hold here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import hardware
from ...errors import BundleError
from ..bundle import FEATURES_NAME, OUTPUT_NAME, Bundle
from ..runner import Outputs, Runner, cuda_available

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
# U8U8 instead of U8S8 int8 GEMMs where ONNX Runtime finds U8S8 unsafe, for int8 weights outside [-64, 64].
# Only asked for on CPUs without VNNI/AMX: ONNX Runtime would give up the exact VNNI kernels for it too.
EXACT_INT8_OPTION = "session.x64quantprecision"


def ort_providers() -> list[str]:
    """ONNX Runtime's available execution providers, [] when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def make_session(path, providers: list, threads: int | None = None, exact_int8: bool = False):
    """An InferenceSession with full graph optimization; a corrupt file raises BundleError.
    exact_int8: ONNX Runtime's U8U8 int8 kernels where its U8S8 ones could saturate."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if exact_int8:
        opts.add_session_config_entry(EXACT_INT8_OPTION, "1")
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
    def precision_refusal(cls, bundle: Bundle, device: str, precision: str) -> str | None:
        if precision != "int8" or not bundle.find("onnxruntime", "int8"):
            return None
        if not hardware.cpu_is_x86():  # int8 nodes run on the CPU provider's kernels, whatever the device
            return (
                f"the int8 ONNX was checked on x86 CPUs only, and this CPU is {hardware.cpu_kind()}: use precision fp32"
            )
        return None

    @classmethod
    def default_precision(cls, bundle: Bundle, device: str) -> tuple[str, str]:
        # half precision only pays on a GPU; ONNX Runtime's TensorRT provider makes its own
        if device == "cuda" and bundle.find("onnxruntime", "fp16"):
            return "fp16", "the bundle's fp16 ONNX on the GPU"
        if device == "cpu" and (found := bundle.find("onnxruntime", "int8")):
            if reason := cls.precision_refusal(bundle, device, "int8"):
                return "fp32", f"the bundle's int8 ONNX passed over: {reason}"
            if hardware.cpu_has_int8_dot():
                return "int8", "the bundle's int8 ONNX: this CPU has VNNI/AMX int8 dot products"
            if seven_bit(found[0]):  # U8S8 kernels, exact: 1.5x fp32 on an AVX2 CPU (issue 17)
                return (
                    "int8",
                    f"the bundle's int8 ONNX: its 7-bit weights are exact on {hardware.cpu_kind()} int8 kernels",
                )
            return "fp32", (
                "the bundle's int8 ONNX passed over: its 8-bit weights would need ONNX Runtime's slower U8U8 "
                "kernels on this CPU (no VNNI/AMX); export again with --int8 for 7-bit weights"
            )
        return "fp32", "the default"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        if reason := self.available(bundle, device):
            raise ValueError(f"backend onnxruntime-{device} cannot run here: {reason}")
        found = bundle.find("onnxruntime", precision)
        if not found:
            raise BundleError(f"{bundle.path} holds no {precision} ONNX model")
        if reason := self.precision_refusal(bundle, device, precision):
            raise ValueError(f"onnxruntime-{device} will not run {precision} here: {reason}")
        artifact = found[0]
        exact_int8 = precision == "int8" and exact_int8_needed()
        self.session = make_session(bundle.file(artifact), PROVIDERS[device], threads, exact_int8)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.logits_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
        self.has_features = FEATURES_NAME in outputs
        self.output_names = [self.logits_name] + [FEATURES_NAME] * self.has_features
        self.device, self.precision, self.max_batch = device, precision, artifact["batch"]["max"]

    def outputs(self, clips: np.ndarray) -> Outputs:
        logits, *features = self.session.run(self.output_names, {self.input_name: clips})
        return Outputs(logits, features[0] if features else None)


def exact_int8_needed() -> bool:
    """Whether int8 sessions ask for the U8U8 kernels here: on CPUs without VNNI/AMX (a no-op for 7-bit
    weights, which ONNX Runtime leaves on its U8S8 kernels)."""
    return not hardware.cpu_has_int8_dot()


def seven_bit(artifact: dict) -> bool:
    """Whether an int8 artifact's weights fit in [-64, 64], where no x86 int8 kernel saturates (older
    bundles do not record it: their weights are 8-bit)."""
    return bool((artifact.get("quantization") or {}).get("saturation_free"))


def int8_method(artifact: dict, exact_int8: bool) -> str:
    """e.g. "dynamic, int8 [-64, 64], symmetric, per output channel; U8S8 kernels (avx2)": quantization and kernels."""
    q = artifact.get("quantization") or {}
    if not exact_int8:
        kernels = "U8S8 VNNI/AMX kernels"
    else:
        kernels = "U8S8 kernels" if seven_bit(artifact) else "U8U8 kernels"
    return f"{q.get('method', 'dynamic')}, {q.get('weights', 'int8')}; {kernels} ({hardware.cpu_kind()})"
