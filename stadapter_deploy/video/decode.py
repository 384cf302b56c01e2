"""Decode exactly the frames a player shows, as uint8 RGB turned for display.

Frame i is the i-th frame that a full sequential decode of the file yields, in the decoder's output
order: what `ffmpeg -i video -vsync passthrough f_%05d.png` writes. N is the number of frames that
decode. Container timestamps are only hints (some files have none, duplicates, or out-of-order ones).

A packet scan (demux only, no decoding) checks the decode limits and picks a path per file:
- sequential (PyAV): decode every frame from the start without converting it, hold only the wanted
  ones, convert those. Exact by definition, and the same pass counts N. Every video below
  SEEK_MIN_FRAMES takes it: there it costs about what seeking does (docs/benchmarks.md).
- seek (PyAV, long videos): seek to the keyframe before each wanted frame and prove the landing: the
  frames decoded from there must carry exactly the timestamps of the packets from that keyframe on.
  Where they do not (an overshooting seek, packed B-frames, no timestamps), decode sequentially.
- decord (opt-in, long videos): only for streams without frame reordering in mp4/mkv/webm, and only
  where decord's frame for the last wanted index equals PyAV's (decoder rounding aside). Its older
  FFmpeg conceals a damaged packet differently, which that check cannot see: hence not the default.
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
from dataclasses import dataclass, field, replace

import av
import numpy as np

from ..errors import VideoError
from .limits import DecodeLimits
from .source import VideoSource, decoded_frames, frame_rotation, open_video, rgb_frame, source_name

DECODERS = ("decord", "pyav")
SEEK_MIN_FRAMES = 3000  # shorter videos decode sequentially: as fast as seeking there, and exact by definition
SEEK_MIN_SAVING = 2  # and only where seeking decodes at most half the frames a sequential pass would
MAX_LEADING_FRAMES = 8  # frames a decoder may output after a seek before the keyframe aimed at
DECORD_CODECS = ("h264", "hevc", "vp8", "vp9", "av1")
DECORD_FORMATS = ("mov", "mp4", "matroska", "webm")
DECORD_TOLERANCE = 2  # levels: decord bundles an older FFmpeg whose pixels can differ by decoder rounding


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Probe:
    num_frames: int  # frames that decode; where `counted` is False, the packets that should yield one
    height: int
    width: int
    codec: str
    rotation: int = 0  # degrees counterclockwise to turn a decoded frame to display it
    counted: bool = False
    frame_pts: list[int] = field(default_factory=list)  # the packets' pts, sorted ([] where unusable)
    keyframes: list[int] = field(default_factory=list)  # indices into frame_pts of the keyframes
    reordered: bool = True  # decode order differs from display order (B-frames), or timestamps are missing
    format: str = ""


class ShortVideoError(VideoError):
    """Fewer frames decode than the packets promised."""


class _Unproven(Exception):
    """A seek's landing or a frame's identity cannot be proven; decode sequentially instead."""


def scan(video: VideoSource, limits: DecodeLimits | None = None) -> Probe:
    """Headers and packets only, no decoding: size, codec, packet count, timestamps and keyframes."""
    limits = limits or DecodeLimits()
    with open_video(video, limits) as opened:
        container, stream = opened.container, opened.stream
        pts, key_pts, count = [], [], 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # discard: before an edit list's start
                    continue
                count += 1
                limits.check_frames(count)
                if packet.pts is not None:
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        key_pts.append(packet.pts)
        except av.FFmpegError:
            pass  # truncated: keep the packets read so far
        codec, fmt, time_base = stream.codec_context, container.format.name, stream.time_base
    if count == 0:
        raise VideoError(f"the video has no frames: {source_name(video)}")
    info = Probe(num_frames=count, height=codec.height, width=codec.width, codec=codec.name, format=fmt)
    if len(pts) == count and len(set(pts)) == count:  # timestamps usable to check seeks against
        info.frame_pts = sorted(pts)
        info.reordered = pts != info.frame_pts
        position = {p: i for i, p in enumerate(info.frame_pts)}
        info.keyframes = sorted(position[p] for p in key_pts)
        if time_base:
            limits.check_duration(float((info.frame_pts[-1] - info.frame_pts[0]) * time_base))
    return info


def _decode_sequential(video: VideoSource, keep: set[int], stop: int | None, limits: DecodeLimits):
    """Decode from the start, converting the frames whose index is in `keep`, up to frame `stop` (None: to
    the end). Returns ({index: RGB frame}, frames decoded, the first frame's (rotation, height, width)).

    Frames are converted at once: a decoder may still write into a frame it has output (concealing a
    damaged packet in a later frame changed held ones).
    """
    held, count, first = {}, 0, None
    with open_video(video, limits) as opened:
        for frame in decoded_frames(opened.container, opened.stream, limits):
            first = first or (frame_rotation(frame), frame.height, frame.width)
            if count in keep:
                held[count] = rgb_frame(frame)
            count += 1
            if stop is not None and count > stop:
                break
    return held, count, first


def _seek_landing(container, stream, info: Probe, index: int, limits: DecodeLimits):
    """Seek to the keyframe at or before `index`; (frames from the keyframe landed on, its index).

    The landing is proven: the first keyframe decoded must carry the pts of a keyframe the scan
    listed, at or before `index`. A seek that overshoots (MPEG-TS, MPEG-PS) is retried from the
    keyframes before.
    """
    key_index = {info.frame_pts[k]: k for k in info.keyframes}
    j = bisect.bisect_right(info.keyframes, index) - 1
    for key in reversed(info.keyframes[max(0, j - 2) : j + 1]):
        container.seek(info.frame_pts[key], stream=stream, backward=True)
        frames = decoded_frames(container, stream, limits)
        for frame in itertools.islice(frames, MAX_LEADING_FRAMES):
            landed = key_index.get(frame.pts)
            if landed is not None:
                if landed <= index:
                    return itertools.chain([frame], frames), landed
                break
    raise _Unproven


def _verified(frames, start: int, info: Probe):
    """(index, frame) from index `start` on, each frame's pts checked against the packets'."""
    for index, frame in enumerate(frames, start):
        if index >= len(info.frame_pts) or frame.pts != info.frame_pts[index]:
            raise _Unproven
        if frame.is_corrupt:  # concealed: its pixels depend on what was decoded before the seek
            raise _Unproven
        yield index, frame


def _decode_seeking(video: VideoSource, info: Probe, wanted: list[int], limits: DecodeLimits) -> dict:
    """{index: frame} for sorted `wanted`, seeking to the keyframe before each one that lies ahead."""
    out = {}
    with open_video(video, limits) as opened:
        container, stream = opened.container, opened.stream
        walk, next_index = None, 0
        for index in wanted:
            key = info.keyframes[bisect.bisect_right(info.keyframes, index) - 1]
            if walk is None or key > next_index:
                frames, landed = _seek_landing(container, stream, info, index, limits)
                walk = _verified(frames, landed, info)
            for i, frame in walk:
                if i == index:
                    out[index] = rgb_frame(frame)
                    break
            else:
                return out  # the video ends before `index`
            next_index = index + 1
    return out


def _count_from_last_keyframe(video: VideoSource, info: Probe, limits: DecodeLimits) -> int:
    """N of a long video: the last keyframe's index plus the frames that decode from it (proven)."""
    with open_video(video, limits) as opened:
        frames, landed = _seek_landing(opened.container, opened.stream, info, len(info.frame_pts) - 1, limits)
        return landed + sum(1 for _ in _verified(frames, landed, info))


def _should_seek(info: Probe, wanted: list[int]) -> bool:
    """Seek only in long videos, and only where it skips most of the decoding."""
    if len(info.frame_pts) < SEEK_MIN_FRAMES or not info.keyframes or info.keyframes[0] != 0:
        return False
    work = sum(index - info.keyframes[bisect.bisect_right(info.keyframes, index) - 1] + 1 for index in wanted)
    return SEEK_MIN_SAVING * work <= wanted[-1]


def _decord_suits(info: Probe) -> bool:
    """decord returns frames in decode order and mis-seeks in MPEG-PS: only plain streams qualify."""
    return not info.reordered and info.codec in DECORD_CODECS and any(f in info.format for f in DECORD_FORMATS)


def _decode_decord(video: VideoSource, info: Probe, wanted: list[int], limits: DecodeLimits) -> dict | None:
    """{index: RGB frame} via decord, or None where its last frame is not PyAV's (or it fails)."""
    import decord

    proof = _decode_seeking(video, info, wanted[-1:], limits).get(wanted[-1])
    if proof is None or info.rotation or proof.shape != (info.height, info.width, 3):  # decord ignores rotation
        return None
    source = io.BytesIO(video) if isinstance(video, bytes | bytearray) else os.fspath(video)
    try:
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=0)  # 0: FFmpeg picks
        batch = reader.get_batch(wanted).asnumpy()  # [K, H, W, 3]
    except (decord.DECORDError, RuntimeError, ValueError):
        return None
    if batch.shape[1:] != proof.shape or np.abs(batch[-1] - proof.astype(np.int16)).max() > DECORD_TOLERANCE:
        return None
    return dict(zip(wanted, batch, strict=True))


