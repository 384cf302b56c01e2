"""Training building blocks that need no video: schedule, optimizer groups, config, checkpoints, eval sharding."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from stadapter_deploy.errors import ConfigError, WeightsError
from stadapter_deploy.model import build_model
from stadapter_deploy.progress import progress_bar
from stadapter_deploy.recipes import Recipe
from stadapter_deploy.train import checkpoint as ckpt
from stadapter_deploy.train import data
from stadapter_deploy.train.config import (
    RECIPE_FLAGS,
    batch_plan,
    build_config,
    check_paths,
    default_num_workers,
    read_data_config,
)
from stadapter_deploy.train.evaluate import ShardedSampler, evaluate
from stadapter_deploy.train.optim import WarmupCosine, build_optimizer, build_scheduler, scaled_lr
from train.cli import build_parser

# Data paths that need not exist: only check_paths looks at the disk.
SOME_DATA = dict(train_root="/d/train", train_list="/d/train.txt", val_root="/d/val", val_list="/d/val.txt")
RANDOM = dict(random_backbone=True)  # k400/ssv2 without --clip, on purpose


def test_schedule_warms_up_linearly_then_half_cosine_to_zero():
    f = WarmupCosine(warmup_steps=4, total_steps=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(11) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert f(12) == pytest.approx(0.0)
    assert [f(s) for s in range(4, 13)] == sorted([f(s) for s in range(4, 13)], reverse=True)


def test_scheduler_steps_per_iteration_and_state_round_trips():
    model = build_model("tiny")
    opt = build_optimizer(model, lr=0.1, weight_decay=0.01)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=10)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == [pytest.approx(0.05), pytest.approx(0.1)]
    state = sched.state_dict()
    opt2 = build_optimizer(build_model("tiny"), lr=0.1, weight_decay=0.01)
    sched2 = build_scheduler(opt2, warmup_steps=2, total_steps=10)
    opt2.load_state_dict(opt.state_dict())  # the lr itself lives in the optimizer's state, as in resume
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched2.last_epoch == 6
    assert scaled_lr(1e-3, 192) == pytest.approx(0.00075)


def test_adamw_has_no_weight_decay_on_biases_and_skips_frozen_weights():
    model = build_model("tiny")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and plain
    assert all(not n.endswith(".bias") for n in decayed)
    assert {n for n in plain if n.endswith(".bias")} == {
        n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")
    }
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | plain == trainable
    assert "fc.weight" in decayed and "conv1.weight" not in decayed | plain


def test_batch_plan_reaches_the_effective_batch_exactly():
    assert batch_plan(192, 1, None) == (64, 3)
    assert batch_plan(192, 8, None) == (24, 1)
    assert batch_plan(256, 4, 32) == (32, 2)
    assert batch_plan(32, 2, 4) == (4, 4)
    with pytest.raises(ConfigError, match="divisible"):
        batch_plan(192, 5, None)
    with pytest.raises(ConfigError, match="batch-size"):
        batch_plan(192, 1, 50)


def test_config_layers_recipe_then_toml_then_flags(tmp_path, monkeypatch):
    for d in ("train", "val"):
        (tmp_path / d).mkdir()
        (tmp_path / f"{d}.txt").write_text("a.mp4 0\n")
    toml = tmp_path / "data.toml"
    toml.write_text(
        '[k400]\ntrain_root = "train"\ntrain_list = "train.txt"\nval_root = "val"\nval_list = "val.txt"\n'
        "num_classes = 10\n"
        '[ssv2]\ntrain_root = "/nowhere"\n'
    )
    monkeypatch.setenv("STADAPTER_DATA_CONFIG", str(toml))
    cfg = build_config("k400", tmp_path / "run", epochs=3, lr_per_256=None, num_frames=16, **RANDOM)
    check_paths(cfg)
    assert cfg.train_root == tmp_path / "train" and cfg.val_list == tmp_path / "val.txt"
    r, p = cfg.recipe, cfg.recipe.preprocessing
    assert (r.num_classes, r.epochs, p.num_frames, p.sampling_rate, p.temporal_views) == (10, 3, 16, 16, 3)
    assert r.lr_per_256 == 1e-3 and r.total_batch == 192 and r.dataset == cfg.dataset == "k400"
    flagged = build_config("k400", tmp_path / "run", data_config=toml, num_classes=7, **RANDOM)
    assert flagged.recipe.num_classes == 7


def test_unset_or_missing_data_fails_with_what_to_set(tmp_path, monkeypatch):
    monkeypatch.delenv("STADAPTER_DATA_CONFIG", raising=False)
    with pytest.raises(ConfigError) as e:
        build_config("k400", tmp_path / "run")
    msg = str(e.value)
    for key in ("train_root", "train_list", "val_root", "val_list"):
        assert key in msg
    assert "--train-list" in msg and "STADAPTER_DATA_CONFIG" in msg and "[k400]" in msg
    cfg = build_config(
        "ssv2",
        tmp_path / "run",
        train_root=tmp_path,
        train_list=tmp_path / "nope.txt",
        val_root=tmp_path / "nodir",
        val_list=tmp_path / "nope.txt",
        **RANDOM,
    )
    with pytest.raises(ConfigError, match="nope.txt does not exist"):
        check_paths(cfg)
    bad = tmp_path / "bad.toml"
    bad.write_text("[k400]\ntrain_roots = 'x'\n")
    with pytest.raises(ConfigError, match="unknown keys.*train_roots"):
        read_data_config(bad, "k400")
    bad.write_text("[k400\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_data_config(bad, "k400")
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("k400", tmp_path, data_config=tmp_path / "missing.toml")


@pytest.mark.parametrize("size,world", [(7, 2), (10, 3), (2, 4), (0, 2)])
def test_eval_shards_cover_every_sample_exactly_once(size, world):
    shards = [list(ShardedSampler(size, rank, world)) for rank in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_evaluate_averages_softmax_over_views():
    class Fixed(torch.nn.Module):  # logits = the first pixel of each view, per class
        def forward(self, x):
            return x[:, :3, 0, 0, 0]

    # two videos, two views each, three classes
    views = torch.zeros(2, 2, 3, 1, 1, 1)
    views[0, 0, :, 0, 0, 0] = torch.tensor([5.0, 0, 0])  # video 0: view 0 says class 0 strongly
    views[0, 1, :, 0, 0, 0] = torch.tensor([0, 1.0, 0])  # view 1 says class 1 weakly -> average: class 0
    views[1, 0, :, 0, 0, 0] = torch.tensor([0, 0, 1.0])
    views[1, 1, :, 0, 0, 0] = torch.tensor([0, 0, 1.0])
    batches = [(views, torch.tensor([0, 1]), torch.tensor([0, 1]))]
    out = evaluate(Fixed(), batches, torch.device("cpu"))
    assert out["count"] == 2
    assert out["acc1"] == 50.0 and out["acc5"] == 100.0


def _fake_state(epoch: int) -> dict:
    return {
        "model": {"fc.weight": torch.full((2, 2), float(epoch))},
        "optimizer": {},
        "lr_sched": {},
        "loss_scaler": {},
        "next_epoch": epoch + 1,
    }


def test_checkpoints_are_atomic_pruned_and_auto_resume_skips_broken(tmp_path):
    for epoch in range(4):
        ckpt.atomic_torch_save(_fake_state(epoch), ckpt.checkpoint_path(tmp_path, epoch))
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path)] == [0, 1, 2, 3]
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    # a torn newest file (as from a crash outside our atomic writer) is skipped
    newest = ckpt.checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = ckpt.latest_valid_checkpoint(tmp_path)
    assert path.name == "checkpoint-2.pth" and state["next_epoch"] == 3
    with pytest.raises(WeightsError, match="not a readable training checkpoint"):
        ckpt.load_training_checkpoint(newest)
    assert ckpt.latest_valid_checkpoint(tmp_path / "empty") is None


def test_pruning_keeps_the_one_just_written_and_drops_a_later_future(tmp_path):
    for epoch in range(5):
        ckpt.atomic_torch_save(_fake_state(epoch), ckpt.checkpoint_path(tmp_path, epoch))
    # resumed from epoch 1 and wrote epoch 2 again: 3 and 4 belong to a run that no longer continues
    ckpt.prune_checkpoints(tmp_path, keep_last=2, newest=2)
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    # an unreadable one is set aside when auto-resume passes over it, so pruning never counts it
    ckpt.checkpoint_path(tmp_path, 2).write_bytes(b"PK\x03\x04 torn")
    path, _ = ckpt.latest_valid_checkpoint(tmp_path, set_aside=True)
    assert path.name == "checkpoint-1.pth"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1.pth", "checkpoint-2.pth.torn"]


def test_a_write_that_meets_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 0)
    ckpt.atomic_torch_save(_fake_state(0), path)
    before = path.read_bytes()
    temp = tmp_path / f".checkpoint-0.pth.tmp-{os.getpid()}"  # where atomic_torch_save writes first
    temp.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    with pytest.raises(ckpt.DiskError, match=rf"^cannot write {path}: no space left on device \([\d.]+ MB free\)$"):
        ckpt.atomic_torch_save(_fake_state(1), path)  # torch's own error would be "unexpected pos ..."
    assert path.read_bytes() == before and not temp.exists()


def test_pruning_removes_temp_files_of_killed_saves(tmp_path):
    ckpt.atomic_torch_save(_fake_state(0), ckpt.checkpoint_path(tmp_path, 0))
    torn = tmp_path / ".checkpoint-1.pth.tmp-4242"  # what a kill during atomic_torch_save leaves
    torn.write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / "notes.tmp-1").write_text("not ours")
    ckpt.prune_checkpoints(tmp_path, keep_last=0)  # 0 keeps every checkpoint, not the torn file
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pth", "notes.tmp-1"]


def test_training_checkpoints_are_read_by_the_one_safe_reader(tmp_path):
    path = tmp_path / "checkpoint-0.pth"
    torch.save(_fake_state(0) | {"args": argparse.Namespace(lr=1e-3)}, path)  # as the reference saves args
    assert ckpt.load_training_checkpoint(path)["args"].lr == 1e-3
    torch.save({"model": {}, "code": os.system}, path)  # a pickle that would run code is refused
    with pytest.raises(WeightsError, match="not a readable training checkpoint"):
        ckpt.load_training_checkpoint(path)


def test_every_recipe_value_is_a_flag_and_flags_reach_the_config(tmp_path):
    settable = {f.name for f in fields(Recipe)} - {"dataset", "preprocessing"}
    assert settable <= set(RECIPE_FLAGS)
    argv = ["k400", "--save-dir", str(tmp_path), "--num-frames", "16", "--epochs", "3", "--lr-per-256", "0.5"]
    argv += ["--train-augment", "none", "--no-adapters", "--num-workers", "1", "--preset", "tiny", "--random-backbone"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in SOME_DATA.items()]
    args = vars(build_parser().parse_args(argv))
    cfg = build_config(args.pop("recipe"), args.pop("save_dir"), args.pop("data_config"), **args)
    r = cfg.recipe
    assert (r.preprocessing.num_frames, r.epochs, r.lr_per_256, r.train_augment, r.preset) == (
        16,
        3,
        0.5,
        "none",
        "tiny",
    )
    assert cfg.no_adapters and cfg.num_workers == 1 and cfg.val_list == Path("/d/val.txt")
    assert r.total_batch == 192 and r.preprocessing.sampling_rate == 16  # unset flags keep the recipe's


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(lr_per_256=0.0), "lr_per_256 > 0"),
        (dict(spatial_views=2), "spatial_views must be 1 or 3"),
        (dict(sampling_rate=0), "uniform sampling"),  # k400 evaluates 3 temporal views
        (dict(precision="fp8"), "precision must be one of"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(resume="x.pth", auto_resume=True), "either --resume PATH or --auto-resume"),
        (dict(no_such_option=1), "bad training option"),
    ],
)
def test_bad_values_are_refused_when_the_config_is_built(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_config("k400", "run", **SOME_DATA, **bad)


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers() == 2
    assert build_config("k400", "run", **SOME_DATA, **RANDOM).num_workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the two cores
    assert default_num_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_num_workers() == 4


def test_unknown_class_names_get_the_bundle_placeholder():
    cfg = build_config("k400", "run", **SOME_DATA, **RANDOM, num_classes=3)  # not the shipped 400: names unknown
    assert data.class_names(cfg) == ["class_0", "class_1", "class_2"]


def test_progress_off_a_terminal_is_plain_lines(capsys):
    bar = progress_bar(3, "epoch 1/2", every_s=0)  # pytest's captured stderr is not a terminal
    for step in range(3):
        bar.set_postfix(loss=f"{1.0 / (step + 1):.3f}")
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/2: 1/3") and lines[-1].endswith("loss 0.333")
    quiet = progress_bar(3, "eval", enabled=False, every_s=0)
    quiet.update(3)
    quiet.close()
    assert capsys.readouterr().err == ""
