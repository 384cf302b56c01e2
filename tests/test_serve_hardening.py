"""The service under attack and under operator mistakes, over real HTTP against the session's `bentoml serve`:
decode bombs, killed workers, a bundle rewritten while served, lying Content-Length, bad request shapes.
The tests that kill workers wait until the server is whole again before they end."""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from helpers import copy_bundle, make_tiny_checkpoint, rewrite_manifest, serve_until_it_exits

from stadapter_deploy import load_predictor
from stadapter_deploy.video.synthetic import write_motion_video

BOUNDARY = "stadapter-test-boundary"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return write_motion_video(tmp_path_factory.mktemp("hardening") / "clip.mp4", label=3, seed=5).read_bytes()


def post(url: str, video: bytes, name: str = "clip.mp4", **kw) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"video": (name, video, "video/mp4")}, timeout=120, **kw)


def workers(process, marker: str) -> list[psutil.Process]:
    return [p for p in psutil.Process(process.pid).children(recursive=True) if marker in " ".join(p.cmdline())]


def decode_workers(process) -> list[psutil.Process]:
    """The decode workers: the processes forked by a fork server (which carry its command line)."""
    servers = workers(process, "multiprocessing.forkserver")
    return [child for server in servers for child in server.children()]


def wait_whole(url: str, clip: bytes, timeout_s: float = 120) -> None:
    """Until /readyz says 200 and a classify succeeds (workers respawned)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=5).status_code == 200 and post(url, clip).status_code == 200:
            return
        time.sleep(0.5)
    pytest.fail("the server did not recover")


def test_a_decode_bomb_is_refused_from_its_headers_and_good_requests_go_on(server, bomb, clip):
    url, _ = server
    response = post(url, bomb.read_bytes(), "bomb.mp4")
    assert response.status_code == 422, response.text
    assert "8000x8000" in response.json()["error"] and "STADAPTER_MAX_PIXELS" in response.json()["error"]
    with ThreadPoolExecutor(3) as pool:  # two bombs in flight beside a good request: each answered properly
        bombs = [pool.submit(post, url, bomb.read_bytes(), "bomb.mp4") for _ in range(2)]
        good = pool.submit(post, url, clip)
        assert good.result().status_code == 200
        assert [b.result().status_code for b in bombs] == [422, 422]
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def test_a_decode_worker_killed_while_idle_costs_the_next_request_nothing(server, server_process, clip):
    """The request lands on a dead worker: the pool replaces it and runs the decode there (the one retry,
    in the pool's door), and says so in the log."""
    url, _ = server
    decoders = decode_workers(server_process)
    assert decoders, "no decode worker found"
    for p in decoders:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(decoders, timeout=10)
    response = post(url, clip)
    assert response.status_code == 200, response.text
    wait_whole(url, clip)
    log = server_process.log_path.read_text()
    assert "worker died during a job; running the job once more on its replacement" in log


def test_readyz_answers_at_once_and_says_503_while_the_model_worker_is_down(server, server_process, clip):
    from serve.settings import READY_FRESH_S

    url, _ = server
    (model,) = workers(server_process, "--service-name stadapter_model")
    model.suspend()  # a model worker that does not answer: the case where /readyz used to hang
    try:
        time.sleep(READY_FRESH_S + 0.2)  # past the window in which a recent batch counts as proof
        for _ in range(3):
            start = time.monotonic()
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503
            assert time.monotonic() - start < 5.0  # a hang detector (it hung 120 s), not a speed test
    finally:
        model.resume()
    (model,) = workers(server_process, "--service-name stadapter_model")
    model.send_signal(signal.SIGKILL)  # killed outright: circus restarts it and /readyz comes back
    model.wait(10)
    wait_whole(url, clip)


def test_a_bundle_rewritten_in_place_is_not_mixed_into_what_is_served(
    server, server_process, tiny_bundle, tmp_path, clip
):
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.runtime import load_bundle

    url, _ = server
    served = server_process.log_path.parent / "served-bundle"  # what STADAPTER_BUNDLE names
    other = load_source(checkpoint=make_tiny_checkpoint(tmp_path / "other", seed=9))
    other.labels = [f"other {i}" for i in range(6)]
    export_bundle(other, served, ExportOptions(overwrite=True, verify=False, progress=False))  # in place
    assert load_bundle(served).labels[0] == "other 0"
    (model,) = workers(server_process, "--service-name stadapter_model")
    model.send_signal(signal.SIGKILL)  # the restarted model worker must not load the new files
    model.wait(10)
    wait_whole(url, clip)

    expected = load_predictor(tiny_bundle, backend="onnxruntime-cpu")
    body = post(url, clip, data={"top_k": "6"}).json()
    by_label = {x["label"]: x["score"] for x in body["labels"]}
    assert by_label == pytest.approx({x["label"]: x["score"] for x in expected.classify(clip, top_k=6).labels})
    assert httpx.get(f"{url}/metadata", timeout=30).json()["classes"] == expected.labels


def test_a_declared_oversized_body_is_refused_from_the_headers(server):
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        head = (
            f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {10**12}\r\n\r\n"
        )
        s.sendall(head.encode() + b"x" * 1024)
        start = time.monotonic()
        reply = b""
        while chunk := s.recv(4096):  # the server closes the connection after its answer
            reply += chunk
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413") and time.monotonic() - start < 10, reply[:200]
    assert "larger than the server's limit" in reply


@pytest.mark.parametrize(
    "request_kw, status, words",
    [
        (dict(params={"top_k": "2"}), 400, "not in the query string"),
        (dict(filename=""), 400, "empty file name"),
        (dict(truncate=True), 400, "the upload is incomplete"),
    ],
)
def test_request_shapes_get_answers_that_say_what_is_wrong(server, clip, request_kw, status, words):
    url, _ = server
    raw = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; '
            f'filename="{request_kw.get("filename", "clip.mp4")}"\r\nContent-Type: video/mp4\r\n\r\n'
        ).encode()
        + clip
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    if request_kw.get("truncate"):  # a client that died mid-upload, its body cut short
        raw = raw[: len(raw) // 2]
    response = httpx.post(
        f"{url}/classify",
        content=raw,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        params=request_kw.get("params"),
        timeout=60,
    )
    assert response.status_code == status and words in response.json()["error"], response.text


def test_405_is_json(server):
    url, _ = server
    response = httpx.get(f"{url}/classify", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert "takes POST" in response.json()["error"]


def test_classify_batch_answers_per_video(server, clip, tiny_bundle):
    url, _ = server
    files = [("videos", ("good.mp4", clip, "video/mp4")), ("videos", ("bad.mp4", b"not a video" * 50, "video/mp4"))]
    response = httpx.post(f"{url}/classify_batch", files=files, data={"top_k": "2"}, timeout=120)
    assert response.status_code == 200, response.text
    good, bad = response.json()["results"]
    assert len(good["labels"]) == 2 and "error" not in good
    assert bad["status"] == 422 and "video 2 of 2" in bad["error"]


def test_a_bundle_that_does_not_fit_its_model_stops_the_server_at_once(tiny_bundle, tmp_path):
    copy = copy_bundle(tiny_bundle, tmp_path / "b")
    rewrite_manifest(copy, lambda m: m["preprocessing"].update(size=48))
    start = time.monotonic()
    result = serve_until_it_exits({"STADAPTER_BUNDLE": str(copy), "BENTOML_HOME": str(tmp_path / "bh")})
    lines = [line for line in result.stderr.splitlines() if "stadapter serve: cannot start" in line]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert "does not fit its model" in lines[0] and "[N, 3, 8, 32, 32]" in lines[0]
    assert time.monotonic() - start < 60  # no crash loop: it exits, not retries


def test_a_model_queue_past_its_latency_is_a_503_with_retry_after(tiny_bundle, tmp_path, clip):
    from serve.local import start_server, stop_server, wait_ready

    env = {
        "STADAPTER_BUNDLE": str(tiny_bundle),
        "STADAPTER_MAX_LATENCY_MS": "1",  # a queue of more than one call is past this latency
        "STADAPTER_WARMUP": "0",
        "STADAPTER_DECODE_WORKERS": "4",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    process, url = start_server(env, tmp_path / "server.log")
    try:
        wait_ready(process, url, tmp_path / "server.log")
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: post(url, clip), range(32)))
    finally:
        stop_server(process)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes, codes  # refused as busy, never blamed on the client
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit() and "overloaded" in r.json()["error"], r.text
