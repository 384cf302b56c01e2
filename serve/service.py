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

Long videos go through the task `/timeline_task` (submit, then status, progress, get, cancel; serve/tasks.py):
their windows are decoded by a pool of their own, so a running task never takes a decode worker from
/classify. Everything the server writes lives in its private folder (serve/state.py).

Configuration: environment variables, see serve/settings.py and the README.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.errors import decode_failure, error, model_failure
from serve.guard import RequestGuard
from serve.settings import READY_FRESH_S, READY_PROBE_S, Settings, load_settings
from serve.state import server_state
from serve.tasks import CANCEL_POLL_S, LIVE, Task, TaskStore
from stadapter_deploy.errors import ConfigError, RequestError, STAdapterError
from stadapter_deploy.hardware import cpu_cores
from stadapter_deploy.runtime import Bundle
from stadapter_deploy.runtime.predictor import Plan, plan_backend, plan_precision
from stadapter_deploy.runtime.results import Classification, check_top_k, classification, clip_embedding
from stadapter_deploy.runtime.similar import model_id
from stadapter_deploy.runtime.timeline import Segment, window_segments
from stadapter_deploy.video.handover import unpack
from stadapter_deploy.video.jobs import ClipsJob, DecodeSetup, WindowsJob, decode_worker
from stadapter_deploy.video.pool import DecodeFailure, DecodePool, VideoRefused
from stadapter_deploy.video.windows import WindowSpec

log = logging.getLogger("stadapter.serve")
DEFAULT_TOP_K = 5
NO_FEATURES = "this service's bundle was exported before embeddings (its model has no features output); export it again"


def _startup() -> tuple[Settings, Path, Bundle, Plan]:
    """Settings, the server's folder, the bundle and the backend, checked on import: a bad setup stops
    `bentoml serve` with one line.

    The first import (in `bentoml serve` itself) verifies the named bundle and pins it in the server's
    private folder: every worker, and every worker restarted later, serves that pinned copy, so a bundle
    rewritten in place never mixes in.
    """
    try:
        settings = load_settings()
        state, bundle = server_state(settings.bundle)
        try:
            name, device, selection = plan_backend(bundle, settings.backend)
        except ValueError as e:
            raise ConfigError(f"STADAPTER_BACKEND={settings.backend!r}: {e}") from None
        try:
            precision, why = plan_precision(bundle, name, device, settings.precision)
        except ValueError as e:
            raise ConfigError(f"STADAPTER_PRECISION={settings.precision!r}: {e}") from None
        plan = Plan(name, device, precision, selection + (f"; {precision}: {why}" if why else ""))
        return settings, state, bundle, plan
    except (STAdapterError, ValueError, OSError) as e:
        raise SystemExit(f"stadapter serve: cannot start: {e}") from None


SETTINGS, STATE, BUNDLE, PLAN = _startup()
ON_GPU = PLAN.device in ("cuda", "tensorrt")
MODEL_WORKERS = SETTINGS.model_processes(ON_GPU)

BATCH_CLIPS = bentoml.metrics.Histogram(
    name="stadapter_model_batch_clips",
    documentation="Clips in each model call (requests batched together, times their views)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
)


# ----------------------------------------------------------------------------- the model


