"""Decode limits: a tiny file that declares a huge picture, or millions of frames, must not take the machine.

Each limit is checked from the stream headers before any frame is decoded, and again while decoding
(a frame larger than declared, more frames than declared). They are settings (stadapter_deploy/settings.py):
an app reads them from the environment once and passes them down; nothing here reads the environment.
`limit_process_memory` caps a decode worker's address space as the last line of defence.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from ..errors import VideoError
from ..settings import env_name, setting

MB = 1024 * 1024
RGB_BYTES = 3  # a decoded frame is held as uint8 RGB
FLOAT_BYTES = 4  # the model's input is float32


class VideoTooLargeError(VideoError):
    """The video exceeds a decode limit: `limit` is the limit's value, `setting` its DecodeLimits field;
    `code` is video_too_long for the duration, else video_too_large."""

    code = "video_too_large"

    def __init__(self, message: str, setting_name: str = "", limit: float | None = None):
        super().__init__(message)
        self.setting, self.limit = setting_name, limit
        if setting_name == "max_duration_s":
            self.code = "video_too_long"


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = setting(
        4096 * 4096,
        "STADAPTER_MAX_PIXELS",
        "pixels per frame (4K UHD, DCI 4K and 5.3K action cameras pass; an 8000x8000 decode bomb does not)",
        1,
    )
    max_frames: int = setting(3 * 3600 * 60, "STADAPTER_MAX_FRAMES", "frames per video (3 hours at 60 fps)", 1)
    max_duration_s: float = setting(
        3 * 3600.0, "STADAPTER_MAX_DURATION_S", "seconds per video (an hour-long recording passes)", 0.001
    )
    memory_mb: int = setting(
        8192,
        "STADAPTER_DECODE_MEMORY_MB",
        "address space of a decode process, MB: past it a decode fails (422), it does not grow; torch alone "
        "maps about 0.8 GB",
        256,
    )

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise self._over(
                "max_pixels", f"frame size {width}x{height} is over the limit of {self.max_pixels} pixels per frame"
            )

    def check_frames(self, count: int) -> None:
        if count > self.max_frames:
            raise self._over("max_frames", f"the video has more than {self.max_frames} frames")

    def check_duration(self, seconds: float) -> None:
        if seconds > self.max_duration_s:
            raise self._over(
                "max_duration_s", f"the video lasts {seconds:.0f} s, over the limit of {self.max_duration_s:.0f} s"
            )

    def _over(self, name: str, message: str) -> VideoTooLargeError:
        env = env_name(DecodeLimits, name)
        return VideoTooLargeError(f"{message} (set {env} to change it)", name, getattr(self, name))

    def out_of_memory(self) -> VideoTooLargeError:
        env = env_name(DecodeLimits, "memory_mb")
        return VideoTooLargeError(
            f"decoding it needs more memory than a decode process may use ({self.memory_mb} MB; set {env} to "
            "change the cap)",
            "memory_mb",
            self.memory_mb,
        )

    def decode_bound_bytes(self, frames_held: int, size: int) -> int:
        """The most memory one decode takes within these limits: the sampled frames it holds at the largest
        picture allowed (uint8 RGB), a fixed part per picture (the decoder's reference frames, one frame as
        float while it is normalized and resized: 40 bytes a pixel, measured), and the model input it makes.
        benchmarks/bench_decode_memory.py measures it: at most 975 MiB and 1745 MiB at 4096x4096 for 8 and 24
        frames held (H.264 with B-frames, VP9), against bounds of 1029 and 1806 MiB."""
        per_picture = 40 * self.max_pixels
        return frames_held * self.max_pixels * RGB_BYTES + per_picture + frames_held * 3 * size * size * FLOAT_BYTES


def limit_process_memory(limits: DecodeLimits) -> int:
    """Cap this process's address space (RLIMIT_AS) at `limits.memory_mb`; a decode that needs more then
    fails with MemoryError. For decode worker processes; call it at start. Returns the limit set, in bytes.
    Never raises the limit above one already in place."""
    max_bytes = limits.memory_mb * MB
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        max_bytes = min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, hard))
    return max_bytes
