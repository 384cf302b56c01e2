"""Every weight format a user holds, written by the test in its real on-disk layout from one set of weights."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stadapter_deploy import WeightsError, build_model
from stadapter_deploy.model import get_preset, is_trainable_name, save_checkpoint, trainable_state_dict
from stadapter_deploy.model.weights import load_adapter_checkpoint

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


def text_tower(width: int = 16) -> dict[str, torch.Tensor]:
    """Keys of CLIP's text side, which a loader must ignore."""
    return {
        "token_embedding.weight": torch.randn(10, width),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * width, width),
        "ln_final.weight": torch.ones(width),
        "text_projection": torch.randn(width, width),
        "logit_scale": torch.ones([]),
    }


def nested_module(state: dict[str, torch.Tensor]) -> nn.Module:
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    return root


class FakeOpenAICLIP(nn.Module):
    """Parameters laid out as in OpenAI's ViT-B-16.pt: `visual.*` plus the text tower, stored in fp16."""

    def __init__(self, backbone: dict[str, torch.Tensor]):
        super().__init__()
        state = {f"visual.{k}": v.half() for k, v in backbone.items()} | {k: v.half() for k, v in text_tower().items()}
        tree = nested_module(state)
        for name, child in tree.named_children():
            self.add_module(name, child)
        for name, param in tree.named_parameters(recurse=False):
            self.register_parameter(name, param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale.float()


def write_torchscript(path, backbone):
    traced = torch.jit.trace(FakeOpenAICLIP(backbone), torch.ones(1))
    torch.jit.save(traced, str(path))
    return path


def to_hf(backbone: dict[str, torch.Tensor], vision_only: bool) -> dict[str, torch.Tensor]:
    """The Hugging Face CLIPModel / CLIPVisionModel layout, with q, k, v split."""
    p = "vision_model."
    out = {
        p + "embeddings.class_embedding": backbone["class_embedding"],
        p + "embeddings.patch_embedding.weight": backbone["conv1.weight"],
        p + "embeddings.position_embedding.weight": backbone["positional_embedding"],
    }
    for src, dst in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for s in ("weight", "bias"):
            out[f"{p}{dst}.{s}"] = backbone[f"{src}.{s}"]
    layers = {int(k.split(".")[2]) for k in backbone if k.startswith("transformer.resblocks.")}
    for i in layers:
        src, dst = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
        for s in ("weight", "bias"):
            q, k, v = backbone[f"{src}attn.in_proj_{s}"].chunk(3)
            out |= {f"{dst}self_attn.q_proj.{s}": q, f"{dst}self_attn.k_proj.{s}": k, f"{dst}self_attn.v_proj.{s}": v}
            out[f"{dst}self_attn.out_proj.{s}"] = backbone[f"{src}attn.out_proj.{s}"]
            out[f"{dst}layer_norm1.{s}"] = backbone[f"{src}ln_1.{s}"]
            out[f"{dst}layer_norm2.{s}"] = backbone[f"{src}ln_2.{s}"]
            out[f"{dst}mlp.fc1.{s}"] = backbone[f"{src}mlp.c_fc.{s}"]
            out[f"{dst}mlp.fc2.{s}"] = backbone[f"{src}mlp.c_proj.{s}"]
    if not vision_only:
        out["visual_projection.weight"] = backbone["proj"].t()
        out["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 16)
        out["logit_scale"] = torch.ones([])
    return {k: v.contiguous() for k, v in out.items()}


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
    save_checkpoint(model, tmp_path / "ckpt", extra={"recipe": {"dataset": "synthetic"}})
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["config"]["adapter_pre_attn"] is True and meta["recipe"]["dataset"] == "synthetic"
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
    with pytest.raises(WeightsError, match=str(bad.name) if kind != "missing" else "not found"):
        build_model(clip=bad if kind != "missing" else tmp_path / "nope.pt")


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint cannot make us run arbitrary code."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="cannot read .*evil.pth"):
        load_adapter_checkpoint(tmp_path / "evil.pth")


def test_not_a_clip_state_dict(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="does not look like a CLIP vision backbone"):
        build_model(clip=tmp_path / "other.pth")
