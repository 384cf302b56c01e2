"""Many videos through one Predictor: decode in the decode pool while the model runs batches.

Worker processes (stadapter_deploy/video/pool.py, running the "clips" job of video/jobs.py: the same
`prepare_eval_views` that `classify` runs) decode a few videos ahead; the main process takes the
decoded videos in input order, joins those that are ready into one model call of up to `batch_clips`
clips, and yields one result per video, built by the runtime's `classification`. A video that fails
to decode, or decodes past the per-video timeout, gets an error result with its code and the rest go on
(the pool itself runs a decode that crashed its process once more on the replacement).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import STAdapterError
from ..preprocessing import DEFAULT_BATCH_CLIPS
from ..runtime.results import check_top_k, classification
from ..runtime.runner import Outputs
from ..video.handover import unpack
from ..video.pool import DecodeFailure, DecodePool, DecodeTimedOut
from .inputs import VideoInput
from .options import BatchOptions, decode_pool, lookahead, submit


def error_message(e: BaseException) -> str:
    message = str(e).strip().replace("\n", " ")
    if isinstance(e, DecodeTimedOut):
        return f"decoding {message} (--decode-timeout)"
    return (
        message
        if isinstance(e, STAdapterError | OSError | ValueError | DecodeFailure)
        else f"{type(e).__name__}: {message}"
    )


def error_record(video: str, e: BaseException) -> dict:
    """The line of a video that gave no result: its error in words and a stable code (the service's codes)."""
    code = e.code if isinstance(e, STAdapterError | DecodeFailure) else "internal_error"
    return {"video": video, "error": error_message(e), "code": code}


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
    flight: deque[tuple[VideoInput, Future]] = deque()  # (video, its decode)
    try:
        while todo or flight:
            while todo and len(flight) < ahead:
                video = todo.popleft()
                flight.append((video, prefetched.pop(video.video, None) or submit(pool, video)))
            batch, errors = take_batch(flight, pool, batch_clips)
            yield from errors
            if batch:
                yield from run_batch(predictor, batch, options)
    finally:
        pool.close()


def take_batch(flight: deque, pool: DecodePool, batch_clips: int) -> tuple[list, list[dict]]:
    """The next decoded video (waiting for it), then those after it already decoded, up to batch_clips."""
    batch, errors, clips = [], [], 0
    while flight and clips < batch_clips and (not batch or flight[0][1].done()):
        video, future = flight.popleft()
        try:
            views = unpack(future.result())
        except Exception as e:
            errors.append(error_record(video.video, e))
            continue
        batch.append((video, views))
        clips += len(views.clips)
    return batch, errors


def run_batch(predictor, batch: list, options: BatchOptions) -> Iterator[dict]:
    """One model call for the decoded videos in `batch`; a result record for each. With `options.features`
    each record carries the clip embedding, from the same call; with `options.explain_dir` each video's
    heatmaps (of its top-1, from the views already decoded) are drawn there and the record names the PNG."""
    clips = np.concatenate([views.clips.numpy() for _, views in batch])
    start = time.perf_counter()
    out = predictor.predict_with_features(clips) if options.features else Outputs(predictor.predict(clips))
    infer_ms = (time.perf_counter() - start) * 1e3
    offset = 0
    for video, views in batch:
        rows = slice(offset, offset + len(views.clips))
        share = infer_ms * len(views.clips) / len(clips)  # this video's share of the batch
        embedding = None if out.features is None else out.features[rows]
        info = predictor.info()
        result = classification(
            views, out.logits[rows], predictor.labels, options.top_k, info, share, features=embedding
        )
        record = {"video": video.video, **result.to_dict()}
        if options.explain_dir is not None:
            record["explanation"] = str(draw_explanation(predictor, views, video.video, options))
        yield record
        offset += len(views.clips)


def draw_explanation(predictor, views, video: str, options: BatchOptions) -> Path:
    """The video's heatmaps drawn to EXPLAIN_DIR/<name>-<hash of its path>.png (one file per video, whatever
    folders the inputs share a name in)."""
    from ..runtime.explain import explain_views, render_explanation

    explanation = explain_views(predictor, views, None, options.views)
    path = options.explain_dir / f"{Path(video).stem}-{hashlib.sha1(video.encode()).hexdigest()[:8]}.png"
    path.write_bytes(render_explanation(explanation))
    return path
