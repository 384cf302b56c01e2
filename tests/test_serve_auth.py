"""STADAPTER_API_TOKEN over real HTTP: every route but the probes and /metrics needs the Bearer token, in
the one guard; the /ui page asks for it as its login; the demo's --service client passes it on."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from helpers import running_server

from stadapter_deploy.video.synthetic import write_motion_video

TOKEN = "s3cret-token-for-the-test"


@pytest.fixture(scope="module")
def guarded(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    env = {
        "STADAPTER_BUNDLE": str(tiny_bundle),
        "STADAPTER_API_TOKEN": TOKEN,
        "STADAPTER_UI": "1",
        "STADAPTER_WARMUP": "0",
        "STADAPTER_DECODE_WORKERS": "1",
    }
    with running_server(root, **env) as (url, _, log):  # /readyz, which it waits for, needs no token
        yield url, log
    assert list((root / "tmp").glob("stadapter-serve-*")) == []  # the server's folder went with it


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_motion_video(tmp_path_factory.mktemp("auth-clip") / "clip.mp4", label=2, seed=4)


def classify(url: str, clip, headers: dict | None = None) -> httpx.Response:
    files = {"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    return httpx.post(f"{url}/classify", files=files, headers=headers or {}, timeout=120)


def test_without_a_token_or_with_a_wrong_one_every_route_is_a_json_401(guarded, clip):
    url, _ = guarded
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}):
        response = classify(url, clip, headers)
        assert response.status_code == 401, (headers, response.text)
        assert "API token" in response.json()["error"] and response.headers["www-authenticate"] == "Bearer"
    for path in ("/metadata", "/docs", "/timeline_task/status?task_id=x"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 401, path
    # refused before the body is read: a bad upload without the token is a 401, not a 4xx about the upload
    assert httpx.post(f"{url}/classify_batch", content=b"x", timeout=30).status_code == 401


def test_the_right_token_classifies_and_the_probes_need_none(guarded, clip):
    url, log = guarded
    response = classify(url, clip, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text and response.json()["labels"]
    assert httpx.get(f"{url}/metadata", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()["auth"]
    for path in ("/readyz", "/livez", "/metrics"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path
    assert TOKEN not in log.read_text()  # never logged


def test_the_demo_client_passes_the_token_on(guarded, clip):
    from demo.classifiers import ServiceClassifier
    from stadapter_deploy.errors import RequestError

    url, _ = guarded
    result = asyncio.run(ServiceClassifier(url, token=TOKEN).classify(clip, 3))
    assert len(result.labels) == 3 and ServiceClassifier(url, token=TOKEN).model_name.startswith("ViT")
    with pytest.raises(RequestError) as refused:
        asyncio.run(ServiceClassifier(url).classify(clip, 3))
    assert refused.value.status == 401


def test_the_ui_page_asks_for_the_token_as_its_login(guarded):
    url, _ = guarded
    config = httpx.get(f"{url}/ui/config", timeout=30)
    assert config.status_code == 401  # Gradio's own login guards the page's API
    login = httpx.post(f"{url}/ui/login", data={"username": "anyone", "password": "wrong"}, timeout=30)
    assert login.status_code == 400
    with httpx.Client(timeout=30) as browser:
        ok = browser.post(f"{url}/ui/login", data={"username": "anyone", "password": TOKEN})
        assert ok.status_code == 200, ok.text
        assert browser.get(f"{url}/ui/config").status_code == 200


def test_the_token_reaches_no_file_the_server_writes(guarded, clip):
    """A task stores its record and upload: neither the token nor a cookie is among what is kept."""
    url, log = guarded
    headers = {"Authorization": f"Bearer {TOKEN}", "Cookie": "session=cookie-secret-for-the-test"}
    files = {"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    task = httpx.post(f"{url}/timeline_task/submit", files=files, headers=headers, timeout=60).json()
    status = {"status": "pending"}
    while status["status"] in ("pending", "in_progress"):
        status = httpx.get(f"{url}/timeline_task/status", params=task, headers=headers, timeout=30).json()
    assert status["status"] == "completed", status
    written = [p for p in (log.parent / "tmp").rglob("*") if p.is_file() and "pymp-" not in str(p)] + [log]
    assert any(p.name.endswith(".json") for p in written)  # the task's record is among them
    for path in written:
        content = path.read_bytes()
        assert TOKEN.encode() not in content and b"cookie-secret" not in content, path