@bentoml.service(
    name="stadapter_model",
    workers=MODEL_WORKERS,
    resources={"gpu": MODEL_WORKERS} if ON_GPU else {},
    traffic={"timeout": SETTINGS.request_timeout_s},
    # BentoML's client to this service replaces its HTTP session every 100 requests or 300 s and
    # closes the old one, cutting off calls still waiting in the batch queue ("Server disconnected").
    runner_connection={"max_requests": 2**31 - 1, "max_age": 1e9},
)
class STAdapterModel:
    """Holds the Predictor; `predict` is batched across requests. With several workers, worker i runs on
    GPU i (of those BentoML gives the service), or on its share of the CPU cores."""

    def __init__(self) -> None:
        from stadapter_deploy.runtime.predictor import load_predictor

        threads = own_device(bentoml.server_context.worker_index or 1)
        self.predictor = load_predictor(BUNDLE, plan=PLAN, threads=threads)
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

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def features(self, clips: np.ndarray) -> np.ndarray:
        """The pooled features [N, D] the head reads, for clips [N, 3, T, S, S] gathered from concurrent requests."""
        return self.predictor.predict_with_features(clips).features

    @bentoml.api
    def explain(self, clips: np.ndarray, frame_indices: list[list[int]], views: int | None, target: int | None) -> dict:
        """One video's Explanation (not batched: it takes the model's gradients) as JSON, its picture in it."""
        from stadapter_deploy.runtime.explain import explain_views, render_explanation
        from stadapter_deploy.video.pipeline import EvalViews

        ev = EvalViews(torch.from_numpy(clips), frame_indices, 0)
        explanation = explain_views(self.predictor, ev, target, views)
        return {**explanation.to_dict(), "png": base64.b64encode(render_explanation(explanation)).decode("ascii")}

    @bentoml.api
    def info(self) -> dict:
        """What answers: {"backend", "precision", "features"}."""
        return {**self.predictor.info(), "features": self.predictor.has_features}


def own_device(worker: int) -> int | None:
    """Give model worker `worker` (1-based) its own GPU, before anything touches CUDA; on a CPU, its share of
    the cores as its threads (None: the runner's default, for a single worker)."""
    if ON_GPU:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        if MODEL_WORKERS > 1 and len(visible) >= MODEL_WORKERS:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[worker - 1]
        return None
    return max(1, cpu_cores() // MODEL_WORKERS) if MODEL_WORKERS > 1 else None


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
        raise RequestError(400, str(e), "bad_option") from None
    return Options(top_k, views, spec)


async def metadata(_: Request) -> JSONResponse:
    return JSONResponse(await bentoml.get_current_service().metadata())


def task_route(answer):
    """A task route's handler: `answer(store, task_id)` -> (status, JSON body); RequestError becomes its answer."""

    async def handler(request: Request) -> JSONResponse:
        try:
            status, body = await answer(bentoml.get_current_service().tasks, request.query_params.get("task_id", ""))
        except RequestError as e:
            return error(e)
        return JSONResponse(body, status_code=status)

    return handler


async def task_status(store: TaskStore, task_id: str):
    """GET /timeline_task/status?task_id=: pending, in_progress, completed, failed or canceled."""
    return 200, store.read(task_id).status_json()


async def task_progress(store: TaskStore, task_id: str):
    """GET /timeline_task/progress?task_id=: how far the task is (windows done, seconds of video)."""
    return 200, store.read(task_id).progress_json()


async def task_result(store: TaskStore, task_id: str):
    """GET /timeline_task/get?task_id=: the answer /classify_timeline gives, once the task ended."""
    task = store.read(task_id)
    if task.status in LIVE:
        raise RequestError(409, f"the task is {task.status.replace('_', ' ')}: poll its status", "task_not_done")
    return task.http_status, task.result


async def task_cancel(store: TaskStore, task_id: str):
    """PUT /timeline_task/cancel?task_id=: stops a pending or running task (its decode process is replaced)
    and answers its status once it stopped (within a couple of seconds)."""
    task = store.read(task_id)
    if task.status in LIVE:
        store.request_cancel(task_id)
        deadline = time.monotonic() + 8 * CANCEL_POLL_S
        while (task := store.read(task_id)).status in LIVE and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_POLL_S / 2)
    return 200, task.status_json()


