"""`python -m demo --service URL`: the page's classifier against a real `bentoml serve` over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from test_serve import start_server, stop_server, wait_ready


@pytest.fixture(scope="module")
def service_url(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-service")
    env = {"STADAPTER_BUNDLE": str(tiny_bundle), "STADAPTER_DECODE_WORKERS": "1", "BENTOML_DO_NOT_TRACK": "True"}
    log_path = root / "server.log"
    process, url = start_server(env, log_path)
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
