"""The one door, tried as an attacker would, over real HTTP against the session's `bentoml serve`: every route
the app serves is walked from its own route table; the mounted page reads only what was uploaded; uploads
are opened as video files and nothing else; the server's own files are private."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from helpers import SERVE_BODY_TIMEOUT_S, SERVE_MAX_UPLOAD_MB

from serve.local import ROOT
from stadapter_deploy.video.synthetic import write_motion_video

MULTIPART = "multipart/form-data; boundary=door-test"
PATH_PARAMS = {"api_name": "classify", "event_id": "0" * 32, "session_hash": "abc", "path": "x", "size": "32"}


@pytest.fixture(scope="module")
def routes(server, server_process) -> list[dict]:
    """What `python -m serve.routes --json` lists for the session server's settings: its app's own routes."""
    env = {**os.environ, **server_process.env_for_tests, "TMPDIR": str(server_process.log_path.parent)}
    out = subprocess.run(
        [sys.executable, "-m", "serve.routes", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = [json.loads(line) for line in out.stdout.splitlines()]
    assert {"/classify", "/timeline_task/submit", "/ui/gradio_api/upload", "/ui/gradio_api/queue/join"} <= {
        r["path"] for r in table
    }
    return table


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_motion_video(tmp_path_factory.mktemp("door") / "clip.mp4", label=1, seed=3)


def concrete(path: str) -> str:
    for name, value in PATH_PARAMS.items():
        path = path.replace("{" + name + ":path}", value).replace("{" + name + "}", value)
    return path.replace("{ext}", "ts").replace("{url_path:path}", "x").replace("{path_or_url:path}", "x")


def raw_request(url: str, method: str, path: str, head: dict, body: bytes, wait_s: float) -> tuple[int, bytes, float]:
    """Send the request line, headers and `body` (maybe less than declared), then read the answer:
    (status, body, seconds until it came)."""
    host = urlparse(url)
    with socket.create_connection((host.hostname, host.port), timeout=wait_s) as s:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host.netloc}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        start = time.monotonic()
        s.sendall("\r\n".join(lines).encode() + body)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer.partition(b"\r\n\r\n")[2], time.monotonic() - start


def content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def body_routes(routes: list[dict]) -> list[tuple[str, str]]:
    return [(m, concrete(r["path"])) for r in routes if r["takes_body"] for m in r["methods"] if m in ("POST", "PUT")]


# ----------------------------------------------------------------------------- every route behind the guard


def test_every_route_that_takes_a_body_refuses_an_oversize_one_with_a_json_413(server, routes):
    url, _ = server
    too_big = int(SERVE_MAX_UPLOAD_MB * 2**20) * 2
    targets = body_routes(routes)
    assert len(targets) > 20, targets  # the page's API included

    def declared(target):
        method, path = target
        head = {"Content-Type": MULTIPART, "Content-Length": str(too_big)}
        return raw_request(url, method, path, head, b"", 30)

    def undeclared(target):  # chunked: no length to refuse from; the body itself is counted
        method, path = target
        chunk = b"x" * (1 << 20)
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        head = {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}
        return raw_request(url, method, path, head, body, 30)

    with ThreadPoolExecutor(8) as pool:
        for send in (declared, undeclared):
            for target, (status, body, _) in zip(targets, pool.map(send, targets), strict=True):
                assert status == 413, (send.__name__, target, status, body[:200])
                assert json.loads(body)["code"] == "upload_too_large", target


def test_every_route_that_takes_a_body_drops_a_stalled_one_within_the_body_timeout(server, routes):
    url, _ = server
    targets = body_routes(routes)

    def stalled(target):
        method, path = target
        head = {"Content-Type": MULTIPART, "Content-Length": "1000"}
        return raw_request(url, method, path, head, b"x" * 10, SERVE_BODY_TIMEOUT_S + 20)

    with ThreadPoolExecutor(len(targets)) as pool:
        for target, (status, body, seconds) in zip(targets, pool.map(stalled, targets), strict=True):
            assert status == 408 and json.loads(body)["code"] == "upload_timeout", (target, status, body[:200])
            assert seconds < SERVE_BODY_TIMEOUT_S + 10, (target, seconds)


@pytest.mark.parametrize(
    "endpoint, fields",
    [
        ("/classify", {"top_k": "2", "views": "1"}),
        ("/classify_batch", {"top_k": "2", "views": "1"}),
        ("/classify_timeline", {"top_k": "2", "views": "1", "window_s": "1.0", "stride_s": "0.5"}),
        ("/timeline_task/submit", {"top_k": "2", "views": "1", "window_s": "1.0", "stride_s": "0.5"}),
        ("/embed", {"views": "1"}),
        ("/explain", {"target": "3", "views": "1"}),
    ],
)
def test_every_upload_route_takes_all_of_its_options_at_once(server, routes, clip, endpoint, fields):
    url, _ = server
    form = next(r["upload"] for r in routes if r["path"] == endpoint)
    assert sorted(fields) == sorted(form["options"] + form["numbers"])  # every option the route has
    files = {form["file_field"]: ("clip.mp4", clip.read_bytes(), "video/mp4")}
    response = httpx.post(f"{url}{endpoint}", files=files, data=fields, timeout=120)
    assert response.status_code == 200, response.text


def test_error_answers_of_the_app_itself_are_json_with_a_code(server):
    url, _ = server
    for method, path, status, code in [
        ("GET", "/no/such/route", 404, "not_found"),
        ("POST", "/timeline_task/retry", 404, "not_found"),  # no retry route: nothing stored twice
        ("GET", "/timeline_task/status?task_id=../../etc/passwd", 404, "not_found"),
        ("GET", "/classify", 405, "method_not_allowed"),
    ]:
        response = httpx.request(method, f"{url}{path}", timeout=30)
        assert response.status_code == status, (path, response.text)
        assert response.json()["code"] == code and response.json()["error"], path


# ----------------------------------------------------------------------------- the page reads only what it was sent


def page_call(url: str, api: str, data: list) -> tuple[str, str]:
    """Call the mounted page's API as any client can: (the event it ended with, its data)."""
    started = httpx.post(f"{url}/ui/gradio_api/call/{api}", json={"data": data}, timeout=60)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    with httpx.stream("GET", f"{url}/ui/gradio_api/call/{api}/{event_id}", timeout=120) as answer:
        event = ""
        for line in answer.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, line.split(":", 1)[1].strip()
    pytest.fail("the page's API gave no result")


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(path).name}


