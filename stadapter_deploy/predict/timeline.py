"""When things happen in a long video: a window slid over it, one label list per window.

One sequential decode feeds every window: each frame is decoded once and transformed once (only the
frames some window samples), held until the last window that samples it has passed, and windows go
to the model in batches. Memory is bounded by one window of transformed frames, however long the
video or stream.

Windows: a strided recipe (r > 0) sees (T-1)*r+1 frames per clip, and that span is the default
window. A uniform recipe (r = 0) samples T frames over whatever it is given; its default window is
UNIFORM_WINDOW_S seconds, sampled uniformly as the recipe samples a whole video. The default stride
is half the window. A window starts every stride; the last window is the last one that fits, so
fewer than `stride` frames at the end may be seen by no window. A video shorter than one window
gives one window over all its frames, sampled the recipe's way (uniform spreads T frames over it;
strided repeats the last frame).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, VideoError
from ..video.sampling import eval_indices
from ..video.transforms import eval_transform
from .frames import open_frames, sequential_frames, to_rgb

UNIFORM_WINDOW_S = 2.0  # one short action: an SSv2 clip lasts 2 to 6 s; a synthetic clip 2 s
DEFAULT_BATCH_CLIPS = 8


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


@dataclass(frozen=True)
class Windows:
    window: int  # frames per window
    stride: int  # frames between window starts
    fps: float

    def sampled(self, num_frames: int, pre) -> list[int]:
        """Offsets (from the window's start) of the frames a window of `num_frames` samples."""
        return eval_indices(num_frames, pre.num_frames, pre.sampling_rate, 1)[0]


def check_seconds(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


def windows_for(pre, fps: float, window_s: float | None = None, stride_s: float | None = None) -> Windows:
    """Window and stride in frames at `fps` (see the module docstring for the defaults)."""
    check_seconds("window", window_s)
    check_seconds("stride", stride_s)
    if window_s is not None:
        window = max(1, round(window_s * fps))
    elif pre.sampling_rate > 0:
        window = (pre.num_frames - 1) * pre.sampling_rate + 1
    else:
        window = max(1, round(UNIFORM_WINDOW_S * fps))
    stride = max(1, round(stride_s * fps)) if stride_s is not None else max(1, window // 2)
    return Windows(window, stride, fps)


def check_top_k(predictor, top_k: int) -> None:
    """Fail before decoding anything; through the Predictor, so the runtime never imports this package
    back (Predictor.timeline delegates here)."""
    predictor.top_k(np.zeros(len(predictor.labels)), top_k)


def frame_clip(rgb: np.ndarray, pre) -> torch.Tensor:
    """One frame [H, W, 3] -> [V, 3, S, S], each spatial crop, as eval_transform treats every frame."""
    crops = eval_transform(rgb[None], pre.size, pre.spatial_views, pre.mean, pre.std)  # V x [3, 1, S, S]
    return torch.stack([c[:, 0] for c in crops])


def timeline_preprocessing(pre, views: int | None):
    """The recipe's preprocessing `pre` for one clip per window: its spatial crops (or `views` of them)."""
    return pre.replace(temporal_views=1, spatial_views=views or pre.spatial_views)


@dataclass
class WindowBatch:
    """Windows ready for the model: their clips, and where each came from."""

    clips: torch.Tensor  # [B, V, 3, T, S, S]
    starts: list[int]  # first frame of each window
    frames: list[list[int]]  # the frame indices each window sampled
    arrived: list[float]  # time.perf_counter() when each window's last frame was decoded
    win: Windows
    live: bool

    def times(self) -> list[tuple[float, float]]:
        """(start_s, end_s) of each window: frame index / the stream's average fps."""
        fps, window = self.win.fps, self.win.window
        return [(round(start / fps, 6), round((start + window) / fps, 6)) for start in self.starts]

    def segments(self, logits: np.ndarray, top_k) -> list[Segment]:
        """logits [B, V, C] -> one Segment per window; top_k(logits [V, C]) -> labels."""
        done = time.perf_counter()
        latency = [round((done - arrived) * 1e3, 3) if self.live else None for arrived in self.arrived]
        rows = zip(self.times(), self.frames, latency, logits, strict=True)
        return [
            Segment(start_s, end_s, top_k(window_logits), frames, ms)
            for (start_s, end_s), frames, ms, window_logits in rows
        ]


def iter_window_batches(
    video,
    pre,
    window_s: float | None = None,
    stride_s: float | None = None,
    batch_windows: int | None = None,
    max_clips: int = DEFAULT_BATCH_CLIPS,
) -> Iterator[WindowBatch]:
    """The model input of every window of `video` (a path, bytes or a stream URL), `batch_windows` windows
    at a time (default: `max_clips` clips' worth; 1 for a live stream, so each window leaves as soon as
    its last frame arrives), from one sequential decode. No model here: the service batches these
    across requests, the CLI runs them at once."""
    with open_frames(video) as source:
        win = windows_for(pre, source.fps, window_s, stride_s)
        if batch_windows is None:
            batch_windows = 1 if source.live else max(1, max_clips // pre.views)
        offsets = win.sampled(win.window, pre)
        held: dict[int, torch.Tensor] = {}  # frame index -> [V, 3, S, S]
        ready: list[tuple[int, list[int], float]] = []  # (start, frame indices, time its last frame came)
        start = count = 0
        for frame in sequential_frames(source):
            index, count = count, count + 1
            if index < win.window or any((index - o) >= 0 and (index - o) % win.stride == 0 for o in offsets):
                held[index] = frame_clip(to_rgb(frame), pre)
            while start + win.window <= count:
                ready.append((start, [start + o for o in offsets], time.perf_counter()))
                start += win.stride
            if len(ready) >= batch_windows:
                yield batch_of(ready, held, win, source.live)
                held = {i: c for i, c in held.items() if i >= start}
                ready = []
        if count == 0:
            raise VideoError(f"no frame of the video can be decoded: {video if isinstance(video, str) else '<bytes>'}")
        if start == 0:  # shorter than one window: one window over all of it
            ready.append((0, win.sampled(count, pre), time.perf_counter()))
            win = Windows(count, win.stride, win.fps)
        if ready:
            yield batch_of(ready, held, win, source.live)


def batch_of(ready: list, held: dict, win: Windows, live: bool) -> WindowBatch:
    clips = torch.stack([torch.stack([held[i] for i in indices], dim=2) for _, indices, _ in ready])  # [B,V,3,T,S,S]
    starts, frames, arrived = (list(column) for column in zip(*ready, strict=True))
    return WindowBatch(clips, starts, frames, arrived, win, live)


def iter_timeline(
    predictor,
    video,
    window_s: float | None = None,
    stride_s: float | None = None,
    top_k: int = 5,
    views: int | None = None,
    batch_windows: int | None = None,
) -> Iterator[Segment]:
    """Segments of `video` (a path, the file's bytes, or a stream URL) in time order, as they complete."""
    check_top_k(predictor, top_k)
    pre = timeline_preprocessing(predictor.preprocessing, views)
    max_clips = predictor.max_batch or DEFAULT_BATCH_CLIPS
    for batch in iter_window_batches(video, pre, window_s, stride_s, batch_windows, max_clips):
        logits = predictor.predict(batch.clips.flatten(0, 1)).reshape(len(batch.starts), pre.views, -1)  # [B, V, C]
        yield from batch.segments(logits, lambda window_logits: predictor.top_k(window_logits, top_k))


def timeline(
    predictor,
    video,
    window_s: float | None = None,
    stride_s: float | None = None,
    top_k: int = 5,
    views: int | None = None,
) -> list[Segment]:
    """Labels over time: one Segment per window of `video` (a path or the file's bytes)."""
    return list(iter_timeline(predictor, video, window_s, stride_s, top_k, views))
