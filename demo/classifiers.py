"""What the page classifies with: one `Classifier` interface over three ways to reach a model.

- `LocalClassifier`: a Predictor in this process (`python -m demo --bundle BUNDLE`). The frames shown are
  the model's own input clips, denormalized with the bundle's mean and std: the crops the model saw.
- `ServiceClassifier`: a running BentoML service over HTTP (`--service URL`, with its API token if it
  has one). The service sends back the sampled frame indices; the page decodes those frames locally
  for display (uncropped). Timelines past the service's synchronous limit go through its task.
- `InProcessClassifier`: the page mounted inside the BentoML service at `/ui` (STADAPTER_UI=1); it calls
  the running service in-process (`bentoml.get_current_service()`), as BentoML's Gradio example does.

Every method is async, so the page has one handler factory for all three. A refusal is a typed
`RequestError` (its status says whose fault it is): the service's own, or one built from an HTTP answer.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stadapter_deploy.errors import RequestError
from stadapter_deploy.preprocessing import Preprocessing

Progress = Callable[[str], None]  # told how far a long timeline is, in words
TASK_POLL_S = 1.0


@dataclass
class DemoResult:
    """One classified video, as the page shows it."""

    labels: list[dict]  # [{"label", "index", "score"}], best first
    frames: np.ndarray  # uint8 [V, T, H, W, 3]: the frames the model looked at
    frame_indices: list[list[int]]  # [V][T] frame numbers in the video
    model_name: str
    backend: str
    precision: str = "fp32"
    timings_ms: dict[str, float] = field(default_factory=dict)


class Classifier:
    """The page's one interface to a model. Subclasses set `model_name` and `preprocessing`."""

    model_name: str = "unknown"
    preprocessing: Preprocessing = Preprocessing()
    views: int | None = None  # clips per video; None: the recipe's

    @property
    def frames_shown(self) -> int:
        """How many frames the strip shows per video: views x frames per clip."""
        pre = self.preprocessing.with_views(self.views)
        return pre.views * pre.num_frames

    def describe(self) -> str:
        """The page's line about the model, as it is now (the page may ask again on every load)."""
        return f"Model `{self.model_name}`"

    async def classify(self, video: str | Path, top_k: int) -> DemoResult:
        raise NotImplementedError

    async def timeline(self, video: str | Path, window_s: float | None, progress: Progress | None = None) -> list:
        """Segments as `Segment.to_dict()` gives them (start_s, end_s, labels, frames)."""
        raise NotImplementedError

    async def explain(self, video: str | Path) -> Explained:
        """Where the evidence for the top-1 lies in each frame: the picture and what it explains."""
        raise NotImplementedError


@dataclass
class Explained:
    """One video's heatmaps, as the page shows them."""

    png: bytes  # the frames with their heatmaps over them (runtime/explain.py's render_explanation)
    label: str
    score: float


def explained(answer: dict) -> Explained:
    """An Explained from the JSON /explain answers (the service's, in-process or over HTTP)."""
    import base64

    return Explained(base64.b64decode(answer["png"]), answer["label"], float(answer["score"]))


def result_from(classification, pre: Preprocessing, model_name: str, backend_note: str = "") -> DemoResult:
    """DemoResult from a Classification that kept its clips: the exact crops the model saw."""
    from stadapter_deploy.video import denormalize

    num_views = len(classification.clips)
    return DemoResult(
        labels=classification.labels,
        frames=denormalize(classification.clips, pre.mean, pre.std),  # [V, T, S, S, 3]
        frame_indices=indices_per_view(classification.frame_indices, num_views),
        model_name=model_name,
        backend=classification.backend + backend_note,
        precision=classification.precision,
        timings_ms=dict(classification.timings_ms),
    )


def indices_per_view(frame_indices: list[list[int]], num_views: int) -> list[list[int]]:
    """Views are laid out spatial-major (each crop with all its temporal views); repeat indices to match."""
    per_crop = len(frame_indices)
    return [frame_indices[v % per_crop] for v in range(num_views)]


