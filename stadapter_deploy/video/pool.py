"""The one decode pool: worker processes that each run one job at a time, where a job past its deadline
is stopped. The service and the batch CLI both decode here.

Decoding is CPU work in native code, so it runs in processes: in parallel, never blocking an event
loop or the model, and a decode that hangs or crashes takes only its own process down. That process
is killed and replaced by the thread that watches it; the other jobs go on.

The pool is the one door to the workers. A job is a typed value (video/jobs.py: ClipsJob, WindowsJob);
it returns one value (`submit`, a Future) or, where the job function returns a generator, a stream of
values (`stream`), sent one at a time so that a long video's windows never pile up in memory: the
worker blocks until the consumer has taken the previous one. Each value must arrive within `timeout_s`
of the last. What fails comes back typed: the input refused (VideoRefused, with the error's code), the
decode timed out, the worker crashed, a bug in the job (WorkerBug: only a VideoError is the input's
fault), the pool unavailable. A job whose process dies before it delivered anything runs once more on
the replacement; that policy lives here and nowhere else.

No worker outlives its parent, SIGKILL included: each holds only its own end of its pipe (so a write
to a dead parent fails at once), and a watchdog thread ends it when its parent process is gone,
even while the decoder is stuck in native code.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
import types
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..errors import VideoError

log = logging.getLogger("stadapter.pool")

READY_TIMEOUT_S = 120.0  # a worker imports torch and the video pipeline before it is ready
WATCHDOG_S = 0.5  # how often a worker checks that its parent is alive
STREAM_AHEAD = 2  # values of a stream taken from its worker before the consumer asks for them
RESPAWN_ATTEMPTS = 5


# ----------------------------------------------------------------------------- what comes back


class DecodeFailure(Exception):
    """A job that gave no value (or stopped mid-stream). The subclasses say why, each with a stable `code`
    (the service's error codes); nobody reads the words."""

    code = "internal_error"


class VideoRefused(DecodeFailure):
    """The job's input is at fault: the job raised a VideoError (`code` is its code, `limit` the limit it
    went past, where one did)."""

    def __init__(self, message: str, code: str, limit: float | None = None):
        super().__init__(message)
        self.code, self.limit = code, limit


class DecodeTimedOut(DecodeFailure):
    """The job gave nothing for `timeout_s`; its process was killed and replaced."""

    code = "decode_timeout"

    def __init__(self, timeout_s: float):
        super().__init__(f"took longer than {timeout_s:g} s")
        self.timeout_s = timeout_s


class WorkerCrashed(DecodeFailure):
    """The job's process died (twice, where nothing had been delivered: the door tries once more on the
    replacement). `delivered`: the stream's values handed over before it died."""

    code = "worker_crashed"

    def __init__(self, delivered: int, attempts: int):
        super().__init__(f"its decode process died{' twice' if attempts > 1 else ''}")
        self.delivered, self.attempts = delivered, attempts


class WorkerBug(DecodeFailure):
    """The job raised something other than a refusal: a fault of this code, logged with its traceback."""


class PoolUnavailable(DecodeFailure):
    """The pool is closed, or none of its processes could start."""

    code = "busy"


# What a worker sends back over its pipe: typed values, never tuples or words to match on.


@dataclass(frozen=True)
class _Ready:
    pass


@dataclass(frozen=True)
class _Item:
    value: Any


@dataclass(frozen=True)
class _Done:
    value: Any


@dataclass(frozen=True)
class _Refused:
    message: str
    code: str
    limit: float | None


@dataclass(frozen=True)
class _Broken:
    summary: str  # "TypeName: message"
    traceback: str


# ----------------------------------------------------------------------------- the worker process


def _watch_parent(owner_pid: int) -> None:
    """End this process once the pool's owner is gone: its parent (the owner, or the fork server that dies
    with the owner) changes when it is reparented, and the owner's pid stops answering."""
    parent = os.getppid()
    while True:
        time.sleep(WATCHDOG_S)
        if os.getppid() != parent or not process_alive(owner_pid):
            os._exit(1)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's (a reused pid would be: the owner is gone then, rarely)
        return True
    return True


def _worker_main(conn: Connection, setup: Callable[..., Callable], setup_args: tuple, parent_pid: int) -> None:
    """A worker process: build the job function once, then answer jobs until the pipe closes."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    try:
        handle = setup(*setup_args)
    except Exception as e:  # reported to the parent, which refuses to start
        conn.send(_Broken(f"{type(e).__name__}: {e}", traceback.format_exc()))
        return
    conn.send(_Ready())
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = handle(job)
            if isinstance(result, types.GeneratorType):
                for item in result:
                    conn.send(_Item(item))
                result = None
            reply = _Done(result)
        except VideoError as e:  # the input's fault, and only that
            reply = _Refused(str(e), e.code, getattr(e, "limit", None))
        except (BrokenPipeError, ConnectionResetError):
            return  # the parent is gone
        except Exception as e:
            reply = _Broken(f"{type(e).__name__}: {e}", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:
            return


# ----------------------------------------------------------------------------- the parent side

# What the fork server imports once, so that every worker forked from it starts in milliseconds instead
# of importing torch itself: the decode jobs and what they need.
PRELOAD = [
    "torch",
    "av",
    "stadapter_deploy.video.jobs",
    "stadapter_deploy.video.pipeline",
    "stadapter_deploy.video.windows",
    "stadapter_deploy.video.pool",
]


def worker_context():
    """Workers come from a fork server: one clean, single-threaded process that imports the video pipeline
    once and forks each worker from there (no fork of the threaded process that holds a model, and no
    worker importing torch anew). Where the platform has no fork server, spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm_up() -> None:
    """Start the fork server now, so that its imports run while this process loads its own (a command
    calls this first thing; the pool then forks its workers at once)."""
    context = worker_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


_DONE = object()


@dataclass(eq=False)
class _Job:
    payload: Any  # what the worker's job function is called with: a job dataclass
    future: Future  # the value (submit) or None once a stream ends
    items: queue.Queue | None = None  # a stream's values, then _DONE or a DecodeFailure
    abandoned: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0  # stream values handed to the consumer
    attempts: int = 0


class _Died(Exception):
    """The worker process died, or closed its pipe, during a job."""


class _Slot:
    """One worker process and the thread that feeds it jobs, watches its deadlines and replaces it."""

    def __init__(self, pool: DecodePool):
        self.pool = pool
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.job: _Job | None = None
        self.started = threading.Event()
        self.error: Exception | None = None

    def main(self) -> None:
        """The slot's thread: start the process, then serve jobs (a slot that cannot start leaves the pool)."""
        try:
            self.spawn()
        except RuntimeError as e:
            self.error = e
            self.pool.lost(self, e)
            return
        finally:
            self.started.set()
        if self.pool.closed:  # closed while this process started: it must not outlive the pool
            self.kill()
            return
        self.serve()

    def spawn(self) -> None:
        """Start the process and wait until it has built its job function (RuntimeError if it cannot)."""
        context = worker_context()
        parent, child = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child, self.pool.setup, self.pool.setup_args, os.getpid()),
            daemon=True,
            name=self.pool.name,
        )
        process.start()
        child.close()  # the worker holds the only copy of its end
        self.process, self.conn = process, parent
        if not parent.poll(READY_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"a {self.pool.name} worker did not start within {READY_TIMEOUT_S:g} s")
        try:
            reply = parent.recv()
        except (EOFError, OSError):
            reply = _Broken("it exited while starting", "")
        if not isinstance(reply, _Ready):
            self.kill()
            raise RuntimeError(f"a {self.pool.name} worker could not start: {reply.summary}")

    def kill(self) -> None:
        """Kill the process and close the pipe: only this slot's own thread calls it."""
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=5)
            self.process = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def stop(self) -> None:
        """From any thread: kill the process; this slot's thread sees it die and cleans up."""
        process = self.process
        if process is not None and process.exitcode is None:
            process.kill()

    def serve(self) -> None:
        """The slot's thread: run jobs from the pool's queue until the pool closes."""
        while True:
            job = self.pool.jobs.get()
            if job is None or self.pool.closed:
                if job is not None:
                    self.fail(job, PoolUnavailable(f"the {self.pool.name} pool was closed"))
                self.kill()
                return
            if job.abandoned.is_set() or not job.future.set_running_or_notify_cancel():
                continue
            self.job = job
            try:
                healthy = self.run(job)
            except Exception as e:  # a fault of this code, not of the job: the job fails, the slot goes on
                log.exception("%s slot failed on a job", self.pool.name)
                self.fail(job, WorkerBug(f"{type(e).__name__}: {e}"))
                healthy = False
            self.job = None
            if not healthy and not self.replace():
                return

    def run(self, job: _Job) -> bool:
        """Run one job and deliver its outcome; False when the process had to be killed. The one retry
        policy: a process that dies before the job delivered anything (a crash in native code, or a worker
        found dead when the job arrived) is replaced and the job runs once more there."""
        job.attempts += 1
        try:
            reply = self.exchange(job)
        except _Died:
            if job.delivered or job.attempts > 1 or job.abandoned.is_set():
                self.fail(job, WorkerCrashed(job.delivered, job.attempts))
                return False
            log.warning("a %s worker died during a job; running the job once more on its replacement", self.pool.name)
            if not self.replace():
                self.fail(job, WorkerCrashed(job.delivered, job.attempts))
                return True  # replace() has already dealt with the slot
            return self.run(job)
        except DecodeTimedOut as e:
            self.fail(job, e)
            return False
        if reply is None:
            return False  # the consumer left mid-stream: the worker is still busy with it
        if isinstance(reply, _Done):
            self.finish(job, reply.value)
        elif isinstance(reply, _Refused):
            self.fail(job, VideoRefused(reply.message, reply.code, reply.limit))
        else:
            log.error("%s job %r failed: %s", self.pool.name, job.payload, reply.traceback or reply.summary)
            self.fail(job, WorkerBug(reply.summary))
        return True

    def exchange(self, job: _Job):
        """Send the job; hand its stream values on; the final reply, or None if the consumer left."""
        try:
            self.conn.send(job.payload)
        except OSError:  # a process that died while idle
            raise _Died() from None
        while True:
            reply = self.receive()
            if not isinstance(reply, _Item):
                return reply
            if not self.offer(job, reply.value):
                return None
            job.delivered += 1

    def receive(self):
        timeout = self.pool.timeout_s
        try:
            if not self.conn.poll(timeout):
                raise DecodeTimedOut(timeout)
            return self.conn.recv()
        except (EOFError, OSError):
            raise _Died() from None

    @staticmethod
    def offer(job: _Job, item) -> bool:
        """Hand a stream's next value (or its end) to the consumer; False once the consumer has left."""
        while not job.abandoned.is_set():
            try:
                job.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @classmethod
    def finish(cls, job: _Job, value) -> None:
        if job.items is not None:
            cls.offer(job, _DONE)
            value = None
        if not job.future.done():
            job.future.set_result(value)

    @classmethod
    def fail(cls, job: _Job, error: DecodeFailure) -> None:
        if job.items is not None:
            cls.offer(job, error)
        if not job.future.done():
            job.future.set_exception(error)

    def replace(self) -> bool:
        """Kill this slot's process and start another; False when the pool is closing or it keeps failing."""
        self.kill()
        for attempt in range(RESPAWN_ATTEMPTS):
            if self.pool.closed:
                return False
            try:
                self.spawn()
                if self.pool.closed:
                    self.kill()
                    return False
                return True
            except RuntimeError as e:
                log.error("replacing a %s worker failed (attempt %d): %s", self.pool.name, attempt + 1, e)
                time.sleep(2.0)
        self.pool.lost(self, RuntimeError(f"a {self.pool.name} worker could not be replaced"))
        return False


