"""Windows over time: a window slid over a video or a stream, each window one model clip.

One sequential decode feeds every window: each frame is decoded once, and only the frames some window
samples are converted and transformed (once, however many windows sample them, exactly as the eval
path treats each frame). A frame is held until the last window that samples it has passed, so memory
is bounded by one window of transformed frames, however long the video or stream.

Windows: a strided recipe (r > 0) sees (T-1)*r+1 frames per clip, and that span is the default
window. A uniform recipe (r = 0) samples T frames over whatever it is given; its default window is
UNIFORM_WINDOW_S seconds, sampled uniformly as the recipe samples a whole video. The default stride
is half the window. A window starts every stride; the last window is the last one that fits, so
fewer than `stride` frames at the end may be seen by no window. A file shorter than one window gives
one window over all its frames, sampled the recipe's way (uniform spreads T frames over it; strided
repeats the last frame): exactly the clip `prepare_eval_views` makes of it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import av
import torch

from ..errors import ConfigError, VideoError
from ..preprocessing import DEFAULT_BATCH_CLIPS, Preprocessing
from .limits import DecodeLimits
from .pipeline import prepare_eval_views
from .sampling import eval_indices
from .source import VideoSource, open_video, rgb_frame
from .transforms import eval_transform

UNIFORM_WINDOW_S = 2.0  # one short action: an SSv2 clip lasts 2 to 6 s; a synthetic clip 2 s
LIVE_POLICIES = ("drop", "all")


@dataclass(frozen=True)
class WindowSpec:
    """What a caller asks of a timeline, checked once here: window and stride in seconds (None: the default)."""

    window_s: float | None = None
    stride_s: float | None = None

    def __post_init__(self) -> None:
        for what, value in (("window", self.window_s), ("stride", self.stride_s)):
            ok = value is None or (
                isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            )
            if not ok:
                raise ConfigError(f"the {what} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True)
class Windows:
    window: int  # frames per window
    stride: int  # frames between window starts
    fps: float

    def sampled(self, num_frames: int, pre: Preprocessing) -> list[int]:
        """Offsets (from the window's start) of the frames a window of `num_frames` samples."""
        return eval_indices(num_frames, pre.num_frames, pre.sampling_rate, 1)[0]

    def times(self, start: int, window: int | None = None) -> tuple[float, float]:
        """(start_s, end_s) of the window starting at frame `start`: frame index / the stream's average fps."""
        return round(start / self.fps, 6), round((start + (window or self.window)) / self.fps, 6)


def windows_for(pre: Preprocessing, fps: float, spec: WindowSpec | None = None) -> Windows:
    """Window and stride in frames at `fps` (see the module docstring for the defaults)."""
    spec = spec or WindowSpec()
    if spec.window_s is not None:
        window = max(1, round(spec.window_s * fps))
    elif pre.sampling_rate > 0:
        window = (pre.num_frames - 1) * pre.sampling_rate + 1
    else:
        window = max(1, round(UNIFORM_WINDOW_S * fps))
    stride = max(1, round(spec.stride_s * fps)) if spec.stride_s is not None else max(1, window // 2)
    return Windows(window, stride, fps)


def timeline_preprocessing(pre: Preprocessing, views: int | None = None) -> Preprocessing:
    """The recipe's preprocessing for one clip per window: its spatial crops (or `views` of them)."""
    return pre.replace(temporal_views=1, spatial_views=views or pre.spatial_views)


def frame_clip(rgb, pre: Preprocessing) -> torch.Tensor:
    """One frame [H, W, 3] -> [V, 3, S, S], each spatial crop, as eval_transform treats every frame."""
    crops = eval_transform(rgb[None], pre.size, pre.spatial_views, pre.mean, pre.std)  # V x [3, 1, S, S]
    return torch.stack([c[:, 0] for c in crops])


@dataclass
class WindowBatch:
    """Windows ready for the model: their clips, and where each came from."""

    clips: torch.Tensor  # [B, V, 3, T, S, S]
    starts: list[int]  # first frame of each window
    frames: list[list[int]]  # the frame indices each window sampled
    arrived: list[float]  # time.perf_counter() when each window's last frame was decoded
    win: Windows
    live: bool
    window: int | None = None  # frames per window where it differs from win.window (a short file's one window)

    def times(self) -> list[tuple[float, float]]:
        """(start_s, end_s) of each window."""
        return [self.win.times(start, self.window) for start in self.starts]


class WindowAssembler:
    """Frames in, in decode order; complete windows out. Holds the transformed frames open windows sample."""

    def __init__(self, win: Windows, pre: Preprocessing):
        self.win, self.pre = win, pre
        self.offsets = win.sampled(win.window, pre)
        self.held: dict[int, torch.Tensor] = {}  # frame index -> [V, 3, S, S]
        self.count = 0  # frames seen
        self.next_start = 0  # the first frame of the next window to complete

    def wanted(self, index: int) -> bool:
        """Does some window sample frame `index`? (Its start, index - offset, is a multiple of the stride.)"""
        return any(index >= o and (index - o) % self.win.stride == 0 for o in self.offsets)

    def add(self, frame: av.VideoFrame) -> list[int]:
        """Take the next decoded frame; the starts of the windows it completes."""
        index, self.count = self.count, self.count + 1
        if self.wanted(index):
            self.held[index] = frame_clip(rgb_frame(frame), self.pre)
        done = []
        while self.next_start + self.win.window <= self.count:
            done.append(self.next_start)
            self.next_start += self.win.stride
        return done

    def indices(self, start: int) -> list[int]:
        return [start + o for o in self.offsets]

    def clip(self, start: int) -> torch.Tensor:
        """The window starting at `start` as one model input [V, 3, T, S, S]."""
        return torch.stack([self.held[i] for i in self.indices(start)], dim=2)

    def forget_before(self, start: int) -> None:
        """Drop the frames no window from `start` on samples."""
        self.held = {i: c for i, c in self.held.items() if i >= start}


def batch_of(assembler: WindowAssembler, ready: list[tuple[int, float]], live: bool) -> WindowBatch:
    """Windows (start, arrival time) as one batch [B, V, 3, T, S, S]."""
    clips = torch.stack([assembler.clip(start) for start, _ in ready])
    starts = [start for start, _ in ready]
    frames = [assembler.indices(start) for start in starts]
    return WindowBatch(clips, starts, frames, [arrived for _, arrived in ready], assembler.win, live)


def iter_window_batches(
    video: VideoSource,
    pre: Preprocessing,
    spec: WindowSpec | None = None,
    batch_windows: int | None = None,
    max_clips: int = DEFAULT_BATCH_CLIPS,
    limits: DecodeLimits | None = None,
) -> Iterator[WindowBatch]:
    """The model input of every window of `video` (a path, the file's bytes, or a live source), in time
    order, `batch_windows` windows at a time (default: `max_clips` clips' worth; 1 for a live source, so
    each window leaves as soon as its last frame arrives), from one sequential decode. `pre` is the
    timeline's preprocessing (`timeline_preprocessing`). No model here: the service batches these
    across requests, the CLI runs them at once."""
    with open_video(video, limits, live_ok=True) as source:
        win = windows_for(pre, source.fps, spec)
        if batch_windows is None:
            batch_windows = 1 if source.live else max(1, max_clips // pre.views)
        assembler = WindowAssembler(win, pre)
        ready: list[tuple[int, float]] = []
        limits = limits or DecodeLimits()
        for frame in source.frames(limits):
            if not source.live:  # a file's length, as it decodes (headers may not tell it)
                limits.check_duration(assembler.count / win.fps)
            ready += [(start, time.perf_counter()) for start in assembler.add(frame)]
            if len(ready) >= batch_windows:
                yield batch_of(assembler, ready, source.live)
                assembler.forget_before(assembler.next_start)
                ready = []
        if ready:
            yield batch_of(assembler, ready, source.live)
        count, live = assembler.count, source.live
    if count == 0:
        raise VideoError(f"no frame of the video can be decoded: {source.name}")
    if assembler.next_start == 0:  # shorter than one window
        if live:
            raise VideoError(f"the stream {source.name} ended after {count} frames, before one window of {win.window}")
        yield short_video_window(video, pre, win, limits)


def short_video_window(video: VideoSource, pre: Preprocessing, win: Windows, limits: DecodeLimits) -> WindowBatch:
    """A file shorter than one window: one window over all of it, the clip the eval path makes of it.

    A second decode, of a video under one window long; the first pass held none of its frames, since
    until the end no frame is known to be sampled."""
    views = prepare_eval_views(video, pre, limits=limits)
    count = views.num_video_frames
    return WindowBatch(views.clips[None], [0], views.frame_indices, [time.perf_counter()], win, False, count)


class LiveWindows:
    """A live source decoded in a thread of its own, apart from the model, always up to its newest frame.

    policy "drop": the consumer gets the newest complete window each time it asks; windows it did not
    reach in time are skipped (counted), never queued, so what it reports stays live however slow the
    model is. policy "all": every window in order (a recording replayed as a stream), however late.

    Iterate for one-window WindowBatches; `lag_s(batch)` is, at the moment it is asked, the wall-clock
    seconds since the window's last frame arrived.
    """

    def __init__(
        self,
        video: str,
        pre: Preprocessing,
        spec: WindowSpec | None = None,
        policy: str = "drop",
        limits: DecodeLimits | None = None,
    ):
        if policy not in LIVE_POLICIES:
            raise ConfigError(f"the live policy must be one of {', '.join(LIVE_POLICIES)}, got {policy!r}")
        self.limits = limits or DecodeLimits()
        self.source = open_video(video, self.limits, live_ok=True)  # an unreachable stream fails here, in the caller
        self.win = windows_for(pre, self.source.fps, spec)
        self.policy = policy
        self.assembler = WindowAssembler(self.win, pre)
        self.changed = threading.Condition()
        self.ready: deque[tuple[int, torch.Tensor, float]] = deque()  # (start, clip [V, 3, T, S, S], arrived)
        self.skipped = 0  # windows dropped since the consumer last took one
        self.ended, self.error, self.stopping = False, None, False
        self.thread = threading.Thread(target=self._decode, daemon=True, name="stadapter-live-decode")
        self.thread.start()

    def _decode(self) -> None:
        try:
            for frame in self.source.frames(self.limits):
                starts = self.assembler.add(frame)
                windows = [(start, self.assembler.clip(start), time.perf_counter()) for start in starts]
                if windows:
                    self.assembler.forget_before(self.assembler.next_start)
                with self.changed:
                    if windows and self.policy == "drop":
                        self.skipped += len(self.ready) + len(windows) - 1
                        self.ready.clear()
                        windows = windows[-1:]
                    self.ready.extend(windows)
                    self.changed.notify_all()
                if self.stopping:
                    return
        except Exception as e:  # handed to the consumer, in its thread
            self.error = e
        finally:
            with self.changed:
                self.ended = True
                self.changed.notify_all()
            self.source.close()

    def __iter__(self) -> Iterator[WindowBatch]:
        taken = 0
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.ready or self.ended)
                if not self.ready:
                    break
                start, clip, arrived = self.ready.popleft()
            taken += 1
            yield WindowBatch(clip[None], [start], [self.assembler.indices(start)], [arrived], self.win, True)
        if self.error is not None:
            raise self.error
        if self.assembler.count == 0:
            raise VideoError(f"no frame of the stream {self.source.name} could be decoded")
        if taken == 0 and not self.stopping:
            raise VideoError(
                f"the stream {self.source.name} ended after {self.assembler.count} frames, "
                f"before one window of {self.win.window}"
            )

    def take_skipped(self) -> int:
        """Windows dropped since the last call."""
        with self.changed:
            skipped, self.skipped = self.skipped, 0
        return skipped

    @staticmethod
    def lag_s(batch: WindowBatch) -> float:
        """Wall-clock seconds since the batch's last window got its last frame: true while the stream runs
        and after it ends alike (a window labelled late says so)."""
        return round(max(0.0, time.perf_counter() - batch.arrived[-1]), 3)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=READ_STOP_S)


READ_STOP_S = 2.0  # how long close() waits for the decode thread (it ends at its next frame, or its read timeout)
