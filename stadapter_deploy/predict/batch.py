"""Many videos through one Predictor: decode in the decode pool while the model runs batches.

Worker processes (stadapter_deploy/video/pool.py, running the "clips" job of video/jobs.py: the same
`prepare_eval_views` that `classify` runs) decode a few videos ahead; the main process takes the
decoded videos in input order, joins those that are ready into one model call of up to `batch_clips`
clips, and yields one result per video, built by the runtime's `classification`. A video that fails
to decode, or decodes past the per-video timeout, gets an error result and the rest go on; a decode
that crashes its process is tried once more on the replacement.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np

from ..errors import STAdapterError
from ..preprocessing import DEFAULT_BATCH_CLIPS
from ..runtime.results import check_top_k, classification
from ..video.handover import unpack
from ..video.pool import DecodePool, JobFailed
from .inputs import VideoInput
from .options import BatchOptions, decode_pool, lookahead, submit


def error_message(e: BaseException) -> str:
    message = str(e).strip().replace("\n", " ")
    if isinstance(e, JobFailed) and e.timed_out:
        return f"decoding {message} (--decode-timeout)"
    return (
        message
        if isinstance(e, STAdapterError | OSError | ValueError | JobFailed)
        else f"{type(e).__name__}: {message}"
    )


def retry_on_new_process(e: JobFailed, attempt: int) -> bool:
    """A decode that crashed its process (native code) is tried once more, on the replacement."""
    return "died" in str(e) and attempt == 1


def error_record(video: str, e: BaseException, attempt: int = 1) -> dict:
    """The line of a video that failed, the same from every engine: {"video", "error"}."""
    return {"video": video, "error": error_message(e) + (" (twice)" if attempt > 1 else "")}


def classify_videos(
    predictor,
    videos: list[VideoInput],
    options: BatchOptions | None = None,
    pool: DecodePool | None = None,
    prefetched: dict[str, Future] | None = None,
) -> Iterator[dict]:
    """One result record per video, in input order: {"video", **Classification.to_dict()} or
    {"video", "error"}. `pool` (from `decode_pool`, closed here) saves the pool's start-up; `prefetched`
    holds decodes submitted to it already (video -> future)."""
    options = options or BatchOptions()
    check_top_k(options.top_k, len(predictor.labels))
    pre = predictor.preprocessing.with_views(options.views)
    batch_clips = options.batch_clips or predictor.max_batch or DEFAULT_BATCH_CLIPS
    pool = pool or decode_pool(predictor.preprocessing, options)
    ahead = options.ahead or lookahead(pool.workers, batch_clips, pre.views)
    prefetched = dict(prefetched or {})
    todo = deque(videos)
    flight: deque[tuple[VideoInput, Future, int]] = deque()  # (video, its decode, attempt)
    try:
        while todo or flight:
            while todo and len(flight) < ahead:
                video = todo.popleft()
                flight.append((video, prefetched.pop(video.video, None) or submit(pool, video), 1))
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
            views = unpack(future.result())
        except JobFailed as e:
            if retry_on_new_process(e, attempt):
                flight.appendleft((video, submit(pool, video), 2))
                continue
            errors.append(error_record(video.video, e, attempt))
            continue
        except Exception as e:
            errors.append(error_record(video.video, e))
            continue
        batch.append((video, views))
        clips += len(views.clips)
    return batch, errors


def run_batch(predictor, batch: list, top_k: int) -> Iterator[dict]:
    """One model call for the decoded videos in `batch`; a result record for each."""
    clips = np.concatenate([views.clips.numpy() for _, views in batch])
    start = time.perf_counter()
    logits = predictor.predict(clips)
    infer_ms = (time.perf_counter() - start) * 1e3
    offset = 0
    for video, views in batch:
        count = len(views.clips)
        share = infer_ms * count / len(clips)  # this video's share of the batch
        result = classification(
            views, logits[offset : offset + count], predictor.labels, top_k, predictor.info(), share
        )
        yield {"video": video.video, **result.to_dict()}
        offset += count
