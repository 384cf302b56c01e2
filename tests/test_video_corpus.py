"""Hard real-world video kinds (tests/video_corpus.py): every decode path returns exactly the frames of a
plain oracle (decode everything with PyAV in output order, then pick); decode limits hold."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import video_corpus

import stadapter_deploy.video.decode as decode_module
from stadapter_deploy.errors import VideoError
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.video import prepare_eval_views
from stadapter_deploy.video.check_list import check_video
from stadapter_deploy.video.decode import decode_frames, decode_sampled, decord_available, scan
from stadapter_deploy.video.limits import DecodeLimits, VideoTooLargeError
from stadapter_deploy.video.pipeline import eval_picker, eval_views_from_frames

pytestmark = pytest.mark.skipif(not video_corpus.ffmpeg_available(), reason="needs the ffmpeg command line")

NAMES = [
    "h264_bframes_opengop.mp4",
    "h264_cut.mp4",
    "mpeg2.mpg",
    "mpeg2.vob",
    "h264_camera.ts",
    "mpeg4_bframes.avi",
    "mjpeg.avi",
    "vp9_altref.webm",
    "vp8_altref.webm",
    "hevc_bframes.mp4",
    "av1.mkv",
    "h264_vfr.mkv",
    "h264_rotated.mp4",
    "h264_damaged.mp4",
    "h264_damaged_bframes.mp4",
    "h264_empty_last_packet.mp4",
]
SAMPLINGS = [  # (frames, sampling rate, temporal views): uniform, strided, multi-view
    (8, 0, 1),
    (8, 2, 1),
    (4, 3, 3),
]


@pytest.fixture(scope="session")
def oracles(corpus):
    return {name: video_corpus.oracle(path) for name, path in corpus.items()}


def video(corpus, name):
    if name not in corpus:
        pytest.skip(video_corpus.skipped_kinds().get(name, "not generated"))
    return corpus[name]


def use_path(monkeypatch, path):
    """Force a decode path: short clips otherwise always decode sequentially."""
    if path in ("seek", "decord"):
        monkeypatch.setattr(decode_module, "SEEK_MIN_FRAMES", 0)
        monkeypatch.setattr(decode_module, "SEEK_MIN_SAVING", 0)
    if path == "decord" and not decord_available():
        pytest.skip("decord is not installed on this platform")
    return "decord" if path == "decord" else "pyav"


def test_corpus_is_complete(corpus, oracles):
    assert set(NAMES) == set(corpus) | set(video_corpus.skipped_kinds())
    for name, frames in oracles.items():
        ids = video_corpus.frame_ids(frames)
        if name == "h264_cut.mp4":  # starts mid-video, at the cut
            assert 0 < ids[0] and ids == list(range(ids[0], ids[0] + len(ids)))
        elif name != "h264_rotated.mp4":  # (turned stripes are not readable)
            assert ids == list(range(video_corpus.FRAMES)), name  # the oracle shows frames in display order
    assert len(oracles["h264_empty_last_packet.mp4"]) == scan(corpus["h264_empty_last_packet.mp4"]).num_frames - 1
    assert len(oracles["h264_cut.mp4"]) < video_corpus.FRAMES


@pytest.mark.parametrize("path", ["sequential", "seek", "decord"])
@pytest.mark.parametrize("name", NAMES)
def test_every_path_returns_the_oracles_frames(corpus, oracles, monkeypatch, name, path):
    file, expected = video(corpus, name), oracles.get(name)
    decoder = use_path(monkeypatch, path)
    if path == "decord" and "damaged" in name:
        pytest.skip("decord's older FFmpeg conceals a damaged packet differently; decord is opt-in (README)")
    for num_frames, rate, views in SAMPLINGS:
        pick = eval_picker(Preprocessing(num_frames, rate, temporal_views=views))
        frames, indices, info = decode_sampled(file, pick, decoder)
        assert info.num_frames == len(expected) and indices == pick(len(expected))
        np.testing.assert_array_equal(frames, expected[indices], err_msg=f"{name} {path} {pick}")
    indices = [len(expected) - 1, 0, 7, 7, len(expected) // 2]  # any order, repeats, the last frame
    np.testing.assert_array_equal(decode_frames(file, indices, decoder), expected[indices])


@pytest.mark.parametrize("name", ["h264_bframes_opengop.mp4", "mpeg2.mpg", "mpeg4_bframes.avi", "h264_camera.ts"])
def test_eval_views_equal_the_oracles(corpus, oracles, name):
    pre = Preprocessing(num_frames=4, sampling_rate=2, size=32, spatial_views=3, temporal_views=2)
    views = prepare_eval_views(corpus[name], pre)
    expected = oracles[name]
    indices = eval_picker(pre)(len(expected))
    assert views.num_video_frames == len(expected)
    torch.testing.assert_close(views.clips, eval_views_from_frames(expected[indices], pre), rtol=0, atol=0)


def test_seek_is_proven_or_not_taken(corpus, oracles, monkeypatch):
    """Where a seek lands provably it skips the frames before the keyframe; where not, PyAV decodes in order."""
    use_path(monkeypatch, "seek")
    last = video_corpus.FRAMES - 1
    for name in ["h264_bframes_opengop.mp4", "mpeg2.mpg", "h264_camera.ts", "vp9_altref.webm"]:
        got = decode_module._decode_seeking(corpus[name], scan(corpus[name]), [last], DecodeLimits())
        np.testing.assert_array_equal(got[last], oracles[name][last])
    damaged = corpus["h264_damaged.mp4"]  # frame 25 is concealed: its pixels depend on all decoded before it
    with pytest.raises(decode_module._Unproven):
        decode_module._decode_seeking(damaged, scan(damaged), [30], DecodeLimits())


def test_decord_only_for_streams_it_decodes_in_order(corpus):
    assert decode_module._decord_suits(scan(corpus["vp9_altref.webm"]))
    for name in ["h264_bframes_opengop.mp4", "mpeg2.mpg", "mpeg4_bframes.avi", "h264_camera.ts"]:
        assert not decode_module._decord_suits(scan(corpus[name])), name


def test_check_list_keeps_every_file_that_decodes(corpus, tmp_path):
    for name, path in corpus.items():
        assert check_video(str(path)) is None, name
    garbage = tmp_path / "garbage.mpg"
    garbage.write_bytes(b"\x00\x00\x01\xba" + bytes(5000))
    assert check_video(str(garbage))


def test_limits_refuse_a_huge_frame_before_decoding(bomb, monkeypatch):
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(VideoTooLargeError, match="8000x8000.*STADAPTER_MAX_PIXELS"):
        prepare_eval_views(bomb, Preprocessing(num_frames=2, size=32))
    monkeypatch.setattr(decode_module, "decoded_frames", None)  # nothing may be decoded: the headers decide
    with pytest.raises(VideoTooLargeError):
        decode_frames(bomb, [0])
    assert "STADAPTER_MAX_PIXELS" in check_video(str(bomb))
    with pytest.raises(VideoTooLargeError):
        prepare_eval_views(bomb.read_bytes(), Preprocessing(num_frames=2, size=32))


def test_limits_are_settings_read_once_and_passed_down(corpus):
    from stadapter_deploy.errors import ConfigError
    from stadapter_deploy.settings import read_settings

    path = corpus["h264_bframes_opengop.mp4"]
    limits = read_settings(DecodeLimits, {"STADAPTER_MAX_FRAMES": "10"})
    with pytest.raises(VideoTooLargeError, match="more than 10 frames.*STADAPTER_MAX_FRAMES") as caught:
        decode_frames(path, [0], limits=limits)
    assert caught.value.code == "video_too_large" and caught.value.limit == 10
    limits = read_settings(DecodeLimits, {"STADAPTER_MAX_FRAMES": "100", "STADAPTER_MAX_DURATION_S": "1"})
    with pytest.raises(VideoTooLargeError, match="STADAPTER_MAX_DURATION_S") as caught:
        decode_frames(path, [0], limits=limits)
    assert caught.value.code == "video_too_long"
    limits = read_settings(DecodeLimits, {"STADAPTER_MAX_PIXELS": str(160 * 120)})
    assert decode_frames(path, [0], limits=limits).shape == (1, 120, 160, 3)  # at the limit is fine
    with pytest.raises(ConfigError, match="STADAPTER_MAX_PIXELS"):
        read_settings(DecodeLimits, {"STADAPTER_MAX_PIXELS": "lots"})
    assert issubclass(VideoTooLargeError, VideoError)


def test_the_video_package_reads_no_environment_variable():
    """Settings are read once, by the app, through stadapter_deploy/settings.py; the video package takes
    them as arguments."""
    import ast

    import stadapter_deploy.video as video

    readers = []
    for path in Path(video.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = ast.unparse(node) if isinstance(node, ast.Attribute | ast.Name) else ""
            if name in ("os.environ", "os.getenv", "environ", "getenv"):
                readers.append(f"{path.name}:{node.lineno}")
    assert readers == []


def test_memory_cap_stops_a_decode_that_would_grow(bomb):
    """A worker that caps its memory fails cleanly on a bomb even with the header limits off."""
    script = textwrap.dedent(f"""
        from stadapter_deploy.video.decode import decode_with_probe, scan
        from stadapter_deploy.video.limits import DecodeLimits, limit_process_memory
        off = DecodeLimits(max_pixels=10**9)
        info = scan({str(bomb)!r}, off)
        used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        limit_process_memory(DecodeLimits(memory_mb=(used >> 20) + 150))
        try:
            decode_with_probe({str(bomb)!r}, info, [0, 1], "pyav", off)
        except (MemoryError, ValueError) as e:
            print("refused:", type(e).__name__)
        else:
            print("decoded")
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused:" in result.stdout