def _decode_wanted(video: VideoSource, info: Probe, wanted: list[int], decoder: str, limits: DecodeLimits) -> dict:
    """{index: RGB frame} for sorted unique `wanted`, by the path that suits the file (module docstring)."""
    if _should_seek(info, wanted):
        try:
            if decoder == "decord" and _decord_suits(info):
                got = _decode_decord(video, info, wanted, limits)
                if got is not None:
                    return got
            return _decode_seeking(video, info, wanted, limits)
        except _Unproven:
            pass
    return _decode_sequential(video, set(wanted), wanted[-1], limits)[0]


def resolve_decoder(decoder: str | None) -> str:
    """None means PyAV: decord is no faster on short clips (docs/benchmarks.md) and conceals damage differently."""
    if decoder is None:
        return "pyav"
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS} or None, got {decoder!r}")
    if decoder == "decord" and not decord_available():
        raise VideoError("decord is not installed here (no wheel for this platform); use decoder='pyav'")
    return decoder


def decode_with_probe(
    video: VideoSource, info: Probe, indices: list[int], decoder: str | None = None, limits: DecodeLimits | None = None
) -> np.ndarray:
    """uint8 RGB frames [K, H, W, 3] for `indices` (any order, repeats allowed) of a probed video."""
    if not indices:
        raise ValueError("no frame indices given")
    decoder = resolve_decoder(decoder)
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise VideoError(f"frame index {bad[0]} is outside the video's {info.num_frames} frames: {source_name(video)}")
    wanted = sorted(set(int(i) for i in indices))
    got = _decode_wanted(video, info, wanted, decoder, limits or DecodeLimits())
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ShortVideoError(
            f"frame {missing[0]} of {info.num_frames} does not decode (truncated or corrupt video?): "
            f"{source_name(video)}"
        )
    return _gather(got, indices)


