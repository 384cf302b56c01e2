"""The BentoML service, for real: `bentoml serve` in a subprocess on a free loopback port, real HTTP.

One server (the session's `server` fixture in conftest.py) serves a tiny exported bundle; every test
talks to it over HTTP and compares with `Predictor.classify` in this process.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import SERVE_MAX_UPLOAD_MB as MAX_UPLOAD_MB
from helpers import serve_until_it_exits

from stadapter_deploy import load_predictor
from stadapter_deploy.video.synthetic import write_motion_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-videos")
    return {
        "mp4": write_motion_video(root / "clip.mp4", label=2, seed=0),
        "webm": write_motion_video(root / "clip.webm", label=5, seed=1),
        "mp4b": write_motion_video(root / "other.mp4", label=0, seed=2),
    }


def tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def local(tiny_bundle, server):
    """A Predictor in this process on the backend the server chose."""
    backend = httpx.get(f"{server[0]}/metadata", timeout=30).json()["backend"]
    return load_predictor(tiny_bundle, backend=backend)


def post_video(url: str, path: Path, endpoint: str = "/classify", **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}{endpoint}", files={"video": (path.name, f, "video/mp4")}, data=fields, timeout=60)


def assert_same_labels(served: list[dict], expected: list[dict]) -> None:
    assert [x["index"] for x in served] == [x["index"] for x in expected]
    assert [x["label"] for x in served] == [x["label"] for x in expected]
    np.testing.assert_allclose([x["score"] for x in served], [x["score"] for x in expected], atol=1e-5)


def metric_samples(url: str, name: str) -> dict[str, float]:
    """{label-string: value} for one metric in /metrics (labels kept as written)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m:
            found[m.group(1) or ""] = float(m.group(2))
    return found


