"""Long videos through the service as tasks, over real HTTP: POST /timeline_task/submit, then /status,
/progress and /get; the same checks and the same answers as /classify_timeline, with no window limit;
bounded in number, cancelled within seconds, and nothing of them kept past their end but the result."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from stadapter_deploy.video.synthetic import write_motion_video


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "ten_minutes.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=8", "-t", "600"]
        + ["-c:v", "libx264", "-preset", "ultrafast", str(path)],
        check=True,
    )
    return path


def submit(url: str, name: str, data: bytes, **fields) -> str:
    files = {"video": (name, data, "video/mp4")}
    response = httpx.post(f"{url}/timeline_task/submit", files=files, data=fields, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def wait_done(url: str, task_id: str, timeout_s: float = 600) -> tuple[str, list[dict]]:
    """(final status, the progress reports seen while it ran)."""
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/timeline_task/status", params={"task_id": task_id}, timeout=30).json()["status"]
        if status not in ("pending", "in_progress"):
            return status, seen
        progress = httpx.get(f"{url}/timeline_task/progress", params={"task_id": task_id}, timeout=30)
        if progress.status_code == 200:
            seen.append(progress.json())
        time.sleep(0.5)
    pytest.fail(f"task {task_id} did not end in {timeout_s} s")


@pytest.mark.slow
def test_a_ten_minute_video_is_a_task_of_about_600_windows(server, tiny_bundle, ten_minutes):
    from stadapter_deploy import load_predictor

    url, _ = server
    data = ten_minutes.read_bytes()
    refused = httpx.post(f"{url}/classify_timeline", files={"video": ("long.mp4", data, "video/mp4")}, timeout=120)
    assert refused.status_code == 422 and "/timeline_task/submit" in refused.json()["error"]  # past 8 windows
    task_id = submit(url, "long.mp4", data, top_k="2")
    status, progress = wait_done(url, task_id)
    assert status == "completed", status
    segments = httpx.get(f"{url}/timeline_task/get", params={"task_id": task_id}, timeout=60).json()["segments"]
    assert len(segments) == (600 * 8 - 16) // 8 + 1 == 599  # 2 s windows every 1 s at 8 fps
    assert [s["start_s"] for s in segments] == [float(k) for k in range(599)]
    assert all(len(s["labels"]) == 2 for s in segments)
    assert progress and progress[-1]["windows"] >= progress[0]["windows"]  # it reported as it went
    backend = httpx.get(f"{url}/metadata", timeout=30).json()["backend"]
    expected = load_predictor(tiny_bundle, backend=backend).timeline(ten_minutes, top_k=2)
    assert [s["frames"] for s in segments] == [e.frames for e in expected]  # the Predictor's own windows
    assert [s["labels"][0]["index"] for s in segments] == [e.labels[0]["index"] for e in expected]


def test_a_bad_file_fails_its_task_with_the_message_of_classify_timeline(server, tmp_path):
    url, _ = server
    bad = b"GIF89a not a video at all " * 40
    sync = httpx.post(f"{url}/classify_timeline", files={"video": ("bad.mp4", bad, "video/mp4")}, timeout=60)
    assert sync.status_code == 422
    status, _ = wait_done(url, submit(url, "bad.mp4", bad), timeout_s=120)
    assert status == "failed"
    task_id = submit(url, "bad.mp4", bad)
    wait_done(url, task_id, timeout_s=120)
    answer = httpx.get(f"{url}/timeline_task/get", params={"task_id": task_id}, timeout=30)
    assert answer.status_code == 422 and answer.json() == sync.json()
    # and the upload checks are the same: an option out of range is refused at submit
    clip = write_motion_video(tmp_path / "clip.mp4", label=1, seed=2).read_bytes()
    files = {"video": ("clip.mp4", clip, "video/mp4")}
    assert httpx.post(f"{url}/timeline_task/submit", files=files, data={"top_k": "x"}, timeout=30).status_code == 400


@pytest.mark.slow
def test_the_demo_sends_a_video_over_the_limit_to_the_task_and_shows_its_progress(server, ten_minutes):
    import asyncio

    from demo.classifiers import ServiceClassifier

    url, _ = server
    told: list[str] = []
    segments = asyncio.run(ServiceClassifier(url).timeline(ten_minutes, None, told.append))
    assert len(segments) == 599 and segments[-1]["start_s"] == 598.0
    assert told and all(words.startswith("task ") and "windows" in words for words in told)


def test_tasks_are_capped_and_a_cancel_stops_the_work_and_frees_the_worker(server, ten_minutes, tmp_path):
    from helpers import SERVE_MAX_TASKS

    url, server_tmp = server
    data = ten_minutes.read_bytes()
    long = [submit(url, f"long{i}.mp4", data) for i in range(SERVE_MAX_TASKS)]  # one runs, the other waits
    refused = httpx.post(f"{url}/timeline_task/submit", files={"video": ("x.mp4", data, "video/mp4")}, timeout=60)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_tasks", refused.text
    assert refused.headers["retry-after"].isdigit()
    (state,) = server_tmp.glob("stadapter-serve-*")
    assert len(list((state / "tasks").glob("*.upload"))) == SERVE_MAX_TASKS  # one private copy each, no more
    for task_id in long:
        start = time.monotonic()
        answer = httpx.put(f"{url}/timeline_task/cancel", params={"task_id": task_id}, timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "canceled", answer.text
        assert time.monotonic() - start < 2.5
        result = httpx.get(f"{url}/timeline_task/get", params={"task_id": task_id}, timeout=30)
        assert result.status_code == 409 and result.json()["code"] == "task_canceled"
    # The one task worker is free at once: a short task ends long before a ten-minute decode could have.
    short = write_motion_video(tmp_path / "short.mp4", label=2, seed=7).read_bytes()
    status, _ = wait_done(url, submit(url, "short.mp4", short), timeout_s=60)
    assert status == "completed"
    assert list((state / "tasks").glob("*.upload")) == []  # every upload went when its task ended
    for record in (state / "tasks").glob("*.json"):
        assert record.stat().st_mode & 0o077 == 0, record  # the service's user only


def test_task_records_expire_after_their_time_to_live(tmp_path):
    from serve.tasks import TaskStore

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"video bytes")
    store = TaskStore(tmp_path / "tasks", max_tasks=1, ttl_s=0.2)
    store.folder.mkdir()
    task = store.create(video)
    with pytest.raises(Exception, match="limit"):  # the cap holds in the store itself
        store.create(video)
    store.end(task, "completed", 200, {"segments": []})
    assert not store.upload(task.task_id).exists() and store.read(task.task_id).status == "completed"
    time.sleep(0.3)
    assert store.all() == [] and not store.record(task.task_id).exists()
    store.create(video)  # room again
