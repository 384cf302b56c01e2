"""The BentoML service: `bentoml serve` in the repository root starts it (see bentofile.yaml).

Two services in one server:
- `STAdapter` (the API, public): takes uploads, checks them (serve/guard.py, derived from the API
  methods below), decodes and preprocesses them in a pool of worker processes (the library's
  DecodePool running stadapter_deploy/video/jobs.py, which imports only the video pipeline), sends the
  clips to the model, and answers with the runtime's own result types (`Classification.to_dict()`,
  `Segment.to_dict()`). With STADAPTER_UI=1 the Gradio demo is mounted at /ui and calls this service
  in-process.
- `STAdapterModel` (internal, reached through `bentoml.depends`): one batchable `predict`; BentoML's
  adaptive batching concatenates the clips of concurrent requests along dim 0 into one model call.

Long videos go through the task `/timeline_task` (submit, status, get): their windows are decoded by a
pool of their own, so a running task never takes a decode worker from /classify.

Configuration: environment variables, see serve/settings.py and the README.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.errors import error, model_failure
from serve.guard import RequestGuard, upload_routes
from serve.pinning import pin_bundle
from serve.settings import READY_FRESH_S, READY_PROBE_S, Settings, load_settings
from stadapter_deploy.errors import ConfigError, RequestError, STAdapterError
from stadapter_deploy.runtime import Bundle
from stadapter_deploy.runtime.predictor import Plan, plan_backend, plan_precision
from stadapter_deploy.runtime.results import Classification, check_top_k, classification
from stadapter_deploy.runtime.timeline import Segment, window_segments
from stadapter_deploy.video.handover import unpack
from stadapter_deploy.video.jobs import decode_worker
from stadapter_deploy.video.pool import DecodePool, JobFailed, JobRejected
from stadapter_deploy.video.windows import WindowSpec

log = logging.getLogger("stadapter.serve")
DEFAULT_TOP_K = 5


def _startup() -> tuple[Settings, Bundle, Plan]:
    """Settings, the bundle and the backend, checked on import: a bad setup stops `bentoml serve` with one line.

    The first import (in `bentoml serve` itself) verifies the bundle and pins it: every worker, and every
    worker restarted later, serves that pinned copy, so a bundle rewritten in place never mixes in.
    """
    try:
        settings = load_settings()
        bundle = pin_bundle(settings.bundle)
        try:
            name, device, selection = plan_backend(bundle, settings.backend)
        except ValueError as e:
            raise ConfigError(f"STADAPTER_BACKEND={settings.backend!r}: {e}") from None
        try:
            precision, why = plan_precision(bundle, name, device, settings.precision)
        except ValueError as e:
            raise ConfigError(f"STADAPTER_PRECISION={settings.precision!r}: {e}") from None
        return settings, bundle, Plan(name, device, precision, selection + (f"; {precision}: {why}" if why else ""))
    except (STAdapterError, ValueError, OSError) as e:
        raise SystemExit(f"stadapter serve: cannot start: {e}") from None


SETTINGS, BUNDLE, PLAN = _startup()

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
        from stadapter_deploy.runtime.predictor import load_predictor

        self.predictor = load_predictor(BUNDLE, plan=PLAN)
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


@dataclass(frozen=True)
class Options:
    """A request's options, checked once (400 on the first bad one)."""

    top_k: int
    views: int | None
    spec: WindowSpec


def check_options(top_k=None, views=None, window_s=None, stride_s=None) -> Options:
    num_classes = len(BUNDLE.labels)
    top_k = min(DEFAULT_TOP_K, num_classes) if top_k is None else top_k
    try:
        check_top_k(top_k, num_classes)
        BUNDLE.preprocessing.with_views(views)
        spec = WindowSpec(window_s, stride_s)
    except ValueError as e:
        raise RequestError(400, str(e)) from None
    return Options(top_k, views, spec)


