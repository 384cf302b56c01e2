"""Live streams stay live: a real model slower than the stride, on a 40 s MPEG-TS stream sent at real time
over HTTP (and a UDP one), through `stadapter-predict --timeline URL` as a user runs it."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import make_tiny_bundle, wait_listening

from stadapter_deploy.net import free_port

BIN = Path(sys.executable).parent
STREAM_S = 40
WINDOW_S, STRIDE_S = 1.0, 0.25


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory):
    """A real bundle (the export path, ONNX) of a model slower than the stride on one thread on any of our CPUs:
    0.51 s a clip (median of 5, one thread) on a 2-core AMD EPYC with AVX-512 VNNI, where 6 blocks took 0.23 s,
    under the 0.25 s stride, and failed this test's precondition."""
    shape = dict(width=384, layers=12, heads=6, patch_size=16, image_size=224, adapter_width=64, adapter_layers=12)
    return make_tiny_bundle(tmp_path_factory.mktemp("slow-bundle"), **shape)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("live") / "live.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"]
        + ["-t", str(STREAM_S), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "0", str(path)],
        check=True,
    )
    return path


def read_lines(process: subprocess.Popen) -> list[tuple[float, dict]]:
    """(the moment the test read it, the record) for each JSON line the CLI prints."""
    lines = []
    for line in process.stdout:
        lines.append((time.monotonic(), json.loads(line)))
    return lines


def predict_stream(bundle: Path, url: str, *extra: str) -> subprocess.Popen:
    command = [str(BIN / "stadapter-predict"), "--bundle", str(bundle), "--timeline", url, "--no-progress"]
    command += ["--window", str(WINDOW_S), "--stride", str(STRIDE_S), "--threads", "1", "--backend", "onnxruntime"]
    return subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_model_slower_than_the_stride_stays_live_over_a_40_s_stream(slow_bundle, long_video):
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    sender = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(long_video), "-c", "copy"]
        + ["-f", "mpegts", "-listen", "1", url]
    )
    try:
        wait_listening(port, sender)
        cli = predict_stream(slow_bundle, url)
        lines = read_lines(cli)
        cli.wait(timeout=60)
        stderr = cli.stderr.read()
    finally:
        sender.kill()
        sender.wait()
    assert cli.returncode == 0, stderr
    records = [r for _, r in lines]
    model_s = statistics.median(r["latency_ms"] for r in records) / 1e3
    fps = 25
    window, stride = round(WINDOW_S * fps), round(STRIDE_S * fps)
    windows = (STREAM_S * fps - window) // stride + 1  # every window of the stream: labelled or skipped
    skipped = sum(r["skipped"] for r in records)
    assert model_s > STRIDE_S, f"the model must be slower than the stride for this test ({model_s:.2f} s)"
    assert skipped > 0 and len(records) + skipped == windows, (len(records), skipped, windows)
    assert f"{len(records)} windows labelled, {skipped} skipped" in stderr
    starts = [r["start_s"] for r in records]
    assert starts == sorted(starts) and starts[-1] > STREAM_S - 3  # kept up to the end of the stream
    # Bounded lag: never more than about one model call and a stride behind, at the start as at the end
    # (policy "all" falls further behind with every window: about 24 s by the end of this stream).
    lags = [r["lag_s"] for r in records]
    assert max(lags) < 3 * model_s + 2 * STRIDE_S + 1.0, (max(lags), model_s)
    assert statistics.median(lags[-10:]) < statistics.median(lags[:10]) + 1.0, lags
    # lag_s tracks the lag measured here: a line read at t about a window ending at end_s is t - t0 - end_s
    # behind the live edge (t0: when the stream started), so t - end_s - lag_s is the same for every line.
    offsets = [t - r["end_s"] - r["lag_s"] for t, r in lines]
    assert max(offsets) - min(offsets) < 1.5, offsets


@pytest.mark.slow
def test_a_udp_mpegts_stream(tiny_bundle, long_video, tmp_path):
    """UDP: the CLI listens, ffmpeg sends 8 s at real time; the stream ends when nothing comes for 10 s."""
    short = tmp_path / "short.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(long_video), "-t", "8", "-c", "copy", str(short)]
    )
    port = free_port(socket.SOCK_DGRAM)
    cli = predict_stream(tiny_bundle, f"udp://127.0.0.1:{port}")
    collected: list = []
    reader = threading.Thread(target=lambda: collected.extend(read_lines(cli)))
    reader.start()
    time.sleep(2.0)  # the CLI is listening on the port by now (it imports torch first)
    sender = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(short), "-c", "copy", "-f", "mpegts"]
        + [f"udp://127.0.0.1:{port}?pkt_size=1316"],
        timeout=60,
    )
    assert sender.returncode == 0
    reader.join(timeout=60)
    cli.wait(timeout=30)
    stderr = cli.stderr.read()
    assert cli.returncode == 0, stderr
    records = [r for _, r in collected]
    assert len(records) >= 10, stderr  # 8 s at a 0.25 s stride: the tiny model keeps up
    assert all(r["video"].startswith("udp://") and r["lag_s"] >= 0 and "labels" in r for r in records)
    assert "windows labelled" in stderr


@pytest.mark.slow
def test_lag_s_stays_wall_clock_true_on_lines_written_after_the_stream_ended(slow_bundle, long_video, tmp_path):
    """--live-policy all with a model slower than the stride: the last lines are written seconds after the
    8 s stream ended, and each says how long ago its window's last frame arrived."""
    short = tmp_path / "short.mp4"
    cut = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(long_video), "-t", "8", "-c", "copy", str(short)]
    subprocess.run(cut, check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    sender = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(short), "-c", "copy"]
        + ["-f", "mpegts", "-listen", "1", url]
    )
    sent: list[float] = []  # when the sender quit: it has sent the whole stream
    watcher = threading.Thread(target=lambda: (sender.wait(), sent.append(time.monotonic())))
    try:
        wait_listening(port, sender)
        watcher.start()
        cli = predict_stream(slow_bundle, url, "--live-policy", "all")
        lines = read_lines(cli)
        cli.wait(timeout=60)
        stderr = cli.stderr.read()
    finally:
        sender.kill()
        watcher.join(timeout=30)
    assert cli.returncode == 0, stderr
    ended = sent[0]
    after = [(t, r) for t, r in lines if t > ended + 2.0]
    assert len(after) >= 3, f"the model kept up: no line came 2 s after the stream ended ({len(lines)} lines)"
    # After the end the queued windows come out one model call apart, their last frames one stride apart:
    # each line is (model call - stride) further behind than the one before, and says so (before, every
    # line written after the end said about 0.1 s).
    (t0, first), (t1, last) = after[0], after[-1]
    expected_growth = (t1 - t0) - (len(after) - 1) * STRIDE_S
    assert expected_growth > 1.0, "the model was not slower than the stride"
    assert last["lag_s"] - first["lag_s"] > 0.5 * expected_growth, [(t - ended, r["lag_s"]) for t, r in after]
