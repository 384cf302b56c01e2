"""Every weight format a user holds, written by the test in its real on-disk layout from one set of weights."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from weight_files import clip_backbone, text_tower, to_hf, write_torchscript

from stadapter_deploy import WeightsError, build_model
from stadapter_deploy.model import ModelConfig, get_preset, is_trainable_name, save_checkpoint, trainable_state_dict
from stadapter_deploy.model.config import backbone_name
from stadapter_deploy.model.weights import infer_backbone_config, load_adapter_checkpoint

# Tiny with both placements in every block, and heads = width / 64 as CLIP has (inference assumes it).
PRESET = dict(adapter_pre_attn=True, adapter_pre_mlp=True, heads=max(1, get_preset("tiny").width // 64))


@pytest.fixture(scope="module")
def source():
    """A tiny model with random backbone, adapters and head; weights rounded to fp16 like OpenAI's release."""
    torch.manual_seed(0)
    model = build_model("tiny", **PRESET).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p).mul_(0.2).half().float())
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        logits = model(clip)
    backbone = {k: v for k, v in model.state_dict().items() if not is_trainable_name(k)}
    backbone["proj"] = torch.randn(model.cfg.width, 16).half().float()  # CLIP's unused image projection
    return model, backbone, trainable_state_dict(model), clip, logits


def write_reference_checkpoint(path, trainable):
    """The reference implementation's checkpoint-N.pth: trainable weights + optimizer/schedule state."""
    torch.save(
        {
            "model": trainable,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.01, "params": [0, 1]}]},
            "lr_sched": {"last_epoch": 1000, "base_lrs": [1e-3]},
            "loss_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 10},
            "next_epoch": 12,
            "args": argparse.Namespace(lr=1e-3, batch_size=64),  # MAE-style loops save their args too
        },
        path,
    )
    return path


def backbone_files(tmp_path, backbone):
    """Every backbone layout, keyed by a readable name."""
    files = {"torchscript": write_torchscript(tmp_path / "ViT-B-16.pt", backbone)}
    visual = {f"visual.{k}": v for k, v in backbone.items()} | text_tower()
    variants = {
        "plain": backbone,
        "visual_prefix": visual,
        "state_dict_wrapper": {"state_dict": visual},
        "plain_in_wrapper": {"state_dict": backbone},
    }
    for name, state in variants.items():
        torch.save(state, tmp_path / f"{name}.pth")
        files[name] = tmp_path / f"{name}.pth"
    for name, vision_only in (("hf_clip_model", False), ("hf_vision_model", True)):
        save_file(to_hf(backbone, vision_only), str(tmp_path / f"{name}.safetensors"))
        files[name] = tmp_path / f"{name}.safetensors"
    return files


def test_every_backbone_format_gives_the_same_logits(tmp_path, source):
    model, backbone, trainable, clip, logits = source
    adapter = write_reference_checkpoint(tmp_path / "checkpoint-11.pth", trainable)
    for name, path in backbone_files(tmp_path, backbone).items():
        loaded = build_model(clip=path, adapter=adapter).eval()  # architecture inferred from the weights
        assert loaded.cfg == model.cfg.replace(dropout=loaded.cfg.dropout), name
        with torch.no_grad():
            torch.testing.assert_close(loaded(clip), logits, atol=1e-6, rtol=0, msg=name)


def test_our_checkpoint_round_trips(tmp_path, source):
    model, *_, clip, logits = source
    save_checkpoint(model, tmp_path / "ckpt", extra={"dataset": "synthetic"})
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["config"]["adapter_pre_attn"] is True and meta["dataset"] == "synthetic"
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json"):
        loaded = build_model(checkpoint=path).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(clip), logits, atol=1e-6, rtol=0)


def test_preset_plus_backbone_only_keeps_fresh_adapters(tmp_path, source):
    model, backbone, *_ = source
    path = tmp_path / "plain.pth"
    torch.save(backbone, path)
    fresh = build_model("tiny", clip=path, **PRESET)
    for k, v in fresh.state_dict().items():
        if not is_trainable_name(k):
            assert torch.equal(v, backbone[k]), k
        elif ".conv." in k:
            assert not v.any(), k  # zero-initialized adapters


def test_backbone_only_gets_fresh_adapters_in_every_block(tmp_path, source):
    _, backbone, *_ = source
    save_file({k: v.contiguous() for k, v in backbone.items()}, str(tmp_path / "clip.safetensors"))
    model = build_model(clip=tmp_path / "clip.safetensors", num_classes=5)
    assert model.cfg.adapter_layers == model.cfg.layers and model.cfg.adapter_pre_mlp
    assert model.cfg.num_classes == 5


