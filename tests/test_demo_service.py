"""The demo against a real `bentoml serve`: `--service URL` over HTTP, and the page mounted at /ui."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest


@pytest.fixture(scope="module")
def service_url(server):
    return server[0]  # the session's one `bentoml serve` (conftest.py), started with STADAPTER_UI=1


@pytest.mark.slow
def test_service_classifier_matches_predictor(service_url, tiny_bundle, tmp_path):
    from demo.app import result_outputs
    from demo.classifiers import ServiceClassifier
    from stadapter_deploy import load_predictor
    from stadapter_deploy.errors import RequestError
    from stadapter_deploy.video import decode_frames
    from stadapter_deploy.video.synthetic import write_motion_video

    video = write_motion_video(tmp_path / "clip.mp4", label=4, seed=7)
    predictor = load_predictor(tiny_bundle)
    expected = predictor.classify(video)

    classifier = ServiceClassifier(service_url)
    assert classifier.frames_shown == 8  # the sampled frames, from the service's own preprocessing
    result = asyncio.run(classifier.classify(video, 5))
    assert [x["label"] for x in result.labels] == [x["label"] for x in expected.labels]
    np.testing.assert_allclose([x["score"] for x in result.labels], [x["score"] for x in expected.labels], rtol=1e-4)
    assert result.model_name == predictor.model_name
    assert result.frame_indices == [expected.frames]
    np.testing.assert_array_equal(result.frames[0], decode_frames(video, expected.frames))
    assert {"decode", "preprocess", "infer", "total", "round trip"} <= set(result.timings_ms)
    _, gallery, details = result_outputs(result)
    assert len(gallery) == 8 and service_url in details

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(RequestError) as refused:
        asyncio.run(classifier.classify(bad, 5))
    assert refused.value.status == 422  # the file's fault, as the service said
    assert asyncio.run(classifier.classify(video, 5)).labels[0]["label"] == expected.labels[0]["label"]


@pytest.mark.slow
def test_demo_page_mounted_at_ui_calls_the_service_in_process(service_url, tiny_bundle, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    from stadapter_deploy import load_predictor
    from stadapter_deploy.video.synthetic import write_motion_video

    page = httpx.get(f"{service_url}/ui/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()

    video = write_motion_video(tmp_path / "clip.mp4", label=1, seed=11)
    expected = load_predictor(tiny_bundle).classify(video)
    client = Client(f"{service_url}/ui/", verbose=False)
    top5, gallery, details = client.predict(handle_file(str(video)), api_name="/classify")
    assert [c["label"] for c in top5["confidences"]] == [e["label"] for e in expected.labels]
    assert len(gallery) == 8 and "BentoML service, in-process" in details  # it went through the service
    assert sorted(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == [
        "/classify",
        "/explain",
        "/timeline",
    ]
    heatmaps, caption = client.predict(handle_file(str(video)), api_name="/explain")  # through the service too
    assert expected.labels[0]["label"] in caption and read_size(heatmaps)[0] > 8 * 32


@pytest.mark.slow
def test_timeline_through_the_service_matches_the_predictor(service_url, tiny_bundle, tmp_path):
    from gradio_client import Client, handle_file

    from demo.classifiers import ServiceClassifier
    from stadapter_deploy import load_predictor
    from stadapter_deploy.video.synthetic import write_motion_video

    video = write_motion_video(tmp_path / "clip.mp4", label=2, seed=3)
    expected = [s.to_dict() for s in load_predictor(tiny_bundle).timeline(video, window_s=0.5)]
    over_http = asyncio.run(ServiceClassifier(service_url).timeline(video, 0.5))  # python -m demo --service URL
    assert [s["frames"] for s in over_http] == [e["frames"] for e in expected]
    assert [s["labels"][0]["label"] for s in over_http] == [e["labels"][0]["label"] for e in expected]
    _, table = Client(f"{service_url}/ui/", verbose=False).predict(handle_file(str(video)), 0.5, api_name="/timeline")
    assert [row[2] for row in table["data"]] == [e["labels"][0]["label"] for e in expected]  # /ui, in-process


def read_size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_the_service_classifier_explains_as_the_predictor_does(service_url, tiny_bundle, tmp_path):
    from demo.classifiers import ServiceClassifier
    from stadapter_deploy import load_predictor
    from stadapter_deploy.video.synthetic import write_motion_video

    video = write_motion_video(tmp_path / "clip.mp4", label=3, seed=5)
    expected = load_predictor(tiny_bundle).explain(video)
    got = asyncio.run(ServiceClassifier(service_url).explain(video))
    assert got.label == expected.label and got.score == pytest.approx(expected.score, abs=1e-5)
    assert got.png.startswith(b"\x89PNG")


def test_the_mounted_page_takes_a_long_video_through_a_task(service_url, tiny_bundle, tmp_path):
    """Past the service's synchronous window limit (8 here) the page at /ui runs the video as a task like
    /timeline_task's (counted against the task limit, private), and shows every window."""
    import subprocess

    from gradio_client import Client, handle_file

    from stadapter_deploy import load_predictor

    video = tmp_path / "twelve_seconds.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=8", "-t", "12"]
        + ["-c:v", "libx264", "-preset", "ultrafast", str(video)],
        check=True,
    )
    expected = load_predictor(tiny_bundle).timeline(video)
    assert len(expected) > 8  # over the session server's STADAPTER_MAX_TIMELINE_WINDOWS
    _, table = Client(f"{service_url}/ui/", verbose=False).predict(handle_file(str(video)), 0, api_name="/timeline")
    assert [row[2] for row in table["data"]] == [s.labels[0]["label"] for s in expected]
