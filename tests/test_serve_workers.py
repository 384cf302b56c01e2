"""serve/workers.py with real processes (a job past its deadline is stopped and its process replaced), and
which side a failure is blamed on."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from serve.workers import JobFailed, JobRejected, ProcessPool


def make_job():
    """Runs in the worker process: a job that sleeps, fails on bad input, or dies, as asked."""

    def job(action: str, seconds: float = 0.0):
        if action == "sleep":
            time.sleep(seconds)
            return os.getpid()
        if action == "reject":
            raise ValueError("this input is bad")
        if action == "crash":
            os._exit(3)
        raise RuntimeError("unexpected")

    return job


def test_timeout_kills_and_replaces_the_worker_and_others_go_on():
    async def scenario():
        pool = ProcessPool(make_job, (), workers=2, timeout_s=1.0)
        await pool.start()
        try:
            first = await pool.run("sleep", 0.0)
            start = time.monotonic()
            slow, fast = await asyncio.gather(pool.run("sleep", 30.0), pool.run("sleep", 0.1), return_exceptions=True)
            elapsed = time.monotonic() - start
            assert isinstance(slow, JobFailed) and slow.timed_out, slow
            assert isinstance(fast, int)  # the other worker was not disturbed
            assert elapsed < 10, elapsed  # answered at the deadline, not after the 30 s job
            with pytest.raises(JobRejected, match="this input is bad"):
                await pool.run("reject")
            with pytest.raises(JobFailed, match="died"):
                await pool.run("crash")
            with pytest.raises(JobFailed, match="RuntimeError"):
                await pool.run("other")
            # The killed processes come back: two jobs at once still both run.
            deadline = time.monotonic() + 60
            while pool.alive < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert pool.alive == 2
            pids = await asyncio.gather(pool.run("sleep", 0.2), pool.run("sleep", 0.2))
            assert len(set(pids)) == 2 and isinstance(first, int)
        finally:
            pool.close()

    asyncio.run(scenario())


def test_a_worker_that_cannot_start_is_reported():
    async def scenario():
        pool = ProcessPool(int, ("not a number",), workers=1, timeout_s=1.0)
        with pytest.raises(RuntimeError, match="could not start"):
            await pool.start()
        pool.close()

    asyncio.run(scenario())


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