@pytest.mark.parametrize("api, extra", [("classify", []), ("timeline", [0])])
def test_the_page_refuses_a_server_path_it_was_not_sent_whatever_is_there(server, clip, api, extra, tmp_path):
    url, _ = server
    ours = tmp_path / "server_side.mp4"  # a real video on the server's disk, never uploaded
    ours.write_bytes(clip.read_bytes())
    answers = {}
    for name, path in {"video": ours, "file": Path("/etc/hostname"), "nothing": tmp_path / "missing.mp4"}.items():
        event, data = page_call(url, api, [file_data(str(path)), *extra])
        assert event == "error", (name, data)  # nothing was classified: no labels, no frames
        answers[name] = data.replace(str(path), "PATH")
    assert len(set(answers.values())) == 1, answers  # the same words whether or not a file is there


def test_the_page_serves_no_server_file(server, tmp_path):
    url, _ = server
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    for path in (str(secret), "/etc/hostname", str(ROOT / "README.md")):
        response = httpx.get(f"{url}/ui/gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404) and "not for clients" not in response.text, path
    proxied = httpx.get(f"{url}/ui/gradio_api/proxy={url}/metadata", timeout=30)  # no fetch on a client's behalf
    assert proxied.status_code in (400, 403, 404), proxied.text


def test_the_pages_own_upload_classifies_like_any_client(server, clip):
    from gradio_client import Client, handle_file

    url, _ = server
    top5, frames, details = Client(f"{url}/ui/", verbose=False).predict(handle_file(str(clip)), api_name="/classify")
    assert top5["label"] and frames and "backend" in details


# ----------------------------------------------------------------------------- video files, nothing else


def test_an_upload_named_m3u8_is_not_read_as_a_playlist(server, clip, tmp_path):
    url, _ = server
    segment = tmp_path / "segment.ts"  # a real video on the server's disk, which a playlist could name
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts", str(segment)],
        check=True,
    )
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{segment}\n#EXT-X-ENDLIST\n".encode()
    for name in ("list.m3u8", "list.mp4"):
        response = httpx.post(f"{url}/classify", files={"video": (name, playlist, "video/mp4")}, timeout=60)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "video_unreadable"


# ----------------------------------------------------------------------------- the server's own files


def test_the_servers_folder_is_private_and_holds_the_verified_bundle(server, server_process):
    _, server_tmp = server
    ours = str(server_process.pid)
    (state,) = [p for p in server_tmp.glob("stadapter-serve-*") if (p / "owner.pid").read_text() == ours]
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == os.getuid()
    assert (state / "bundle" / "manifest.json").is_file()
    for folder in ("tasks", "gradio"):
        assert stat.S_IMODE((state / folder).stat().st_mode) == 0o700