async def metadata(_: Request) -> JSONResponse:
    return JSONResponse(await bentoml.get_current_service().metadata())


async def task_progress(request: Request) -> JSONResponse:
    """GET /timeline_task/progress?task_id=: how far a running task is (windows done, seconds of video)."""
    progress = bentoml.get_current_service().task_progress.get(request.query_params.get("task_id", ""))
    if progress is None:
        return JSONResponse({"error": "no running task of that id in this API worker"}, status_code=404)
    return JSONResponse(progress)


def mount_ui(service_class):
    """With STADAPTER_UI=1, serve the Gradio demo at /ui. The page calls this service in-process
    (`bentoml.get_current_service()`), so its uploads get the same decoding and batching as any client.
    With an API token set, the page asks for it as its login password."""
    if not SETTINGS.ui:
        return service_class
    try:
        from demo.app import InProcessClassifier, build_demo, token_login
    except ImportError as e:  # e.g. a bento, which carries neither demo/ nor gradio
        raise SystemExit(f"stadapter serve: cannot start: STADAPTER_UI=1 needs the demo and gradio ({e})") from None

    page = build_demo(InProcessClassifier(BUNDLE), subtitle=f"Served by BentoML: {BUNDLE.model_name}")
    if SETTINGS.api_token:
        page.auth, page.auth_message = token_login(SETTINGS.api_token), "The service's API token is the password."
    return bentoml.gradio.mount_gradio_app(page, path="/ui")(service_class)


ROUTES = [Route("/metadata", metadata, methods=["GET"]), Route("/timeline_task/progress", task_progress)]