def _gather(held: dict[int, np.ndarray], indices: list[int]) -> np.ndarray:
    """`np.stack([held[i] for i in indices])` without holding every frame twice: a frame leaves `held` as
    soon as it is copied for the last time (a 4K decode's frames are 50 MB each)."""
    for unused in set(held) - set(indices):
        del held[unused]
    last = {index: k for k, index in enumerate(indices)}
    first = held[indices[0]]
    out = np.empty((len(indices), *first.shape), first.dtype)  # [K, H, W, 3]
    for k, index in enumerate(indices):
        out[k] = held[index]
        if last[index] == k:
            del held[index]
    return out


def decode_frames(
    video: VideoSource, indices, decoder: str | None = None, limits: DecodeLimits | None = None
) -> np.ndarray:
    """uint8 RGB frames [K, H, W, 3] of `video` (a path or bytes) at `indices`, rotated for display."""
    limits = limits or DecodeLimits()
    return decode_with_probe(video, scan(video, limits), [int(i) for i in indices], decoder, limits)


def decode_sampled(video: VideoSource, pick, decoder: str | None = None, limits: DecodeLimits | None = None):
    """(frames [K, H, W, 3], indices, probe) for indices = pick(N), N the frames that decode.

    Short videos take one sequential pass: it holds the frames pick() wants for the packet count and
    for one frame fewer (a trailing packet that yields no frame), and counts N as it goes; a second
    pass fetches the rest only where N differs more (hidden or damaged frames).
    """
    decoder = resolve_decoder(decoder)
    limits = limits or DecodeLimits()
    info = scan(video, limits)
    if _should_seek(info, pick(info.num_frames)):
        try:
            info = replace(info, num_frames=_count_from_last_keyframe(video, info, limits), counted=True)
            indices = pick(info.num_frames)
            return decode_with_probe(video, info, indices, decoder, limits), indices, info
        except _Unproven:
            pass
    guesses = [n for n in (info.num_frames, info.num_frames - 1) if n > 0]
    held, count, first = _decode_sequential(video, {i for n in guesses for i in pick(n)}, None, limits)
    if count == 0:
        raise VideoError(f"no frame of the video can be decoded: {source_name(video)}")
    indices = pick(count)
    missing = sorted(set(indices) - held.keys())
    if missing:
        held.update(_decode_sequential(video, set(missing), missing[-1], limits)[0])
    rotation, height, width = first
    info = replace(info, num_frames=count, counted=True, rotation=rotation, height=height, width=width)
    return _gather(held, indices), indices, info


def count_decodable_frames(video: VideoSource, limits: DecodeLimits | None = None) -> int:
    """Decode every frame (without converting it) and count the ones that decode."""
    return _decode_sequential(video, set(), None, limits or DecodeLimits())[1]


def probe(video: VideoSource, limits: DecodeLimits | None = None) -> Probe:
    """scan() plus N counted by decoding (a proven tail count in long videos), size and rotation as shown."""
    limits = limits or DecodeLimits()
    info = scan(video, limits)
    _, count, first = _decode_sequential(video, set(), None if info.num_frames < SEEK_MIN_FRAMES else 0, limits)
    if count == 0:
        raise VideoError(f"no frame of the video can be decoded: {source_name(video)}")
    if info.num_frames >= SEEK_MIN_FRAMES:
        try:
            count = _count_from_last_keyframe(video, info, limits)
        except _Unproven:
            count = count_decodable_frames(video, limits)
    rotation, height, width = first
    return replace(info, num_frames=count, counted=True, rotation=rotation, height=height, width=width)
