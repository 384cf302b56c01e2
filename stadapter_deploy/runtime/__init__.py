"""Runtime: the model bundle and one Predictor interface over torch, ONNX Runtime and TensorRT.

Importing this package imports neither onnxruntime, onnx nor tensorrt; backends load them on use.
"""

from .bundle import Bundle, load_bundle
from .predictor import AUTO_ORDER, BACKENDS, Predictor, choose_backend, load_predictor

__all__ = ["AUTO_ORDER", "BACKENDS", "Bundle", "Predictor", "choose_backend", "load_bundle", "load_predictor"]