@mount_ui
@bentoml.service(
    name="stadapter",
    workers=SETTINGS.api_workers,
    traffic={"timeout": SETTINGS.request_timeout_s},
    runner_probe={"enabled": False},  # /readyz asks the model itself, with a deadline (__is_ready__)
)
@bentoml.asgi_app(Starlette(routes=ROUTES), path="/")
class STAdapter:
    """Classifies uploaded videos: POST /classify, /classify_batch, /classify_timeline, the task
    /timeline_task, GET /metadata."""

    model = bentoml.depends(STAdapterModel)

    def __init__(self) -> None:
        self.bundle = BUNDLE  # preprocessing and labels; the model runs in STAdapterModel
        setup = (BUNDLE.preprocessing.to_dict(), SETTINGS.max_batch_size)
        timeout = SETTINGS.decode_timeout_s
        self.pool = DecodePool(decode_worker, setup, SETTINGS.decode_workers, timeout)
        self.task_pool = DecodePool(decode_worker, setup, SETTINGS.task_workers, timeout, name="stadapter-task")
        self.task_progress: dict[str, dict] = {}  # task id -> how far it is, while it runs
        self._info: dict | None = None
        self._model_ok_at = -1e9  # when a model call last succeeded (time.monotonic)

    @bentoml.on_startup
    async def start_decoders(self) -> None:
        await asyncio.gather(asyncio.to_thread(self.pool.start), asyncio.to_thread(self.task_pool.start))

    @bentoml.on_shutdown
    def stop_decoders(self) -> None:
        self.pool.close()
        self.task_pool.close()

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
        except RequestError as e:
            return error(e)

    async def classify_video(self, video: Path, top_k: int | None = None, views: int | None = None) -> Classification:
        """One video file -> Classification; RequestError with the status to answer. The /ui page calls this."""
        options = check_options(top_k, views)
        start = time.perf_counter()
        decoded = await self._decode(video, options, "the video")
        return (await self._classified([decoded], options, start))[0]

    @bentoml.api(route="/classify_batch")
    async def classify_batch(self, videos: list[Path], top_k: int | None = None, views: int | None = None) -> dict:
        """Top-k classes of each uploaded video (multipart field `videos`, repeated): {"results": [...]}, one
        entry per video in order: its result, or {"error", "status"} for a video that failed. The answer is 200
        whenever the request itself was sound, whatever its videos did: each entry carries its own outcome, so
        one bad file does not cost the client the others' results."""
        try:
            options = check_options(top_k, views)
            start = time.perf_counter()
            decoded = await asyncio.gather(
                *(self._decode(v, options, f"video {i + 1} of {len(videos)}") for i, v in enumerate(videos)),
                return_exceptions=True,
            )
            for d in decoded:
                if isinstance(d, BaseException) and not isinstance(d, RequestError):
                    raise d
            good = [d for d in decoded if not isinstance(d, RequestError)]
            classified = iter(await self._classified(good, options, start) if good else [])
            results = [
                {"error": str(d), "status": d.status} if isinstance(d, RequestError) else next(classified).to_dict()
                for d in decoded
            ]
            return {"results": results}
        except RequestError as e:
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
        one per window slid over it (defaults: the recipe's clip span or 2 s, stride half of it), at most
        STADAPTER_MAX_TIMELINE_WINDOWS windows; longer videos go through /timeline_task."""
        try:
            segments = await self.timeline_video(video, top_k, views, window_s, stride_s)
            return {"segments": [s.to_dict() for s in segments]}
        except RequestError as e:
            return error(e)

    async def timeline_video(
        self, video: Path, top_k=None, views=None, window_s=None, stride_s=None, long=False, progress=None
    ) -> list[Segment]:
        """One video file -> Segments; RequestError with the status to answer. The /ui page calls this.

        long=False: a request's timeline, in the request pool, within the decode timeout and
        STADAPTER_MAX_TIMELINE_WINDOWS. long=True: a task's, in the task pool, up to STADAPTER_MAX_TASK_SECONDS
        of video; `progress(windows, seconds)` is told after each batch."""
        options = check_options(top_k, views, window_s, stride_s)
        if long:
            job = ("windows", video, options.views, options.spec, None, SETTINGS.max_task_seconds)
            return await self._timeline(self.task_pool, job, options, "the video", progress=progress)
        job = ("windows", video, options.views, options.spec, SETTINGS.max_timeline_windows, None)
        return await self._timeline(self.pool, job, options, "the video", deadline_s=SETTINGS.decode_timeout_s)

    @bentoml.task(route="/timeline_task")
    async def timeline_task(
        self,
        video: Path,
        top_k: int | None = None,
        views: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
    ) -> dict:
        """/classify_timeline for videos of any length up to STADAPTER_MAX_TASK_SECONDS, as a task:
        POST /timeline_task/submit, then GET /timeline_task/status?task_id= and /timeline_task/get?task_id=
        (and /timeline_task/progress?task_id= while it runs). The result is the JSON /classify_timeline answers."""
        task_id = getattr(STAdapter.context.request.state, "task_id", None) or "?"
        self.task_progress[task_id] = {"task_id": task_id, "windows": 0, "seconds": 0.0}

        def progress(windows: int, seconds: float) -> None:
            self.task_progress[task_id].update(windows=windows, seconds=seconds)

        try:
            segments = await self.timeline_video(video, top_k, views, window_s, stride_s, long=True, progress=progress)
            return {"segments": [s.to_dict() for s in segments]}
        except RequestError as e:
            return error(e)
        finally:
            self.task_progress.pop(task_id, None)

    # -------------------------------------------------------------- steps

    async def _decode(self, video: Path, options: Options, what: str):
        """The video's EvalViews from a decode worker; RequestError saying whose fault a failure is."""
        try:
            return unpack(await self.pool.run("clips", video, options.views))
        except (JobRejected, JobFailed) as e:
            raise self._decode_failure(e, video, what) from None

    async def _timeline(
        self, pool: DecodePool, job: tuple, options: Options, what: str, deadline_s=None, progress=None
    ) -> list[Segment]:
        """Window batches streamed from a decode worker, each sent to the model as it arrives. A task
        (`progress` given) whose worker turns out to have died before sending anything is tried once more
        on its replacement: that death was not the task's."""
        try:
            return await self._stream_segments(pool, job, options, deadline_s, progress)
        except JobFailed as e:
            if progress is None or e.timed_out or "died" not in str(e) or getattr(e, "delivered", 0):
                raise self._decode_failure(e, job[1], what) from None
            log.warning("a task's decode worker was found dead before it started; trying once more")
        except JobRejected as e:
            raise self._decode_failure(e, job[1], what) from None
        try:
            return await self._stream_segments(pool, job, options, deadline_s, progress)
        except (JobRejected, JobFailed) as e:
            raise self._decode_failure(e, job[1], what) from None

    async def _stream_segments(self, pool: DecodePool, job: tuple, options: Options, deadline_s, progress):
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        calls: list[asyncio.Task] = []
        windows = 0
        with pool.stream(*job) as batches:
            try:
                while (packed := await asyncio.to_thread(next, batches, None)) is not None:
                    if deadline is not None and time.monotonic() > deadline:
                        raise JobFailed(f"took longer than {deadline_s:g} s", timed_out=True)
                    batch = unpack(packed)
                    calls.append(asyncio.create_task(self._segments(batch, options)))
                    windows += len(batch.starts)
                    if progress is not None:
                        progress(windows, batch.times()[-1][1])
            except (JobRejected, JobFailed) as e:
                for call in calls:
                    call.cancel()
                e.delivered = windows
                raise
        return [segment for part in await asyncio.gather(*calls) for segment in part]

    async def _segments(self, batch, options: Options) -> list[Segment]:
        logits = await self._predict(batch.clips.flatten(0, 1).numpy())  # [B * V, C]
        return window_segments(batch, logits, self.bundle.labels, options.top_k)

    def _decode_failure(self, e: Exception, video: Path, what: str) -> RequestError:
        if isinstance(e, JobRejected):  # VideoError and friends: the file is at fault
            return RequestError(422, f"cannot use {what}: {str(e).replace(str(video), 'the upload')}")
        upload = f"{what} ({video.name}, {video.stat().st_size if video.exists() else '?'} bytes)"
        if e.timed_out:
            log.warning("decode timed out on %s: %s; its worker was replaced", upload, e)
            return RequestError(422, f"decoding {what} {e}, the server's limit; send a shorter or smaller video")
        log.error("decode worker failed on %s: %s; it was replaced", upload, e)
        return RequestError(503, f"the server failed while decoding {what} (not the file's fault); try again")

    async def _classified(self, decoded: list, options: Options, start: float) -> list[Classification]:
        clips = np.concatenate([views.clips.numpy() for views in decoded])  # [sum of V, 3, T, S, S]
        t0 = time.perf_counter()
        logits = await self._predict(clips)  # [sum of V, C]
        infer_ms = (time.perf_counter() - t0) * 1e3
        info = await self.info()
        results, offset = [], 0
        for views in decoded:
            mine = logits[offset : offset + len(views.clips)]
            total_ms = (time.perf_counter() - start) * 1e3
            # keeps its clips for the /ui page; to_dict() leaves them out
            results.append(
                classification(views, mine, self.bundle.labels, options.top_k, info, infer_ms, total_ms, True)
            )
            offset += len(views.clips)
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
                "max_timeline_windows": SETTINGS.max_timeline_windows,
                "max_task_seconds": SETTINGS.max_task_seconds,
            },
            "auth": bool(SETTINGS.api_token),
        }


STAdapter.add_asgi_middleware(
    RequestGuard,
    routes=upload_routes(STAdapter, SETTINGS.max_videos),
    max_bytes=SETTINGS.max_upload_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    token=SETTINGS.api_token,
    own_login=("/ui",) if SETTINGS.ui else (),
)

if __name__ == "__main__":
    sys.exit("start the service with `bentoml serve` in the repository root")
