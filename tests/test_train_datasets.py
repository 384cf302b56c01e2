"""Training on the datasets and backbones users hold: named tables of a data config, the architecture
inferred from any CLIP ViT file, and no silent run on a random backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from weight_files import clip_backbone, to_hf, write_torchscript

from stadapter_deploy.errors import ConfigError, WeightsError
from stadapter_deploy.preprocessing import Preprocessing
from stadapter_deploy.train.config import build_config
from stadapter_deploy.train.loop import run

REPO = Path(__file__).resolve().parents[1]
RUN = dict(epochs=1, total_batch=4, num_workers=0, device="cpu", seed=0)


def two_tables(folder: Path, data: Path) -> Path:
    """A data config with two datasets over the synthetic clips: all six classes, and left vs right only."""
    for split in ("train", "val"):
        lines = [line for line in (data / f"{split}.txt").read_text().splitlines() if line.split()[-1] in "01"]
        (folder / f"lr-{split}.txt").write_text("\n".join(lines) + "\n")
    (folder / "lr-classes.txt").write_text("moving left\nmoving right\n")
    toml = folder / "data.toml"
    toml.write_text(
        f'[motion]\ntrain_root = "{data}"\ntrain_list = "{data}/train.txt"\nval_root = "{data}"\n'
        f'val_list = "{data}/val.txt"\nnum_classes = 6\nclass_names = "{data}/classes.txt"\n\n'
        f'[motion_lr]  # paths relative to this file\ntrain_root = "{data}"\ntrain_list = "lr-train.txt"\n'
        f'val_root = "{data}"\nval_list = "lr-val.txt"\nnum_classes = 2\nclass_names = "lr-classes.txt"\n'
    )
    return toml


def test_a_named_table_gives_the_data_and_the_recipe_the_hyperparameters(tmp_path, synthetic_data, monkeypatch):
    monkeypatch.delenv("STADAPTER_DATA_CONFIG", raising=False)
    toml = two_tables(tmp_path, synthetic_data)
    cfg = build_config("ssv2", tmp_path / "run", toml, dataset="motion_lr", random_backbone=True)
    assert (cfg.dataset, cfg.train_list, cfg.class_names) == (
        "motion_lr",
        tmp_path / "lr-train.txt",
        tmp_path / "lr-classes.txt",
    )
    r = cfg.recipe
    assert (r.dataset, r.num_classes, r.total_batch, r.epochs, r.train_augment) == ("ssv2", 2, 256, 50, "ssv2")
    assert cfg.dataset == "motion_lr"
    other = build_config("ssv2", tmp_path / "run", toml, dataset="motion", random_backbone=True)
    assert (other.val_list, other.recipe.num_classes) == (synthetic_data / "val.txt", 6)

    # the default table is the recipe's name; a name the file lacks is refused with the ones it holds
    for dataset in (None, "ucf101"):
        with pytest.raises(ConfigError, match=r"has no \[(ssv2|ucf101)\] table; it holds motion, motion_lr: pick"):
            build_config("ssv2", tmp_path / "run", toml, dataset=dataset, random_backbone=True)

    # a dataset that is not a recipe's own has no class count to fall back on
    single = tmp_path / "single.toml"  # a single-dataset file: keys at the top level, any name
    single.write_text(
        (toml.read_text().split("[motion_lr]")[0]).replace("[motion]\n", "").replace("num_classes = 6\n", "")
    )
    with pytest.raises(ConfigError, match=r"dataset 'clips' has no num_classes: put num_classes = N in its \[clips\]"):
        build_config("k400", tmp_path / "run", single, dataset="clips", random_backbone=True)
    cfg = build_config("k400", tmp_path / "run", single, dataset="clips", num_classes=6, random_backbone=True)
    assert cfg.train_list == synthetic_data / "train.txt" and cfg.recipe.num_classes == 6
    # a known dataset under another recipe keeps its own count
    assert (
        build_config("k400", tmp_path / "run", single, dataset="synthetic", random_backbone=True).recipe.num_classes
        == 6
    )

    # the synthetic dataset is generated when absent, so a data config without its table is fine
    monkeypatch.setenv("STADAPTER_DATA_CONFIG", str(toml))
    assert (
        build_config("synthetic", tmp_path / "run", data_root=synthetic_data).train_list == synthetic_data / "train.txt"
    )


def test_k400_without_clip_stops_before_any_work_with_one_line(tmp_path, synthetic_data):
    toml = two_tables(tmp_path, synthetic_data)
    env = {k: v for k, v in os.environ.items() if k != "STADAPTER_DATA_CONFIG"} | {"PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "train", "k400", "--dataset", "motion", "--data-config", str(toml)]
    proc = subprocess.run(
        [*argv, "--save-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "--clip FILE" in proc.stderr
    assert "--random-backbone" in proc.stderr and not out.exists()
    # on purpose, it passes the checks
    assert build_config("k400", out, toml, dataset="motion", random_backbone=True).clip is None


def test_synthetic_says_in_its_first_line_that_its_backbone_is_random(tmp_path, synthetic_data, capsys):
    last = run(build_config("synthetic", tmp_path / "run", data_root=synthetic_data, **RUN))
    assert last["val_videos"] == 6
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("synthetic recipe on dataset synthetic: 12 train / 6 val videos, 6 classes; ")
    assert "model tiny (random frozen backbone: no --clip; 32px input, 3 adapter layers pre-attn+pre-MLP x 32" in first


def test_k400_on_a_named_dataset_trains_the_backbone_the_clip_file_holds_and_exports_its_size(
    tmp_path, synthetic_data, capsys
):
    from stadapter_deploy.export.exporter import ExportOptions, export_bundle, load_source
    from stadapter_deploy.runtime import load_predictor

    _, backbone = clip_backbone(patch=14, size=336)  # OpenAI's ViT-L/14@336px layout at width 64, 2 blocks
    clip_file = write_torchscript(tmp_path / "ViT-L-14-336px.pt", backbone)
    toml = two_tables(tmp_path, synthetic_data)
    out = tmp_path / "run"
    cfg = build_config("k400", out, toml, dataset="motion_lr", clip=clip_file, adapter_width=16, **RUN)
    last = run(cfg)
    assert last["val_videos"] == 2
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(
        "k400 recipe on dataset motion_lr: 4 train / 2 val videos, 2 classes; model ViT(w=64,l=2,p=14)@336px "
        "(inferred from ViT-L-14-336px.pt; 336px input, 2 adapter layers pre-MLP x 16, "
    )

    meta = json.loads((out / "final" / "config.json").read_text())
    model = meta["config"]
    assert (model["patch_size"], model["image_size"], model["width"], model["layers"]) == (14, 336, 64, 2)
    # the K400 recipe's placement (pre-MLP) in every block, at the width the flag asked for
    assert (model["adapter_layers"], model["adapter_pre_attn"], model["adapter_pre_mlp"]) == (2, False, True)
    assert (model["adapter_width"], model["num_classes"]) == (16, 2)
    assert meta["preprocessing"] == Preprocessing(num_frames=8, sampling_rate=16, size=336, temporal_views=3).to_dict()
    assert meta["dataset"] == "motion_lr" and meta["class_names"] == ["moving left", "moving right"]
    assert (meta["training"]["recipe"], meta["training"]["dataset"]) == ("k400", "motion_lr")
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert all((weights[k] == v).all() for k, v in backbone.items() if k != "proj")  # the file's, frozen

    result = export_bundle(
        load_source(checkpoint=out / "final"),
        tmp_path / "bundle",
        ExportOptions(progress=False, check_videos=1, check_random=1),
    )
    manifest = result.manifest
    assert manifest["preprocessing"]["size"] == 336 and manifest["config"]["image_size"] == 336
    assert manifest["dataset"] == "motion_lr" and "@336px" in manifest["model_name"]
    # what the service and the demo run: the bundle's preprocessing, at the size the weights gave
    predictor = load_predictor(result.path, backend="onnxruntime")
    assert predictor.input_shape == (3, 8, 336, 336)
    answer = predictor.classify(synthetic_data / "videos" / "val_00001.mp4", top_k=2)
    assert {entry["label"] for entry in answer.labels} == {"moving left", "moving right"}


def test_a_preset_the_clip_file_does_not_fit_keeps_the_clear_error(tmp_path, synthetic_data):
    _, backbone = clip_backbone(patch=32, size=224)  # OpenAI's ViT-B/32 layout, in Hugging Face safetensors
    save_file(to_hf(backbone, vision_only=True), str(tmp_path / "model.safetensors"))
    toml = two_tables(tmp_path, synthetic_data)
    common = dict(dataset="motion", clip=tmp_path / "model.safetensors", **RUN)
    with pytest.raises(WeightsError) as err:
        run(build_config("k400", tmp_path / "run", toml, preset="vit_b16_adapter12x384", **common))
    message = str(err.value)
    assert "does not fit the model (ViT-B/16, backbone weights)" in message and "shape mismatches" in message
    assert "the file holds a ViT(w=64,l=2,p=32) backbone; presets that fit: none" in message
    assert not (tmp_path / "run" / "log.jsonl").exists()
    with pytest.raises(ConfigError, match="adapter_layers must be in"):  # more adapter blocks than the file has
        run(build_config("k400", tmp_path / "run2", toml, adapter_layers=3, **common))


def test_clip_activation_tells_a_bare_open_clip_file_its_mlp_is_plain_gelu(tmp_path, synthetic_data, capsys):
    from train.cli import main

    _, backbone = clip_backbone(patch=16, size=64)
    clip_file = tmp_path / "open_clip_pytorch_model.bin"  # a LAION ViT's state dict, without its config
    torch.save({f"visual.{k}": v for k, v in backbone.items()}, clip_file)
    toml = two_tables(tmp_path, synthetic_data)
    argv = ["k400", "--dataset", "motion_lr", "--data-config", str(toml), "--clip", str(clip_file), "--epochs", "1"]
    argv += ["--total-batch", "4", "--num-workers", "0", "--device", "cpu", "--adapter-width", "8"]
    assert main([*argv, "--save-dir", str(tmp_path / "run"), "--clip-activation", "gelu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "(inferred from open_clip_pytorch_model.bin; 64px input, gelu MLP, 2 adapter layers pre-MLP x 8" in first
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["config"]["mlp_activation"] == "gelu"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--save-dir", str(tmp_path / "run2"), "--clip-activation", "swish"])
    assert exit_.value.code == 2 and "invalid choice: 'swish'" in capsys.readouterr().err
