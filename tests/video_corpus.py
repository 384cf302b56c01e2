"""A corpus of hard real-world video kinds, made with the ffmpeg command line (and PyAV where ffmpeg cannot).

Every frame shows its own index: the top half holds 8 vertical stripes, stripe b bright when bit b of
the frame number is set; the bottom half is moving texture, so encoders really predict between frames.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, RATE, FRAMES = 160, 120, 25, 48
BITS = 8
PATTERN = (
    f"color=black:size={WIDTH}x{HEIGHT}:rate={RATE},format=yuv420p,"
    f"geq=lum='if(lt(Y,H/2),16+219*mod(floor(N/pow(2,floor(X*{BITS}/W))),2),mod(X*3+Y*5+7*N,200)+20)'"
    ":cb=128:cr=128"
)


def encoders() -> set[str]:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith(" V")}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def encode(path: Path, *options: str, frames: int = FRAMES, filters: str = "") -> Path:
    source = PATTERN + ("," + filters if filters else "")
    ffmpeg("-f", "lavfi", "-i", source, "-frames:v", str(frames), *options, str(path))
    return path


def frame_ids(frames: np.ndarray) -> list[int]:
    """The index each decoded frame [K, H, W, 3] shows (read from its stripes)."""
    top = frames[:, : frames.shape[1] // 2].mean(axis=(1, 3))  # [K, W]
    stripes = top.reshape(len(frames), BITS, -1)[:, :, 2:-2].mean(axis=2)  # stripe centres, away from edges
    return [int(sum(1 << b for b in range(BITS) if row[b] > 128)) for row in stripes]


def damage_one_packet(source: Path, path: Path) -> Path:
    """A copy with the middle of one inter-frame packet overwritten, as in a slightly corrupt download."""
    with av.open(str(source)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size and not p.is_keyframe]
    pos, size = packets[len(packets) // 2]
    data = bytearray(source.read_bytes())
    data[pos + size // 3 : pos + 2 * size // 3] = bytes(range(256)) * (size // 768) + bytes(size // 3 % 256)
    path.write_bytes(bytes(data))
    return path


def add_empty_last_packet(source: Path, path: Path) -> Path:
    """A remux whose last packet holds only an access-unit delimiter: it decodes to no frame."""
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream_in = src.streams.video[0]
        stream = dst.add_stream_from_template(stream_in)
        last = None
        for packet in src.demux(stream_in):
            if packet.size == 0:
                continue
            packet.stream = stream
            dst.mux(packet)
            last = (packet.pts, packet.dts, packet.duration)
        extra = av.Packet(b"\x00\x00\x00\x02\x09\xf0")  # length-prefixed AUD NAL unit, no picture
        extra.stream, extra.time_base = stream, stream_in.time_base
        extra.pts = extra.dts = max(last[0], last[1]) + (last[2] or 1)
        dst.mux(extra)
    return path


def rotated(source: Path, path: Path, degrees: int) -> Path:
    """A remux of `source` with a display rotation tag, as phones write them."""
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream_in = src.streams.video[0]
        stream = dst.add_stream_from_template(stream_in)
        stream.set_display_rotation(degrees)
        for packet in src.demux(stream_in):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
    return path


X264_BFRAMES = ("-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "12", "-x264-params", "open_gop=1")


def make_corpus(folder: Path) -> dict[str, Path]:
    """name -> file, for every kind this ffmpeg can write; `skipped` lists the others with the reason."""
    folder.mkdir(parents=True, exist_ok=True)
    have = encoders()
    corpus = {}

    def add(name, *options, **kw):
        corpus[name] = encode(folder / name, *options, **kw)

    add("h264_bframes_opengop.mp4", *X264_BFRAMES)
    ffmpeg("-ss", "0.5", "-i", str(corpus["h264_bframes_opengop.mp4"]), "-c", "copy", str(folder / "h264_cut.mp4"))
    corpus["h264_cut.mp4"] = folder / "h264_cut.mp4"  # stream-copy cut: an edit list and negative dts
    add("mpeg2.mpg", "-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-q:v", "4", "-f", "mpeg")
    add("mpeg2.vob", "-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-q:v", "4", "-f", "vob")
    add("h264_camera.ts", *X264_BFRAMES, "-output_ts_offset", "3600", "-f", "mpegts")
    add("mpeg4_bframes.avi", "-c:v", "mpeg4", "-bf", "2", "-g", "12", "-q:v", "4", "-vtag", "XVID")
    add("mjpeg.avi", "-c:v", "mjpeg", "-q:v", "5")
    add("vp9_altref.webm", "-c:v", "libvpx-vp9", "-auto-alt-ref", "1", "-lag-in-frames", "16", "-g", "24")
    add("vp8_altref.webm", "-c:v", "libvpx", "-auto-alt-ref", "1", "-lag-in-frames", "16", "-g", "24")
    if "libx265" in have:
        add("hevc_bframes.mp4", "-c:v", "libx265", "-x265-params", "bframes=3:keyint=12:log-level=error")
    for av1 in ("libsvtav1", "libaom-av1"):
        if av1 in have:
            speed = ("-preset", "12") if av1 == "libsvtav1" else ("-cpu-used", "8")
            add("av1.mkv", "-c:v", av1, *speed, "-g", "24")
            break
    variable = "setpts='(N*40+if(gt(N,20),700,0)+if(gt(N,30),N*N,0))/1000/TB'"
    add("h264_vfr.mkv", *X264_BFRAMES, "-fps_mode", "passthrough", filters=variable)
    corpus["h264_rotated.mp4"] = rotated(corpus["h264_bframes_opengop.mp4"], folder / "h264_rotated.mp4", 90)
    plain = encode(folder / "plain.mp4", "-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-bf", "0")
    corpus["h264_damaged.mp4"] = damage_one_packet(plain, folder / "h264_damaged.mp4")
    corpus["h264_damaged_bframes.mp4"] = damage_one_packet(
        corpus["h264_bframes_opengop.mp4"], folder / "h264_damaged_bframes.mp4"
    )
    corpus["h264_empty_last_packet.mp4"] = add_empty_last_packet(
        corpus["h264_bframes_opengop.mp4"], folder / "h264_empty_last_packet.mp4"
    )
    return corpus


def skipped_kinds() -> dict[str, str]:
    have = encoders()
    reasons = {}
    if "libx265" not in have:
        reasons["hevc_bframes.mp4"] = "this ffmpeg has no HEVC encoder (libx265)"
    if not {"libsvtav1", "libaom-av1"} & have:
        reasons["av1.mkv"] = "this ffmpeg has no AV1 encoder (libsvtav1 or libaom-av1)"
    return reasons


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def oracle(path: Path) -> np.ndarray:
    """Every frame PyAV decodes, in output order, turned as displayed: the definition of frame i."""
    frames = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                decoded = packet.decode()
            except av.InvalidDataError:
                continue  # like ffmpeg: skip a packet that does not decode, go on
            for frame in decoded:
                turns = int(round(frame.rotation or 0)) % 360 // 90
                frames.append(np.rot90(frame.to_ndarray(format="rgb24"), k=turns))
    return np.stack(frames)