# ----------------------------------------------------------------------------- good requests


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_classify_matches_predictor_in_process(server, local, videos, kind):
    url, _ = server
    response = post_video(url, videos[kind], top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = local.classify(videos[kind], top_k=3)
    assert set(body) == set(expected.to_dict()) and body["precision"] == expected.precision
    assert set(body["timings_ms"]) == {"decode", "preprocess", "infer", "total"}
    assert body["backend"] == expected.backend
    assert body["frames"] == expected.frames
    assert_same_labels(body["labels"], expected.labels)


def test_three_views_and_default_top_k(server, local, videos):
    url, _ = server
    body = post_video(url, videos["mp4"], views=3).json()
    expected = local.classify(videos["mp4"], views=3)
    assert len(body["labels"]) == 5  # default top_k: 5 (6 classes here)
    assert_same_labels(body["labels"], expected.labels)


def test_classify_batch(server, local, videos):
    url, _ = server
    paths = [videos["mp4"], videos["webm"], videos["mp4b"]]
    files = [("videos", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    response = httpx.post(f"{url}/classify_batch", files=files, data={"top_k": "2"}, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    for result, path in zip(results, paths, strict=True):
        assert_same_labels(result["labels"], local.classify(path, top_k=2).labels)


def test_sync_http_client(server, local, videos):
    import bentoml

    url, _ = server
    with bentoml.SyncHTTPClient(url) as client:  # as in the README
        result = client.classify(video=videos["webm"], top_k=2)
        results = client.classify_batch(videos=[videos["mp4"], videos["webm"]])["results"]
    assert_same_labels(result["labels"], local.classify(videos["webm"], top_k=2).labels)
    assert [r["labels"][0]["index"] for r in results] == [
        local.classify(videos[k]).labels[0]["index"] for k in ("mp4", "webm")
    ]


def test_concurrent_requests_are_batched(server, videos):
    """16 concurrent requests all succeed, and model calls hold more than one request.

    Whether two requests meet at the model depends on timing (a tiny-model call takes ~2 ms), so the
    16 are sent up to 5 times until one model call has merged requests."""
    url, _ = server
    name = "bentoml_service_adaptive_batch_size"  # BentoML's histogram: requests merged per model call
    data = videos["mp4"].read_bytes()

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one() -> int:
                files = {"video": ("clip.mp4", data, "video/mp4")}
                return (await client.post(f"{url}/classify", files=files)).status_code

            return await asyncio.gather(*(one() for _ in range(16)))

    def totals() -> tuple[float, float]:
        counts, buckets = metric_samples(url, name + "_count"), metric_samples(url, name + "_bucket")
        return sum(counts.values()), sum(v for k, v in buckets.items() if 'le="1.0"' in k)

    calls0, single0 = totals()
    for _ in range(5):
        assert asyncio.run(run()) == [200] * 16
        calls, single = totals()
        merged = (calls - calls0) - (single - single0)  # model calls since the start with > 1 request
        if merged > 0:
            break
    assert calls > calls0, "the model was never called"
    assert merged >= 1, "no model call held more than one request"
    clips = metric_samples(url, "stadapter_model_batch_clips_count")
    assert sum(clips.values()) >= calls


def test_hundreds_of_concurrent_requests_all_succeed(server, videos):
    """Past 100 model calls BentoML's stock client to a dependency swaps its HTTP session and cuts off
    the calls in flight; the service configures that away. 150 requests, 16 at a time, all 200."""
    url, _ = server
    data = videos["mp4b"].read_bytes()

    async def run() -> list[int]:
        codes, sent = [], 0
        async with httpx.AsyncClient(timeout=120) as client:

            async def worker() -> None:
                nonlocal sent
                while sent < 150:
                    sent += 1
                    files = {"video": ("clip.mp4", data, "video/mp4")}
                    codes.append((await client.post(f"{url}/classify", files=files)).status_code)

            await asyncio.gather(*(worker() for _ in range(16)))
        return codes

    codes = asyncio.run(run())
    assert len(codes) == 150 and set(codes) == {200}, sorted(set(codes))


def test_metadata(server, tiny_bundle):
    url, _ = server
    body = httpx.get(f"{url}/metadata", timeout=30).json()
    manifest = load_predictor(tiny_bundle, backend="torch").bundle.manifest
    assert body["model_name"] == manifest["model_name"]
    assert body["num_classes"] == 6 and len(body["classes"]) == 6
    assert body["preprocessing"] == manifest["preprocessing"]
    assert body["backend"].startswith(("onnxruntime-", "torch-")) and body["precision"] in ("fp32", "fp16")
    assert {a["file"] for a in body["bundle"]["artifacts"]} >= {"model.onnx", "model.safetensors"}
    assert body["limits"]["max_upload_mb"] == MAX_UPLOAD_MB


def test_health_and_metrics(server):
    url, _ = server
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "stadapter_model_batch_clips" in metrics.text
    assert "bentoml_service_request_total" in metrics.text


# ----------------------------------------------------------------------------- bad input


def bad_videos(folder: Path, good: Path) -> dict[str, bytes]:
    import av

    data = good.read_bytes()
    mdat, moov = data.index(b"mdat") + 4, data.index(b"moov") - 4
    noise = np.random.default_rng(0).integers(0, 256, moov - mdat, dtype=np.uint8).tobytes()
    audio = folder / "audio.m4a"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return {
        "not a video": b"GIF89a this is not a video at all " * 20,
        "truncated": data[: len(data) // 2],
        "no decodable frame": data[:mdat] + noise + data[moov:],  # packets present, every one garbage
        "unsupported codec": data.replace(b"avc1", b"zzzz"),  # a codec tag no decoder knows
        "no video stream": audio.read_bytes(),
    }


BAD_VIDEO_CASES = ["not a video", "truncated", "no decodable frame", "unsupported codec", "no video stream"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, videos) -> dict[str, bytes]:
    return bad_videos(tmp_path_factory.mktemp("bad-videos"), videos["mp4"])


@pytest.mark.parametrize("case", BAD_VIDEO_CASES)
def test_bad_video_is_a_4xx_in_words(server, bad, case):
    url, _ = server
    files = {"video": ("upload.mp4", bad[case], "video/mp4")}
    response = httpx.post(f"{url}/classify", files=files, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]
    assert "Traceback" not in message and str(url) not in message
    assert "/tmp" not in message and "bentoml-request" not in message  # no server paths


def test_bad_requests(server, videos):
    url, _ = server
    clip = videos["mp4"].read_bytes()
    post = lambda **kw: httpx.post(f"{url}/classify", timeout=60, **kw)
    cases = {
        "empty file": (post(files={"video": ("a.mp4", b"", "video/mp4")}), 400, "empty"),
        "missing field": (post(files={"clip": ("a.mp4", clip, "video/mp4")}), 400, "unknown field"),
        "no file at all": (post(data={"top_k": "2"}, files={}), 415, "multipart"),
        "only options": (post(files={"top_k": (None, "2")}), 400, "no video"),
        "top_k 0": (post(files={"video": ("a.mp4", clip)}, data={"top_k": "0"}), 400, "top_k"),
        "top_k > classes": (post(files={"video": ("a.mp4", clip)}, data={"top_k": "7"}), 400, "between 1 and 6"),
        "top_k text": (post(files={"video": ("a.mp4", clip)}, data={"top_k": "five"}), 400, "whole number"),
        "views 2": (post(files={"video": ("a.mp4", clip)}, data={"views": "2"}), 400, "views"),
        "views 0": (post(files={"video": ("a.mp4", clip)}, data={"views": "0"}), 400, "views"),
        "json body": (post(json={"video": "/etc/passwd"}), 415, "multipart"),
        "raw video body": (post(content=clip, headers={"content-type": "video/mp4"}), 415, "multipart"),
        "text part": (post(files={"video": ("a.txt", b"hello", "text/plain")}), 415, "text/plain"),
        "server path": (post(files={"video": (None, "/etc/passwd")}), 400, "path or a URL"),
        "url": (post(files={"video": (None, "http://127.0.0.1:1/x.mp4")}), 400, "path or a URL"),
        "two videos": (post(files=[("video", ("a.mp4", clip)), ("video", ("b.mp4", clip))]), 400, "too many"),
        "broken multipart": (
            post(content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=x"}),
            400,
            "",
        ),
    }
    for name, (response, status, words) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        assert words in response.json()["error"], (name, response.text)
    batch = httpx.post(f"{url}/classify_batch", files=[("videos", ("a.mp4", clip))] * 5, timeout=60)
    assert batch.status_code == 400 and "at most 4" in batch.json()["error"]
    assert post_video(url, videos["mp4"]).status_code == 200  # still serving


def test_oversize_upload_is_413(server, videos):
    url, _ = server
    big = os.urandom(MAX_UPLOAD_MB * 2**20 + 4096)
    response = httpx.post(f"{url}/classify", files={"video": ("big.mp4", big, "video/mp4")}, timeout=60)
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["error"]
    assert post_video(url, videos["mp4"]).status_code == 200


def test_temp_files_are_removed(server, bad, videos):
    """Good and bad uploads leave no file in the server's TMPDIR (but for the /ui page's own Gradio cache, which
    Gradio empties of files older than an hour: demo/app.py). Compared with the files there just before these
    requests: tasks other tests submitted keep their record until it expires, by design (serve/tasks.py)."""
    url, server_tmp = server
    before = set(tmp_files(server_tmp))
    post_video(url, videos["mp4"])
    httpx.post(f"{url}/classify", files={"video": ("x.mp4", bad["truncated"], "video/mp4")}, timeout=60)
    time.sleep(0.5)  # BentoML empties a request's temp directory after the response is sent
    left = [p for p in tmp_files(server_tmp) if p not in before and "gradio" not in p.parts]
    assert left == [], left


def test_startup_fails_in_one_line_on_a_bad_bundle(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    result = serve_until_it_exits({"STADAPTER_BUNDLE": str(tmp_path)})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("stadapter serve: cannot start:") and "schema" in lines[-1]
    assert "Traceback" not in result.stderr


def test_startup_refuses_a_precision_the_bundle_lacks(tiny_bundle, tmp_path):
    env = {"STADAPTER_BUNDLE": str(tiny_bundle), "STADAPTER_BACKEND": "onnxruntime-cpu"}
    env |= {"STADAPTER_PRECISION": "int8", "BENTOML_HOME": str(tmp_path / "bentoml")}
    result = serve_until_it_exits(env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "STADAPTER_PRECISION='int8': the bundle holds no int8 ONNX" in lines[-1]


def test_classify_timeline_matches_predictor_timeline(server, local, videos):
    url, _ = server
    with open(videos["mp4"], "rb") as f:
        files = {"video": ("clip.mp4", f.read(), "video/mp4")}
    response = httpx.post(f"{url}/classify_timeline", files=files, data={"window_s": "1", "top_k": "2"}, timeout=120)
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    expected = local.timeline(videos["mp4"], window_s=1, top_k=2)
    assert [(s["start_s"], s["end_s"], s["frames"]) for s in segments] == [
        (e.start_s, e.end_s, e.frames) for e in expected
    ]
    for got, want in zip(segments, expected, strict=True):
        assert_same_labels(got["labels"], want.labels)
    bad = httpx.post(f"{url}/classify_timeline", files=files, data={"stride_s": "0"}, timeout=60)
    assert bad.status_code == 400 and "positive number of seconds" in bad.json()["error"]
    many = httpx.post(
        f"{url}/classify_timeline", files=files, data={"window_s": "0.05", "stride_s": "0.01"}, timeout=60
    )
    assert many.status_code == 422 and "more than 8 windows" in many.json()["error"]  # the server is set to 8


def test_every_hard_case_video_that_ffmpeg_decodes_gets_200(server, local, corpus):
    url, _ = server
    for name, path in corpus.items():
        response = post_video(url, path)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["frames"] == local.classify(path).frames, name  # the frames a player shows


def odd_files(folder: Path, corpus: dict, bad: dict) -> dict[str, bytes]:
    """Every hard-case corpus file, the bad-input set, and still images (PNG, JPEG, a PNG named .mp4)."""
    from PIL import Image

    image = Image.fromarray(np.full((48, 64, 3), 120, np.uint8))
    image.save(folder / "still.png")
    image.save(folder / "still.jpg")
    files = {name: path.read_bytes() for name, path in corpus.items()}
    files |= {f"bad: {name}": data for name, data in bad.items()}
    files |= {"still.png": (folder / "still.png").read_bytes(), "still.jpg": (folder / "still.jpg").read_bytes()}
    files["png named .mp4"] = files["still.png"]
    return files


def route_outcome(response: httpx.Response) -> tuple[int, str]:
    """(status, the error's reason without its 'cannot use <which video>:' prefix, '' on success)."""
    if response.status_code == 200:
        return 200, ""
    return response.status_code, response.json()["error"].split(": ", 1)[-1]


def test_every_route_accepts_and_refuses_the_same_files(server, videos, corpus, bad, tmp_path):
    """/classify, /classify_timeline and each entry of /classify_batch give every odd file the same status
    and, for a refusal, the same reason: they share one opener and one decode pool."""
    url, _ = server
    files = odd_files(tmp_path, corpus, bad)
    names = list(files)
    upload = lambda name: ("upload.mp4", files[name], "application/octet-stream")  # noqa: E731
    single = {
        route: {
            name: route_outcome(httpx.post(f"{url}{route}", files={"video": upload(name)}, timeout=120))
            for name in names
        }
        for route in ("/classify", "/classify_timeline")
    }
    batch = {}
    for start in range(0, len(names), 4):  # the session's server takes 4 videos a request
        chunk = names[start : start + 4]
        answer = httpx.post(f"{url}/classify_batch", files=[("videos", upload(n)) for n in chunk], timeout=300)
        assert answer.status_code == 200, answer.text
        for name, entry in zip(chunk, answer.json()["results"], strict=True):
            batch[name] = (entry["status"], entry["error"].split(": ", 1)[-1]) if "error" in entry else (200, "")
    for name in names:
        assert single["/classify"][name] == single["/classify_timeline"][name] == batch[name], name
    statuses = {name: single["/classify"][name][0] for name in names}
    assert all(statuses[name] == 200 for name in corpus), statuses  # every file a player plays
    for name in ("still.png", "still.jpg", "png named .mp4", "bad: unsupported codec"):
        assert statuses[name] == 422, (name, single["/classify"][name])
    assert "still image" in single["/classify"]["png named .mp4"][1]
