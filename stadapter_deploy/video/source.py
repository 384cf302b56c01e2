"""The one opener: a video file, the file's bytes, or a live source, checked the same way for all.

Every reader of video in the project (exact decoding, the sequential pass of timelines and streams,
the list checker) opens through `open_video`, so every route refuses the same files with the same
words: an empty or missing file, something that is not a video, a still image, no video stream, a
codec no decoder knows, and headers over the decode limits.

A file (or its bytes) is opened only with the demuxers of real video containers (VIDEO_DEMUXERS) and
the file protocol: a file named .m3u8 is not read as a playlist, and nothing a file says makes the
decoder open another file or a connection. A live source is a stream URL FFmpeg opens (rtsp://,
http(s)://, udp://, ...) or a camera device such as /dev/video0, and only a caller that asks for one
(`live_ok`: stadapter-predict's stream argument) opens it. It has no end, so it is opened with
connection timeouts and no frame-count limit.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from ..errors import VideoError
from .limits import DecodeLimits

VideoSource = str | os.PathLike | bytes
# The demuxers a video file is opened with: real video containers and raw video streams. No playlist
# (hls, dash), concat list, image sequence, device, network or subtitle demuxer can be picked by a file's
# name or content, so a file never makes the decoder read another file or open a connection.
VIDEO_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "mpeg",
    "mpegts",
    "mpegvideo",
    "h264",
    "hevc",
    "m4v",
    "ivf",
    "obu",
    "flv",
    "asf",
    "ogg",
    "nut",
    "gif",
    "yuv4mpegpipe",
)
FILE_OPTIONS = {"format_whitelist": ",".join(VIDEO_DEMUXERS), "protocol_whitelist": "file"}
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"qoif")  # PNG, JPEG, BMP, TIFF, QOI
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "rtp")
DEFAULT_FPS = 25.0  # where a stream declares no frame rate (FFmpeg's own guess)
OPEN_TIMEOUT_S = 10.0  # a live source that does not answer in this time is unreachable
READ_TIMEOUT_S = 10.0  # a live source that sends nothing for this long has ended


def is_stream(source) -> bool:
    """A URL FFmpeg opens (rtsp://, http(s)://, udp://, ...) or a camera device such as /dev/video0."""
    if not isinstance(source, str):
        return False
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    return scheme in STREAM_SCHEMES or source.startswith("/dev/video")


def source_name(video: VideoSource) -> str:
    return "<bytes>" if isinstance(video, bytes | bytearray) else str(video)


@dataclass
class OpenVideo:
    """An opened, checked video: its container and first video stream. Close it (or use `with`)."""

    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    live: bool
    name: str

    @property
    def fps(self) -> float:
        """The stream's average frame rate (a guess where it declares none): frame index / fps = time."""
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        return float(rate) if rate and float(rate) > 0 else DEFAULT_FPS

    def frames(self, limits: DecodeLimits | None = None) -> Iterator[av.VideoFrame]:
        """Decoded frames in output order from the current position (see `decoded_frames`)."""
        return decoded_frames(self.container, self.stream, limits or DecodeLimits(), not self.live)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> OpenVideo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(video: VideoSource, limits: DecodeLimits | None = None, live_ok: bool = False) -> OpenVideo:
    """Open a path, the file's bytes, or (with `live_ok`) a live source, and check it before anything is
    decoded. Only a sequential pass reads a live source: exact sampling needs the frame count N."""
    live = is_stream(video)
    if live and not live_ok:
        raise VideoError(f"{video} is a live stream: it has no end to sample from; label it over time (a timeline)")
    container = _open_live(video) if live else _open_file(video)
    try:
        stream = _video_stream(container, video)
        if not live:
            _check_headers(container, stream, limits or DecodeLimits())
    except BaseException:
        container.close()
        raise
    return OpenVideo(container, stream, live, source_name(video))


def _open_file(video: VideoSource) -> av.container.InputContainer:
    if isinstance(video, bytes | bytearray):
        if len(video) == 0:
            raise VideoError("the video is empty (0 bytes)")
        source = io.BytesIO(video)
    else:
        path = os.fspath(video)
        if not os.path.isfile(path):
            raise VideoError(f"video file not found: {path}")
        if os.path.getsize(path) == 0:
            raise VideoError(f"the video file is empty (0 bytes): {path}")
        source = path
    try:
        return av.open(source, mode="r", metadata_errors="ignore", container_options=FILE_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        if isinstance(e, av.error.ArgumentError):  # a format outside VIDEO_DEMUXERS (a playlist, say)
            reason = "its format is not a video container"
        if _head(video).startswith(IMAGE_MAGIC) or _head(video)[8:12] == b"WEBP":
            raise VideoError(f"this is a still image, not a video: {source_name(video)}") from None
        raise VideoError(f"not a readable video file ({reason}): {source_name(video)}") from None


def _head(video: VideoSource) -> bytes:
    if isinstance(video, bytes | bytearray):
        return bytes(video[:16])
    with open(video, "rb") as f:
        return f.read(16)


def _open_live(url: str) -> av.container.InputContainer:
    options = {"rtsp_transport": "tcp"} if url.startswith("rtsp") else {}
    fmt = "v4l2" if url.startswith("/dev/video") else None
    try:
        return av.open(url, format=fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
    except (av.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoError(f"cannot open the stream {url} ({reason})") from None


def _video_stream(container: av.container.InputContainer, video: VideoSource) -> av.video.stream.VideoStream:
    name = source_name(video)
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoError(f"no video stream in {name} (it holds: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a codec tag no decoder in this FFmpeg knows
        raise VideoError(f"the video's codec is not one this decoder knows: {name}")
    # Slice threads, PyAV's default. Frame threads (FFmpeg 8) drop the last frames after a trailing packet
    # that holds no picture, and conceal damaged packets differently: not the reference decode.
    stream.thread_type = "SLICE"
    return stream


def _check_headers(container, stream, limits: DecodeLimits) -> None:
    """The limits against what the headers declare, before anything is decoded."""
    codec = stream.codec_context
    if codec.width and codec.height:
        limits.check_size(codec.width, codec.height)
    if stream.frames:
        limits.check_frames(stream.frames)
    if stream.duration and stream.time_base:
        limits.check_duration(float(stream.duration * stream.time_base))
    elif container.duration:
        limits.check_duration(container.duration / av.time_base)


def decoded_frames(container, stream, limits: DecodeLimits, count_frames: bool = True):
    """Decoded frames in output order from the current position, within the limits (frame i of a video
    is the i-th this yields from the start). `count_frames=False` for a live stream, which has no end.

    Like ffmpeg, a packet that fails to decode is skipped and decoding goes on; a demuxing error
    (a truncated file, a dropped connection, a read timeout) ends the video quietly; running out of
    memory raises VideoTooLargeError (limits.out_of_memory).
    """
    count = 0
    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.MemoryError:
                raise
            except av.FFmpegError:
                continue
            for frame in decoded:
                count += 1
                if count_frames:
                    limits.check_frames(count)
                limits.check_size(frame.width, frame.height)
                yield frame
    except av.error.MemoryError:
        raise limits.out_of_memory() from None
    except av.FFmpegError:
        return


def frame_rotation(frame: av.VideoFrame) -> int:
    """Degrees counterclockwise to turn the frame to display it (0, 90, 180, 270)."""
    rotation = int(round(frame.rotation or 0)) % 360
    if rotation % 90:
        raise VideoError(f"unsupported rotation tag of {rotation} degrees")
    return rotation


def rgb_frame(frame: av.VideoFrame) -> np.ndarray:
    """[H, W, 3] uint8, turned counterclockwise by the rotation tag as players display it.

    Convert a frame as soon as it is decoded: a decoder may still write into a frame it has output
    (concealing a damaged packet in a later frame changed held ones).
    """
    rotation = frame_rotation(frame)
    image = frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image