class LocalClassifier(Classifier):
    """Classifies in this process with a Predictor, loaded from a bundle on first use if given a path."""

    def __init__(self, predictor_or_bundle: Any, backend: str = "auto", views: int | None = None, limits=None):
        self._predictor = None if isinstance(predictor_or_bundle, str | Path) else predictor_or_bundle
        self._bundle = predictor_or_bundle if self._predictor is None else None
        self._backend, self._limits = backend, limits  # limits: the decode limits, from the app's settings
        self.views = views

    @property
    def predictor(self):
        if self._predictor is None:
            from stadapter_deploy import load_predictor

            self._predictor = load_predictor(self._bundle, backend=self._backend, limits=self._limits)
        return self._predictor

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.predictor.preprocessing

    def describe(self) -> str:
        return f"Model `{self.model_name}` on `{self.predictor.backend}`, in this process"

    def warm_up(self, video: str | Path) -> None:
        """Classify one video (a bundled example) so the first visitor does not pay for lazy imports and first runs."""
        asyncio.run(self.classify(video, 1))

    async def classify(self, video: str | Path, top_k: int) -> DemoResult:
        predictor = self.predictor
        top_k = min(top_k, len(predictor.labels))
        result = await asyncio.to_thread(predictor.classify, video, top_k, self.views, True)  # decoded once
        return result_from(result, self.preprocessing, predictor.model_name)

    async def timeline(self, video: str | Path, window_s: float | None, progress: Progress | None = None) -> list:
        segments = await asyncio.to_thread(self.predictor.timeline, video, window_s)
        return [s.to_dict() for s in segments]

    async def explain(self, video: str | Path) -> Explained:
        from stadapter_deploy.runtime.explain import render_explanation

        explanation = await asyncio.to_thread(self.predictor.explain, video, None, self.views)
        return Explained(render_explanation(explanation), explanation.label, explanation.score)


class InProcessClassifier(Classifier):
    """Classifies through the BentoML service this page is mounted in, without HTTP: the same decode
    workers, checks and cross-request batching as POST /classify."""

    def __init__(self, bundle, service=None):
        """`bundle`: the service's Bundle (its name and preprocessing, known before the service runs)."""
        self.model_name, self.preprocessing = bundle.model_name, bundle.preprocessing
        self._service = service

    @property
    def service(self):
        import bentoml

        return self._service or bentoml.get_current_service()

    async def classify(self, video: str | Path, top_k: int) -> DemoResult:
        service = self.service
        result = await service.classify_video(Path(video), min(top_k, len(service.bundle.labels)))
        return result_from(result, self.preprocessing, self.model_name, " (BentoML service, in-process)")

    async def timeline(self, video: str | Path, window_s: float | None, progress: Progress | None = None) -> list:
        """The service's request timeline; past its synchronous limit, the task's (in its own decode pool)."""
        try:
            segments = await self.service.timeline_video(Path(video), window_s=window_s)
        except RequestError as e:
            if e.code != "video_too_long_use_task":
                raise
            told = (lambda w, s: progress(f"{w} windows, {s:.0f} s in")) if progress else None
            return await self.service.timeline_as_task(Path(video), window_s, told)  # capped and private as a task
        return [s.to_dict() for s in segments]

    async def explain(self, video: str | Path) -> Explained:
        return explained(await self.service.explain_video(Path(video)))


