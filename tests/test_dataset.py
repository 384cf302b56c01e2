"""List files, the training/eval datasets (seeded, broken videos skipped), and the list checker CLI."""

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stadapter_deploy.errors import ConfigError
from stadapter_deploy.video import Preprocessing, prepare_eval_views
from stadapter_deploy.video.augment import rand_augment
from stadapter_deploy.video.dataset import VideoClipDataset
from stadapter_deploy.video.listfile import read_video_list


def test_list_paths_with_spaces_and_comments(tmp_path):
    (tmp_path / "list.txt").write_text("# header\nmy videos/a b.mp4 3\n\n  c.webm\t0  \n")
    assert read_video_list(tmp_path / "list.txt", tmp_path, 4) == [
        (tmp_path / "my videos/a b.mp4", 3),
        (tmp_path / "c.webm", 0),
    ]


@pytest.mark.parametrize(
    "line,message",
    [
        ("a.mp4 6", "label 6 is outside"),
        ("a.mp4 -1", "outside"),
        ("a.mp4 x", "integer label"),
        ("a.mp4", "integer label"),
    ],
)
def test_bad_label_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.txt"
    path.write_text(f"ok.mp4 1\n{line}\n")
    with pytest.raises(ConfigError, match=rf"train\.txt:2: .*{message}"):
        read_video_list(path, tmp_path, 6)


def test_missing_or_empty_list(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_video_list(tmp_path / "nope.txt", tmp_path, 6)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match="no entries"):
        read_video_list(tmp_path / "empty.txt", tmp_path, 6)


@pytest.fixture(scope="module")
def entries(synthetic_data):
    return read_video_list(synthetic_data / "train.txt", synthetic_data, 6)


@pytest.mark.parametrize("augment", ["k400", "ssv2", "none"])
def test_train_clips_are_seeded(entries, augment):
    ds = VideoClipDataset(entries[:4], Preprocessing(num_frames=4, size=32), train=True, augment=augment, seed=1)
    clip, label, index = ds[2]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32
    assert (label, index) == (entries[2][1], 2)
    torch.testing.assert_close(ds[2][0], clip)  # same seed, epoch, index: same clip
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], clip)  # a new epoch draws new frames / augmentations


def test_dataloader_workers_reproduce_the_same_batches(entries):
    ds = VideoClipDataset(entries[:6], Preprocessing(num_frames=4, size=32), train=True, augment="k400", seed=3)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=3, num_workers=workers)
        batches.append(torch.cat([clip for clip, _, _ in loader]))
    torch.testing.assert_close(batches[0], batches[1])


def test_eval_views_match_the_eval_path(entries):
    pre = Preprocessing(num_frames=4, sampling_rate=2, size=32, spatial_views=3, temporal_views=2)
    ds = VideoClipDataset(entries[:2], pre, train=False)
    views, label, index = ds[1]
    assert views.shape == (6, 3, 4, 32, 32)
    expected = prepare_eval_views(entries[1][0], pre).clips
    torch.testing.assert_close(views, expected)


def test_broken_videos_are_skipped_counted_and_logged(entries, tmp_path, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    mixed = [(tmp_path / "missing.mp4", 0), (broken, 1)] + entries[:4]
    ds = VideoClipDataset(mixed, Preprocessing(num_frames=4, size=32), train=True, augment="none")
    with caplog.at_level(logging.WARNING, logger="stadapter_deploy.video.dataset"):
        clip, label, index = ds[1]
    assert index >= 2 and label == mixed[index][1] and clip.shape == (3, 4, 32, 32)
    assert ds.skipped >= 1 and str(broken) in ds.skipped_paths
    assert str(broken) in caplog.text
    before = ds.skipped
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    labels = torch.cat([y for _, y, _ in loader])
    assert len(labels) == len(mixed)  # training goes on with replacements
    assert ds.skipped >= before + 2  # the workers' skips are counted in the parent's dataset too
    ds_eval = VideoClipDataset(mixed, Preprocessing(num_frames=4, size=32), train=False)
    assert ds_eval[0][2] == 2  # evaluation replaces a broken video with the next good one


def test_all_broken_stops_with_a_clear_error(tmp_path):
    ds = VideoClipDataset([(tmp_path / "a.mp4", 0)], Preprocessing(size=32), max_attempts=3)
    with pytest.raises(ValueError, match="3 videos in a row"):
        ds[0]


def test_rand_augment_is_seeded_and_the_same_for_every_frame():
    frame = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    frames = np.stack([frame] * 3)
    for seed in range(10):
        out = rand_augment(frames, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, rand_augment(frames, np.random.default_rng(seed)))
        assert out.shape == frames.shape and (out == out[:1]).all()


def test_list_checker_cli(synthetic_data, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_data, root)
    (root / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
    lines = (root / "train.txt").read_text().splitlines()[:4]
    lines += ["videos/broken.mp4 1", "videos/missing.mp4 2", "videos/train_00000.mp4 9", "# comment"]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "clean.txt"
    cmd = [
        sys.executable,
        "-m",
        "stadapter_deploy.video.check_list",
        str(root / "list.txt"),
        "--root",
        str(root),
        "--num-classes",
        "6",
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "4 of 7 entries kept" in result.stdout
    assert out.read_text().splitlines() == lines[:4]
    report = (tmp_path / "clean.txt.dropped.tsv").read_text().splitlines()
    assert report[0] == "line\tpath\treason" and len(report) == 4
    reasons = {row.split("\t")[1]: row.split("\t")[2] for row in report[1:]}
    assert "not a readable video" in reasons["videos/broken.mp4"]
    assert "not found" in reasons["videos/missing.mp4"]
    assert "label 9 is outside [0, 6)" in reasons["videos/train_00000.mp4"]
    bad = subprocess.run(
        cmd[:4] + ["--root", str(tmp_path / "nope"), "--num-classes", "6", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