def mount_ui(service_class):
    """With STADAPTER_UI=1, serve the Gradio demo at /ui. The page calls this service in-process
    (`bentoml.get_current_service()`), so its uploads get the same decoding and batching as any client.
    With an API token set, the page asks for it as its login password."""
    if not SETTINGS.ui:
        return service_class
    try:
        from demo.app import build_demo
        from demo.classifiers import InProcessClassifier, token_login
    except ImportError as e:  # e.g. a bento, which carries neither demo/ nor gradio
        raise SystemExit(f"stadapter serve: cannot start: STADAPTER_UI=1 needs the demo and gradio ({e})") from None

    page = build_demo(InProcessClassifier(BUNDLE), subtitle=f"Served by BentoML: {BUNDLE.model_name}")
    if SETTINGS.api_token:
        page.auth, page.auth_message = token_login(SETTINGS.api_token), "The service's API token is the password."
    mounted = bentoml.gradio.mount_gradio_app(page, path="/ui")(service_class)
    # BentoML's mount skips launch(): Gradio then neither checks that a file the page's API names was
    # uploaded (so a client could name any server path) nor limits uploads. Both as launch() sets them.
    page.has_launched = True
    page.max_file_size = SETTINGS.max_upload_bytes
    return mounted


ROUTES = [
    Route("/metadata", metadata, methods=["GET"]),
    Route("/timeline_task/status", task_route(task_status), methods=["GET"]),
    Route("/timeline_task/progress", task_route(task_progress), methods=["GET"]),
    Route("/timeline_task/get", task_route(task_result), methods=["GET"]),
    Route("/timeline_task/cancel", task_route(task_cancel), methods=["PUT"]),
]


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
    /timeline_task/submit, /embed, /explain, GET /metadata."""

    model = bentoml.depends(STAdapterModel)

    def __init__(self) -> None:
        self.bundle = BUNDLE  # preprocessing and labels; the model runs in STAdapterModel
        pre = BUNDLE.preprocessing
        setup = (DecodeSetup(pre, SETTINGS.decode, SETTINGS.max_batch_size),)
        timeout = SETTINGS.decode_timeout_s
        workers = SETTINGS.decode_processes(pre.num_frames * pre.temporal_views, pre.size)
        self.pool = DecodePool(decode_worker, setup, workers, timeout)
        self.task_pool = DecodePool(decode_worker, setup, SETTINGS.task_workers, timeout, name="stadapter-task")
        self.tasks = TaskStore(STATE / "tasks", SETTINGS.max_tasks, SETTINGS.task_ttl_s)
        self.running: dict[str, asyncio.Task] = {}  # this worker's tasks, by id
        self._info: dict | None = None
        self._model_ok_at = -1e9  # when a model call last succeeded (time.monotonic)

    @bentoml.on_startup
    async def start_decoders(self) -> None:
        await asyncio.gather(asyncio.to_thread(self.pool.start), asyncio.to_thread(self.task_pool.start))

    @bentoml.on_shutdown
    def stop_decoders(self) -> None:
        for running in self.running.values():
            running.cancel()
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

    @bentoml.api(route="/embed")
    async def embed(self, video: Path, views: int | None = None) -> dict:
        """The clip embedding of one uploaded video: {"embedding": [D floats], "dim", "model"}: the pooled
        features the head reads, averaged over the views, L2-normalised (cosine = dot product)."""
        try:
            options = check_options(None, views)
            if not (await self.info()).get("features"):
                raise RequestError(501, NO_FEATURES, "embeddings_unavailable")
            decoded = await self._decode(video, options, "the video")
            features = await self._model_calls(self.model.to_async.features, decoded.clips.numpy())  # [V, D]
            embedding = clip_embedding(features)
            return {"embedding": embedding.tolist(), "dim": len(embedding), "model": model_id(BUNDLE)}
        except RequestError as e:
            return error(e)

    @bentoml.api(route="/explain")
    async def explain(self, video: Path, target: int | None = None, views: int | None = None) -> dict:
        """Where the evidence for class `target` (default: the top-1) lies in each frame of one uploaded video:
        {"label", "index", "score", "frames", "heatmaps": {"shape", "dtype", "scale", "data" (base64)}, "png"
        (base64 of the picture: the frames with their heatmaps)}."""
        try:
            return await self.explain_video(video, target, views)
        except RequestError as e:
            return error(e)

    async def explain_video(self, video: Path, target: int | None = None, views: int | None = None) -> dict:
        """The /explain answer for one video file; RequestError with the status to answer. The /ui page calls
        this."""
        options = check_options(None, views)
        if target is not None and not 0 <= target < len(BUNDLE.labels):
            raise RequestError(
                400, f"target must be a class index between 0 and {len(BUNDLE.labels) - 1}", "bad_option"
            )
        decoded = await self._decode(video, options, "the video")
        try:
            return await self.model.to_async.explain(decoded.clips.numpy(), decoded.frame_indices, views, target)
        except Exception as e:
            raise model_failure(e) from None

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
                {"error": str(d), "code": d.code, "status": d.status}
                if isinstance(d, RequestError)
                else next(classified).to_dict()
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
            job = WindowsJob(video, options.views, options.spec, max_seconds=SETTINGS.max_task_seconds)
            return await self._stream_segments(self.task_pool, job, options, None, progress)
        job = WindowsJob(video, options.views, options.spec, max_windows=SETTINGS.max_timeline_windows)
        return await self._stream_segments(self.pool, job, options, SETTINGS.decode_timeout_s)

    @bentoml.api(route="/timeline_task/submit")
    async def timeline_task(
        self,
        video: Path,
        top_k: int | None = None,
        views: int | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
    ) -> dict:
        """/classify_timeline for videos of any length up to STADAPTER_MAX_TASK_SECONDS, as a task: answers
        {"task_id", "status"} at once; then GET /timeline_task/status, /progress and /get?task_id=, and
        PUT /timeline_task/cancel?task_id=. The result is the JSON /classify_timeline answers."""
        try:
            check_options(top_k, views, window_s, stride_s)
            task = self.tasks.create(video)
        except RequestError as e:
            return error(e)
        run = self.run_task(task, dict(top_k=top_k, views=views, window_s=window_s, stride_s=stride_s))
        self.running[task.task_id] = asyncio.create_task(run)
        return task.status_json()

    async def timeline_as_task(self, video: Path, window_s: float | None = None, told=None) -> list[dict]:
        """The /ui page's timeline of a video over the synchronous limit: a task like /timeline_task's (counted
        against STADAPTER_MAX_TASKS, cancellable, private), awaited; `told(windows, seconds)` as it runs.
        RequestError with the answer /timeline_task/get would give when it did not complete."""
        task = self.tasks.create(video)
        await self.run_task(task, dict(window_s=window_s), told)
        if asyncio.current_task().cancelling():  # the page's request itself went away
            raise asyncio.CancelledError
        task = self.tasks.read(task.task_id)
        if task.status != "completed":
            raise RequestError(task.http_status, task.result["error"], task.result["code"])
        return task.result["segments"]

    async def run_task(self, task: Task, options: dict, told=None) -> None:
        """Run a task to its end in this worker, watching for a cancel; its record says how it ended."""
        store, last_saved = self.tasks, 0.0

        def progress(windows: int, seconds: float) -> None:
            nonlocal last_saved
            task.windows, task.seconds = windows, seconds
            if told is not None:
                told(windows, seconds)
            if time.monotonic() - last_saved > CANCEL_POLL_S:
                store.save(task)
                last_saved = time.monotonic()

        async def watch(work: asyncio.Task) -> None:
            while not work.done():
                if store.cancel_requested(task.task_id):
                    work.cancel()
                    return
                await asyncio.sleep(CANCEL_POLL_S)

        task.status, task.executed_at = "in_progress", time.time()
        store.save(task)
        work = asyncio.create_task(
            self.timeline_video(store.upload(task.task_id), **options, long=True, progress=progress)
        )
        watcher = asyncio.create_task(watch(work))
        try:
            segments = await work
            store.end(task, "completed", 200, {"segments": [s.to_dict() for s in segments]})
        except asyncio.CancelledError:
            store.end(task, "canceled", 409, {"error": "the task was canceled", "code": "task_canceled"})
        except RequestError as e:
            store.end(task, "failed", e.status, {"error": str(e), "code": e.code})
        except Exception:
            log.exception("task %s failed", task.task_id)
            result = {"error": "the task failed: a fault of this deployment", "code": "internal_error"}
            store.end(task, "failed", 500, result)
        finally:
            watcher.cancel()
            self.running.pop(task.task_id, None)

    # -------------------------------------------------------------- steps

    async def _decode(self, video: Path, options: Options, what: str):
        """The video's EvalViews from a decode worker; RequestError saying whose fault a failure is."""
        try:
            return unpack(await self.pool.run(ClipsJob(video, options.views)))
        except DecodeFailure as e:
            raise self._decode_failure(e, video, what) from None

    async def _stream_segments(self, pool: DecodePool, job: WindowsJob, options: Options, deadline_s, progress=None):
        """Window batches streamed from a decode worker, each sent to the model as it arrives."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        calls: list[asyncio.Task] = []
        windows = 0
        try:
            with pool.stream(job) as batches:
                while (packed := await asyncio.to_thread(next, batches, None)) is not None:
                    if deadline is not None and time.monotonic() > deadline:
                        message = f"decoding the video took longer than {deadline_s:g} s, the server's limit"
                        raise RequestError(422, message + "; send it to /timeline_task/submit", "decode_timeout")
                    batch = unpack(packed)
                    calls.append(asyncio.create_task(self._segments(batch, options)))
                    windows += len(batch.starts)
                    if progress is not None:
                        progress(windows, batch.times()[-1][1])
        except BaseException as e:
            for call in calls:
                call.cancel()
            if isinstance(e, DecodeFailure):
                raise self._decode_failure(e, job.video, "the video") from None
            raise
        return [segment for part in await asyncio.gather(*calls) for segment in part]

    async def _segments(self, batch, options: Options) -> list[Segment]:
        logits = await self._predict(batch.clips.flatten(0, 1).numpy())  # [B * V, C]
        return window_segments(batch, logits, self.bundle.labels, options.top_k)

    def _decode_failure(self, e: DecodeFailure, video: Path, what: str) -> RequestError:
        """The service's words for a decode failure: its limits named by its own settings and routes."""
        if isinstance(e, VideoRefused) and e.code == "too_many_windows":
            return RequestError(
                422,
                f"the timeline has more than {e.limit:g} windows, the server's limit for one request (set "
                "STADAPTER_MAX_TIMELINE_WINDOWS); send a shorter video or a longer stride, or submit it as a "
                "task (POST /timeline_task/submit)",
                "video_too_long_use_task",
            )
        if isinstance(e, VideoRefused) and e.code == "video_too_long" and e.limit == SETTINGS.max_task_seconds:
            return RequestError(
                422,
                f"cannot use {what}: it lasts more than {e.limit:g} s, the longest a task takes (set "
                "STADAPTER_MAX_TASK_SECONDS)",
                "video_too_long",
            )
        return decode_failure(e, what, str(video))

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
        """Logits for clips [N, 3, T, S, S]; see _model_calls."""
        return await self._model_calls(self.model.to_async.predict, clips)

    async def _model_calls(self, call, clips: np.ndarray) -> np.ndarray:
        """`call` (a batchable model API) over clips [N, 3, T, S, S], in calls of at most the model's batch
        size, concurrently, so BentoML batches them with other requests' clips."""
        step = SETTINGS.max_batch_size
        try:
            parts = await asyncio.gather(*(call(clips[i : i + step]) for i in range(0, len(clips), step)))
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
                "max_tasks": SETTINGS.max_tasks,
            },
            "auth": bool(SETTINGS.api_token),
        }


STAdapter.add_asgi_middleware(
    RequestGuard,
    service=STAdapter,
    max_videos=SETTINGS.max_videos,
    max_bytes=SETTINGS.max_upload_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    token=SETTINGS.api_token,
    own_login=("/ui",) if SETTINGS.ui else (),
)

if __name__ == "__main__":
    sys.exit("start the service with `bentoml serve` in the repository root")
