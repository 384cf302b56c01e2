"""The BentoML service: `bentoml serve` in the repository root starts it (see bentofile.yaml).

Two services in one server:
- `STAdapter` (the API, public): takes uploads, checks them (serve/guard.py), decodes and preprocesses
  them in a pool of worker processes (serve/workers.py running serve/decoding.py, which imports only the
  video pipeline), sends the clips to the model, and answers with `Classification.to_dict()`, the JSON
  that `Predictor.classify` returns. With STADAPTER_UI=1 the Gradio demo is mounted at /ui and calls
  this service in-process.
- `STAdapterModel` (internal, reached through `bentoml.depends`): one batchable `predict`; BentoML's
  adaptive batching concatenates the clips of concurrent requests along dim 0 into one model call.

Configuration: environment variables, see serve/settings.py and the README.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.decoding import make_decoder
from serve.errors import BadRequest, error, model_failure
from serve.guard import UploadGuard, UploadRoute
from serve.pinning import pin_bundle
from serve.settings import READY_FRESH_S, READY_PROBE_S, Settings, load_settings
from serve.workers import JobFailed, JobRejected, ProcessPool
from stadapter_deploy.errors import ConfigError, STAdapterError
from stadapter_deploy.predict.timeline import Segment, check_seconds
from stadapter_deploy.runtime import RUNNERS, Bundle, load_bundle
from stadapter_deploy.runtime.predictor import (
    Classification,
    check_top_k,
    classification,
    resolve_backend,
    runnable,
    top_k_labels,
)

log = logging.getLogger("stadapter.serve")


def check_backend(bundle: Bundle, backend: str, precision: str | None) -> None:
    """Refuse, before any worker starts, a backend or precision that is unknown or cannot run this bundle here."""
    try:
        name, device, _ = resolve_backend(bundle, backend)  # "auto" raises when nothing can run it
    except ValueError as e:
        raise ConfigError(f"STADAPTER_BACKEND={backend!r}: {e}") from None
    if reason := runnable(bundle, f"{name}-{device}"):
        raise ConfigError(f"STADAPTER_BACKEND={backend!r} cannot run here: {reason}")
    runner = RUNNERS[name]
    if precision is not None and precision not in runner.precisions:
        raise ConfigError(f"STADAPTER_PRECISION={precision!r}: {name} runs {', '.join(runner.precisions)}")
    if precision in ("fp16", "int8") and not bundle.find(name, precision) and name == "onnxruntime":
        raise ConfigError(f"STADAPTER_PRECISION={precision!r}: the bundle holds no {precision} ONNX")


def _startup() -> tuple[Settings, Bundle]:
    """Settings and the bundle, checked on import: a bad setup stops `bentoml serve` with one line.

    The first import (in `bentoml serve` itself) verifies the bundle and pins it: every worker, and every
    worker restarted later, serves that pinned copy, so a bundle rewritten in place never mixes in.
    """
    try:
        settings = load_settings()
        bundle = load_bundle(pin_bundle(settings.bundle), verify=True)
        check_backend(bundle, settings.backend, settings.precision)
        return settings, bundle
    except (STAdapterError, ValueError, OSError) as e:
        raise SystemExit(f"stadapter serve: cannot start: {e}") from None


SETTINGS, BUNDLE = _startup()
DEFAULT_TOP_K = 5

BATCH_CLIPS = bentoml.metrics.Histogram(
    name="stadapter_model_batch_clips",
    documentation="Clips in each model call (requests batched together, times their views)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
)


# ----------------------------------------------------------------------------- the model


@bentoml.service(
    name="stadapter_model",
    workers=1,
    traffic={"timeout": SETTINGS.request_timeout_s},
    # BentoML's client to this service replaces its HTTP session every 100 requests or 300 s and
    # closes the old one, cutting off calls still waiting in the batch queue ("Server disconnected").
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class STAdapterModel:
    """Holds the Predictor; `predict` is batched across requests."""

    def __init__(self) -> None:
        from stadapter_deploy import load_predictor

        self.predictor = load_predictor(BUNDLE, backend=SETTINGS.backend, precision=SETTINGS.precision)
        log.info("model %s on %s (%s)", self.predictor.model_name, self.predictor.backend, self.predictor.selection)
        if SETTINGS.warmup:  # the largest batch once, so memory (e.g. ONNX Runtime's arena) peaks before serving
            start = time.perf_counter()
            self.predictor.predict(np.zeros((SETTINGS.max_batch_size, *self.predictor.input_shape), np.float32))
            log.info("warm-up batch of %d clips: %.0f ms", SETTINGS.max_batch_size, (time.perf_counter() - start) * 1e3)

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def predict(self, clips: np.ndarray) -> np.ndarray:
        """Logits [N, C] for clips [N, 3, T, S, S] gathered from concurrent requests."""
        BATCH_CLIPS.observe(len(clips))
        log.debug("model call: %d clips", len(clips))
        return self.predictor.predict(clips)

    @bentoml.api
    def info(self) -> dict:
        """What answers: {"backend", "precision"}."""
        return self.predictor.info()


# ----------------------------------------------------------------------------- the public API


async def metadata(_: Request) -> JSONResponse:
    return JSONResponse(await bentoml.get_current_service().metadata())


def mount_ui(service_class):
    """With STADAPTER_UI=1, serve the Gradio demo at /ui. The page calls this service in-process
    (`bentoml.get_current_service()`), so its uploads get the same decoding and batching as any client."""
    if not SETTINGS.ui:
        return service_class
    try:
        from demo.app import InProcessClassifier, build_demo
    except ImportError as e:  # e.g. a bento, which carries neither demo/ nor gradio
        raise SystemExit(f"stadapter serve: cannot start: STADAPTER_UI=1 needs the demo and gradio ({e})") from None

    page = build_demo(InProcessClassifier(), subtitle=f"Served by BentoML: {BUNDLE.model_name}")
    return bentoml.gradio.mount_gradio_app(page, path="/ui")(service_class)


@mount_ui
@bentoml.service(
    name="stadapter",
    workers=SETTINGS.api_workers,
    traffic={"timeout": SETTINGS.request_timeout_s},
    runner_probe={"enabled": False},  # /readyz asks the model itself, with a deadline (__is_ready__)
)
@bentoml.asgi_app(Starlette(routes=[Route("/metadata", metadata, methods=["GET"])]), path="/")
class STAdapter:
    """Classifies uploaded videos: POST /classify, POST /classify_batch, GET /metadata."""

    model = bentoml.depends(STAdapterModel)

    def __init__(self) -> None:
        self.bundle = BUNDLE  # preprocessing and labels; the model runs in STAdapterModel
        setup_args = (BUNDLE.preprocessing.to_dict(), SETTINGS.max_timeline_windows)
        self.pool = ProcessPool(make_decoder, setup_args, SETTINGS.decode_workers, SETTINGS.decode_timeout_s)
        self._info: dict | None = None
        self._model_ok_at = -1e9  # when a model call last succeeded (time.monotonic)

    @bentoml.on_startup
    async def start_decoders(self) -> None:
        await self.pool.start()

    @bentoml.on_shutdown
    def stop_decoders(self) -> None:
        self.pool.close()

    async def __is_ready__(self) -> bool:
        """Ready when decode workers are up and the model answers: a batch that succeeded within the last
        second counts, else a quick `info()` call. Always answers within a second."""
        if self.pool.alive == 0:
            return False
        if time.monotonic() - self._model_ok_at < READY_FRESH_S:
            return True
        try:
            await asyncio.wait_for(self.model.to_async.info(), READY_PROBE_S)
        except Exception:  # down, restarting, or too slow to answer: not ready
            return False
        return True

    @bentoml.api(route="/classify")
    async def classify(self, video: Path, top_k: int | None = None, views: int | None = None) -> dict:
        """Top-k classes of one uploaded video (multipart field `video`)."""
        try:
            return (await self.classify_video(video, top_k, views)).to_dict()
        except BadRequest as e:
            return error(e)

    async def classify_video(self, video: Path, top_k: int | None = None, views: int | None = None) -> Classification:
        """One video file -> Classification; BadRequest with the status to answer. The /ui page calls this."""
        top_k = self._check_options(top_k, views)
        start = time.perf_counter()
        decoded = await self._decode(video, views, "the video")
        return (await self._finish([decoded], top_k, start))[0]

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, videos: list[Path], top_k: int | None = None, views: int | None = None) -> dict:
        """Top-k classes of each uploaded video (multipart field `videos`, repeated): {"results": [...]}, one
        entry per video in order: its result, or {"error", "status"} for a video that failed. The answer is 200
        whenever the request itself was sound, whatever its videos did: each entry carries its own outcome, so
        one bad file does not cost the client the others' results."""
        try:
            top_k = self._check_options(top_k, views)
            start = time.perf_counter()
            decoded = await asyncio.gather(
                *(self._decode(v, views, f"video {i + 1} of {len(videos)}") for i, v in enumerate(videos)),
                return_exceptions=True,
            )
            for d in decoded:
                if isinstance(d, BaseException) and not isinstance(d, BadRequest):
                    raise d
            good = [d for d in decoded if not isinstance(d, BadRequest)]
            classified = iter(await self._finish(good, top_k, start) if good else [])
            results = [
                {"error": str(d), "status": d.status} if isinstance(d, BadRequest) else next(classified).to_dict()
                for d in decoded
            ]
            return {"results": results}
        except BadRequest as e:
            return error(e)

    @bentoml.api(route="/classify_timeline")
    async def classify_timeline(
        self,
        video: Path,
        top_k: int | None = None,
        views: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
    ) -> dict:
        """When things happen in one uploaded video: {"segments": [{"start_s", "end_s", "labels", "frames"}]},
        one per window slid over it (defaults: the recipe's clip span or 2 s, stride half of it)."""
        try:
            return {
                "segments": [s.to_dict() for s in await self.timeline_video(video, top_k, views, window_s, stride_s)]
            }
        except BadRequest as e:
            return error(e)

    async def timeline_video(self, video: Path, top_k=None, views=None, window_s=None, stride_s=None) -> list:
        """One video file -> Segments; BadRequest with the status to answer. The /ui page calls this."""
        top_k = self._check_options(top_k, views)
        try:
            check_seconds("window_s", window_s)
            check_seconds("stride_s", stride_s)
        except ValueError as e:
            raise BadRequest(400, str(e)) from None
        decoded = await self._decode(video, views, "the video", "timeline", window_s, stride_s)
        logits = await self._predict(decoded["clips"])  # [W * V, C]
        per_window = logits.reshape(len(decoded["windows"]), decoded["views"], -1)  # [W, V, C]
        return [
            Segment(w["start_s"], w["end_s"], top_k_labels(self.bundle.labels, window_logits, top_k), w["frames"])
            for w, window_logits in zip(decoded["windows"], per_window, strict=True)
        ]

    # -------------------------------------------------------------- steps

    def _check_options(self, top_k: int | None, views: int | None) -> int:
        num_classes = len(self.bundle.labels)
        top_k = min(DEFAULT_TOP_K, num_classes) if top_k is None else top_k
        try:
            check_top_k(top_k, num_classes)
            self.bundle.preprocessing.with_views(views)
        except ValueError as e:
            raise BadRequest(400, str(e)) from None
        return top_k

    async def _decode(self, video: Path, views: int | None, what: str, kind: str = "clips", *options) -> dict:
        try:
            return await self.pool.run(kind, str(video), views, *options)
        except JobRejected as e:  # VideoError and friends: the file is at fault
            message = str(e).replace(str(video), "the upload")
            raise BadRequest(422, f"cannot use {what}: {message}") from None
        except JobFailed as e:
            upload = f"{what} ({video.name}, {video.stat().st_size if video.exists() else '?'} bytes)"
            if e.timed_out:
                log.warning("decode timed out on %s: %s; its worker was replaced", upload, e)
                raise BadRequest(
                    422, f"decoding {what} {e}, the server's limit; send a shorter or smaller video"
                ) from None
            log.error("decode worker failed on %s: %s; it was replaced", upload, e)
            raise BadRequest(
                503, f"the server failed while decoding {what} (not the file's fault); try again"
            ) from None

    async def _finish(self, decoded: list[dict], top_k: int, start: float) -> list[Classification]:
        clips = np.concatenate([d["clips"] for d in decoded])  # [sum of V, 3, T, S, S]
        t0 = time.perf_counter()
        logits = await self._predict(clips)  # [sum of V, C]
        infer_ms = (time.perf_counter() - t0) * 1e3
        info = await self.info()
        results, offset = [], 0
        for d in decoded:
            views = SimpleNamespace(**d)  # the EvalViews fields the decode worker sent back
            num_views = len(d["clips"])
            logits_of_video = logits[offset : offset + num_views]
            result = classification(views, logits_of_video, self.bundle.labels, top_k, info, infer_ms, start, True)
            results.append(result)  # keeps its clips for the /ui page; to_dict() leaves them out
            offset += num_views
        return results

    async def _predict(self, clips: np.ndarray) -> np.ndarray:
        """Logits for clips [N, 3, T, S, S], sent in calls of at most the model's batch size, concurrently,
        so BentoML batches them with other requests' clips."""
        step = SETTINGS.max_batch_size
        try:
            parts = await asyncio.gather(
                *(self.model.to_async.predict(clips[i : i + step]) for i in range(0, len(clips), step))
            )
        except Exception as e:
            raise model_failure(e) from None
        self._model_ok_at = time.monotonic()
        return np.concatenate(parts)

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self.model.to_async.info()
        return self._info

    async def metadata(self) -> dict:
        manifest = self.bundle.manifest
        info = await self.info()
        return {
            "model_name": self.bundle.model_name,
            "num_classes": len(self.bundle.labels),
            "classes": self.bundle.labels,
            "preprocessing": self.bundle.preprocessing.to_dict(),
            "backend": info["backend"],
            "precision": info["precision"],
            "bundle": {
                "path": BUNDLE.path.name,
                "schema_version": manifest.get("schema_version"),
                "artifacts": [
                    {k: a.get(k) for k in ("file", "backend", "precision", "bytes", "batch")}
                    for a in manifest.get("artifacts", [])
                ],
                **{k: manifest[k] for k in ("parity", "versions", "created") if k in manifest},
            },
            "limits": {
                "max_upload_mb": SETTINGS.max_upload_mb,
                "max_videos": SETTINGS.max_videos,
                "decode_timeout_s": SETTINGS.decode_timeout_s,
                "max_batch_size": SETTINGS.max_batch_size,
                "max_latency_ms": SETTINGS.max_latency_ms,
            },
        }


STAdapter.add_asgi_middleware(
    UploadGuard,
    routes={
        "/classify": UploadRoute("video", max_files=1),
        "/classify_batch": UploadRoute("videos", max_files=SETTINGS.max_videos),
        "/classify_timeline": UploadRoute("video", max_files=1, numbers=("window_s", "stride_s")),
    },
    max_bytes=SETTINGS.max_upload_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
)

if __name__ == "__main__":
    sys.exit("start the service with `bentoml serve` in the repository root")
