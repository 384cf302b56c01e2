"""Several model workers in one service (STADAPTER_MODEL_WORKERS), over real HTTP on this CPU: two model
processes share the cores, 200 concurrent requests all succeed, and every answer is the one-worker answer."""

from __future__ import annotations

import asyncio

import httpx
import psutil
import pytest
from helpers import running_server

from stadapter_deploy.video.synthetic import write_motion_video


@pytest.fixture(scope="module")
def two_workers(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-model-workers")
    env = {"STADAPTER_BUNDLE": str(tiny_bundle), "STADAPTER_MODEL_WORKERS": "2", "STADAPTER_WARMUP": "0"}
    with running_server(root, **env) as (url, process, _):
        yield url, process


def test_two_model_workers_answer_200_concurrent_requests_as_one_does(two_workers, server, tmp_path):
    url, process = two_workers
    family = psutil.Process(process.pid).children(recursive=True)
    models = [p for p in family if "--service-name stadapter_model" in " ".join(p.cmdline())]
    assert len(models) == 2, [" ".join(p.cmdline())[:120] for p in family]
    videos = [write_motion_video(tmp_path / f"v{i}.mp4", label=i % 6, seed=20 + i).read_bytes() for i in range(4)]
    one_worker_url, _ = server  # the session's server: one model worker, the same bundle
    expected = [
        httpx.post(f"{one_worker_url}/classify", files={"video": ("v.mp4", v, "video/mp4")}, timeout=120)
        for v in videos
    ]
    assert all(e.status_code == 200 for e in expected)

    async def run() -> list[tuple[int, int, dict]]:
        answers, todo = [], list(range(200))
        async with httpx.AsyncClient(timeout=300) as client:

            async def worker() -> None:
                while todo:
                    i = todo.pop()
                    files = {"video": ("v.mp4", videos[i % 4], "video/mp4")}
                    response = await client.post(f"{url}/classify", files=files)
                    answers.append((i % 4, response.status_code, response.json()))

            await asyncio.gather(*(worker() for _ in range(32)))
        return answers

    busy_before = [sum(p.cpu_times()[:2]) for p in models]
    answers = asyncio.run(run())
    busy = [sum(p.cpu_times()[:2]) - before for p, before in zip(models, busy_before, strict=True)]
    assert len(answers) == 200 and {status for _, status, _ in answers} == {200}
    for which, _, body in answers:
        want = expected[which].json()
        assert [x["index"] for x in body["labels"]] == [x["index"] for x in want["labels"]]
        assert body["frames"] == want["frames"]
        assert [x["score"] for x in body["labels"]] == pytest.approx([x["score"] for x in want["labels"]], abs=1e-5)
    assert min(busy) > 0.2, busy  # both model processes ran batches (CPU seconds each over the 200 requests)
