"""Embeddings and heatmaps over real HTTP, against the session's `bentoml serve`: /embed and /explain give
what the Predictor gives in-process, behind the same guard and with the same refusals as /classify."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest

from stadapter_deploy import load_predictor
from stadapter_deploy.video.synthetic import write_motion_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_motion_video(tmp_path_factory.mktemp("explain") / "clip.mp4", label=0, seed=11)


def post(url: str, endpoint: str, data: bytes, **fields) -> httpx.Response:
    return httpx.post(f"{url}{endpoint}", files={"video": ("clip.mp4", data, "video/mp4")}, data=fields, timeout=120)


def test_embed_is_the_predictors_embedding(server, tiny_bundle, clip):
    from stadapter_deploy.runtime.similar import model_id

    url, _ = server
    response = post(url, "/embed", clip.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    predictor = load_predictor(tiny_bundle)
    np.testing.assert_allclose(body["embedding"], predictor.embed(clip), atol=1e-5)
    assert body["dim"] == 64 and body["model"] == model_id(predictor.bundle)


def test_explain_gives_the_picture_and_the_heatmaps_the_predictor_gives(server, tiny_bundle, clip):
    from PIL import Image

    url, _ = server
    response = post(url, "/explain", clip.read_bytes(), target="2")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = load_predictor(tiny_bundle).explain(clip, target=2)
    assert (body["index"], body["label"]) == (2, expected.label) and body["score"] == pytest.approx(
        expected.score, abs=1e-5
    )
    assert body["frames"] == expected.frame_indices
    maps = body["heatmaps"]
    got = np.frombuffer(base64.b64decode(maps["data"]), np.uint8).reshape(maps["shape"]) * maps["scale"]
    np.testing.assert_allclose(got, expected.heatmaps, atol=2 / 255)
    with Image.open(io.BytesIO(base64.b64decode(body["png"]))) as picture:
        assert picture.format == "PNG" and picture.width > 8 * 32


def test_explain_and_embed_refuse_as_classify_does(server, clip):
    url, _ = server
    out_of_range = post(url, "/explain", clip.read_bytes(), target="6")
    assert out_of_range.status_code == 400 and out_of_range.json()["code"] == "bad_option"
    for endpoint in ("/explain", "/embed"):
        bad = post(url, endpoint, b"GIF89a not a video at all " * 40)
        assert bad.status_code == 422 and bad.json()["code"] == "video_unreadable", endpoint
