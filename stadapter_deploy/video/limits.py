"""Decode limits: a tiny file that declares a huge picture, or millions of frames, must not take the machine.

Each limit is checked from the stream headers before any frame is decoded, and again while decoding
(a frame larger than declared, more frames than declared). Defaults fit real action-recognition input
and can be changed by environment variable; `limit_process_memory` caps a decode worker's address
space as the last line of defence.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from ..errors import VideoError

MAX_PIXELS_ENV = "STADAPTER_MAX_PIXELS"
MAX_FRAMES_ENV = "STADAPTER_MAX_FRAMES"
MAX_DURATION_ENV = "STADAPTER_MAX_DURATION_S"
MEMORY_ENV = "STADAPTER_DECODE_MEMORY_MB"

DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 MP: 4K UHD, DCI 4K and 5.3K action cameras pass; 8000x8000 does not
DEFAULT_MAX_FRAMES = 3 * 3600 * 60  # 3 hours at 60 fps
DEFAULT_MAX_DURATION_S = 3 * 3600.0  # a feature film; an hour-long recording passes
DEFAULT_MEMORY_MB = 8192  # address space, not resident memory: torch alone maps ~0.8 GB


class VideoTooLargeError(VideoError):
    """The video exceeds a decode limit (pixels per frame, frames, or duration)."""


def _env_number(name: str, default: float, kind=int):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise VideoError(f"{name}={value!r} is not a number") from None


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of one frame
    max_frames: int = DEFAULT_MAX_FRAMES  # frames (or packets) in the video
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    duration_env: str = MAX_DURATION_ENV  # the variable that sets max_duration_s, named in the refusal

    @classmethod
    def from_env(cls) -> DecodeLimits:
        return cls(
            max_pixels=_env_number(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS),
            max_frames=_env_number(MAX_FRAMES_ENV, DEFAULT_MAX_FRAMES),
            max_duration_s=_env_number(MAX_DURATION_ENV, DEFAULT_MAX_DURATION_S, float),
        )

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise VideoTooLargeError(
                f"frame size {width}x{height} is over the limit of {self.max_pixels} pixels per frame "
                f"(set {MAX_PIXELS_ENV} to change it)"
            )

    def check_frames(self, count: int) -> None:
        if count > self.max_frames:
            raise VideoTooLargeError(
                f"the video has more than {self.max_frames} frames (set {MAX_FRAMES_ENV} to change the limit)"
            )

    def check_duration(self, seconds: float) -> None:
        if seconds > self.max_duration_s:
            raise VideoTooLargeError(
                f"the video lasts {seconds:.0f} s, over the limit of {self.max_duration_s:.0f} s "
                f"(set {self.duration_env} to change it)"
            )


def limit_process_memory(max_bytes: int | None = None) -> int:
    """Cap this process's address space (RLIMIT_AS); a decode that needs more then fails with MemoryError.

    For decode worker processes; call it at start. Default: STADAPTER_DECODE_MEMORY_MB (8192). Returns the
    limit set, in bytes. Never raises the limit above one already in place.
    """
    if max_bytes is None:
        max_bytes = _env_number(MEMORY_ENV, DEFAULT_MEMORY_MB) * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        max_bytes = min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, hard))
    return max_bytes
