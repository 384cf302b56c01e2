"""The model side of a timeline: window batches (stadapter_deploy/video/windows.py) in, Segments out.

`Predictor.timeline` and the batch CLI run the model here; the service sends the same window batches
to its model service and builds its Segments with `window_segments`, the one place they are made.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..video.windows import DEFAULT_BATCH_CLIPS, WindowBatch, WindowSpec, iter_window_batches, timeline_preprocessing
from .results import check_top_k, top_k_labels


@dataclass
class Segment:
    start_s: float
    end_s: float  # the end of the window's last frame
    labels: list[dict]  # [{"label", "index", "score"}], best first
    frames: list[int]  # the frame indices the window sampled
    latency_ms: float | None = None  # live streams: from decoding the window's last frame to the result

    def to_dict(self) -> dict:
        d = {"start_s": self.start_s, "end_s": self.end_s, "labels": self.labels, "frames": self.frames}
        return d if self.latency_ms is None else {**d, "latency_ms": self.latency_ms}


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
) -> Iterator[Segment]:
    """Segments of `video` (a path, the file's bytes, or a live source) in time order, as they complete."""
    check_top_k(top_k, len(predictor.labels))
    pre = timeline_preprocessing(predictor.preprocessing, views)
    max_clips = predictor.max_batch or DEFAULT_BATCH_CLIPS
    for batch in iter_window_batches(video, pre, spec, batch_windows, max_clips):
        logits = predictor.predict(batch.clips.flatten(0, 1))  # [B * V, C]
        yield from window_segments(batch, logits, predictor.labels, top_k)


def timeline(predictor, video, spec: WindowSpec | None = None, top_k: int = 5, views: int | None = None) -> list:
    """Labels over time: one Segment per window of `video` (a path or the file's bytes)."""
    return list(iter_timeline(predictor, video, spec, top_k, views))
