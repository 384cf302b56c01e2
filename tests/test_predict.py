"""stadapter-predict: inputs, batched classification, resume after a kill, bad input, timelines (the Ray engine:
test_predict_ray.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import wait_listening

from predict.cli import main
from stadapter_deploy.errors import ConfigError
from stadapter_deploy.net import free_port
from stadapter_deploy.predict.inputs import collect_inputs
from stadapter_deploy.predict.output import read_results
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.runtime.timeline import timeline
from stadapter_deploy.video.sampling import eval_indices
from stadapter_deploy.video.synthetic import render_motion_frames, write_motion_video, write_video
from stadapter_deploy.video.windows import WindowSpec, windows_for

BIN = Path(sys.executable).parent


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def predictor_for(bundle):
    from stadapter_deploy.runtime.predictor import load_predictor

    return load_predictor(bundle, backend="onnxruntime")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A folder of 4 synthetic clips (one in a subfolder) and a broken .mp4; a labeled list of the clips."""
    root = tmp_path_factory.mktemp("predict-videos")
    paths = [write_motion_video(root / "clips" / f"c{i}.mp4", label=i, seed=10 + i) for i in range(3)]
    paths.append(write_motion_video(root / "clips" / "deeper" / "c3.mp4", label=3, seed=13))
    (root / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    (root / "clips" / "notes.txt").write_text("not a video file")
    (root / "val.txt").write_text(
        "# clips with their labels\n" + "".join(f"clips/{p.name} {i}\n" for i, p in enumerate(paths[:3]))
    )
    return root, paths


# ----------------------------------------------------------------------------- inputs


def test_inputs_from_folders_lists_and_files(videos, tmp_path):
    root, paths = videos
    found = collect_inputs([str(root / "clips")], num_classes=6)
    assert [Path(v.video).name for v in found] == ["broken.mp4", "c0.mp4", "c1.mp4", "c2.mp4", "c3.mp4"]
    listed = collect_inputs([f"@{root / 'val.txt'}", str(paths[0])], num_classes=6)
    assert [(Path(v.video), v.label) for v in listed] == [(p, i) for i, p in enumerate(paths[:3])]  # deduplicated
    (tmp_path / "a video.mp4").write_bytes(b"")  # an unlabelled path with a space names an existing file
    (tmp_path / "nolabels.txt").write_text("a video.mp4\nb.mp4\n")
    assert [(Path(v.video).name, v.label) for v in collect_inputs([f"@{tmp_path / 'nolabels.txt'}"], 6)] == [
        ("a video.mp4", None),
        ("b.mp4", None),
    ]
    (tmp_path / "bad.txt").write_text("a.mp4 1\nb.mp4 7\n")
    with pytest.raises(ConfigError, match=r"bad\.txt:2: label 7 is outside \[0, 6\)"):
        collect_inputs([f"@{tmp_path / 'bad.txt'}"], 6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video files in"):
        collect_inputs([str(tmp_path / "empty")], 6)


# ----------------------------------------------------------------------------- classify many


def test_folder_and_list_match_classify_and_report_accuracy(tiny_bundle, videos, tmp_path, capsys):
    root, paths = videos
    out = tmp_path / "results.jsonl"
    args = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime", "--workers", "2", "--no-progress"]
    code = main([*args, str(root / "clips"), f"@{root / 'val.txt'}", "--out", str(out)])
    assert code == 1  # the broken file failed; the others went on
    err = capsys.readouterr().err
    assert "broken.mp4: not a readable video file" in err and "Traceback" not in err
    assert "accuracy over 3 labeled videos: top-1" in err
    records = {r["video"]: r for r in lines(out)}
    assert set(records) == {str(root / "clips" / "broken.mp4")} | {str(p) for p in paths}
    assert "error" in records[str(root / "clips" / "broken.mp4")]
    predictor = predictor_for(tiny_bundle)
    for path in paths:
        want = predictor.classify(str(path)).to_dict()
        got = records[str(path)]
        assert got["frames"] == want["frames"]
        assert [x["index"] for x in got["labels"]] == [x["index"] for x in want["labels"]]
        np.testing.assert_allclose([x["score"] for x in got["labels"]], [x["score"] for x in want["labels"]], atol=1e-5)
        assert set(got["timings_ms"]) == {"decode", "preprocess", "infer", "total"}
        assert set(got) == {"video", *want}  # the Predictor's record plus the video's name


def test_resume_after_kill_repairs_the_torn_line(tiny_bundle, tmp_path):
    folder = tmp_path / "videos"
    small = [write_motion_video(folder / f"a{i}.mp4", label=i % 6, seed=i) for i in range(5)]
    big = tmp_path / "videos" / "b_long.mp4"  # decodes for seconds: the kill lands while it does
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30", "-t", "30"]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-g", "600", str(big)],
        check=True,
    )
    after = [write_motion_video(folder / f"c{i}.mp4", label=i, seed=20 + i) for i in range(3)]
    out = tmp_path / "results.jsonl"
    command = [str(BIN / "stadapter-predict"), "--bundle", str(tiny_bundle), str(folder), "--out", str(out)]
    command += ["--workers", "1", "--batch-size", "1", "--backend", "onnxruntime", "--no-progress"]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while (not out.exists() or len(out.read_text().splitlines()) < len(small)) and proc.poll() is None:
            time.sleep(0.05)
        tree = psutil.Process(proc.pid).children(recursive=True)  # its decode worker (and spawn's tracker)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = out.read_text()
    assert len(written.splitlines()) == len(small), "the kill should land while the long video decodes"
    assert tree and psutil.wait_procs(tree, timeout=10)[1] == []  # no process of its tree outlives it
    with open(out, "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"video": "' + str(after[0]) + '", "labels": [{"la')
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    final = out.read_text()
    assert final.startswith(written)  # the first run's lines kept, not redone
    records = lines(out)
    assert sorted(r["video"] for r in records) == sorted(str(p) for p in [*small, big, *after])
    assert all("labels" in r for r in records)


def test_bad_input_gives_a_message_and_an_exit_code(tiny_bundle, videos, tmp_path, capsys):
    root, _ = videos
    base = ["--bundle", str(tiny_bundle), "--no-progress"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_text("clips/c0.mp4 0\nclips/c1.mp4 one two 1.5\n")
    cases = [
        ([str(tmp_path / "empty")], "no video files in"),
        ([f"@{tmp_path / 'bad.txt'}"], "bad.txt:2: label '1.5' is not an integer"),
        (["--timeline", "--window", "0", str(root / "clips")], "the window must be a positive number of seconds"),
        (["--timeline", "--stride", "-1", str(root / "clips")], "the stride must be a positive number of seconds"),
        ([str(root / "clips"), "--out", str(tmp_path / "nowhere" / "r.jsonl")], "does not exist"),
        (["rtsp://127.0.0.1:9/live"], "streams need --timeline"),
    ]
    for args, message in cases:
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_an_unreachable_stream_is_an_error_line(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    code = main(["--bundle", str(tiny_bundle), "--timeline", f"http://127.0.0.1:{free_port()}/x", "--out", str(out)])
    assert code == 1
    assert "cannot open the stream" in capsys.readouterr().err
    assert "cannot open the stream" in lines(out)[0]["error"]


# ----------------------------------------------------------------------------- timelines


def test_timeline_windows_are_the_recipes_clips(tiny_bundle, tmp_path):
    predictor = predictor_for(tiny_bundle)
    clip = write_motion_video(tmp_path / "clip.mp4", label=2, seed=3)  # 16 frames at 8 fps: one 2 s window
    (segment,) = timeline(predictor, clip)
    want = predictor.classify(str(clip))
    assert (segment.start_s, segment.end_s) == (0.0, 2.0) and segment.frames == want.frames
    np.testing.assert_allclose([x["score"] for x in segment.labels], [x["score"] for x in want.labels], atol=1e-5)
    frames = np.concatenate([render_motion_frames(c, 40 + c) for c in range(3)])  # 48 frames, 6 s
    long = write_video(tmp_path / "long.mp4", frames)
    segments = timeline(predictor, long, WindowSpec(window_s=1.0, stride_s=0.5), top_k=2)
    assert [(s.start_s, s.end_s) for s in segments] == [(k * 0.5, k * 0.5 + 1.0) for k in range(11)]
    offsets = eval_indices(8, 8, 0)[0]
    assert [s.frames for s in segments] == [[4 * k + o for o in offsets] for k in range(11)]
    assert all(len(s.labels) == 2 and set(s.to_dict()) == {"start_s", "end_s", "labels", "frames"} for s in segments)
    short = write_motion_video(tmp_path / "short.mp4", label=0, seed=1, num_frames=5)
    (segment,) = timeline(predictor, short)  # shorter than a window: one window, padded the recipe's way
    assert segment.frames == eval_indices(5, 8, 0)[0] and segment.end_s == 5 / 8


def test_default_windows():
    uniform = Preprocessing(num_frames=8, sampling_rate=0)
    assert windows_for(uniform, fps=30.0) == windows_for(uniform, 30.0, WindowSpec(window_s=2.0, stride_s=1.0))
    strided = Preprocessing(num_frames=8, sampling_rate=16)
    win = windows_for(strided, fps=25.0)
    assert (win.window, win.stride) == (113, 56)  # (T-1)*r+1 frames, half of it
    with pytest.raises(ConfigError, match="window must be a positive"):
        windows_for(strided, 25.0, WindowSpec(window_s=float("nan")))


def test_timeline_over_a_loopback_stream_matches_the_file(tiny_bundle, tmp_path):
    frames = np.concatenate([render_motion_frames(c, 60 + c) for c in (1, 4, 1)])  # 6 s
    video = write_video(tmp_path / "long.mp4", frames)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-readrate", "4", "-i", str(video), "-c", "copy"]
        + ["-f", "mpegts", "-listen", "1", url]
    )
    try:
        wait_listening(port, server)
        out = tmp_path / "stream.jsonl"
        base = [str(BIN / "stadapter-predict"), "--bundle", str(tiny_bundle), "--timeline", "--no-progress"]
        base += ["--live-policy", "all"]  # every window, as the file has them (a replayed recording)
        done = subprocess.run([*base, url, "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "latency from a window's last frame to its line" in done.stderr and "0 skipped" in done.stderr
    finally:
        server.kill()
        server.wait()
    streamed = lines(out)
    from_file = [s.to_dict() for s in timeline(predictor_for(tiny_bundle), video)]
    assert len(streamed) == len(from_file) == 5
    for got, want in zip(streamed, from_file, strict=True):
        assert got["video"] == url and got["latency_ms"] >= 0 and got["lag_s"] >= 0 and got["skipped"] == 0
        assert (got["start_s"], got["end_s"], got["frames"]) == (want["start_s"], want["end_s"], want["frames"])
        assert [x["index"] for x in got["labels"]] == [x["index"] for x in want["labels"]]


def test_timeline_file_resume_drops_a_cut_off_video(tmp_path):
    out = tmp_path / "t.jsonl"
    whole = [
        {"video": "a.mp4", "start_s": 0.0, "end_s": 2.0, "labels": [], "window": i, "windows": 2} for i in range(2)
    ]
    cut = [{"video": "b.mp4", "start_s": 0.0, "end_s": 2.0, "labels": [], "window": 0, "windows": 3}]
    out.write_text("".join(json.dumps(r) + "\n" for r in whole + cut) + '{"video": "b.mp4", "st')
    assert read_results(out, timeline=True) == whole
    assert lines(out) == whole
    with pytest.raises(ConfigError, match="holds timeline results, not classification results"):
        read_results(out, timeline=False)


# ----------------------------------------------------------------------------- a trained model's timeline

# trained_bundle: the tiny model trained on the six synthetic classes (tests/conftest.py)


@pytest.mark.slow
def test_trained_timeline_changes_label_where_the_clips_change(trained_bundle, tmp_path):
    classes = [1, 4, 4, 1, 4]  # five 2 s clips of unseen seeds, one video
    video = write_video(
        tmp_path / "long.mp4", np.concatenate([render_motion_frames(c, 500 + i) for i, c in enumerate(classes)])
    )
    out = tmp_path / "timeline.jsonl"
    assert main(["--bundle", str(trained_bundle), "--timeline", str(video), "--stride", "2", "--out", str(out)]) == 0
    assert [(r["start_s"], r["labels"][0]["index"]) for r in lines(out)] == [
        (2.0 * i, c) for i, c in enumerate(classes)
    ]
    half = timeline(
        predictor_for(trained_bundle), video, WindowSpec(stride_s=1.0), top_k=1
    )  # windows across the cuts too
    whole = [s for s in half if s.start_s % 2 == 0]
    assert [s.labels[0]["index"] for s in whole] == classes


def test_a_video_past_the_decode_timeout_is_an_error_line_and_the_rest_go_on(tiny_bundle, videos, tmp_path, capsys):
    """--decode-timeout: a file whose decode takes too long (here: a long one under a short limit, as a file
    that hangs the decoder would) becomes an error line; its worker is replaced and the others are classified."""
    root, paths = videos
    part, slow = tmp_path / "part.mp4", tmp_path / "slow.mp4"  # 60 s of 720p: about 3 s to decode here
    ffmpeg = ["ffmpeg", "-nostdin", "-loglevel", "error"]
    lavfi = [
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=1280x720:rate=30",
        "-t",
        "10",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
    ]
    subprocess.run([*ffmpeg, *lavfi, str(part)], check=True)
    subprocess.run([*ffmpeg, "-stream_loop", "5", "-i", str(part), "-c", "copy", str(slow)], check=True)
    out = tmp_path / "results.jsonl"
    args = ["--bundle", str(tiny_bundle), "--backend", "onnxruntime", "--workers", "1", "--no-progress"]
    code = main([*args, "--decode-timeout", "0.5", str(paths[0]), str(slow), str(paths[1]), "--out", str(out)])
    assert code == 1
    records = {r["video"]: r for r in lines(out)}
    assert "took longer than 0.5 s" in records[str(slow)]["error"] and "--decode-timeout" in records[str(slow)]["error"]
    assert all("labels" in records[str(p)] for p in paths[:2])  # before and after it, on the replaced worker
    assert "--decode-timeout" in capsys.readouterr().err


def test_the_defaults_follow_the_model_and_the_machine(tiny_bundle, videos, capsys):
    """The rule of predict/defaults.py on the real presets' FLOPs, and the one line the CLI says about it."""
    from stadapter_deploy.model.config import get_preset
    from stadapter_deploy.predict.defaults import choose

    pre = Preprocessing(num_frames=8)
    tiny = choose(get_preset("tiny").clip_gflops(8), pre, "cpu", cores=2)
    assert (tiny.workers, tiny.threads) == (2, 1) and "decode-bound" in tiny.why
    b16 = choose(get_preset("vit_b16_adapter12x384").clip_gflops(8), pre.with_views(3), "cpu", cores=2)
    assert (b16.workers, b16.batch_clips, b16.threads) == (1, 3, 2) and "model-bound" in b16.why
    big = choose(303.0, pre, "cpu", cores=64)  # B/16 on a big CPU: the cores split between the two
    assert (big.workers, big.threads) == (3, 57) and big.workers + big.threads <= 64
    gpu = choose(303.0, pre, "cuda", cores=16, max_batch=32)
    assert (gpu.workers, gpu.batch_clips, gpu.threads) == (8, 32, None)
    from stadapter_deploy.hardware import memory_bytes

    bound = int(memory_bytes() * 0.5 / 3.5)  # decodes so big that three fit in half the memory
    capped = choose(303.0, pre, "cuda", cores=16, max_batch=32, decode_bound=bound)
    assert capped.workers == 3 and "fit in half the memory" in capped.why
    root, paths = videos
    assert main(["--bundle", str(tiny_bundle), "--no-progress", str(paths[0])]) == 0
    err = capsys.readouterr().err
    chose = [line for line in err.splitlines() if "decode worker" in line]
    assert len(chose) == 1 and "decode-bound" in chose[0] and "flags given: none" in chose[0], err


def test_a_list_file_never_names_a_stream_or_a_device(tiny_bundle, tmp_path, capsys):
    """Stream URLs and capture devices come only from the command line: in a list they are file names."""
    listed = tmp_path / "list.txt"
    listed.write_text("/dev/video0\nrtsp://127.0.0.1:9/live\n")
    out = tmp_path / "t.jsonl"
    assert main(["--bundle", str(tiny_bundle), "--timeline", f"@{listed}", "--out", str(out), "--no-progress"]) == 1
    records = {r["video"]: r for r in lines(out)}
    assert records["/dev/video0"]["code"] == "video_unreadable"
    assert all("cannot open the stream" not in r["error"] for r in records.values()), records
    assert "cannot open the stream" not in capsys.readouterr().err


def test_out_is_never_written_through_a_link(tiny_bundle, videos, tmp_path, capsys):
    root, paths = videos
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "results.jsonl"
    link.symlink_to(victim)
    assert main(["--bundle", str(tiny_bundle), str(paths[0]), "--out", str(link), "--no-progress"]) == 2
    assert "symbolic link" in capsys.readouterr().err and victim.read_text() == "precious\n"
    # A repair rewrites --out through a temporary file of its own name, never one planted beside it.
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"video": str(paths[0]), "error": "x", "code": "video_unreadable"}) + '\n{"video": "torn')
    (tmp_path / "out.jsonl.tmp").symlink_to(victim)  # the name the repair used to write through
    assert main(["--bundle", str(tiny_bundle), str(paths[0]), str(paths[1]), "--out", str(out), "--no-progress"]) in (
        0,
        1,
    )
    assert victim.read_text() == "precious\n" and len(lines(out)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.jsonl.")]  # no temporary file left


# ----------------------------------------------------------------------------- embeddings, find alike, heatmaps


def test_features_an_index_and_the_nearest_videos(tiny_bundle, videos, tmp_path, capsys):
    from stadapter_deploy.runtime.similar import FeatureIndex

    root, paths = videos
    out, index = tmp_path / "out.jsonl", tmp_path / "archive.npy"
    base = ["--bundle", str(tiny_bundle), "--no-progress", "--backend", "onnxruntime"]
    assert main([*base, *map(str, paths), "--out", str(out), "--features-out", str(index)]) == 0
    assert all("features" not in r for r in lines(out))  # the lines stay small: the embeddings are in the index
    predictor = predictor_for(tiny_bundle)
    saved = FeatureIndex.load(index)
    assert saved.videos == [str(p) for p in paths] and saved.features.shape == (len(paths), 64)
    for row, path in zip(saved.features, paths, strict=True):
        np.testing.assert_allclose(row, predictor.embed(path), atol=1e-5)  # the same as the library's embed
    assert main([*base, str(paths[0]), "--features"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(line["features"], saved.features[0], atol=1e-5)
    # Find alike: the query itself first, with a score of 1, then the rest by cosine.
    assert main([*base, "--similar", str(paths[2]), "--index", str(index), "--top-k", "3"]) == 0
    matches = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert matches[0]["video"] == str(paths[2]) and matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True) and len(matches) == 3
    # The index lost (a run killed before it was written, or an --out made without it): a rerun embeds the
    # videos again and writes no line twice.
    index.unlink()
    index.with_suffix(".json").unlink()
    before = out.read_text()
    assert main([*base, *map(str, paths), "--out", str(out), "--features-out", str(index)]) == 0
    assert out.read_text() == before and FeatureIndex.load(index).videos == saved.videos


def test_explain_draws_each_videos_heatmaps(tiny_bundle, videos, tmp_path, capsys):
    from PIL import Image

    _, paths = videos
    folder = tmp_path / "heat"
    assert main(["--bundle", str(tiny_bundle), "--no-progress", *map(str, paths[:2]), "--explain", str(folder)]) == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    pictures = [Path(r["explanation"]) for r in records]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in pictures)
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.width >= 8 * 32


@pytest.mark.parametrize(
    "args, words",
    [
        (["--timeline", "--features"], "not with --timeline"),
        (["--explain", "x", "--engine", "ray"], "local engine"),
        (["--similar", "q.mp4"], "go together"),
        (["--similar", "q.mp4", "--index", "f.npy", "--features"], "takes no other input"),
    ],
)
def test_embedding_options_that_do_not_go_together_are_refused_in_one_line(tiny_bundle, args, words, capsys):
    inputs = [] if "--similar" in args and "--features" not in args else ["a.mp4"]
    assert main(["--bundle", str(tiny_bundle), *inputs, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
