"""The Gradio demo: a real `python -m demo` server on a loopback port, driven by gradio_client and chromium."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import stop_process as stop

from demo.screenshot import CHROMIUM_ARGS
from stadapter_deploy.net import NotUp, free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def demo_url(tiny_bundle):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "demo", "--bundle", str(tiny_bundle), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_until_up(url, proc, 90)
        except NotUp as e:
            pytest.fail(f"the demo is not up: {e}:\n{proc.stdout.read() if proc.poll() is not None else ''}")
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from stadapter_deploy import load_predictor

    return load_predictor(tiny_bundle)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    from stadapter_deploy.video.synthetic import write_motion_video

    folder = tmp_path_factory.mktemp("demo-clips")
    write_motion_video(folder / "good.mp4", label=1, seed=123)
    (folder / "bad.mp4").write_bytes(b"this is a text file, not a video\n" * 20)
    return folder


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_client_classify_matches_predictor(demo_url, predictor, clips_dir):
    from gradio_client import Client, handle_file

    from stadapter_deploy.video import denormalize

    video = clips_dir / "good.mp4"
    client = Client(demo_url, verbose=False)
    top5, gallery, details = client.predict(handle_file(str(video)), api_name="/classify")

    expected = predictor.classify(video, top_k=5)
    got = [(c["label"], c["confidence"]) for c in top5["confidences"]]
    assert [label for label, _ in got] == [e["label"] for e in expected.labels]
    np.testing.assert_allclose([s for _, s in got], [e["score"] for e in expected.labels], rtol=1e-5)
    assert top5["label"] == expected.labels[0]["label"]

    # The gallery holds exactly the model's input frames (after sampling and cropping), in order.
    model_frames = denormalize(predictor.preprocess(video).clips)[0]  # [T, S, S, 3]
    assert [item["caption"] for item in gallery] == [f"frame {i}" for i in expected.frames]
    shown = np.stack([read_image(item["image"]) for item in gallery])
    np.testing.assert_array_equal(shown, model_frames)

    assert predictor.backend in details and predictor.model_name in details and predictor.precision in details
    for stage in ("decode", "preprocess", "infer", "total"):
        assert f"| {stage} |" in details


def test_the_documented_api_name_is_the_public_one(demo_url):
    from gradio_client import Client

    # The page's "Use via API" lists /classify and /timeline: no /classify_1 twin of the examples' handler.
    api = Client(demo_url, verbose=False).view_api(return_format="dict", print_info=False)
    assert sorted(api["named_endpoints"]) == ["/classify", "/explain", "/timeline"]


def test_timeline_tab_plots_and_tables_the_predictors_timeline(demo_url, predictor, clips_dir):
    from gradio_client import Client, handle_file

    video = clips_dir / "good.mp4"
    plot, table = Client(demo_url, verbose=False).predict(handle_file(str(video)), 0.5, api_name="/timeline")
    expected = predictor.timeline(video, window_s=0.5, top_k=5)
    assert len(expected) > 1 and len(table["data"]) == len(expected)
    assert [row[:3] for row in table["data"]] == [[e.start_s, e.end_s, e.labels[0]["label"]] for e in expected]
    assert plot["type"] == "matplotlib" and len(plot["plot"]) > 1000  # a rendered figure


def test_client_bad_file_gives_message_and_app_keeps_working(demo_url, clips_dir):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    with pytest.raises(AppError, match="Could not classify this file") as info:
        client.predict(handle_file(str(clips_dir / "bad.mp4")), api_name="/classify")
    assert "Traceback" not in str(info.value)
    assert "/gradio/" not in str(info.value)  # no server-side upload path in the message
    top5, _, _ = client.predict(handle_file(str(clips_dir / "good.mp4")), api_name="/classify")
    assert len(top5["confidences"]) == 5


def test_page_has_examples_and_no_analytics(demo_url):
    import httpx

    config = httpx.get(f"{demo_url}config", timeout=10).json()
    assert config["analytics_enabled"] is False
    datasets = [c["props"] for c in config["components"] if c["type"] == "dataset"]
    assert len(datasets) == 1
    assert sorted(datasets[0]["sample_labels"]) == sorted(
        name.replace("_", " ") for name in (p.stem for p in (ROOT / "demo" / "examples").glob("*.mp4"))
    )
    assert len(datasets[0]["sample_labels"]) == 6


def test_local_classifier_shows_every_view(tiny_bundle, predictor, clips_dir):
    """With 3 spatial crops the strip shows 3 x T frames, each the crop the model saw."""
    from demo.app import result_outputs
    from demo.classifiers import LocalClassifier
    from stadapter_deploy.video import denormalize

    classifier = LocalClassifier(predictor, views=3)
    assert classifier.frames_shown == 24
    result = asyncio.run(classifier.classify(clips_dir / "good.mp4", 5))
    expected = predictor.classify(clips_dir / "good.mp4", views=3)
    assert [x["label"] for x in result.labels] == [x["label"] for x in expected.labels]
    assert result.frames.shape == (3, 8, 32, 32, 3)
    np.testing.assert_array_equal(result.frames, denormalize(predictor.preprocess(clips_dir / "good.mp4", 3).clips))
    scores, gallery, details = result_outputs(result)
    assert len(gallery) == 24 and gallery[8][1].startswith("view 2, frame ")
    assert "3 view(s) x 8 frames" in details


def test_frames_are_shown_with_the_bundles_own_statistics(tiny_bundle, clips_dir, tmp_path):
    """A bundle normalized with other statistics than CLIP's shows its frames in their true colours: the
    shown crop is the video's pixels resized, whatever the mean and std."""
    from helpers import copy_bundle, rewrite_manifest

    from demo.classifiers import LocalClassifier
    from stadapter_deploy import load_predictor
    from stadapter_deploy.video import decode_frames, denormalize
    from stadapter_deploy.video.transforms import eval_transform

    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    stats = {"mean": [0.5, 0.5, 0.5], "std": [0.1, 0.2, 0.3]}
    rewrite_manifest(bundle, lambda m: m["preprocessing"].update(stats))
    predictor = load_predictor(bundle)
    result = asyncio.run(LocalClassifier(predictor).classify(clips_dir / "good.mp4", 5))
    raw = decode_frames(clips_dir / "good.mp4", result.frame_indices[0])  # [T, H, W, 3]
    (crop,) = eval_transform(raw, 32, 1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # [3, T, 32, 32] in [0, 1]
    truth = (crop.permute(1, 2, 3, 0) * 255).round().clamp(0, 255).numpy()
    assert np.abs(result.frames[0].astype(float) - truth).max() <= 1
    as_clip = denormalize(predictor.preprocess(clips_dir / "good.mp4").clips)  # CLIP's statistics: wrong colours
    assert np.abs(as_clip[0].astype(float) - truth).mean() > 20


def test_cli_rejects_a_missing_bundle(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--bundle", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_browser_upload_bad_then_good(demo_url, predictor, clips_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    expected_top = predictor.classify(clips_dir / "good.mp4").labels[0]["label"]
    file_input = "#video-input input[type=file]"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(demo_url)
            page.wait_for_selector(file_input, state="attached", timeout=60_000)

            page.set_input_files(file_input, str(clips_dir / "bad.mp4"))
            page.get_by_text("Could not classify this file").first.wait_for(timeout=60_000)
            assert page.get_by_text("Traceback").count() == 0

            # The first "Clear" dismisses the error on the video; the second empties the upload.
            clear = page.locator("#video-input button[aria-label='Clear']")
            clear.first.click()
            clear.last.click()
            page.wait_for_selector(file_input, state="attached", timeout=30_000)
            page.set_input_files(file_input, str(clips_dir / "good.mp4"))
            heading = page.locator("#top5 [data-testid='label-output-value']", has_text=expected_top)
            heading.first.wait_for(timeout=60_000)
            page.locator("#frames img").nth(7).wait_for(timeout=30_000)
            assert page.locator("#frames img").count() == 8
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

            page.click("#explain-button")  # the heatmaps: where the evidence for the top class lies
            page.locator("#heatmaps img").first.wait_for(timeout=60_000)
            page.locator("#heatmaps-caption", has_text=expected_top).wait_for(timeout=30_000)
            heat = page.locator("#heatmaps img").first.bounding_box()
            assert heat["width"] > 200 and heat["height"] > 50

            page.get_by_role("tab", name="Timeline").click()  # the timeline: a plot and a table of windows
            page.set_input_files("#timeline-input input[type=file]", str(clips_dir / "good.mp4"))
            page.locator("#timeline-plot img").first.wait_for(timeout=60_000)
            segments = predictor.timeline(clips_dir / "good.mp4")
            top = segments[0].labels[0]["label"]  # the table's first window, as the page shows it
            page.locator(f"#timeline-table >> text='{top}' >> visible=true").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "timeline.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 10_000


def test_cli_says_when_the_port_is_taken(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "demo", "--bundle", str(tiny_bundle), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and f"cannot listen on 127.0.0.1:{port}" in proc.stderr


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed")
def test_a_webcam_recording_is_classified_like_an_upload(demo_url):
    """Chromium's fake camera (a moving test pattern): record, stop, and the recording goes through the same
    handler, checks and decode as an upload."""
    from playwright.sync_api import sync_playwright

    camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + camera)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"]).new_page()
            page.goto(demo_url)
            page.click("#video-input button[aria-label='Capture from camera']", timeout=60_000)
            page.get_by_text("Click to Access Webcam").click()
            page.click("#video-input button[aria-label='start recording']", timeout=30_000)
            time.sleep(3)
            page.locator("#video-input button", has_text="Stop").first.click()
            page.locator("#top5 [data-testid='label-output-value']").first.wait_for(timeout=60_000)
            page.locator("#frames img").nth(7).wait_for(timeout=30_000)
            assert "Could not classify" not in page.content()
        finally:
            browser.close()


def test_the_page_never_lets_a_visitor_edit_its_code(tiny_bundle, monkeypatch):
    """Gradio's 'vibe' editing (its /gradio_api/vibe-edit routes rewrite the app's source) stays off, even
    where GRADIO_VIBE_MODE is set in the server's environment."""
    from demo.app import build_demo
    from demo.classifiers import LocalClassifier

    monkeypatch.setenv("GRADIO_VIBE_MODE", "1")
    assert build_demo(LocalClassifier(tiny_bundle)).vibe_mode is False
