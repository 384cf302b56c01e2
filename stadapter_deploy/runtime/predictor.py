"""The Predictor: video -> preprocess -> runner -> labels, over any runner; `load_predictor` picks one.

Preprocessing, batching, view averaging and top-k live here, once. The result is a `Classification`
(results.py); a timeline is a list of Segments (timeline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BundleError
from ..preprocessing import Preprocessing
from .bundle import Bundle, load_bundle
from .results import Classification, check_top_k, classification, clip_embedding, top_k_labels
from .runner import Outputs, Runner, cuda_available, parse_backend
from .runners import RUNNERS
from .runners.torch_runner import load_torch_model

log = logging.getLogger(__name__)

BACKENDS = tuple(RUNNERS)
# "auto" tries these in order and takes the first that the bundle holds and the machine can run.
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")


class Predictor:
    """A bundle's model behind a runner: `predict(clips)`, `preprocess(video)`, `classify(video)`,
    `embed(video)` (the clip embedding), `explain(video)` (where the evidence is)."""

    def __init__(self, bundle: Bundle, runner: Runner, selection: str = "", limits=None):
        from ..video.limits import DecodeLimits

        self.bundle = bundle
        self.runner = runner
        self.selection = selection  # how load_predictor picked the runner, e.g. for a startup log
        self.limits: DecodeLimits = limits or DecodeLimits()  # what a video may cost to decode
        self.labels: list[str] = bundle.labels
        self.preprocessing: Preprocessing = bundle.preprocessing
        self.model_name: str = bundle.model_name
        self._torch_model = None  # the fp32 torch model for explain(), loaded on first use
        self._torch_model_lock = threading.Lock()  # one load, whichever request explains first

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
        clips = self.check_clips(clips)
        if len(clips) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        parts = [self.runner.run(batch) for batch in self.batches(clips)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def predict_with_features(self, clips: np.ndarray | torch.Tensor) -> Outputs:
        """Logits [N, C] and the pooled features [N, D] the head reads, float32, from the same model calls
        as `predict`. BundleError (one line: export again) where the bundle's artifact has no features."""
        self.check_features()
        clips = self.check_clips(clips)
        if len(clips) == 0:
            return Outputs(np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.feature_dim), np.float32))
        parts = [self.runner.outputs(batch) for batch in self.batches(clips)]
        return Outputs(
            np.concatenate([p.logits for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p.features for p in parts]).astype(np.float32, copy=False),
        )

    def batches(self, clips: np.ndarray) -> list[np.ndarray]:
        """`clips` in runs of at most the runner's max batch."""
        step = self.max_batch or len(clips)
        return [clips[i : i + step] for i in range(0, len(clips), step)]

    def check_clips(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """Clips as contiguous float32 [N, 3, T, S, S], or ValueError naming the shape expected."""
        if isinstance(clips, torch.Tensor):
            clips = clips.detach().cpu().numpy()
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        if clips.ndim != 5 or tuple(clips.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected clips of shape [N, {', '.join(map(str, self.input_shape))}] "
                f"(batch, RGB, frames, height, width), got {list(clips.shape)}"
            )
        return clips

    @property
    def has_features(self) -> bool:
        """Whether this backend's artifact gives the pooled features (embed, --features); False on ONNX files
        and engines exported before embeddings existed."""
        return self.runner.has_features

    @property
    def feature_dim(self) -> int:
        return self.bundle.config.width

    def check_features(self) -> None:
        if not self.has_features:
            raise BundleError(
                f"{self.bundle.path} was exported before embeddings: its {self.backend} artifact has no "
                f"features output; export the bundle again with stadapter-export to embed"
            )

    def view_layout(self, views: int | None) -> tuple[int, int]:
        """(spatial_views, temporal_views) for `views` clips per video, laid out as the recipe lays them."""
        pre = self.preprocessing.with_views(views)
        return pre.spatial_views, pre.temporal_views

    def preprocess(self, video, views: int | None = None):
        """Decode, sample and transform `video` (path or bytes) with the bundle's preprocessing -> EvalViews."""
        from ..video import prepare_eval_views

        return prepare_eval_views(video, self.preprocessing.with_views(views), limits=self.limits)

    def top_k(self, logits: np.ndarray, top_k: int = 5) -> list[dict]:
        return top_k_labels(self.labels, logits, top_k)

    def classify(
        self, video, top_k: int = 5, views: int | None = None, keep_clips: bool = False, features: bool = False
    ) -> Classification:
        """preprocess + predict + top_k for one video (a path or the file's bytes); with `features`, the
        result carries the clip embedding too (from the same model call; see `embed`)."""
        start = time.perf_counter()
        check_top_k(top_k, len(self.labels))
        if features:
            self.check_features()
        ev = self.preprocess(video, views)
        t0 = time.perf_counter()
        out = self.predict_with_features(ev.clips) if features else Outputs(self.predict(ev.clips))  # V views
        infer_ms = (time.perf_counter() - t0) * 1e3
        total_ms = (time.perf_counter() - start) * 1e3
        return classification(
            ev, out.logits, self.labels, top_k, self.info(), infer_ms, total_ms, keep_clips, out.features
        )

    def embed(self, video, views: int | None = None) -> np.ndarray:
        """The clip embedding of `video` (path or bytes): the pooled features the head reads (after ln_post,
        before fc), averaged over the views, L2-normalised: float32 [D]. Compare two with a dot product."""
        self.check_features()
        ev = self.preprocess(video, views)
        return clip_embedding(self.predict_with_features(ev.clips).features)

    def explain(self, video, target: int | None = None, views: int | None = None):
        """Why the model says what it says: per-frame heatmaps of the evidence for class `target` (default:
        the top-1), from the bundle's own fp32 weights on the torch backend whatever this Predictor runs
        (loaded on first use). Returns an Explanation; see stadapter_deploy/runtime/explain.py."""
        from .explain import explain

        return explain(self, video, target, views)

    def torch_model(self):
        """The bundle's fp32 torch model, for explanations: this Predictor's own where it runs one in fp32,
        else loaded once from model.safetensors (on the GPU where there is one)."""
        with self._torch_model_lock:
            if self._torch_model is None:
                runner_model = getattr(self.runner, "model", None)
                if self.runner.name == "torch" and self.precision == "fp32" and runner_model is not None:
                    self._torch_model = runner_model
                else:
                    self._torch_model = load_torch_model(self.bundle).to("cuda" if cuda_available() else "cpu")
            return self._torch_model

    def timeline(
        self, video, window_s: float | None = None, stride_s: float | None = None, top_k: int = 5, views=None
    ) -> list:
        """When things happen: labels for windows slid over `video` (path or bytes), one decode pass.
        Returns Segments (start_s, end_s, labels, frames); see stadapter_deploy/runtime/timeline.py."""
        from ..video.windows import WindowSpec
        from .timeline import timeline

        return timeline(self, video, WindowSpec(window_s, stride_s), top_k, views)


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


@dataclass(frozen=True)
class Plan:
    """Which runner, device and precision will run a bundle here, and why: checked, nothing loaded yet."""

    runner: str  # a RUNNERS key
    device: str
    precision: str
    selection: str  # in words, e.g. for a startup log

    @property
    def backend(self) -> str:
        return f"{self.runner}-{self.device}"


def plan_predictor(
    bundle: Bundle, backend: str = "auto", device: str | None = None, precision: str | None = None
) -> Plan:
    """Check once that `backend` (e.g. "auto", "torch", "onnxruntime-cuda") can run `bundle` here in
    `precision` (None: the runner's default); ValueError saying why not. `load_predictor` runs the plan.
    "auto" with a precision takes the first backend by AUTO_ORDER that runs that precision here."""
    if backend == "auto" and precision is not None:
        return plan_auto_precision(bundle, precision)
    name, device, selection = plan_backend(bundle, backend, device)
    precision, why = plan_precision(bundle, name, device, precision)
    return Plan(name, device, precision, selection + (f"; {precision}: {why}" if why else ""))


def plan_auto_precision(bundle: Bundle, precision: str) -> Plan:
    """ "auto" asked for a precision (e.g. bf16, which only torch runs on a CPU): the fastest backend that
    runs the bundle here in it; the selection says which were passed over and why."""
    skipped = []
    for backend in AUTO_ORDER:
        name, device = parse_backend(backend, RUNNERS)
        device = device or RUNNERS[name].devices[0]
        reason = runnable(bundle, backend)
        if reason is None and precision not in RUNNERS[name].precisions:
            reason = f"does not run {precision}"
        if reason is None:
            try:
                plan_precision(bundle, name, device, precision)
            except ValueError as e:
                reason = str(e)
        if reason is None:
            passed = f" (passed over: {'; '.join(skipped)})" if skipped else ""
            return Plan(name, device, precision, f"auto chose {backend} for {precision}{passed}")
        skipped.append(f"{backend}: {reason}")
    raise ValueError(f"no backend runs {bundle.path} in {precision} here: " + "; ".join(skipped))


def plan_backend(bundle: Bundle, backend: str = "auto", device: str | None = None) -> tuple[str, str, str]:
    """(runner name, device, why) for `backend`, asking each runner once whether it can run `bundle` here."""
    if backend == "auto":
        backend, skipped = choose_backend(bundle)
        selection = f"auto chose {backend}" + (f" (passed over: {'; '.join(skipped)})" if skipped else "")
        name, device = parse_backend(backend, RUNNERS)
        return name, device or RUNNERS[name].devices[0], selection
    name, named_device = parse_backend(backend, RUNNERS)
    return name, pick_device(bundle, RUNNERS[name], named_device or device), f"asked for {backend}"


def plan_precision(bundle: Bundle, name: str, device: str, precision: str | None) -> tuple[str, str]:
    """(precision, why it was chosen; "" when asked for): the runner's default, or `precision` if it can run it."""
    runner = RUNNERS[name]
    why = ""
    if precision is None:
        precision, why = runner.default_precision(bundle, device)
    if precision not in runner.precisions:
        raise ValueError(f"unknown precision {precision!r} for {name}; choose one of {', '.join(runner.precisions)}")
    held = sorted({a["precision"] for a in bundle.find(name)})
    if name == "onnxruntime" and precision not in held:  # one ONNX file per precision
        raise ValueError(f"the bundle holds no {precision} ONNX (it holds {', '.join(held)})")
    if refusal := runner.precision_refusal(bundle, device, precision):  # e.g. int8 where its sums are not exact
        raise ValueError(refusal)
    return precision, why


def pick_device(bundle: Bundle, runner: type[Runner], device: str | None) -> str:
    """`device` if the runner can run the bundle there; None: the GPU where it can, else its first device."""
    if device is not None and device not in runner.devices:
        raise ValueError(f"unknown device {device!r} for {runner.name}; choose one of {', '.join(runner.devices)}")
    if device is None and "cuda" in runner.devices and runner.available(bundle, "cuda") is None:
        return "cuda"
    device = device or runner.devices[0]
    if reason := runner.available(bundle, device):
        label = runner.name if len(runner.devices) == 1 else f"{runner.name}-{device}"
        raise ValueError(f"backend {label} asked for, but it cannot run here: {reason}")
    return device


def load_predictor(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    verify: bool = True,
    threads: int | None = None,
    plan: Plan | None = None,
    limits=None,
) -> Predictor:
    """Load a bundle and return a Predictor.

    backend: "auto", "torch", "onnxruntime", "tensorrt", or one with its device ("onnxruntime-cpu",
    "torch-cuda", "onnxruntime-tensorrt", ...). device: "cpu" or "cuda" (default: cuda when available for
    the backend), or "tensorrt" for ONNX Runtime's TensorRT execution provider.
    precision: "fp32", "fp16" (CUDA), "bf16" (torch on a CPU with BF16) or "int8" (onnxruntime, a bundle
    exported with --int8); default: fp16 on CUDA where the bundle holds it, int8 on an x86 CPU where the
    bundle holds it and its sums are exact and fast there (7-bit weights anywhere, 8-bit on VNNI/AMX), else
    fp32 (`predictor.selection` says why); a precision that cannot run here as its export gate measured it is
    refused with one line. threads: CPU threads for the runner.
    plan: a `plan_predictor` result made earlier (backend, device and precision are then not read).
    limits: the decode limits (video.limits.DecodeLimits) for the videos it reads; default: the package's.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, verify=verify)
    plan = plan or plan_predictor(bundle, backend, device, precision)
    log.info(plan.selection)
    runner = RUNNERS[plan.runner](bundle, device=plan.device, precision=plan.precision, threads=threads)
    return Predictor(bundle, runner, plan.selection, limits)
