"""The Gradio page: upload a video (or pick an example) and see what the model says and what it looked at.

`build_demo(classifier)` returns the Blocks for any `Classifier` (demo/classifiers.py: a local Predictor,
a service over HTTP, or the service this page is mounted in); `python -m demo` launches it, and the
BentoML service mounts the same Blocks at `/ui` with `bentoml.gradio.mount_gradio_app`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Set before gradio is imported anywhere: its analytics are read from the environment at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .classifiers import Classifier, DemoResult, Explained  # noqa: E402
from .timeline import timeline_tab  # noqa: E402

EXAMPLES_DIR = Path(__file__).parent / "examples"
TOP_K = 5
DEFAULT_TITLE = "ST-Adapter video classification"
GALLERY_COLUMNS = 8
TIMING_STAGES = ("decode", "preprocess", "infer", "total")


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
    from stadapter_deploy.errors import RequestError, STAdapterError

    if isinstance(error, RequestError) and error.status >= 500:
        return f"The classification service is not available: {error}"
    if isinstance(error, STAdapterError):
        return f"Could not classify this file: {error}"
    return "Could not classify this file: it does not look like a video the model can read."


def page_error(e: Exception, video: str) -> gr.Error:
    """A failure on a user's video as a message in the page (no traceback, no server path)."""
    message = friendly_error(e).replace(str(video), Path(video).name)
    return gr.Error(message, duration=15, print_exception=False)


def explained_outputs(result: Explained):
    """Explained -> the page's heatmap picture (an RGB array) and its caption."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(result.png)) as picture:
        image = np.asarray(picture.convert("RGB"))
    return image, f"**Where the evidence for {result.label}** ({result.score:.1%}) lies in each frame the model saw"


def make_handler(work, outputs, empty_message: str = "Upload a video first, or pick one of the examples."):
    """The page's one handler factory: `await work(video, *args)`, its result through `outputs`; bad input
    becomes a message in the page, never a traceback."""

    async def handler(video: str | None, *args):
        if not video:
            raise gr.Error(empty_message, print_exception=False)
        try:
            result = await work(video, *args)
        except Exception as e:  # noqa: BLE001 - any failure on user input becomes a message in the page
            raise page_error(e, video) from e
        return outputs(result)

    return handler


def example_videos() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.mp4"))


def build_demo(classifier: Classifier, title: str = DEFAULT_TITLE, subtitle: str | Callable[[], str] = "") -> gr.Blocks:
    """The page over any Classifier. `subtitle` may be a function: it is asked again each time the page
    loads (a service that came up after the page started is then named)."""
    classify = make_handler(lambda video: classifier.classify(video, TOP_K), result_outputs)
    explain = make_handler(classifier.explain, explained_outputs)

    # The examples get a handler of their own name: sharing `classify` would register the examples' private
    # endpoint as /classify and push the public one to /classify_1.
    async def classify_example(video):
        return await classify(video)

    strip_height = gallery_height(classifier.frames_shown)
    # Gradio keeps uploads and the frames it shows in its cache; every hour it drops what is over an hour old.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        intro = (
            "Upload a short video (mp4, webm, avi, mkv, mov), record one, or pick an example. The page shows the "
            "top-5 classes, the frames the model looked at, how long each stage took, and where it looked."
        )
        header = lambda: f"# {title}\n{subtitle() if callable(subtitle) else subtitle}\n\n{intro}"
        top = gr.Markdown(header(), elem_id="header")
        if callable(subtitle):  # asked again on each page load, and kept out of the page's public API
            demo.load(header, outputs=top, api_visibility="private")
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
                    # A webcam recording is a file like an upload: the same handler, checks and limits.
                    video = gr.Video(label="Video", sources=["upload", "webcam"], elem_id="video-input")
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
                    why = gr.Button("Show where it looked", elem_id="explain-button")
                    why_caption = gr.Markdown(elem_id="heatmaps-caption")
                    heatmaps = gr.Image(
                        label="Heatmaps: where the evidence for the top class lies", elem_id="heatmaps", format="png"
                    )
            gallery.render()
        gr.on(
            [button.click, video.upload, video.stop_recording],
            classify,
            inputs=video,
            outputs=outputs,
            api_name="classify",
        )
        why.click(explain, inputs=video, outputs=[heatmaps, why_caption], api_name="explain")
        timeline_tab(classifier, make_handler)
    demo.vibe_mode = False  # GRADIO_VIBE_MODE would let visitors rewrite this page's code on the server
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
