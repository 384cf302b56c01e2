"""The runner registry: adding a backend is one file in this folder plus one line here.

Importing a runner module is cheap: each imports its engine (onnxruntime, tensorrt) only when used.
"""

from __future__ import annotations

from ..runner import Runner
from .ort_runner import OrtRunner
from .torch_runner import TorchRunner
from .trt_runner import TensorRTRunner

RUNNERS: dict[str, type[Runner]] = {
    "torch": TorchRunner,
    "onnxruntime": OrtRunner,
    "tensorrt": TensorRTRunner,
}