class ServiceClassifier(Classifier):
    """Classifies through a running BentoML service over HTTP (`POST {url}/classify`, field `video`)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self._metadata: dict | None = None

    def probe(self) -> RequestError | None:
        """None when the service answers /metadata, else why not, as the RequestError a classification
        would get (unreachable: 503 `service_unreachable`; a token it wants: 401). Kept once it answers."""
        if self._metadata is not None:
            return None
        import httpx

        try:
            response = httpx.get(f"{self.url}/metadata", headers=self.headers, timeout=min(self.timeout_s, 10.0))
        except httpx.HTTPError as e:
            return unreachable(self.url, e)
        try:
            self._metadata = answer(response, self.url, bool(self.headers))
        except RequestError as e:
            return e
        except ValueError:
            return RequestError(502, f"{self.url} answered /metadata with something else than JSON", "error")
        return None

    def metadata(self) -> dict:
        """The service's /metadata ({} while it cannot be read: asked again next time): model name,
        preprocessing, limits."""
        self.probe()
        return self._metadata or {}

    @property
    def model_name(self) -> str:
        return str(self.metadata().get("model_name", "unknown (service not reachable)"))

    @property
    def preprocessing(self) -> Preprocessing:
        known = self.metadata().get("preprocessing")
        return Preprocessing.from_dict(known) if known else Preprocessing()

    def describe(self) -> str:
        """The page's line about the model, as the service is now (a page loaded later shows the model of a
        service that came up meanwhile)."""
        if (problem := self.probe()) is not None:
            if problem.code == "unauthorized":
                return f"The service at {self.url} refuses this page: {problem}"
            return f"Classified by the service at {self.url}, which does not answer yet ({problem})"
        return f"Model `{self.model_name}`, classified by the service at {self.url}"

    async def classify(self, video: str | Path, top_k: int) -> DemoResult:
        from stadapter_deploy.video import decode_frames

        path = Path(video)
        start = time.perf_counter()
        body = await self._post("/classify", path, {"top_k": str(top_k)})
        timings = {k: float(v) for k, v in body.get("timings_ms", {}).items()}
        timings["round trip"] = (time.perf_counter() - start) * 1000.0
        indices = [int(i) for i in body.get("frames", [])]
        frames = await asyncio.to_thread(decode_frames, path, indices) if indices else np.zeros((0, 1, 1, 3), np.uint8)
        per_view, frame_indices = self.views_of(frames, indices)
        return DemoResult(
            labels=body["labels"],
            frames=per_view,
            frame_indices=frame_indices,
            model_name=self.model_name,
            backend=f"{body.get('backend', '?')} via {self.url}",
            precision=body.get("precision", "?"),
            timings_ms=timings,
        )

    def views_of(self, frames: np.ndarray, indices: list[int]) -> tuple[np.ndarray, list[list[int]]]:
        """The service's sampled frames [K, H, W, 3] laid out as the model's views [V, T, H, W, 3], as
        in-process (each spatial crop with every temporal view; the service sends no crops, so a crop shows
        its frames uncropped): the page counts views and frames the same way in both."""
        pre = self.preprocessing
        per_clip = pre.num_frames
        if not indices or len(indices) % per_clip:
            return frames[None], [indices]  # not the service's own layout: one strip
        temporal = [indices[i : i + per_clip] for i in range(0, len(indices), per_clip)]
        frame_indices = indices_per_view(temporal, pre.spatial_views * len(temporal))
        by_view = frames.reshape(len(temporal), per_clip, *frames.shape[1:])  # [temporal, T, H, W, 3]
        order = [v % len(temporal) for v in range(len(frame_indices))]
        return by_view[order], frame_indices

    async def timeline(self, video: str | Path, window_s: float | None, progress: Progress | None = None) -> list:
        """POST /classify_timeline; a video over the service's synchronous limit goes through its task
        (submit, then poll its progress and status)."""
        data = {} if window_s is None else {"window_s": str(window_s)}
        try:
            return (await self._post("/classify_timeline", Path(video), data))["segments"]
        except RequestError as e:
            if e.code != "video_too_long_use_task":
                raise
        return (await self.timeline_task(Path(video), data, progress))["segments"]

    async def explain(self, video: str | Path) -> Explained:
        return explained(await self._post("/explain", Path(video), {}))

    async def timeline_task(self, path: Path, data: dict, progress: Progress | None = None) -> dict:
        task = await self._post("/timeline_task/submit", path, data)
        task_id = task["task_id"]
        while True:
            await asyncio.sleep(TASK_POLL_S)
            status = (await self._get("/timeline_task/status", task_id))["status"]
            if status not in ("pending", "in_progress"):
                break
            if progress is not None:
                done = await self._get("/timeline_task/progress", task_id, missing_ok=True)
                progress(f"task {task_id[:8]}: {done.get('windows', 0)} windows, {done.get('seconds', 0):.0f} s in")
        return await self._get("/timeline_task/get", task_id)

    async def _post(self, endpoint: str, path: Path, data: dict) -> dict:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:
            try:
                with path.open("rb") as f:
                    files = {"video": (path.name, f.read(), "application/octet-stream")}
                response = await client.post(f"{self.url}{endpoint}", files=files, data=data)
            except httpx.HTTPError as e:
                raise unreachable(self.url, e) from e
        return answer(response, self.url, bool(self.headers))

    async def _get(self, endpoint: str, task_id: str, missing_ok: bool = False) -> dict:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:
            try:
                response = await client.get(f"{self.url}{endpoint}", params={"task_id": task_id})
            except httpx.HTTPError as e:
                raise unreachable(self.url, e) from e
        if missing_ok and response.status_code == 404:
            return {}
        return answer(response, self.url, bool(self.headers))


def unreachable(url: str, error: Exception) -> RequestError:
    return RequestError(503, f"{url} did not answer ({error}).", "service_unreachable")


def answer(response, url: str, token_given: bool = False) -> dict:
    """A service's JSON answer, or its refusal as a RequestError with the same status and code. A 401 says
    what the page's user does about it (--token), not what a client sends."""
    if response.status_code == 401:
        told = "the token given is not its token" if token_given else "none was given"
        raise RequestError(
            401,
            f"the service at {url} needs its API token ({told}): start the page with --token TOKEN, or set "
            "STADAPTER_API_TOKEN, to the token the service was started with",
            "unauthorized",
        )
    if response.status_code >= 400:
        prefix = "" if response.status_code < 500 else f"{url} failed: "
        text, code = error_of(response)
        raise RequestError(response.status_code, prefix + text, code)
    return response.json()


def error_of(response) -> tuple[str, str]:
    """(words, code) of an error answer: the service's JSON, or what another server sent."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}", "error"
    if isinstance(body, dict):
        words = body.get("error") or body.get("detail") or body.get("message") or body
        return str(words), str(body.get("code", "error"))
    return str(body), "error"


def token_login(token: str):
    """Gradio's `auth=` for a page guarded by an API token: any user name, the token as the password."""
    return lambda _user, password: hmac.compare_digest(str(password).encode(), token.encode())


def user_login(pair: str) -> tuple[str, str]:
    """'user:password' -> (user, password), as Gradio's `auth=` takes it."""
    user, sep, password = pair.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password")
    return user, password