def test_inferred_architecture(tmp_path, source):
    model, backbone, trainable, *_ = source
    only_mlp = {k: v for k, v in trainable.items() if "adapter_pre_attn" not in k}
    only_mlp = {k: v for k, v in only_mlp.items() if not k.startswith("transformer.resblocks.0.")}
    torch.save({"model": only_mlp}, tmp_path / "ckpt.pth")
    torch.save(backbone, tmp_path / "clip.pth")
    cfg = build_model(clip=tmp_path / "clip.pth", adapter=tmp_path / "ckpt.pth").cfg
    tiny = model.cfg
    assert (cfg.width, cfg.layers, cfg.patch_size, cfg.image_size) == (tiny.width, tiny.layers, tiny.patch_size, 32)
    assert cfg.heads == max(1, tiny.width // 64)
    assert (cfg.adapter_width, cfg.adapter_pre_attn, cfg.adapter_pre_mlp) == (tiny.adapter_width, False, True)
    assert cfg.adapter_layers == tiny.layers - 1 and cfg.num_classes == tiny.num_classes


def test_wrong_architecture_names_keys_and_fitting_presets(tmp_path):
    b16 = build_model("vit_b16_adapter12x384", num_classes=10)
    backbone = {k: v for k, v in b16.state_dict().items() if not is_trainable_name(k)}
    torch.save(backbone, tmp_path / "b16.pth")
    with pytest.raises(WeightsError) as err:
        build_model("vit_l14_adapter24x384", clip=tmp_path / "b16.pth")
    message = str(err.value)
    assert "shape mismatches" in message and "conv1.weight" in message
    assert "missing keys" in message and "transformer.resblocks.12." in message
    assert "ViT-B/16" in message and "vit_b16_adapter12x384" in message


def test_adapter_checkpoint_that_does_not_fit_the_backbone(tmp_path, source):
    _, backbone, trainable, *_ = source
    torch.save(backbone, tmp_path / "clip.pth")
    wrong = dict(trainable)
    wrong["fc.weight"] = torch.zeros(6, 48)  # head width does not match the backbone
    torch.save({"model": wrong}, tmp_path / "ckpt.pth")
    with pytest.raises(WeightsError, match=r"fc\.weight: file \(6, 48\) vs model \(6, 64\)"):
        build_model(clip=tmp_path / "clip.pth", adapter=tmp_path / "ckpt.pth")
    extra = dict(trainable) | {"transformer.resblocks.0.adapter_pre_mlp.gate": torch.zeros(1)}
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys: .*adapter_pre_mlp\.gate"):
        build_model("tiny", clip=tmp_path / "clip.pth", adapter=tmp_path / "extra.pth", **PRESET)


@pytest.mark.parametrize("kind", ["truncated_pth", "truncated_safetensors", "random_bytes", "text", "missing", "empty"])
def test_bad_weight_files_fail_clearly(tmp_path, source, kind):
    _, backbone, *_ = source
    good_pth, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save(backbone, good_pth)
    save_file(to_hf(backbone, vision_only=True), str(good_st))
    bad = tmp_path / "bad.pt"
    if kind == "truncated_pth":
        bad.write_bytes(good_pth.read_bytes()[: good_pth.stat().st_size // 2])
    elif kind == "truncated_safetensors":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(good_st.read_bytes()[: good_st.stat().st_size // 2])
    elif kind == "random_bytes":
        bad.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "text":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    with pytest.raises(WeightsError, match=str(bad.name) if kind != "missing" else "not found") as caught:
        build_model(clip=bad if kind != "missing" else tmp_path / "nope.pt")
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message and "torch.load" not in message, message


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint cannot make us run arbitrary code."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot read .*evil.pth"):
        load_adapter_checkpoint(tmp_path / "evil.pth")


TORCHSCRIPT_ATTACK = """
import sys, torch
from torch import nn

class Loader(nn.Module):  # a module whose __setstate__ (run by torch.jit.load) copies one file into another
    def __init__(self, victim: str, secret: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))
        self.victim, self.secret = victim, secret
        self.loot = torch.zeros(4, dtype=torch.uint8)

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.victim, self.secret, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, str, bool]):
        self.weight = state[0]
        self.victim = state[1]
        self.secret = state[2]
        self.training = state[3]
        stolen = torch.from_file(self.secret, shared=False, size=4, dtype=torch.uint8)
        self.loot = torch.from_file(self.victim, shared=True, size=4, dtype=torch.uint8).copy_(stolen)

torch.jit.save(torch.jit.script(Loader(sys.argv[1], sys.argv[2])), sys.argv[3])
"""


def run_python(script, *args) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, str(script), *map(str, args)], check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("name", ["ViT-B-16.pt", "pytorch_model.bin", "checkpoint.pth"])
def test_a_torchscript_file_whose_code_writes_files_is_refused_without_running(tmp_path, name):
    victim, secret = tmp_path / "victim.txt", tmp_path / "secret.txt"
    victim.write_text("ORIGINAL")
    secret.write_text("SECRETS!")
    attack, make, load = tmp_path / name, tmp_path / "make_attack.py", tmp_path / "jit_load.py"
    make.write_text(TORCHSCRIPT_ATTACK)  # TorchScript compiles from a source file
    load.write_text("import sys, torch\ntorch.jit.load(sys.argv[1])\n")
    run_python(make, victim, secret, attack)
    # The file is a real attack: torch.jit.load runs its code, which overwrites the victim.
    run_python(load, attack)
    assert victim.read_text() == "SECRINAL"
    victim.write_text("ORIGINAL")
    for load in (lambda: build_model(clip=attack), lambda: load_adapter_checkpoint(attack)):
        with pytest.raises(WeightsError) as caught:
            load()
        assert "\n" not in str(caught.value) and name in str(caught.value)
    assert victim.read_text() == "ORIGINAL"


def test_torchscript_weights_are_read_as_data_equal_to_what_torch_jit_load_gives(tmp_path):
    from stadapter_deploy.model.torchscript import read_torchscript_tensors

    _, backbone = clip_backbone(16, 32, width=64, layers=2)
    path = write_torchscript(tmp_path / "ViT-B-16.pt", backbone)
    mine = read_torchscript_tensors(path)
    reference = dict(torch.jit.load(str(path), map_location="cpu").state_dict())  # the oracle, on our own file
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert mine[key].dtype == tensor.dtype and torch.equal(mine[key], tensor), key


def test_no_torch_jit_load_on_a_users_file():
    """Weight files are read as data: nothing in the library or the apps calls torch.jit.load."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    calls = []
    for package in ("stadapter_deploy", "train", "export", "serve", "demo", "predict", "benchmarks"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                called = ast.unparse(node.func) if isinstance(node, ast.Call) else ""
                if called.endswith(("jit.load", "_load_for_lite_interpreter")):
                    calls.append(f"{path.relative_to(root)}: {ast.unparse(node.func)}")
    assert calls == []


def test_not_a_clip_state_dict(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="does not look like a CLIP vision backbone"):
        build_model(clip=tmp_path / "other.pth")


# ----------------------------------------------------------------------------- the released ViT shapes
# Real CLIP weights cannot be downloaded here: these files have the exact layouts, key names, patch sizes
# and resolutions of the released ones, at a tiny width and depth.
RELEASED_SHAPES = {  # name: (patch, input resolution)
    "OpenAI ViT-B/32": (32, 224),  # 7 x 7 + 1 positional rows
    "OpenAI ViT-L/14@336px": (14, 336),  # 24 x 24 + 1
    "open_clip ViT-B-16-plus-240": (16, 240),  # 15 x 15 + 1
}


def released_layout_files(tmp_path, backbone) -> dict:
    """backbone_files, plus an open_clip training checkpoint (DDP names under `state_dict`) and a Hugging
    Face model folder sharded over two safetensors files with its config.json."""
    files = backbone_files(tmp_path, backbone)
    open_clip = {f"module.visual.{k}": v for k, v in backbone.items()} | {
        f"module.{k}": v for k, v in text_tower().items()
    }
    torch.save({"epoch": 32, "name": "ViT-B-32-quickgelu", "state_dict": open_clip}, tmp_path / "epoch_32.pt")
    files["open_clip_training_checkpoint"] = tmp_path / "epoch_32.pt"
    folder = tmp_path / "clip-vit-hf"
    folder.mkdir()
    hf = to_hf(backbone, vision_only=False)
    keys = sorted(hf)
    save_file({k: hf[k] for k in keys[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: hf[k] for k in keys[1::2]}, str(folder / "model-00002-of-00002.safetensors"))
    width = backbone["conv1.weight"].shape[0]
    vision = {"hidden_size": width, "num_attention_heads": max(1, width // 64), "hidden_act": "quick_gelu"}
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision}))
    files["hf_sharded_folder"] = folder
    return files


@pytest.mark.parametrize("shape", RELEASED_SHAPES)
def test_released_vit_shapes_are_inferred_from_every_format(tmp_path, shape):
    patch, size = RELEASED_SHAPES[shape]
    model, backbone = clip_backbone(patch, size)
    clip = torch.randn(1, 3, 2, size, size)
    with torch.no_grad():
        expected = model.features(clip)
    for name, path in released_layout_files(tmp_path, backbone).items():
        loaded = build_model(clip=path).eval()
        cfg = loaded.cfg
        assert (cfg.patch_size, cfg.image_size, cfg.width, cfg.layers, cfg.heads) == (patch, size, 64, 2, 1), name
        assert cfg.tokens_per_frame == (size // patch) ** 2 + 1, name
        with torch.no_grad():  # fresh adapters are the identity: the features are the backbone's
            torch.testing.assert_close(loaded.features(clip), expected, atol=1e-5, rtol=0, msg=name)


def test_adapter_layout_puts_a_presets_adapters_in_every_block(tmp_path):
    _, backbone = clip_backbone(32, 224, layers=3)
    torch.save(backbone, tmp_path / "clip.pt")
    ssv2 = build_model(clip=tmp_path / "clip.pt", adapter_layout="vit_b16_adapter24x384", num_classes=5).cfg
    assert (ssv2.adapter_layers, ssv2.adapter_pre_attn, ssv2.adapter_pre_mlp, ssv2.adapter_width) == (
        3,
        True,
        True,
        384,
    )
    assert (ssv2.num_classes, ssv2.image_size, ssv2.patch_size) == (5, 224, 32)
    tiny = build_model(clip=tmp_path / "clip.pt", adapter_layout="tiny").cfg
    assert (tiny.adapter_layers, tiny.adapter_width, tiny.dropout, tiny.width) == (3, 32, 0.0, 64)
    with pytest.raises(ValueError, match="without a preset"):
        build_model("tiny", clip=tmp_path / "clip.pt", adapter_layout="tiny")


def test_heads_come_from_a_hugging_face_config_json(tmp_path):
    model, backbone = clip_backbone(16, 64, width=128, heads=4)  # heads 32 wide, not CLIP's 64
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(to_hf(backbone, vision_only=True), str(folder / "model.safetensors"))
    clip = torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        expected = model.features(clip)
        guessed = build_model(clip=folder).eval()  # no config.json: width / 64 = 2 heads
        assert guessed.cfg.heads == 2 and not torch.allclose(guessed.features(clip), expected, atol=1e-3)
        vision = {"model_type": "clip_vision_model", "num_attention_heads": 4, "hidden_act": "quick_gelu"}
        (folder / "config.json").write_text(json.dumps(vision))
        for path in (folder, folder / "model.safetensors"):
            loaded = build_model(clip=path).eval()
            assert loaded.cfg.heads == 4
            torch.testing.assert_close(loaded.features(clip), expected, atol=1e-5, rtol=0)
    (folder / "config.json").write_text(json.dumps(vision | {"hidden_act": "gelu_new"}))  # tanh-approximate GELU
    with pytest.raises(WeightsError, match="hidden_act is 'gelu_new'.*quick_gelu or gelu only"):
        build_model(clip=folder)


def plain_gelu_backbone(width: int = 64, heads: int = 2):
    """A CLIP vision tower with exact GELU MLPs, as open_clip's LAION ViTs are: (its model, its backbone)."""
    quick, backbone = clip_backbone(16, 64, width=width, heads=heads)
    gelu = build_model(quick.cfg.replace(mlp_activation="gelu")).eval()
    gelu.load_state_dict(quick.state_dict())
    return gelu, backbone


def test_the_mlp_computes_exact_gelu_or_quickgelu_as_configured():
    gelu, _ = plain_gelu_backbone()
    x = torch.randn(5, 64)
    mlp = gelu.transformer.resblocks[0].mlp
    hidden = mlp.c_fc(x)
    with torch.no_grad():
        exact = mlp.c_proj(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))))
        torch.testing.assert_close(mlp(x), exact, atol=1e-6, rtol=1e-6)
        quick = build_model(gelu.cfg.replace(mlp_activation="quick_gelu")).transformer.resblocks[0].mlp
        quick.load_state_dict(mlp.state_dict())
        torch.testing.assert_close(quick(x), mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden)), atol=1e-6, rtol=1e-6)
        assert (quick(x) - mlp(x)).abs().max() > 1e-3  # the two differ enough to matter
    with pytest.raises(ValueError, match="mlp_activation must be one of"):
        ModelConfig(mlp_activation="relu")


