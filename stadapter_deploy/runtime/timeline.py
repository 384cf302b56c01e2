"""The model side of a timeline: window batches (stadapter_deploy/video/windows.py) in, Segments out.

`Predictor.timeline` and the batch CLI run the model here; the service sends the same window batches
to its model service and builds its Segments with `window_segments`, the one place they are made.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..preprocessing import DEFAULT_BATCH_CLIPS
from ..video.source import is_stream
from ..video.windows import (
    LiveWindows,
    WindowBatch,
    WindowSpec,
    iter_window_batches,
    timeline_preprocessing,
)
from .results import check_top_k, top_k_labels


@dataclass
class Segment:
    start_s: float
    end_s: float  # the end of the window's last frame
    labels: list[dict]  # [{"label", "index", "score"}], best first
    frames: list[int]  # the frame indices the window sampled
    latency_ms: float | None = None  # live streams: model time, from decoding the window's last frame to here
    lag_s: float | None = None  # live streams: wall-clock seconds since the window's last frame arrived
    skipped: int | None = None  # live streams: windows dropped since the previous line (policy "drop")

    def to_dict(self) -> dict:
        d = {"start_s": self.start_s, "end_s": self.end_s, "labels": self.labels, "frames": self.frames}
        live = {"latency_ms": self.latency_ms, "lag_s": self.lag_s, "skipped": self.skipped}
        return d | {k: v for k, v in live.items() if v is not None}


def window_segments(batch: WindowBatch, logits: np.ndarray, labels: list[str], top_k: int) -> list[Segment]:
    """logits [B * V, C] of a batch's clips -> one Segment per window (softmax averaged over its V crops)."""
    per_window = np.asarray(logits).reshape(len(batch.starts), -1, len(labels))  # [B, V, C]
    done = time.perf_counter()
    latency = [round((done - arrived) * 1e3, 3) if batch.live else None for arrived in batch.arrived]
    rows = zip(batch.times(), batch.frames, latency, per_window, strict=True)
    return [
        Segment(start_s, end_s, top_k_labels(labels, window_logits, top_k), frames, ms)
        for (start_s, end_s), frames, ms, window_logits in rows
    ]


def iter_timeline(
    predictor,
    video,
    spec: WindowSpec | None = None,
    top_k: int = 5,
    views: int | None = None,
    batch_windows: int | None = None,
    live_policy: str = "drop",
) -> Iterator[Segment]:
    """Segments of `video` (a path, the file's bytes, or a live source) in time order, as they complete.

    A live source is decoded apart from the model (LiveWindows): with live_policy "drop" each segment is
    the newest window complete when the model freed up, with its lag_s and the windows skipped before it."""
    check_top_k(top_k, len(predictor.labels))
    pre = timeline_preprocessing(predictor.preprocessing, views)
    if is_stream(video):
        yield from live_timeline(predictor, LiveWindows(video, pre, spec, live_policy, predictor.limits), top_k)
        return
    max_clips = predictor.max_batch or DEFAULT_BATCH_CLIPS
    for batch in iter_window_batches(video, pre, spec, batch_windows, max_clips, predictor.limits):
        logits = predictor.predict(batch.clips.flatten(0, 1))  # [B * V, C]
        yield from window_segments(batch, logits, predictor.labels, top_k)


def live_timeline(predictor, live: LiveWindows, top_k: int) -> Iterator[Segment]:
    try:
        for batch in live:
            logits = predictor.predict(batch.clips.flatten(0, 1))  # [V, C]
            (segment,) = window_segments(batch, logits, predictor.labels, top_k)
            segment.lag_s, segment.skipped = live.lag_s(batch), live.take_skipped()
            yield segment
    finally:
        live.close()


def timeline(predictor, video, spec: WindowSpec | None = None, top_k: int = 5, views: int | None = None) -> list:
    """Labels over time: one Segment per window of `video` (a path or the file's bytes)."""
    return list(iter_timeline(predictor, video, spec, top_k, views))
