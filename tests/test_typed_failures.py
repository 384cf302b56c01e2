"""Each typed failure of the decode door, end to end: a refused file, a timed-out decode, a worker that dies,
too many windows, and a bug in the worker, over real HTTP and through `stadapter-predict`, with the test
build of the worker (tests/faults/sitecustomize.py) planting the faults. Only a refused file is the
client's fault; a bug is a 500 and a log line, never a 422."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import running_server

from stadapter_deploy.video.synthetic import write_motion_video

FAULTS = str(Path(__file__).parent / "faults")
DECODE_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    made = {name: root / f"{name}.mp4" for name in ("bug", "crash", "hang")}
    for name, path in made.items():
        path.write_bytes(f"FAULT:{name}\n".encode() + b"\0" * 64)
    made["refused"] = root / "refused.mp4"
    made["refused"].write_bytes(b"GIF89a not a video at all " * 40)
    made["good"] = write_motion_video(root / "good.mp4", label=4, seed=8)
    made["long"] = root / "long.mp4"  # 10 s at 8 fps: 9 two-second windows
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=8", "-t", "10"]
        + ["-c:v", "libx264", "-preset", "ultrafast", str(made["long"])],
        check=True,
    )
    return made


@pytest.fixture(scope="module")
def faulty(tiny_bundle, tmp_path_factory):
    """`bentoml serve` with the test build of the worker; yields (url, log path, its TMPDIR)."""
    root = tmp_path_factory.mktemp("faulty-server")
    env = {
        "PYTHONPATH": FAULTS,
        "STADAPTER_BUNDLE": str(tiny_bundle),
        "STADAPTER_DECODE_TIMEOUT_S": str(DECODE_TIMEOUT_S),
        "STADAPTER_DECODE_WORKERS": "1",
        "STADAPTER_MAX_TIMELINE_WINDOWS": "4",
        "STADAPTER_WARMUP": "0",
    }
    with running_server(root, **env) as (url, _, log):
        yield url, log
    assert list((root / "tmp").glob("stadapter-serve-*")) == []  # the server's folder went with it


def post(url: str, path: Path, endpoint: str = "/classify") -> httpx.Response:
    return httpx.post(f"{url}{endpoint}", files={"video": (path.name, path.read_bytes(), "video/mp4")}, timeout=120)


@pytest.mark.parametrize(
    "name, endpoint, status, code",
    [
        ("refused", "/classify", 422, "video_unreadable"),
        ("hang", "/classify", 422, "decode_timeout"),
        ("crash", "/classify", 503, "worker_crashed"),
        ("bug", "/classify", 500, "internal_error"),
        ("long", "/classify_timeline", 422, "video_too_long_use_task"),
    ],
)
def test_each_decode_failure_is_answered_with_its_status_and_code(faulty, files, name, endpoint, status, code):
    url, log = faulty
    response = post(url, files[name], endpoint)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    if status == 503:
        assert response.headers["retry-after"].isdigit()
    if code == "internal_error":  # the server's fault: its log says what broke, the client is not blamed
        assert "cannot use" not in response.json()["error"] and "not of the file" in response.json()["error"]
        assert "ValueError: index 3 is out of range" in log.read_text()
    if code == "video_too_long_use_task":
        assert "STADAPTER_MAX_TIMELINE_WINDOWS" in response.json()["error"]
    assert post(url, files["good"]).status_code == 200  # and the next request is served


def test_a_batch_reports_each_videos_own_failure(faulty, files):
    url, _ = faulty
    names = ["good", "bug", "refused", "good"]
    videos = [("videos", (f"{n}.mp4", files[n].read_bytes(), "video/mp4")) for n in names]
    response = httpx.post(f"{url}/classify_batch", files=videos, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r.get("code") for r in results] == [None, "internal_error", "video_unreadable", None]
    assert [r.get("status") for r in results] == [None, 500, 422, None]


def test_stadapter_predict_writes_each_failure_with_its_code_and_goes_on(tiny_bundle, files, tmp_path):
    out = tmp_path / "out.jsonl"
    inputs = [str(files[n]) for n in ("good", "bug", "crash", "hang", "refused")]
    command = [sys.executable, "-m", "predict", "--bundle", str(tiny_bundle), *inputs, "--out", str(out)]
    command += ["--decode-timeout", str(DECODE_TIMEOUT_S), "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": FAULTS}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # some videos failed: exit 1, every line written
    lines = {Path(r["video"]).stem: r for r in map(json.loads, out.read_text().splitlines())}
    assert lines["good"]["labels"]
    assert {n: lines[n]["code"] for n in ("bug", "crash", "hang", "refused")} == {
        "bug": "internal_error",
        "crash": "worker_crashed",
        "hang": "decode_timeout",
        "refused": "video_unreadable",
    }
    assert "twice" in lines["crash"]["error"] and "--decode-timeout" in lines["hang"]["error"]
