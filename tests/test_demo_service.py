"""`python -m demo --service URL`: the page's classifier against a real `bentoml serve` over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from test_serve import free_port, start_server, stop_server, wait_ready


@pytest.fixture(scope="module")
def service_url(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-service")
    port = free_port()
    env = {
        "STADAPTER_BUNDLE": str(tiny_bundle),
        "STADAPTER_DECODE_WORKERS": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(root / "bentoml"),
        "STADAPTER_UI_URL": f"http://127.0.0.1:{port}",  # the page at /ui classifies through this service
    }
    log_path = root / "server.log"
    process, url = start_server(env, log_path, port=port)
    try:
        wait_ready(process, url, log_path)
        yield url
    finally:
        stop_server(process)


@pytest.mark.slow
def test_service_classifier_matches_predictor(service_url, tiny_bundle, tmp_path):
    from demo.app import ServiceClassifier, result_outputs
    from stadapter_deploy import load_predictor
    from stadapter_deploy.errors import VideoError
    from stadapter_deploy.video import decode_frames
    from stadapter_deploy.video.synthetic import write_motion_video

    video = write_motion_video(tmp_path / "clip.mp4", label=4, seed=7)
    predictor = load_predictor(tiny_bundle)
    expected = predictor.classify(video)

    classifier = ServiceClassifier(service_url)
    result = classifier(video)
    assert [x["label"] for x in result.labels] == [x["label"] for x in expected["labels"]]
    np.testing.assert_allclose([x["score"] for x in result.labels], [x["score"] for x in expected["labels"]], rtol=1e-4)
    assert result.model_name == predictor.model_name
    assert result.frame_indices == [expected["frames"]]
    np.testing.assert_array_equal(result.frames[0], decode_frames(video, expected["frames"]))
    assert {"decode", "preprocess", "infer", "total", "round trip"} <= set(result.timings_ms)
    _, gallery, details = result_outputs(result)
    assert len(gallery) == 8 and service_url in details

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError):
        classifier(bad)
    assert classifier(video).labels[0]["label"] == expected["labels"][0]["label"]  # still answering


@pytest.mark.slow
def test_demo_page_mounted_at_ui_classifies_through_the_service(service_url, tiny_bundle, tmp_path):
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
    assert [c["label"] for c in top5["confidences"]] == [e["label"] for e in expected["labels"]]
    assert len(gallery) == 8 and service_url in details  # the page went through the service's HTTP API