def test_a_plain_gelu_backbone_is_computed_with_gelu_where_a_config_beside_it_says_so(tmp_path):
    """Hugging Face hidden_act "gelu" and open_clip's open_clip_config.json (quick_gelu absent: plain GELU)
    give exact GELU and their heads; the bare state dict cannot tell, so mlp_activation= says it."""
    gelu_model, backbone = plain_gelu_backbone()
    clip = torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        expected = gelu_model.features(clip)
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(to_hf(backbone, vision_only=True), str(hf / "model.safetensors"))
    hf_config = {"model_type": "clip_vision_model", "num_attention_heads": 2, "hidden_act": "gelu"}
    (hf / "config.json").write_text(json.dumps(hf_config))
    open_clip = tmp_path / "open_clip"
    open_clip.mkdir()
    torch.save({f"visual.{k}": v for k, v in backbone.items()}, open_clip / "open_clip_pytorch_model.bin")
    vision_cfg = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}
    open_clip_config = {"model_cfg": {"embed_dim": 16, "vision_cfg": vision_cfg}}  # no quick_gelu: plain GELU
    (open_clip / "open_clip_config.json").write_text(json.dumps(open_clip_config))
    for path in (hf, open_clip / "open_clip_pytorch_model.bin"):
        loaded = build_model(clip=path).eval()
        assert (loaded.cfg.mlp_activation, loaded.cfg.heads) == ("gelu", 2), path
        with torch.no_grad():
            torch.testing.assert_close(loaded.features(clip), expected, atol=1e-5, rtol=0, msg=str(path))
        preset = gelu_model.cfg.replace(mlp_activation="quick_gelu")
        assert build_model(preset, clip=path).cfg.mlp_activation == "gelu"  # with a preset too

    bare = tmp_path / "bare.pt"
    torch.save(backbone, bare)
    assumed = build_model(clip=bare, heads=2).eval()  # no config: CLIP's QuickGELU, wrong for this file
    told = build_model(clip=bare, heads=2, mlp_activation="gelu").eval()
    assert (assumed.cfg.mlp_activation, told.cfg.mlp_activation) == ("quick_gelu", "gelu")
    with torch.no_grad():
        assert not torch.allclose(assumed.features(clip), expected, atol=1e-3)
        torch.testing.assert_close(told.features(clip), expected, atol=1e-5, rtol=0)

    (open_clip / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"quick_gelu": True, "vision_cfg": vision_cfg}})  # a -quickgelu model's config
    )
    assert build_model(clip=open_clip / "open_clip_pytorch_model.bin").cfg.mlp_activation == "quick_gelu"


