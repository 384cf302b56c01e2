"""The Gradio page: upload a video (or pick an example) and see what the model says and what it looked at.

Three ways to classify behind one page:
- `LocalClassifier`: a Predictor in this process (`python -m demo --bundle BUNDLE`). The frames shown are the
  model's own input clips, denormalized, so the page shows exactly the crops the model saw.
- `ServiceClassifier`: a running BentoML service (`--service URL`, HTTP `POST /classify`). The service sends
  back the sampled frame indices; the page decodes those frames locally for display (uncropped).
- `InProcessClassifier`: the page mounted inside the BentoML service at `/ui` (STADAPTER_UI=1); it calls the
  running service in-process (`bentoml.get_current_service()`), as BentoML's Gradio example does.

`build_demo(classifier)` returns the Blocks; `python -m demo` launches it, and the BentoML service mounts
the same Blocks at `/ui` with `bentoml.gradio.mount_gradio_app`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before gradio is imported anywhere: its analytics are read from the environment at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from .timeline import timeline_tab  # noqa: E402

EXAMPLES_DIR = Path(__file__).parent / "examples"
TOP_K = 5
DEFAULT_TITLE = "ST-Adapter video classification"
GALLERY_COLUMNS = 8
TIMING_STAGES = ("decode", "preprocess", "infer", "total")


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


def result_from(classification, model_name: str, backend_note: str = "") -> DemoResult:
    """DemoResult from a Classification that kept its clips: the exact crops the model saw."""
    from stadapter_deploy.video import denormalize

    num_views = len(classification.clips)
    return DemoResult(
        labels=classification.labels,
        frames=denormalize(classification.clips),  # [V, T, S, S, 3]
        frame_indices=_indices_per_view(classification.frame_indices, num_views),
        model_name=model_name,
        backend=classification.backend + backend_note,
        precision=classification.precision,
        timings_ms=dict(classification.timings_ms),
    )


class LocalClassifier:
    """Classifies in this process with a Predictor, loaded from a bundle on first use if given a path.

    `views=None` uses the bundle's own eval views; an int asks for that many (see `Predictor.preprocess`).
    """

    def __init__(self, predictor_or_bundle: Any, backend: str = "auto", views: int | None = None):
        self._predictor = None if isinstance(predictor_or_bundle, (str, Path)) else predictor_or_bundle
        self._bundle = predictor_or_bundle if self._predictor is None else None
        self._backend = backend
        self.views = views

    @property
    def predictor(self):
        if self._predictor is None:
            from stadapter_deploy import load_predictor

            self._predictor = load_predictor(self._bundle, backend=self._backend)
        return self._predictor

    def warm_up(self) -> None:
        """Classify one bundled example so the first visitor does not pay for lazy imports and first runs."""
        examples = example_videos()
        if examples:
            self(examples[0])

    @property
    def frames_shown(self) -> int:
        """How many frames the strip shows per video: views x frames per clip."""
        pre = self.predictor.preprocessing.with_views(self.views)
        return pre.views * pre.num_frames

    def __call__(self, video: str | Path, top_k: int = TOP_K) -> DemoResult:
        predictor = self.predictor
        top_k = min(top_k, len(predictor.labels))
        result = predictor.classify(video, top_k=top_k, views=self.views, keep_clips=True)  # decoded once
        return result_from(result, predictor.model_name)

    def timeline(self, video: str | Path, window_s: float | None = None) -> list[dict]:
        return [s.to_dict() for s in self.predictor.timeline(video, window_s=window_s)]


class InProcessClassifier:
    """Classifies through the BentoML service this page is mounted in, without HTTP: the same decode
    workers, checks and cross-request batching as POST /classify."""

    is_async = True
    frames_shown = 8

    def __init__(self, service=None):
        self._service = service

    @property
    def service(self):
        import bentoml

        return self._service or bentoml.get_current_service()

    async def __call__(self, video: str | Path, top_k: int = TOP_K) -> DemoResult:
        service = self.service
        call = service.classify_video(Path(video), min(top_k, len(service.bundle.labels)))
        result = await self._answer(call)
        return result_from(result, service.bundle.model_name, " (BentoML service, in-process)")

    async def timeline(self, video: str | Path, window_s: float | None = None) -> list[dict]:
        return [s.to_dict() for s in await self._answer(self.service.timeline_video(Path(video), window_s=window_s))]

    @staticmethod
    async def _answer(call):
        """Await a service call; its refusal (which carries the HTTP status it would send) as the page's errors."""
        from stadapter_deploy.errors import VideoError

        try:
            return await call
        except Exception as e:
            status = getattr(e, "status", None)
            if status is None or status >= 500:
                raise ServiceUnavailable(str(e)) from e
            raise VideoError(str(e)) from None


