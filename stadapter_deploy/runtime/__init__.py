"""Runtime: what runs a bundle. The bundle, the Runner interface with one runner per engine
(runners/), and the Predictor over them.

Importing this package imports neither onnxruntime, onnx nor tensorrt; runners load them on use.
It never imports the build-time package (stadapter_deploy.export).
"""

from .bundle import Bundle, load_bundle
from .predictor import AUTO_ORDER, BACKENDS, Classification, Predictor, choose_backend, load_predictor
from .runner import Runner
from .runners import RUNNERS

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "RUNNERS",
    "Bundle",
    "Classification",
    "Predictor",
    "Runner",
    "choose_backend",
    "load_bundle",
    "load_predictor",
]
