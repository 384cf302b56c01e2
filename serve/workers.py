"""A small pool of worker processes, one job at a time each, where a job past its deadline is stopped.

The API service decodes uploads here: decoding is CPU work in native code, so it runs in processes
(in parallel, never blocking the event loop or the model), and a decode that hangs or crashes takes
only its own process down. That process is killed and replaced; the other jobs go on.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("stadapter.serve")

READY_TIMEOUT_S = 120.0


class JobRejected(ValueError):
    """The job's input was bad: the job function raised a ValueError (e.g. VideoError)."""


class JobFailed(RuntimeError):
    """The job could not finish: it ran past its deadline, crashed its process, or raised."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def _worker_main(conn: Connection, setup: Callable[..., Callable], setup_args: tuple) -> None:
    """A worker process: build the job function once, then answer jobs until the pipe closes."""
    try:
        job = setup(*setup_args)
    except Exception as e:  # reported to the parent, which refuses to start
        conn.send(("setup-failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", job(*args))
        except ValueError as e:
            reply = ("rejected", str(e))
        except Exception as e:
            reply = ("failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        conn.send(reply)


@dataclass(eq=False)  # hashed by identity
class _Slot:
    process: multiprocessing.process.BaseProcess
    conn: Connection

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class ProcessPool:
    """`workers` processes that each run `setup(*setup_args)` once, then `job(*args)` per `run(*args)`."""

    def __init__(self, setup: Callable[..., Callable], setup_args: tuple, workers: int, timeout_s: float):
        self.setup, self.setup_args = setup, setup_args
        self.workers, self.timeout_s = workers, timeout_s
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded server process
        self._threads = ThreadPoolExecutor(max_workers=workers + 1, thread_name_prefix="pool-pipe")
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots: set[_Slot] = set()
        self._respawns: set[asyncio.Task] = set()
        self._closed = False

    @property
    def alive(self) -> int:
        """Processes started and not killed (busy or idle)."""
        return len(self._slots)

    async def start(self) -> None:
        """Start every process and wait until each has built its job function (raises if one cannot)."""
        await asyncio.gather(*(self._add_slot() for _ in range(self.workers)))

    async def _add_slot(self) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self.setup, self.setup_args), daemon=True, name="stadapter-decode"
        )
        process.start()
        child.close()
        slot = _Slot(process, parent)
        try:
            kind, message = await asyncio.wait_for(self._recv(slot), READY_TIMEOUT_S)
        except (asyncio.TimeoutError, EOFError, OSError) as e:
            slot.kill()
            raise RuntimeError(f"a decode worker did not start ({type(e).__name__})") from None
        if kind != "ready":
            slot.kill()
            raise RuntimeError(f"a decode worker could not start: {message}")
        self._slots.add(slot)
        self._idle.put_nowait(slot)

    def _recv(self, slot: _Slot):
        return asyncio.get_running_loop().run_in_executor(self._threads, slot.conn.recv)

    async def run(self, *args: Any) -> Any:
        """Run one job on an idle process; JobRejected on bad input, JobFailed on timeout or crash."""
        slot = await self._idle.get()
        try:
            slot.conn.send(args)
            kind, value = await asyncio.wait_for(self._recv(slot), self.timeout_s)
        except asyncio.TimeoutError:
            self._replace(slot)
            raise JobFailed(f"took longer than {self.timeout_s:g} s", timed_out=True) from None
        except (EOFError, OSError):
            self._replace(slot)
            raise JobFailed("its worker process died") from None
        except BaseException:  # cancelled (client gone): the process is still busy, so it goes too
            self._replace(slot)
            raise
        self._idle.put_nowait(slot)
        if kind == "rejected":
            raise JobRejected(value)
        if kind == "failed":
            log.error("decode job failed: %s", value)
            raise JobFailed(value.splitlines()[0])
        return value

    def _replace(self, slot: _Slot) -> None:
        """Kill a slot's process (freeing the thread blocked on its pipe) and start a new one."""
        self._slots.discard(slot)
        slot.kill()
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._respawn())
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self) -> None:
        for attempt in range(5):
            try:
                return await self._add_slot()
            except RuntimeError as e:
                log.error("replacing a decode worker failed (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(2.0)

    def close(self) -> None:
        self._closed = True
        for task in self._respawns:
            task.cancel()
        for slot in list(self._slots):
            slot.kill()
        self._slots.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
