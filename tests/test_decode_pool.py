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
from dataclasses import dataclass

import psutil
import pytest

from stadapter_deploy.errors import VideoError
from stadapter_deploy.video.pool import (
    DecodePool,
    DecodeTimedOut,
    PoolUnavailable,
    VideoRefused,
    WorkerBug,
    WorkerCrashed,
)


@dataclass(frozen=True)
class Act:
    """A test job: what the worker should do."""

    action: str
    seconds: float = 0.0
    fail_at: int | None = None  # stream: refuse the video at this item
    marker: str = ""  # crash_once: crash unless this file exists (then create it)


def make_job():
    """Runs in the worker process: a job that sleeps, refuses, has a bug, dies, or streams, as asked."""

    def numbers(count: int, fail_at: int | None = None):
        for i in range(count):
            if i == fail_at:
                raise VideoError(f"bad item {i}")
            yield i

    def job(act: Act):
        if act.action == "sleep":
            time.sleep(act.seconds)
            return os.getpid()
        if act.action == "refuse":
            raise VideoError("this input is bad")
        if act.action == "bug":
            raise ValueError("an index out of range in our own code")  # a ValueError, but not the input's fault
        if act.action == "crash":
            os._exit(3)
        if act.action == "crash_once":
            if not os.path.exists(act.marker):
                open(act.marker, "w").close()
                os._exit(3)
            return os.getpid()
        if act.action == "stream":
            return numbers(int(act.seconds), act.fail_at)
        if act.action == "stream_then_crash":
            return crash_after(int(act.seconds))
        if act.action == "parent":
            return os.getppid()
        raise RuntimeError("unexpected")

    def crash_after(count: int):
        yield from range(count)
        os._exit(3)

    return job


def wait_alive(pool: DecodePool, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.alive < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.alive == count


def test_timeout_kills_and_replaces_the_worker_and_others_go_on():
    with DecodePool(make_job, (), workers=2, timeout_s=1.0) as pool:
        pool.start()
        first = pool.submit(Act("sleep")).result()
        start = time.monotonic()
        slow, fast = pool.submit(Act("sleep", 30.0)), pool.submit(Act("sleep", 0.1))
        assert isinstance(fast.result(timeout=20), int)  # the other worker was not disturbed
        with pytest.raises(DecodeTimedOut) as failed:
            slow.result(timeout=20)
        assert failed.value.timeout_s == 1.0 and time.monotonic() - start < 10  # at the deadline, not after 30 s
        wait_alive(pool, 2)  # the killed process came back: two jobs at once still both run
        pids = {pool.submit(Act("sleep", 0.2)).result(), pool.submit(Act("sleep", 0.2)).result()} | {first}
        assert all(isinstance(p, int) for p in pids)


def test_failures_come_back_typed_and_only_a_video_error_is_the_inputs_fault(tmp_path):
    with DecodePool(make_job, (), workers=1, timeout_s=5.0) as pool:
        pool.start()
        with pytest.raises(VideoRefused) as refused:
            pool.submit(Act("refuse")).result()
        assert refused.value.code == "video_unreadable" and "this input is bad" in str(refused.value)
        with pytest.raises(WorkerBug, match="ValueError: an index out of range"):  # a bug, not a refusal
            pool.submit(Act("bug")).result()
        with pytest.raises(WorkerBug, match="RuntimeError"):
            pool.submit(Act("other")).result()
        # A process that dies before delivering anything: the door runs the job once more on its replacement.
        recovered = pool.submit(Act("crash_once", marker=str(tmp_path / "crashed-once"))).result(timeout=60)
        assert recovered > 0 and (tmp_path / "crashed-once").exists()
        with pytest.raises(WorkerCrashed) as crashed:  # dies every time: twice, then it is the job's answer
            pool.submit(Act("crash")).result(timeout=60)
        assert crashed.value.attempts == 2 and crashed.value.delivered == 0 and crashed.value.code == "worker_crashed"
        got = []
        with pytest.raises(WorkerCrashed) as crashed:  # a stream that delivered is not run again
            for item in pool.stream(Act("stream_then_crash", 3)):
                got.append(item)
        assert got == [0, 1, 2] and crashed.value.delivered == 3 and crashed.value.attempts == 1
        wait_alive(pool, 1)
        assert pool.submit(Act("sleep")).result(timeout=30) > 0
    with pytest.raises(PoolUnavailable):
        pool.submit(Act("sleep"))


def test_without_a_fork_server_workers_are_spawned_and_work_the_same(monkeypatch):
    with DecodePool(make_job, (), workers=1, timeout_s=1.0) as pool:  # the fork server's children
        pool.start()
        assert pool.submit(Act("parent")).result(timeout=60) != os.getpid()
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    with DecodePool(make_job, (), workers=1, timeout_s=1.0) as pool:
        pool.start()
        assert pool.submit(Act("parent")).result(timeout=60) == os.getpid()  # spawned by this process itself
        assert list(pool.stream(Act("stream", 3))) == [0, 1, 2]
        with pytest.raises(DecodeTimedOut):
            pool.submit(Act("sleep", 30.0)).result(timeout=30)
        assert pool.submit(Act("parent")).result(timeout=60) == os.getpid()  # replaced, spawned again


def test_the_event_loop_side_and_a_cancelled_caller():
    async def scenario(pool):
        assert isinstance(await pool.run(Act("sleep")), int)
        with pytest.raises(VideoRefused):
            await pool.run(Act("refuse"))
        waiting = asyncio.create_task(pool.run(Act("sleep", 30.0)))
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
        assert list(pool.stream(Act("stream", 50))) == list(range(50))
        got = []
        with pytest.raises(VideoRefused, match="bad item 3"):
            for item in pool.stream(Act("stream", 10, 3)):
                got.append(item)
        assert got == [0, 1, 2]
        stream = pool.stream(Act("stream", 10**9))  # endless: the worker blocks until its values are taken
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        stream.close()  # left early: the busy worker is replaced
        wait_alive(pool, 1)
        assert pool.submit(Act("sleep")).result(timeout=30) > 0


def test_a_worker_that_cannot_start_is_reported():
    pool = DecodePool(int, ("not a number",), workers=1, timeout_s=1.0)
    with pytest.raises(RuntimeError, match="could not start"):
        pool.start()
    pool.close()


PARENT = """
import sys, time
from stadapter_deploy.video.pool import DecodePool
sys.path.insert(0, {tests!r})
from test_decode_pool import Act, make_job
if __name__ == "__main__":
    pool = DecodePool(make_job, (), workers=2, timeout_s=600)
    pool.start()
    jobs = [pool.submit(Act("sleep", 600)), pool.stream(Act("stream", 10**9))]
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
