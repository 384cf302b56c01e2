"""Decode just the frames a clip needs, as uint8 RGB, the way a person sees the video.

decord is the default decoder; PyAV is the fallback (no decord wheel for Python 3.12+ / macOS arm64) and
can be chosen. Both go through one probe made with PyAV that only demuxes packets (no decoding): it gives
the frame count from the packets themselves (container metadata can disagree with what decodes), each
frame's timestamp (variable frame rate), and the rotation tag. decord is used only where its own index
agrees with the probe and there is no rotation tag; otherwise PyAV decodes, seeking to the keyframe
before each needed frame, so memory holds only the requested frames, never the whole video.
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass, field

import av
import numpy as np

from ..errors import VideoError

VideoSource = str | os.PathLike | bytes
DECODERS = ("decord", "pyav")


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Probe:
    """What the packets say: one entry per frame, in display order."""

    pts: list[int]  # presentation timestamps, sorted; frame i has pts[i]
    keyframe_pts: list[int]  # sorted
    time_base: float
    rotation: int  # degrees counterclockwise to turn a decoded frame to display it (0, 90, 180, 270)
    height: int
    width: int
    codec: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.pts)


def _name(video: VideoSource) -> str:
    return "<bytes>" if isinstance(video, bytes | bytearray) else str(video)


def _open_container(video: VideoSource) -> av.container.InputContainer:
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
        return av.open(source, mode="r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoError(f"not a readable video file ({reason}): {_name(video)}") from None


def _video_stream(container: av.container.InputContainer, video: VideoSource) -> av.video.stream.VideoStream:
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe...
        raise VideoError(f"this is a still image ({container.format.name}), not a video: {_name(video)}")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise VideoError(f"no video stream in {_name(video)} (it holds: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def probe(video: VideoSource) -> Probe:
    """Demux every packet (cheap: no decoding), then decode one frame to read size and rotation."""
    with _open_container(video) as container:
        stream = _video_stream(container, video)
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.FFmpegError:
            pass  # truncated: keep the packets read so far; decoding will tell what really holds a frame
        if not pts:
            raise VideoError(f"the video has no frames: {_name(video)}")
        pts.sort()
        keys.sort()
        if not keys or keys[0] > pts[0]:
            keys.insert(0, pts[0])  # some muxers leave the first keyframe unflagged
        container.seek(pts[0], stream=stream, backward=True)
        first = next(_decoded(container, stream), None)
        if first is None:
            raise VideoError(f"no frame of the video can be decoded: {_name(video)}")
        rotation = int(round(first.rotation or 0)) % 360
        if rotation % 90:
            raise VideoError(f"unsupported rotation tag {rotation} degrees in {_name(video)}")
        return Probe(
            pts=pts,
            keyframe_pts=keys,
            time_base=float(stream.time_base or 0),
            rotation=rotation,
            height=first.height,
            width=first.width,
            codec=stream.codec_context.name,
        )


def _decoded(container, stream):
    """Decoded frames from the current position; stops quietly at corrupt data (truncated files)."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.FFmpegError:
        return


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """[K, H, W, 3] turned counterclockwise by `rotation` degrees, as players display it."""
    if rotation == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=rotation // 90, axes=(1, 2)))


