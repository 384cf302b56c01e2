"""The one decode pool (stadapter_deploy/video/pool.py) with real processes: a job past its deadline is
stopped and its process replaced, streams hold their worker until consumed, no worker outlives its parent;
and which side a failure is blamed on."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from stadapter_deploy.video.pool import DecodePool, JobFailed, JobRejected


def make_job():
    """Runs in the worker process: a job that sleeps, fails on bad input, dies, or streams, as asked."""

    def numbers(count: int, fail_at: int | None = None):
        for i in range(count):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            yield i

    def job(action: str, seconds: float = 0.0, *more):
        if action == "sleep":
            time.sleep(seconds)
            return os.getpid()
        if action == "reject":
            raise ValueError("this input is bad")
        if action == "crash":
            os._exit(3)
        if action == "stream":
            return numbers(int(seconds), *more)
        if action == "parent":
            return os.getppid()
        raise RuntimeError("unexpected")

    return job


def wait_alive(pool: DecodePool, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.alive < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.alive == count


def test_timeout_kills_and_replaces_the_worker_and_others_go_on():
    with DecodePool(make_job, (), workers=2, timeout_s=1.0) as pool:
        pool.start()
        first = pool.submit("sleep", 0.0).result()
        start = time.monotonic()
        slow, fast = pool.submit("sleep", 30.0), pool.submit("sleep", 0.1)
        assert isinstance(fast.result(timeout=20), int)  # the other worker was not disturbed
        with pytest.raises(JobFailed) as failed:
            slow.result(timeout=20)
        assert failed.value.timed_out and time.monotonic() - start < 10  # at the deadline, not after 30 s
        with pytest.raises(JobRejected, match="this input is bad"):
            pool.submit("reject").result()
        with pytest.raises(JobFailed, match="died"):
            pool.submit("crash").result()
        with pytest.raises(JobFailed, match="RuntimeError"):
            pool.submit("other").result()
        wait_alive(pool, 2)  # the killed processes came back: two jobs at once still both run
        pids = {pool.submit("sleep", 0.2).result(), pool.submit("sleep", 0.2).result()} | {first}
        assert all(isinstance(p, int) for p in pids)


def test_without_a_fork_server_workers_are_spawned_and_work_the_same(monkeypatch):
    with DecodePool(make_job, (), workers=1, timeout_s=1.0) as pool:  # the fork server's children
        pool.start()
        assert pool.submit("parent").result(timeout=60) != os.getpid()
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    with DecodePool(make_job, (), workers=1, timeout_s=1.0) as pool:
        pool.start()
        assert pool.submit("parent").result(timeout=60) == os.getpid()  # spawned by this process itself
        assert list(pool.stream("stream", 3)) == [0, 1, 2]
        with pytest.raises(JobFailed) as failed:
            pool.submit("sleep", 30.0).result(timeout=30)
        assert failed.value.timed_out
        assert pool.submit("parent").result(timeout=60) == os.getpid()  # replaced, spawned again


def test_the_event_loop_side_and_a_cancelled_caller():
    async def scenario(pool):
        assert isinstance(await pool.run("sleep", 0.0), int)
        with pytest.raises(JobRejected):
            await pool.run("reject")
        waiting = asyncio.create_task(pool.run("sleep", 30.0))
        await asyncio.sleep(1.0)
        busy = [s.process.pid for s in pool.slots if s.job is not None]
        waiting.cancel()  # a client gone: its decode is stopped, not left running for 30 s
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return busy

    with DecodePool(make_job, (), workers=1, timeout_s=60.0) as pool:
        pool.start()
        (busy,) = asyncio.run(scenario(pool))
        gone, alive = psutil.wait_procs([psutil.Process(busy)], timeout=10)  # long before its 30 s sleep ends
        assert alive == []
        wait_alive(pool, 1)


def test_a_stream_delivers_in_order_fails_where_its_job_does_and_can_be_left_early():
    with DecodePool(make_job, (), workers=1, timeout_s=5.0) as pool:
        pool.start()
        assert list(pool.stream("stream", 50)) == list(range(50))
        got = []
        with pytest.raises(JobRejected, match="bad item 3"):
            for item in pool.stream("stream", 10, 3):
                got.append(item)
        assert got == [0, 1, 2]
        stream = pool.stream("stream", 10**9)  # endless: the worker blocks until its values are taken
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        stream.close()  # left early: the busy worker is replaced
        wait_alive(pool, 1)
        assert pool.submit("sleep", 0.0).result(timeout=30) > 0


def test_a_worker_that_cannot_start_is_reported():
    pool = DecodePool(int, ("not a number",), workers=1, timeout_s=1.0)
    with pytest.raises(RuntimeError, match="could not start"):
        pool.start()
    pool.close()


PARENT = """
import sys, time
from stadapter_deploy.video.pool import DecodePool
sys.path.insert(0, {tests!r})
from test_decode_pool import make_job
if __name__ == "__main__":
    pool = DecodePool(make_job, (), workers=2, timeout_s=600)
    pool.start()
    jobs = [pool.submit("sleep", 600), pool.stream("stream", 10**9)]
    next(jobs[1])
    print("busy", flush=True)
    time.sleep(600)
"""


def test_no_worker_outlives_a_killed_parent(tmp_path):
    """kill -9 of the parent while its workers are busy (one asleep, one blocked writing a stream nobody
    reads): no process of its tree is left 10 s later."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(tests=os.path.dirname(__file__)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "busy"
        tree = psutil.Process(parent.pid).children(recursive=True)
        assert len(tree) >= 2, tree  # the two workers (and spawn's resource tracker)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == [], [(p.pid, p.name()) for p in alive]


def test_model_failures_blame_the_right_side():
    from http import HTTPStatus

    import httpx
    from bentoml.exceptions import BentoMLException, ServiceUnavailable

    from serve.errors import error, model_failure

    busy = model_failure(ServiceUnavailable("queue full"))  # BentoML's own 503: past max latency
    assert busy.status == 503 and error(busy).headers["retry-after"] == "2"
    down = model_failure(httpx.ConnectError("no socket"))  # the model worker is restarting
    assert down.status == 503 and "restarting" in str(down)
    broken = model_failure(BentoMLException("boom", error_code=HTTPStatus.INTERNAL_SERVER_ERROR))
    assert broken.status == 500 and "not of the video" in str(broken) and "retry-after" not in error(broken).headers