def test_wide_open_clip_vits_have_16_heads_and_odd_embeddings_are_refused():
    def shapes(width, layers, patch, rows):  # infer_backbone_config reads shapes only
        sd = {"conv1.weight": torch.empty(width, 3, patch, patch), "positional_embedding": torch.empty(rows, width)}
        return sd | {f"transformer.resblocks.{i}.ln_1.weight": torch.empty(width) for i in range(layers)}

    h14 = infer_backbone_config(shapes(1280, 32, 14, 257))  # open_clip ViT-H-14: head width 80
    assert h14 == dict(width=1280, layers=32, heads=16, patch_size=14, image_size=224)
    assert backbone_name(ModelConfig(**h14)) == "ViT-H/14"
    h14_378 = infer_backbone_config(shapes(1280, 32, 14, 730))  # DFN's ViT-H-14-378-quickgelu: 27 x 27 + 1
    assert (h14_378["image_size"], backbone_name(ModelConfig(**h14_378))) == (378, "ViT-H/14@378px")
    l14_336 = infer_backbone_config(shapes(1024, 24, 14, 577))
    assert l14_336["heads"] == 16 and backbone_name(ModelConfig(**l14_336)) == "ViT-L/14@336px"
    with pytest.raises(WeightsError, match="256 rows, not 1 class token"):  # no class token (SigLIP-style)
        infer_backbone_config(shapes(768, 12, 16, 256))
