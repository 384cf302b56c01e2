"""One Predictor interface over every backend, and `load_predictor` that picks one.

A backend only implements `_infer(clips [n, 3, T, S, S] float32) -> logits [n, C] float32`;
preprocessing, batching, view averaging and top-k live here, once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# "auto" tries these in order and takes the first that the bundle holds and the machine can run.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")


class Predictor:
    """Runs a bundle's model. Subclasses set `backend` and implement `_infer`."""

    backend: str = "none"
    selection: str = ""  # how load_predictor picked the backend

    def __init__(self, bundle: Bundle, max_batch: int | None = None):
        self.bundle = bundle
        self.labels: list[str] = bundle.labels
        self.manifest: dict = bundle.manifest
        self.preprocessing: dict = bundle.preprocessing
        self.model_name: str = bundle.model_name
        self.max_batch: int | None = max_batch
        p = self.preprocessing
        self.input_shape = (3, p["num_frames"], p["size"], p["size"])  # one clip: [3, T, S, S]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, model={self.model_name!r})"

    # ------------------------------------------------------------------ inference

    def _infer(self, clips: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [N, C] float32 for clips [N, 3, T, S, S]; batches over `max_batch` are split."""
        if isinstance(clips, torch.Tensor):
            clips = clips.detach().cpu().numpy()
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected clips of shape [N, {', '.join(map(str, self.input_shape))}] "
                f"(batch, RGB, frames, height, width), got {list(clips.shape)}"
            )
        if len(clips) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        step = self.max_batch or len(clips)
        parts = [self._infer(clips[i : i + step]) for i in range(0, len(clips), step)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ video in, labels out

    def view_layout(self, views: int | None) -> tuple[int, int]:
        """(spatial_views, temporal_views) for `views` clips per video, laid out as the recipe lays them."""
        p = self.preprocessing
        if views is None:
            return p["spatial_views"], p["temporal_views"]
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"views must be a positive integer, got {views!r}")
        if p["temporal_views"] > 1:
            if views > 10:
                raise ValueError(f"views must be between 1 and 10 temporal views, got {views}")
            return 1, views
        if views not in (1, 3):
            raise ValueError(f"this model averages spatial crops: views must be 1 or 3, got {views}")
        return views, 1

    def preprocess(self, video, views: int | None = None):
        """Decode, sample and transform `video` (path or bytes) with the bundle's preprocessing -> EvalViews."""
        from ..video import prepare_eval_views

        spatial, temporal = self.view_layout(views)
        p = self.preprocessing
        return prepare_eval_views(
            video,
            num_frames=p["num_frames"],
            sampling_rate=p["sampling_rate"],
            spatial_views=spatial,
            temporal_views=temporal,
            size=p["size"],
        )

    def top_k(self, logits: np.ndarray, top_k: int = 5) -> list[dict]:
        """Softmax per view, averaged over views (as training eval does); the top_k classes."""
        logits = np.asarray(logits, dtype=np.float64)
        logits = logits[None] if logits.ndim == 1 else logits  # [V, C]
        num_classes = logits.shape[-1]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be an integer between 1 and {num_classes}, got {top_k!r}")
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = (z / z.sum(axis=-1, keepdims=True)).mean(axis=0)  # [C]
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [{"label": self.labels[i], "index": int(i), "score": float(scores[i])} for i in best]

    def classify(self, video, top_k: int = 5, views: int | None = None) -> dict:
        """preprocess + predict + top_k for one video (a path or the file's bytes)."""
        start = time.perf_counter()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be an integer between 1 and {len(self.labels)}, got {top_k!r}")
        ev = self.preprocess(video, views)
        t0 = time.perf_counter()
        logits = self.predict(ev.clips)  # [V, C]
        infer_ms = (time.perf_counter() - t0) * 1e3
        labels = self.top_k(logits, top_k)
        return {
            "labels": labels,
            "backend": self.backend,
            "frames": [int(i) for view in ev.frame_indices for i in view],
            "timings_ms": {
                "decode": float(ev.timings_ms["decode"]),
                "preprocess": float(ev.timings_ms["preprocess"]),
                "infer": infer_ms,
                "total": (time.perf_counter() - start) * 1e3,
            },
        }


# ----------------------------------------------------------------------------- choosing a backend


def cuda_available() -> bool:
    return torch.cuda.is_available()


def ort_providers() -> list[str]:
    """ONNX Runtime's available execution providers, [] when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def runnable(bundle: Bundle, name: str) -> str | None:
    """None when `name` (e.g. "onnxruntime-cuda") can run here on this bundle, else the reason why not."""
    backend, _, device = name.partition("-")
    if backend == "tensorrt":
        from .tensorrt_build import engine_for_this_machine, tensorrt_missing

        return tensorrt_missing() or (None if engine_for_this_machine(bundle) else "no engine for this GPU")
    if not bundle.find(backend):
        return f"the bundle holds no {backend} artifact"
    if device == "cuda" and not cuda_available():
        return "no CUDA GPU"
    if backend == "onnxruntime":
        providers = ort_providers()
        if not providers:
            return "onnxruntime is not installed"
        if device == "cuda" and "CUDAExecutionProvider" not in providers:
            return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def choose_backend(bundle: Bundle) -> tuple[str, list[str]]:
    """The fastest runnable backend by AUTO_ORDER, and why each faster one was passed over."""
    skipped = []
    for name in AUTO_ORDER:
        reason = runnable(bundle, name)
        if reason is None:
            return name, skipped
        skipped.append(f"{name}: {reason}")
    raise ValueError(f"no backend can run {bundle.path} here: " + "; ".join(skipped))


def load_predictor(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    verify: bool = True,
) -> Predictor:
    """Load a bundle and return a Predictor.

    backend: "auto", "torch", "onnxruntime", "tensorrt", or one with its device ("onnxruntime-cpu",
    "torch-cuda", "onnxruntime-tensorrt", ...). device: "cpu" or "cuda" (default: cuda when available for
    the backend), or "tensorrt" for ONNX Runtime's TensorRT execution provider.
    precision: "fp32" or "fp16" (default: fp32 on CPU, fp16 on CUDA where the bundle holds it).
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, verify=verify)
    name = backend
    selection = f"asked for {backend}"
    if name == "auto":
        name, skipped = choose_backend(bundle)
        selection = f"auto chose {name}" + (f" (passed over: {'; '.join(skipped)})" if skipped else "")
        log.info(selection)
    base, _, dev = name.partition("-")
    if base not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    device = dev or device
    devices = ("cpu", "cuda", "tensorrt") if base == "onnxruntime" else ("cpu", "cuda")
    if device is not None and device not in devices:
        raise ValueError(f"unknown device {device!r} for {base}; choose one of {', '.join(devices)}")
    if precision not in (None, "fp32", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; choose fp32 or fp16")
    if base == "torch":
        from .backends.torch_backend import TorchPredictor

        predictor = TorchPredictor(bundle, device=device, precision=precision)
    elif base == "onnxruntime":
        from .backends.ort_backend import OrtPredictor

        predictor = OrtPredictor(bundle, device=device, precision=precision)
    else:
        from .backends.trt_backend import TensorRTPredictor

        predictor = TensorRTPredictor(bundle)
    predictor.selection = selection  # why this backend, e.g. for a service's startup log
    return predictor