def _decode_pyav(video: VideoSource, info: Probe, wanted: list[int]) -> dict[int, np.ndarray]:
    """Frames for sorted unique indices, seeking to the keyframe before each one that is far ahead."""
    out: dict[int, np.ndarray] = {}
    with _open_container(video) as container:
        stream = _video_stream(container, video)
        frames, last_pts = None, None  # the decoding position: iterator and pts of the last frame decoded

        def seek(pts: int) -> None:
            nonlocal frames, last_pts
            container.seek(pts, stream=stream, backward=True)
            frames, last_pts = _decoded(container, stream), None

        def frame_at(target: int):
            """Decode forward to `target`; the frame with exactly that pts, or None."""
            nonlocal last_pts
            held = None
            while last_pts is None or last_pts < target:
                frame = next(frames, None)
                if frame is None:
                    break
                if frame.pts == target:
                    held = frame
                last_pts = frame.pts if frame.pts is not None else target
            return held

        for index in wanted:
            target = info.pts[index]
            key = info.keyframe_pts[bisect.bisect_right(info.keyframe_pts, target) - 1]
            if frames is None or last_pts is None or last_pts < key or last_pts >= target:
                seek(key)
            frame = frame_at(target)
            if frame is None and key != info.pts[0]:  # the seek landed past the target: go from the start
                seek(info.pts[0])
                frame = frame_at(target)
            if frame is None:
                break  # the packets promised a frame that does not decode
            out[index] = frame.to_ndarray(format="rgb24")
    return out


def _decord_agrees(reader, info: Probe) -> bool:
    """decord's own index (count and timestamps) must match the packets, or its seeks can land elsewhere."""
    if len(reader) != info.num_frames or info.time_base <= 0:
        return False
    starts = reader.get_frame_timestamp(np.arange(info.num_frames))[:, 0]
    expected = np.asarray(info.pts, dtype=np.float64) * info.time_base
    return bool(np.allclose(starts - starts[0], expected - expected[0], atol=0.5 * info.time_base + 1e-6))


def _decode_decord(video: VideoSource, info: Probe, wanted: list[int]) -> dict[int, np.ndarray] | None:
    """Frames via decord, or None where decord cannot be trusted with this file."""
    import decord

    if info.rotation:  # decord ignores rotation tags (and fails on some)
        return None
    source = io.BytesIO(video) if isinstance(video, bytes | bytearray) else os.fspath(video)
    try:
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=0)  # 0: FFmpeg picks
        if not _decord_agrees(reader, info):
            return None
        batch = reader.get_batch(wanted).asnumpy()  # [K, H, W, 3]
    except (decord.DECORDError, RuntimeError, ValueError):
        return None
    if batch.shape[1:] != (info.height, info.width, 3):
        return None
    return dict(zip(wanted, batch, strict=True))


def resolve_decoder(decoder: str | None) -> str:
    if decoder is None:
        return "decord" if decord_available() else "pyav"
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS} or None, got {decoder!r}")
    if decoder == "decord" and not decord_available():
        raise VideoError("decord is not installed here (no wheel for this platform); use decoder='pyav'")
    return decoder


def decode_with_probe(video: VideoSource, info: Probe, indices: list[int], decoder: str | None = None) -> np.ndarray:
    """uint8 RGB frames [K, H, W, 3] for `indices` (any order, repeats allowed) of a probed video."""
    if not indices:
        raise ValueError("no frame indices given")
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise VideoError(f"frame index {bad[0]} is outside the video's {info.num_frames} frames: {_name(video)}")
    wanted = sorted(set(int(i) for i in indices))
    got = None
    if resolve_decoder(decoder) == "decord":
        got = _decode_decord(video, info, wanted)
    if got is None:
        got = _decode_pyav(video, info, wanted)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ShortVideoError(
            f"frame {missing[0]} of {info.num_frames} does not decode (truncated or corrupt video?): {_name(video)}"
        )
    return _rotate(np.stack([got[i] for i in indices]), info.rotation)


class ShortVideoError(VideoError):
    """Fewer frames decode than the packets promised."""


def count_decodable_frames(video: VideoSource) -> int:
    """Decode every frame (without converting it) to count the ones that really decode; slow, rare path."""
    with _open_container(video) as container:
        stream = _video_stream(container, video)
        return sum(1 for _ in _decoded(container, stream))


def decode_frames(video: VideoSource, indices, decoder: str | None = None) -> np.ndarray:
    """uint8 RGB frames [K, H, W, 3] of `video` (a path or bytes) at `indices`, rotated for display."""
    return decode_with_probe(video, probe(video), [int(i) for i in indices], decoder)
