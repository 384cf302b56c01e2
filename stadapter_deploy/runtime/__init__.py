"""Runtime: what runs a bundle. The bundle, the Runner interface with one runner per engine
(runners/), and the Predictor over them.

Names load on first use (PEP 562): reading a bundle (`runtime.bundle`) imports no torch, so a process that
only hands work to others (the Ray engine's driver) never loads it. Nothing here imports onnxruntime,
onnx or tensorrt before a runner is used, nor the build-time package (stadapter_deploy.export).
"""

from ..lazy import lazy_exports, lazy_names

_EXPORTS = lazy_names(
    {
        ".bundle": ("Bundle", "load_bundle"),
        ".predictor": ("AUTO_ORDER", "BACKENDS", "Classification", "Predictor", "choose_backend", "load_predictor"),
        ".runner": ("Runner",),
        ".runners": ("RUNNERS",),
    }
)
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
