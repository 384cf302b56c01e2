"""The Predictor: video -> preprocess -> runner -> labels, over any runner; `load_predictor` picks one.

Preprocessing, batching, view averaging and top-k live here, once. The result is a `Classification`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..preprocessing import Preprocessing
from .bundle import Bundle, load_bundle
from .runner import Runner, parse_backend
from .runners import RUNNERS

log = logging.getLogger(__name__)

BACKENDS = tuple(RUNNERS)
# "auto" tries these in order and takes the first that the bundle holds and the machine can run.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")


@dataclass
class Classification:
    """One classified video. `to_dict()` is the JSON the service answers with."""

    labels: list[dict]  # [{"label", "index", "score"}], best first
    frame_indices: list[list[int]]  # one list of frame numbers per temporal view
    backend: str
    precision: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, preprocess, infer, total
    clips: torch.Tensor | None = None  # [V, 3, T, S, S] model input, when asked for

    @property
    def frames(self) -> list[int]:
        return [i for view in self.frame_indices for i in view]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("clips", "frame_indices")}
        return {**d, "frames": self.frames}

    # Read like the dict that earlier versions returned: result["labels"], set(result), dict(result).
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def keys(self):
        return self.to_dict().keys()


def top_k_labels(labels: list[str], logits: np.ndarray, top_k: int = 5) -> list[dict]:
    """Softmax per view, averaged over views (as training eval does); the top_k classes."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits[None] if logits.ndim == 1 else logits  # [V, C]
    check_top_k(top_k, logits.shape[-1])
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = (z / z.sum(axis=-1, keepdims=True)).mean(axis=0)  # [C]
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in best]


