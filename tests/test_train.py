"""End-to-end training runs on generated synthetic motion videos (tiny preset, CPU, seconds each)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stadapter_deploy import build_model
from stadapter_deploy.errors import ConfigError, WeightsError
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.train.checkpoint import REFERENCE_KEYS, list_checkpoints
from stadapter_deploy.train.config import build_config
from stadapter_deploy.train.loop import run
from train.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory) -> Path:
    """288 train / 48 val synthetic motion clips (label = index mod 6); read-only."""
    from stadapter_deploy.video.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("train-motion"), 288, 48, progress=False)


def left_right_lists(data: Path, folder: Path) -> dict:
    """Only 'moving left' (0) vs 'moving right' (1): the same time-reversal puzzle, learnt in a few steps."""
    out = {}
    for split in ("train", "val"):
        lines = [line for line in (data / f"{split}.txt").read_text().splitlines() if line.split()[-1] in "01"]
        (folder / f"lr-{split}.txt").write_text("\n".join(lines) + "\n")
        out[f"{split}_list"] = folder / f"lr-{split}.txt"
    (folder / "lr-classes.txt").write_text("moving left\nmoving right\n")
    return out | {"class_names": folder / "lr-classes.txt", "num_classes": 2}


def sub_list(data: Path, split: str, count: int, folder: Path, extra: str = "") -> Path:
    """The first `count` lines of a split's list (paths stay relative to the data root), plus `extra`."""
    lines = (data / f"{split}.txt").read_text().splitlines()[:count]
    path = folder / f"{split}-{count}.txt"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def train_synthetic(save_dir: Path, data: Path, **overrides) -> dict:
    settings = dict(data_root=data, num_workers=0, device="cpu", seed=0) | overrides
    return run(build_config("synthetic", save_dir, **settings))


def read_log(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "log.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_short_synthetic_run_learns_and_writes_every_output(motion_data, tmp_path):
    out = tmp_path / "run"
    task = left_right_lists(motion_data, tmp_path)  # 96 train / 16 val clips, 2 classes
    schedule = dict(epochs=4, warmup_epochs=0.25, total_batch=8, lr_per_256=0.64, keep_last=2, num_workers=2)
    last = train_synthetic(out, motion_data, **task, **schedule)
    log = read_log(out)
    assert [r["epoch"] for r in log] == list(range(4))
    for key in ("epoch", "train_loss", "lr", "val_acc1", "val_acc5", "clips_per_s", "max_mem_mb"):
        assert all(isinstance(r[key], (int, float)) for r in log), key
    assert log[-1]["val_videos"] == 16 and log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert log[-1]["train_loss"] < 0.5 < log[0]["train_loss"]
    assert last["val_acc1"] >= 80.0, log  # chance is 50; only frame order tells left from right
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # reference layout: trainable weights only, pruned to the newest two
    assert [e for e, _ in list_checkpoints(out)] == [2, 3]
    state = torch.load(out / "checkpoint-3.pth", map_location="cpu", weights_only=True)
    assert set(REFERENCE_KEYS) <= set(state) and state["next_epoch"] == 4
    assert all(".adapter_pre_" in k or k.startswith("fc.") for k in state["model"])
    assert "conv1.weight" not in state["model"]
    assert not [p for p in os.listdir(out) if "tmp" in p]

    # final model in our format, with what export needs
    meta = json.loads((out / "final" / "config.json").read_text())
    assert meta["dataset"] == "synthetic"
    assert meta["preprocessing"] == Preprocessing(num_frames=8, sampling_rate=0, size=32).to_dict()
    assert meta["class_names"] == ["moving left", "moving right"]
    model = build_model(checkpoint=out / "final")
    for k, v in state["model"].items():
        assert torch.equal(model.state_dict()[k], v), k

    # --eval-only from a checkpoint reproduces the logged accuracy; counts every val video once
    again = train_synthetic(out, motion_data, **task, eval_only=True, resume=out / "checkpoint-3.pth")
    assert again["val_acc1"] == pytest.approx(log[-1]["val_acc1"])
    assert json.loads((out / "eval.json").read_text())["val_videos"] == 16

    # --pretrain takes the adapters, not the head (here: a 6-class head on 2-class adapters)
    val_only = {"val_list": task["val_list"]}
    pre = train_synthetic(tmp_path / "pre", motion_data, **val_only, pretrain=out / "final", eval_only=True)
    assert pre["val_videos"] == 16
    with pytest.raises(WeightsError, match="--pretrain"):
        train_synthetic(tmp_path / "pre2", motion_data, pretrain=out / "final", no_adapters=True)

    # --pretrain reads what build_model(adapter=) reads: a checkpoint as the reference code saves it
    reference = tmp_path / "checkpoint-3-reference.pth"
    model_keys = {"module." + k: v for k, v in state["model"].items()}  # saved from its DDP wrapper
    torch.save(
        {"model": model_keys, "optimizer": {}, "epoch": 3, "scaler": {}, "args": argparse.Namespace()}, reference
    )
    build_model("tiny", adapter=reference, num_classes=2)
    pre_ref = train_synthetic(tmp_path / "pre3", motion_data, **val_only, pretrain=reference, eval_only=True)
    assert pre_ref["val_loss"] == pre["val_loss"]  # the same adapters (and the same fresh head)


def test_resume_gives_the_same_weights_as_a_straight_run(motion_data, tmp_path):
    train_list = sub_list(motion_data, "train", 24, tmp_path)
    val_list = sub_list(motion_data, "val", 6, tmp_path)
    common = dict(train_list=train_list, val_list=val_list, epochs=2, total_batch=8, batch_size=4)
    train_synthetic(tmp_path / "straight", motion_data, **common)
    train_synthetic(tmp_path / "killed", motion_data, stop_after_epochs=1, **common)
    assert not (tmp_path / "killed" / "final").exists()
    assert [r["epoch"] for r in read_log(tmp_path / "killed")] == [0]
    # a kill during a save left a temp file; the next run removes it (here one that trains no epoch)
    torn = tmp_path / "killed" / ".checkpoint-1.pth.tmp-4242"
    torn.write_bytes(b"PK\x03\x04 half a zip")
    train_synthetic(tmp_path / "killed", motion_data, auto_resume=True, stop_after_epochs=1, **common)
    assert not torn.exists()
    train_synthetic(tmp_path / "killed", motion_data, auto_resume=True, **common)

    straight, resumed = weights(tmp_path / "straight" / "final"), weights(tmp_path / "killed" / "final")
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    logs = read_log(tmp_path / "straight"), read_log(tmp_path / "killed")
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]


