"""CLIP weight files in the real on-disk layouts users hold (OpenAI's TorchScript archive, Hugging Face
CLIPModel / CLIPVisionModel), written from one backbone state dict; shared by the weight and training tests."""

from __future__ import annotations

import torch
from torch import nn

from stadapter_deploy import build_model
from stadapter_deploy.model import ModelConfig, is_trainable_name


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
    """Parameters laid out as in OpenAI's ViT-B-16.pt: `visual.*` plus the text tower, stored in fp16, and
    the int64 `input_resolution`, `context_length` and `vocab_size` entries the release archives hold."""

    def __init__(self, backbone: dict[str, torch.Tensor]):
        super().__init__()
        state = {f"visual.{k}": v.half() for k, v in backbone.items()} | {k: v.half() for k, v in text_tower().items()}
        tree = nested_module(state)
        for name, child in tree.named_children():
            self.add_module(name, child)
        for name, param in tree.named_parameters(recurse=False):
            self.register_parameter(name, param)
        grid = round((backbone["positional_embedding"].shape[0] - 1) ** 0.5)
        resolution = grid * backbone["conv1.weight"].shape[-1]
        for name, value in (("input_resolution", resolution), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(value))

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


def clip_backbone(patch: int, size: int, width: int = 64, layers: int = 2, heads: int | None = None, seed: int = 0):
    """A random CLIP vision tower of this patch and resolution, weights rounded to fp16 as released:
    (a model holding it, with fresh adapters; its backbone state dict, with CLIP's unused `proj`)."""
    torch.manual_seed(seed)
    shape = dict(width=width, layers=layers, heads=heads or max(1, width // 64), patch_size=patch, image_size=size)
    model = build_model(ModelConfig(**shape, adapter_layers=layers, num_classes=3)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not is_trainable_name(name):
                p.copy_(torch.randn_like(p).mul_(0.2).half().float())
    backbone = {k: v for k, v in model.state_dict().items() if not is_trainable_name(k)}
    backbone["proj"] = torch.randn(width, 16).half().float()
    return model, backbone