class Stream:
    """A streamed job's values, in order. `close()` from any thread stops the job (its busy process is
    replaced) and ends a `next()` waiting in another thread."""

    def __init__(self, job: _Job):
        self.job = job

    def __iter__(self) -> Stream:
        return self

    def __next__(self):
        while True:
            if self.job.abandoned.is_set():
                raise StopIteration
            try:
                item = self.job.items.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _DONE:
                self.job.abandoned.set()
                raise StopIteration
            if isinstance(item, Exception):
                self.job.abandoned.set()
                raise item
            return item

    def close(self) -> None:
        self.job.abandoned.set()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecodePool:
    """`workers` processes that each run `handle = setup(*setup_args)` once, then `handle(job)` per job: the
    one door to them. A job is a typed value (e.g. video/jobs.py's ClipsJob); what comes back is its value,
    or one of the DecodeFailure types above, never words to match on."""

    def __init__(
        self,
        setup: Callable[..., Callable],
        setup_args: tuple,
        workers: int,
        timeout_s: float,
        name: str = "stadapter-decode",
    ):
        self.setup, self.setup_args = setup, setup_args
        self.workers, self.timeout_s, self.name = workers, timeout_s, name
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.slots: set[_Slot] = set()
        self.closed = False
        self._threads: list[threading.Thread] = []

    @property
    def alive(self) -> int:
        """Processes up and not being replaced (busy or idle)."""
        return sum(1 for s in self.slots if s.process is not None and s.process.is_alive())

    def start(self) -> None:
        """Start every process and wait until each is ready (RuntimeError if one cannot start)."""
        slots = self.start_in_background()
        for slot in slots:
            slot.started.wait()
        errors = [slot.error for slot in slots if slot.error is not None]
        if errors:
            self.close()
            raise errors[0]

    def start_in_background(self) -> list[_Slot]:
        """Start every process without waiting: jobs submitted meanwhile wait for the first one ready."""
        slots = [_Slot(self) for _ in range(self.workers)]
        self.slots.update(slots)
        for slot in slots:
            thread = threading.Thread(target=slot.main, daemon=True, name=f"{self.name}-slot")
            thread.start()
            self._threads.append(thread)
        return slots

    def lost(self, slot: _Slot, reason: Exception) -> None:
        """A slot whose process cannot (re)start leaves; with none left, waiting jobs fail with the reason."""
        self.slots.discard(slot)
        if self.slots:
            return
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                _Slot.fail(job, PoolUnavailable(f"no {self.name} worker is running ({reason})"))

    def submit(self, payload: Any) -> Future:
        """Run `payload` on the next free worker: a Future of its value, or of a DecodeFailure."""
        job = _Job(payload, Future())
        self._put(job)
        return job.future

    def stream(self, payload: Any) -> Stream:
        """The values of a job whose function is a generator, as the worker makes them (see Stream)."""
        job = _Job(payload, Future(), queue.Queue(maxsize=STREAM_AHEAD))
        self._put(job)
        return Stream(job)

    async def run(self, payload: Any) -> Any:
        """`submit` for an event loop. A cancelled caller (a client gone) stops its job."""
        future = self.submit(payload)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.cancel(future)
            raise

    def cancel(self, future: Future) -> None:
        """Stop the job of `future`: dropped if waiting, its process killed (and replaced) if running."""
        if future.cancel():
            return
        for slot in list(self.slots):
            job = slot.job
            if job is not None and job.future is future:
                job.abandoned.set()
                slot.stop()

    def _put(self, job: _Job) -> None:
        if self.closed:
            raise PoolUnavailable(f"the {self.name} pool is closed")
        if not self.slots:
            raise PoolUnavailable(f"no {self.name} worker is running")
        self.jobs.put(job)

    def close(self) -> None:
        """Stop every worker; jobs still waiting fail. Each slot's thread closes its own pipe (so no other
        thread closes a descriptor that one may still be reading); this waits a moment for them."""
        self.closed = True
        while True:  # jobs still waiting fail
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                _Slot.fail(job, PoolUnavailable(f"the {self.name} pool was closed"))
        for _ in self._threads:  # then one stop sign per slot thread, each taken by the thread it stops
            self.jobs.put(None)
        for slot in list(self.slots):
            if slot.job is not None:
                slot.job.abandoned.set()
            slot.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.slots.clear()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