class ServiceClassifier:
    """Classifies through a running BentoML service (`POST {url}/classify`, multipart field `video`)."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._model_name: str | None = None

    def timeline(self, video: str | Path, window_s: float | None = None) -> list[dict]:
        data = {} if window_s is None else {"window_s": str(window_s)}
        return _post_video(self.url, "/classify_timeline", Path(video), data, self.timeout_s)["segments"]

    def model_name(self) -> str:
        if self._model_name is None:
            self._model_name = _service_model_name(self.url, self.timeout_s)
        return self._model_name

    def __call__(self, video: str | Path, top_k: int = TOP_K) -> DemoResult:

        from stadapter_deploy.video import decode_frames

        path = Path(video)
        start = time.perf_counter()
        body = _post_video(self.url, "/classify", path, {"top_k": str(top_k)}, self.timeout_s)
        timings = {k: float(v) for k, v in body.get("timings_ms", {}).items()}
        timings["round trip"] = (time.perf_counter() - start) * 1000.0
        indices = [int(i) for i in body.get("frames", [])]
        frames = decode_frames(path, indices) if indices else np.zeros((0, 1, 1, 3), np.uint8)
        return DemoResult(
            labels=body["labels"],
            frames=frames[None],  # [1, K, H, W, 3]: the sampled frames, uncropped
            frame_indices=[indices],
            model_name=self.model_name(),
            backend=f"{body.get('backend', '?')} via {self.url}",
            precision=body.get("precision", "?"),
            timings_ms=timings,
        )


def _post_video(url: str, endpoint: str, path: Path, data: dict, timeout_s: float) -> dict:
    """POST an upload to the service; its JSON, or a VideoError (4xx: the file) or ServiceUnavailable."""
    import httpx

    from stadapter_deploy.errors import VideoError

    try:
        with path.open("rb") as f:
            files = {"video": (path.name, f, "application/octet-stream")}
            response = httpx.post(f"{url}{endpoint}", files=files, data=data, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ServiceUnavailable(f"{url} did not answer ({e}).") from e
    if 400 <= response.status_code < 500:
        raise VideoError(_error_text(response))
    if response.status_code >= 500:
        raise ServiceUnavailable(f"{url} failed: {_error_text(response)}")
    return response.json()


class ServiceUnavailable(RuntimeError):
    """The BentoML service could not be reached or failed on its side."""


def _service_model_name(url: str, timeout_s: float) -> str:
    import httpx

    try:
        response = httpx.get(f"{url}/metadata", timeout=timeout_s)
    except httpx.HTTPError:
        return "unknown (service not reachable)"
    return str(response.json().get("model_name", "unknown")) if response.status_code == 200 else "unknown"


def _error_text(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return str(body.get("error") or body.get("detail") or body.get("message") or body)
    return str(body)


def _indices_per_view(frame_indices: list[list[int]], num_views: int) -> list[list[int]]:
    """Views are laid out spatial-major (each crop with all its temporal views); repeat indices to match."""
    per_crop = len(frame_indices)
    return [frame_indices[v % per_crop] for v in range(num_views)]


def result_outputs(result: DemoResult) -> tuple[dict[str, float], list, str]:
    """DemoResult -> the values of the page's three outputs: label bars, frame gallery, details."""
    scores = {item["label"]: float(item["score"]) for item in result.labels}
    gallery = []
    num_views = len(result.frame_indices)
    for v, (clip, indices) in enumerate(zip(result.frames, result.frame_indices, strict=True)):
        for frame, index in zip(clip, indices, strict=False):
            caption = f"frame {index}" if num_views == 1 else f"view {v + 1}, frame {index}"
            gallery.append((frame, caption))
    return scores, gallery, details_markdown(result)


def details_markdown(result: DemoResult) -> str:
    top = result.labels[0]
    stages = [s for s in TIMING_STAGES if s in result.timings_ms]
    stages += [s for s in result.timings_ms if s not in stages]
    rows = "\n".join(f"| {stage} | {result.timings_ms[stage]:.1f} |" for stage in stages)
    num_views, num_frames = result.frames.shape[:2]
    return (
        f"**{top['label']}** ({top['score']:.1%})\n\n"
        f"Model: `{result.model_name}` · backend: `{result.backend}` · precision: `{result.precision}` · "
        f"{num_views} view(s) x {num_frames} frames\n\n"
        f"| stage | ms |\n|---|---:|\n{rows}"
    )