def check_top_k(top_k, num_classes: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be an integer between 1 and {num_classes}, got {top_k!r}")


def classification(
    views,
    logits: np.ndarray,
    labels: list[str],
    top_k: int,
    runner_info: dict,
    infer_ms: float,
    start: float,
    keep_clips: bool = False,
) -> Classification:
    """Assemble the result of one video from its EvalViews and its logits [V, C]."""
    return Classification(
        labels=top_k_labels(labels, logits, top_k),
        frame_indices=[list(map(int, v)) for v in views.frame_indices],
        backend=runner_info["backend"],
        precision=runner_info["precision"],
        timings_ms={
            "decode": float(views.timings_ms["decode"]),
            "preprocess": float(views.timings_ms["preprocess"]),
            "infer": float(infer_ms),
            "total": (time.perf_counter() - start) * 1e3,
        },
        clips=views.clips if keep_clips else None,
    )


class Predictor:
    """A bundle's model behind a runner: `predict(clips)`, `preprocess(video)`, `classify(video)`."""

    def __init__(self, bundle: Bundle, runner: Runner, selection: str = ""):
        self.bundle = bundle
        self.runner = runner
        self.selection = selection  # how load_predictor picked the runner, e.g. for a startup log
        self.labels: list[str] = bundle.labels
        self.preprocessing: Preprocessing = bundle.preprocessing
        self.model_name: str = bundle.model_name

    def __repr__(self) -> str:
        return f"Predictor(backend={self.backend!r}, precision={self.precision!r}, model={self.model_name!r})"

    @property
    def backend(self) -> str:
        return self.runner.label

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def max_batch(self) -> int | None:
        return self.runner.max_batch

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.preprocessing.clip_shape  # one clip: [3, T, S, S]

    def info(self) -> dict:
        return {"backend": self.backend, "precision": self.precision}

    def predict(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [N, C] float32 for clips [N, 3, T, S, S]; batches over the runner's max are split."""
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
        parts = [self.runner.run(clips[i : i + step]) for i in range(0, len(clips), step)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def view_layout(self, views: int | None) -> tuple[int, int]:
        """(spatial_views, temporal_views) for `views` clips per video, laid out as the recipe lays them."""
        pre = self.preprocessing.with_views(views)
        return pre.spatial_views, pre.temporal_views

    def preprocess(self, video, views: int | None = None):
        """Decode, sample and transform `video` (path or bytes) with the bundle's preprocessing -> EvalViews."""
        from ..video import prepare_eval_views

        return prepare_eval_views(video, self.preprocessing.with_views(views))

    def top_k(self, logits: np.ndarray, top_k: int = 5) -> list[dict]:
        return top_k_labels(self.labels, logits, top_k)

    def classify(self, video, top_k: int = 5, views: int | None = None, keep_clips: bool = False) -> Classification:
        """preprocess + predict + top_k for one video (a path or the file's bytes)."""
        start = time.perf_counter()
        check_top_k(top_k, len(self.labels))
        ev = self.preprocess(video, views)
        t0 = time.perf_counter()
        logits = self.predict(ev.clips)  # [V, C]
        infer_ms = (time.perf_counter() - t0) * 1e3
        return classification(ev, logits, self.labels, top_k, self.info(), infer_ms, start, keep_clips)

    def timeline(self, video, window_s: float | None = None, stride_s: float | None = None, top_k: int = 5) -> list:
        """When things happen: labels for windows slid over `video` (path or bytes), one decode pass.
        Returns Segments (start_s, end_s, labels, frames); see stadapter_deploy/predict/timeline.py."""
        from ..predict.timeline import timeline

        return timeline(self, video, window_s, stride_s, top_k)


# ----------------------------------------------------------------------------- choosing a runner


def runnable(bundle: Bundle, name: str) -> str | None:
    """None when `name` (e.g. "onnxruntime-cuda") can run here on this bundle, else the reason why not."""
    base, device = parse_backend(name, RUNNERS)
    runner = RUNNERS[base]
    return runner.available(bundle, device or runner.devices[0])


def choose_backend(bundle: Bundle) -> tuple[str, list[str]]:
    """The fastest runnable backend by AUTO_ORDER, and why each faster one was passed over."""
    skipped = []
    for name in AUTO_ORDER:
        reason = runnable(bundle, name)
        if reason is None:
            return name, skipped
        skipped.append(f"{name}: {reason}")
    raise ValueError(f"no backend can run {bundle.path} here: " + "; ".join(skipped))


def resolve_backend(bundle: Bundle, backend: str = "auto", device: str | None = None) -> tuple[str, str, str]:
    """(runner name, device, why) for a backend name such as "auto", "torch" or "onnxruntime-cuda"."""
    selection = f"asked for {backend}"
    if backend == "auto":
        backend, skipped = choose_backend(bundle)
        selection = f"auto chose {backend}" + (f" (passed over: {'; '.join(skipped)})" if skipped else "")
    base, named_device = parse_backend(backend, RUNNERS)
    runner = RUNNERS[base]
    device = named_device or device
    if device is not None and device not in runner.devices:
        raise ValueError(f"unknown device {device!r} for {base}; choose one of {', '.join(runner.devices)}")
    if device is None:  # the GPU when this runner can use it here, else its first device
        cuda_ok = "cuda" in runner.devices and runner.available(bundle, "cuda") is None
        device = "cuda" if cuda_ok else runner.devices[0]
    return base, device, selection


def load_predictor(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    verify: bool = True,
    threads: int | None = None,
) -> Predictor:
    """Load a bundle and return a Predictor.

    backend: "auto", "torch", "onnxruntime", "tensorrt", or one with its device ("onnxruntime-cpu",
    "torch-cuda", "onnxruntime-tensorrt", ...). device: "cpu" or "cuda" (default: cuda when available for
    the backend), or "tensorrt" for ONNX Runtime's TensorRT execution provider.
    precision: "fp32", "fp16" (CUDA), "bf16" (torch on a CPU with BF16) or "int8" (onnxruntime, a bundle
    exported with --int8); default: fp16 on CUDA where the bundle holds it, int8 on a CPU with VNNI/AMX
    where the bundle holds it, else fp32 (`predictor.selection` says why). threads: CPU threads for the runner.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, verify=verify)
    name, device, selection = resolve_backend(bundle, backend, device)
    runner_class = RUNNERS[name]
    if precision is None:
        precision, why = runner_class.default_precision(bundle, device)
        selection += f"; {precision}: {why}"
    if precision not in runner_class.precisions:
        raise ValueError(
            f"unknown precision {precision!r} for {name}; choose one of {', '.join(runner_class.precisions)}"
        )
    log.info(selection)
    runner = runner_class(bundle, device=device, precision=precision, threads=threads)
    return Predictor(bundle, runner, selection)