def test_two_process_torchrun_matches_one_process(motion_data, tmp_path):
    train_list = sub_list(motion_data, "train", 32, tmp_path)
    val_list = sub_list(motion_data, "val", 7, tmp_path)  # 7 videos over 2 ranks: 4 + 3, none twice
    args = [
        "synthetic",
        "--data-root",
        str(motion_data),
        "--train-list",
        str(train_list),
        "--val-list",
        str(val_list),
        "--epochs",
        "2",
        "--total-batch",
        "16",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "train", *args, "--save-dir", str(tmp_path / "two")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "batch 16 = 2 x 8 x 1 accumulation" in two.stdout
    assert "\r" not in two.stderr  # output to a pipe: no progress-bar redraws
    # one process, the same global batch of 16 reached as 2 accumulation steps of 8
    train_synthetic(
        tmp_path / "one", motion_data, train_list=train_list, val_list=val_list, epochs=2, total_batch=16, batch_size=8
    )

    log_two, log_one = read_log(tmp_path / "two"), read_log(tmp_path / "one")
    assert log_two[-1]["val_videos"] == log_one[-1]["val_videos"] == 7
    for a, b in zip(log_two, log_one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_acc1"] == pytest.approx(b["val_acc1"])
    w_two, w_one = weights(tmp_path / "two" / "final"), weights(tmp_path / "one" / "final")
    for k in w_one:
        torch.testing.assert_close(w_two[k], w_one[k], atol=2e-4, rtol=1e-3, msg=k)


def test_broken_and_missing_videos_are_skipped_and_reported(motion_data, tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "text.mp4").write_text("not a video")
    good = (motion_data / "videos" / "train_00000.mp4").read_bytes()
    (tmp_path / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 5])
    for name in ("text.mp4", "truncated.mp4"):
        os.link(tmp_path / "videos" / name, motion_data / "videos" / f"broken-{tmp_path.name}-{name}")
    broken = "".join(f"videos/broken-{tmp_path.name}-{n} {i}\n" for i, n in enumerate(["text.mp4", "truncated.mp4"]))
    train_list = sub_list(motion_data, "train", 9, tmp_path, extra=broken + "videos/missing.mp4 2\n")
    val_list = sub_list(motion_data, "val", 5, tmp_path, extra="videos/missing-val.mp4 1\n")
    try:
        # 12 entries = 3 batches of 4: every entry is visited; two DataLoader workers log their skips
        last = train_synthetic(
            tmp_path / "run",
            motion_data,
            train_list=train_list,
            val_list=val_list,
            epochs=1,
            total_batch=4,
            num_workers=2,
        )
    finally:
        for name in ("text.mp4", "truncated.mp4"):
            (motion_data / "videos" / f"broken-{tmp_path.name}-{name}").unlink()
    assert (tmp_path / "run" / "final").is_dir()
    assert last["skipped_videos"] >= 3
    assert last["val_videos"] == 5 and last["val_skipped"] == 1
    report = (tmp_path / "run" / "skipped_videos.txt").read_text()
    for name in ("text.mp4", "truncated.mp4", "missing.mp4", "missing-val.mp4"):
        assert name in report


def test_bad_configuration_fails_before_any_work(motion_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STADAPTER_DATA_CONFIG"} | {"PYTHONPATH": str(REPO)}
    out = tmp_path / "k400"
    proc = subprocess.run(
        [sys.executable, "-m", "train", "k400", "--save-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "train_root is not set" in proc.stderr and "--data-config" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()

    bad_label = sub_list(motion_data, "train", 4, tmp_path, extra="videos/train_00004.mp4 9\n")
    with pytest.raises(ConfigError, match=r"train-4\.txt:5: label 9 is outside"):
        train_synthetic(tmp_path / "bad", motion_data, train_list=bad_label)
    assert not list_checkpoints(tmp_path / "bad")
    with pytest.raises(ConfigError, match="fewer than one effective batch"):
        train_synthetic(tmp_path / "small", motion_data, train_list=sub_list(motion_data, "train", 4, tmp_path))


def test_help_explains_every_option():
    parser = build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented
    text = parser.format_help()
    for needle in ("--data-config", "--clip", "--no-adapters", "--auto-resume", "--eval-only", "k400", "torchrun"):
        assert needle in text


def test_bf16_autocast_runs_on_cpu(motion_data, tmp_path):
    lists = dict(
        train_list=sub_list(motion_data, "train", 8, tmp_path), val_list=sub_list(motion_data, "val", 3, tmp_path)
    )
    last = train_synthetic(tmp_path / "bf16", motion_data, **lists, epochs=1, total_batch=8, precision="bf16")
    assert last["val_videos"] == 3 and last["train_loss"] == pytest.approx(1.79, abs=0.3)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        train_synthetic(tmp_path / "fp16", motion_data, **lists, epochs=1, total_batch=8, precision="fp16")


def test_clip_weights_become_the_frozen_backbone(motion_data, tmp_path):
    torch.manual_seed(123)
    backbone = {
        k: v
        for k, v in build_model("tiny").state_dict().items()
        if ".adapter_pre_" not in k and not k.startswith("fc.")
    }
    torch.save({"visual." + k: v for k, v in backbone.items()}, tmp_path / "clip.pt")  # open_clip-style keys
    lists = dict(
        train_list=sub_list(motion_data, "train", 8, tmp_path), val_list=sub_list(motion_data, "val", 3, tmp_path)
    )
    train_synthetic(tmp_path / "run", motion_data, **lists, epochs=1, total_batch=8, clip=tmp_path / "clip.pt")
    final = weights(tmp_path / "run" / "final")
    for k, v in backbone.items():
        assert torch.equal(final[k], v), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_fp16_on_gpu_keeps_a_half_backbone_and_fp32_adapters(motion_data, tmp_path):
    lists = dict(
        train_list=sub_list(motion_data, "train", 16, tmp_path), val_list=sub_list(motion_data, "val", 6, tmp_path)
    )
    last = train_synthetic(tmp_path / "gpu", motion_data, **lists, epochs=2, total_batch=8, device="cuda")
    assert last["val_videos"] == 6 and last["max_mem_mb"] > 0
    state = torch.load(tmp_path / "gpu" / "checkpoint-1.pth", map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values())
    assert state["loss_scaler"]["scale"] > 0