def gallery_height(num_frames: int) -> int:
    """Pixels for the frame strip: room for the rows the frames fill (about 150 px a row at 1280 px wide)."""
    rows = max(1, -(-num_frames // GALLERY_COLUMNS))
    return 60 + 150 * rows


def friendly_error(error: Exception) -> str:
    """A message for the page, in words, without a traceback."""
    from stadapter_deploy.errors import STAdapterError

    if isinstance(error, ServiceUnavailable):
        return f"The classification service is not available: {error}"
    if isinstance(error, STAdapterError):
        return f"Could not classify this file: {error}"
    return "Could not classify this file: it does not look like a video the model can read."


def page_error(e: Exception, video: str) -> gr.Error:
    """A failure on a user's video as a message in the page (no traceback, no server path)."""
    message = friendly_error(e).replace(str(video), Path(video).name)
    return gr.Error(message, duration=15, print_exception=False)


def make_handler(classifier: Callable[..., DemoResult]) -> Callable[[str | None], tuple]:
    """Wrap a classifier as the page's event handler: bad input becomes a message, never a traceback.
    An async classifier (one that runs inside the service's event loop) gets an async handler."""

    def check(video: str | None) -> None:
        if not video:
            raise gr.Error("Upload a video first, or pick one of the examples.", print_exception=False)

    if getattr(classifier, "is_async", False):

        async def classify(video: str | None) -> tuple[dict[str, float], list, str]:
            check(video)
            try:
                result = await classifier(video)
            except Exception as e:  # noqa: BLE001 - any failure on user input becomes a message in the page
                raise page_error(e, video) from e
            return result_outputs(result)

        return classify

    def classify(video: str | None) -> tuple[dict[str, float], list, str]:
        check(video)
        try:
            result = classifier(video)
        except Exception as e:  # noqa: BLE001 - any failure on user input becomes a message in the page
            raise page_error(e, video) from e
        return result_outputs(result)

    return classify


def example_videos() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.mp4"))


def build_demo(classifier: Callable[..., DemoResult], title: str = DEFAULT_TITLE, subtitle: str = "") -> gr.Blocks:
    """The page. `classifier(video_path) -> DemoResult` (a LocalClassifier or a ServiceClassifier)."""
    classify = make_handler(classifier)
    # The examples get a handler of their own name: sharing `classify` would register the examples' private
    # endpoint as /classify and push the public one to /classify_1.
    if getattr(classifier, "is_async", False):

        async def classify_example(video):
            return await classify(video)
    else:

        def classify_example(video):
            return classify(video)

    strip_height = gallery_height(getattr(classifier, "frames_shown", 8))
    # Gradio keeps uploads and the frames it shows in its cache; every hour it drops what is over an hour old.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {title}\n{subtitle}\n\nUpload a short video (mp4, webm, avi, mkv, mov) or pick an example. "
            "The page shows the top-5 classes, the frames the model looked at, and how long each stage took."
        )
        # Outputs are made first (unrendered) so the examples, placed under the upload, can name them.
        label = gr.Label(num_top_classes=TOP_K, label="Top-5", elem_id="top5", render=False)
        details = gr.Markdown(elem_id="details", render=False)
        gallery = gr.Gallery(
            label="Frames the model looked at (after sampling and cropping)",
            render=False,
            columns=GALLERY_COLUMNS,
            height=strip_height,
            object_fit="contain",
            format="png",
            elem_id="frames",
        )
        outputs = [label, gallery, details]
        with gr.Tab("Classify", elem_id="classify-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                    button = gr.Button("Classify", variant="primary", elem_id="classify-button")
                    examples = example_videos()
                    if examples:
                        gr.Examples(
                            examples=[[p] for p in examples],
                            inputs=video,
                            outputs=outputs,
                            fn=classify_example,
                            run_on_click=True,
                            cache_examples=False,
                            api_visibility="private",
                            example_labels=[Path(p).stem.replace("_", " ") for p in examples],
                        )
                with gr.Column(scale=1):
                    label.render()
                    details.render()
            gallery.render()
        gr.on([button.click, video.upload], classify, inputs=video, outputs=outputs, api_name="classify")
        timeline_tab(classifier, page_error)
    ready_to_mount(demo)
    return demo


def ready_to_mount(demo: gr.Blocks) -> None:
    """Give the Blocks the theme that Gradio 6 otherwise sets only in `launch()` or `gr.mount_gradio_app`.

    `bentoml.gradio.mount_gradio_app` skips both, and the page then fails to render (HTTP 500).
    """
    if getattr(demo, "theme", None) is None:
        demo.theme = gr.themes.Default()
        for name, empty in (("css", ""), ("js", ""), ("head", ""), ("css_paths", []), ("head_paths", [])):
            setattr(demo, name, getattr(demo, name, None) or empty)
        demo._set_html_css_theme_variables()
