"""Many videos through one Predictor: decode in a pool of processes while the model runs batches.

Worker processes decode, sample and transform (the same `prepare_eval_views` that `classify` runs),
a few videos ahead; the main process takes the decoded videos in input order, joins those that are
ready into one model call of up to `batch_clips` clips, and yields one result per video. A video
that fails to decode gets an error result and the rest go on. If a decode crashes its process, the
pool is restarted and the videos it held are tried once more.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..errors import STAdapterError
from .inputs import VideoInput
from .timeline import check_top_k

DEFAULT_BATCH_CLIPS = 8

_worker_preprocessing = None  # set in each decode process by _start_worker


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@dataclass
class BatchOptions:
    top_k: int = 5
    views: int | None = None  # clips per video; None keeps the recipe's
    workers: int | None = None  # decode processes (default: the cores this process may use, at most 4)
    batch_clips: int | None = None  # clips per model call (default: the runner's max batch, else 8)
    ahead: int | None = None  # videos decoding or decoded but not yet run (default: 2 per worker + a batch)


def _start_worker(preprocessing: dict) -> None:
    """Runs once in each decode process: Ctrl+C is the parent's to handle; one torch thread; memory capped."""
    global _worker_preprocessing
    import torch

    from ..preprocessing import Preprocessing
    from ..video.limits import limit_process_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    limit_process_memory()
    _worker_preprocessing = Preprocessing.from_dict(preprocessing)


def _decode(path: str) -> dict:
    from ..video import prepare_eval_views

    views = prepare_eval_views(path, _worker_preprocessing)
    return {"clips": views.clips.numpy(), "frame_indices": views.frame_indices, "timings_ms": views.timings_ms}


def error_message(e: BaseException) -> str:
    message = str(e).strip().replace("\n", " ")
    return message if isinstance(e, STAdapterError | OSError) else f"{type(e).__name__}: {message}"


class DecodePool:
    """A spawn process pool running `_decode`, restarted when a crash breaks it."""

    def __init__(self, preprocessing: dict, workers: int):
        self.preprocessing, self.workers = preprocessing, workers
        self.executor = self.start()

    def start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding a model and threads
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_start_worker, initargs=(self.preprocessing,)
        )

    def warm(self) -> None:
        """Start the processes now (each imports torch: seconds), e.g. while the model loads."""
        for _ in range(self.workers):
            self.executor.submit(int)

    def submit(self, path: str) -> Future:
        return self.executor.submit(_decode, path)

    def restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self.start()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def decode_pool(preprocessing, options: BatchOptions) -> DecodePool:
    """The pool `classify_videos` needs for this preprocessing; started early, it warms while the model loads."""
    pool = DecodePool(preprocessing.with_views(options.views).to_dict(), options.workers or default_workers())
    pool.warm()
    return pool


def classify_videos(
    predictor, videos: list[VideoInput], options: BatchOptions | None = None, pool: DecodePool | None = None
) -> Iterator[dict]:
    """One result record per video, in input order: {"video", "labels", "frames", "timings_ms"} or
    {"video", "error"}. `pool` (from `decode_pool`, closed here) saves the pool's start-up."""
    options = options or BatchOptions()
    check_top_k(predictor, options.top_k)
    pre = predictor.preprocessing.with_views(options.views)
    batch_clips = options.batch_clips or predictor.max_batch or DEFAULT_BATCH_CLIPS
    pool = pool or decode_pool(predictor.preprocessing, options)
    ahead = options.ahead or 2 * pool.workers + max(1, batch_clips // pre.views)
    todo = deque(videos)
    flight: deque[tuple[VideoInput, Future, int]] = deque()  # (video, its decode, attempt)
    try:
        while todo or flight:
            while todo and len(flight) < ahead:
                video = todo.popleft()
                flight.append((video, pool.submit(video.video), 1))
            batch, errors = take_batch(flight, pool, batch_clips)
            yield from errors
            if batch:
                yield from run_batch(predictor, batch, options.top_k)
    finally:
        pool.close()


def take_batch(flight: deque, pool: DecodePool, batch_clips: int) -> tuple[list, list[dict]]:
    """The next decoded video (waiting for it), then those after it already decoded, up to batch_clips."""
    batch, errors, clips = [], [], 0
    while flight and clips < batch_clips and (not batch or flight[0][1].done()):
        video, future, attempt = flight.popleft()
        try:
            decoded = future.result()
        except BrokenProcessPool:
            requeue_after_crash(flight, pool, video, attempt, errors)
            continue
        except Exception as e:
            errors.append({"video": video.video, "error": error_message(e)})
            continue
        batch.append((video, decoded))
        clips += len(decoded["clips"])
    return batch, errors


def requeue_after_crash(flight: deque, pool: DecodePool, video: VideoInput, attempt: int, errors: list) -> None:
    """A decode process died (a crash in native code): restart the pool and decode its videos once more."""
    pending = [(video, attempt)] + [(v, a) for v, _, a in flight]
    flight.clear()
    pool.restart()
    for v, a in pending:
        if a >= 2:
            errors.append({"video": v.video, "error": "its decode process crashed (twice)"})
        else:
            flight.append((v, pool.submit(v.video), a + 1))


def run_batch(predictor, batch: list, top_k: int) -> Iterator[dict]:
    """One model call for the decoded videos in `batch`; a result record for each."""
    clips = np.concatenate([decoded["clips"] for _, decoded in batch])
    start = time.perf_counter()
    logits = predictor.predict(clips)
    infer_ms = (time.perf_counter() - start) * 1e3
    offset = 0
    for video, decoded in batch:
        views = len(decoded["clips"])
        timings = {k: round(float(v), 3) for k, v in decoded["timings_ms"].items()}
        timings["infer"] = round(infer_ms * views / len(clips), 3)  # this video's share of the batch
        yield {
            "video": video.video,
            "labels": predictor.top_k(logits[offset : offset + views], top_k),
            "frames": [int(i) for view in decoded["frame_indices"] for i in view],
            "timings_ms": timings,
        }
        offset += views
