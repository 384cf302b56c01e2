"""One sequential pass over a video file or a live stream: frames in decoder output order, RGB as shown.

Frame i is the i-th frame this pass yields, as in stadapter_deploy/video/decode.py: a packet that fails
to decode is skipped, a demuxing error (a truncated file, a dropped connection, a read timeout) ends
the video. A frame's time is its index / the stream's average frame rate.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from ..errors import VideoError
from ..video.decode import decoded_frames
from ..video.limits import DecodeLimits
from .inputs import is_stream

DEFAULT_FPS = 25.0  # where a stream declares no frame rate (FFmpeg's own guess)
OPEN_TIMEOUT_S = 10.0  # a stream that does not answer in this time is unreachable
READ_TIMEOUT_S = 10.0  # a stream that sends nothing for this long has ended


@dataclass
class FrameSource:
    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    fps: float
    live: bool

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_container(source, live: bool) -> av.container.InputContainer:
    if live:
        options = {"rtsp_transport": "tcp"} if source.startswith("rtsp") else {}
        fmt = "v4l2" if source.startswith("/dev/video") else None
        try:
            return av.open(source, format=fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        except (av.FFmpegError, OSError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise VideoError(f"cannot open the stream {source} ({reason})") from None
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    elif not os.path.isfile(source):
        raise VideoError(f"video file not found: {source}")
    try:
        return av.open(source, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoError(f"not a readable video file ({reason}): {source}") from None


def open_frames(source) -> FrameSource:
    """Open a path, the file's bytes, or a stream URL / camera device for `sequential_frames`."""
    live = isinstance(source, str) and is_stream(source)
    container = open_container(source if live or isinstance(source, bytes) else os.fspath(source), live)
    if not container.streams.video:
        container.close()
        raise VideoError(f"no video stream in {source if not isinstance(source, bytes) else '<bytes>'}")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # as video/decode.py: frame threads drop trailing frames
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate and float(rate) > 0 else DEFAULT_FPS
    return FrameSource(container, stream, fps, live)


def sequential_frames(source: FrameSource, limits: DecodeLimits | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames in output order; convert each with `to_rgb` before asking for the next."""
    limits = limits or DecodeLimits.from_env()
    # a live stream has no end to bound by a frame count; its memory is bounded by the window
    yield from decoded_frames(source.container, source.stream, limits, count_frames=not source.live)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """[H, W, 3] uint8, turned counterclockwise by the rotation tag as players show it."""
    rotation = int(round(frame.rotation or 0)) % 360
    if rotation % 90:
        raise VideoError(f"unsupported rotation tag of {rotation} degrees")
    image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image
