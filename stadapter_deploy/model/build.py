"""`build_model`: one entry point from a preset name or weight files to a ready STAdapterViT."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import WeightsError
from . import weights as W
from .config import ModelConfig, backbone_name, get_preset, presets_with_backbone
from .vit import STAdapterViT, is_trainable_name


def build_model(
    preset: str | ModelConfig | None = None,
    *,
    clip: str | Path | None = None,
    adapter: str | Path | None = None,
    checkpoint: str | Path | W.Checkpoint | None = None,
    adapter_layout: str | ModelConfig | None = None,
    **overrides,
) -> STAdapterViT:
    """Build the model, optionally loading weights.

    build_model("vit_b16_adapter12x384", num_classes=400)            # random init, no weights
    build_model(clip="ViT-B-16.pt", adapter="checkpoint-11.pth")      # architecture inferred
    build_model(clip="ViT-L-14-336px.pt", adapter_layout="vit_b16_adapter24x384")  # SSv2's adapters, every block
    build_model(checkpoint="runs/k400/final")                        # our own format
    build_model("tiny", clip=...)                                     # preset + backbone weights
    build_model(clip="open_clip_pytorch_model.bin", mlp_activation="gelu")  # a plain-GELU open_clip ViT

    Without a preset the architecture is inferred from the weights: the backbone from `clip`, the
    adapters from `adapter`, else fresh ones in every block placed as `adapter_layout` places them
    (its placement, width, kernel and dropout; default: pre-MLP, width 384, the K400 recipe's). The MLP
    activation comes from a config beside `clip` (Hugging Face config.json, open_clip_config.json),
    else CLIP's QuickGELU; the weights cannot tell, so `mlp_activation=` overrides both.
    Loading is strict: a missing, unexpected or mis-shaped key raises WeightsError naming the keys
    and the presets that would fit.
    """
    if checkpoint is not None:
        if clip is not None or adapter is not None:
            raise ValueError("pass either checkpoint= or clip=/adapter=, not both")
        ckpt = checkpoint if isinstance(checkpoint, W.Checkpoint) else W.read_checkpoint(checkpoint)
        cfg = ckpt.config.replace(**overrides) if overrides else ckpt.config
        model = STAdapterViT(cfg)
        load_strict(model, ckpt.state, source="checkpoint" if isinstance(checkpoint, W.Checkpoint) else str(checkpoint))
        return model

    backbone = W.load_clip_state_dict(clip) if clip is not None else None
    adapters = W.load_adapter_checkpoint(adapter) if adapter is not None else None
    hints = W.backbone_hints(clip) if clip is not None else W.BackboneHints()
    shape = W.infer_backbone_config(backbone, heads=hints.heads) if backbone is not None else None
    cfg = resolve_config(preset, shape, adapters, overrides, adapter_layout)
    if hints.mlp_activation and "mlp_activation" not in overrides:  # a fact of the weights, preset or not
        cfg = cfg.replace(mlp_activation=hints.mlp_activation)
    model = STAdapterViT(cfg)
    if backbone is not None:
        backbone = {k: v for k, v in backbone.items() if k not in W.UNUSED_CLIP_KEYS}
        load_strict(model, backbone, source=str(clip), part="backbone")
    if adapters is not None:
        load_strict(model, adapters, source=str(adapter), part="trainable")
    return model


def resolve_config(
    preset: str | ModelConfig | None,
    backbone_shape: dict | None,
    adapters: dict | None,
    overrides: dict,
    adapter_layout: str | ModelConfig | None = None,
) -> ModelConfig:
    """The preset's config; without one, `backbone_shape` (infer_backbone_config) with adapters as the
    `adapters` state dict has them, else in every block as `adapter_layout` places them."""
    if preset is not None and adapter_layout is not None:
        raise ValueError("adapter_layout= places adapters on an inferred backbone: pass it without a preset")
    if isinstance(preset, ModelConfig):
        cfg = preset
    elif preset is not None:
        cfg = get_preset(preset)
    else:
        if backbone_shape is None:
            raise ValueError("build_model needs a preset name, clip= weights, or checkpoint=")
        layout = get_preset(adapter_layout) if isinstance(adapter_layout, str) else adapter_layout or ModelConfig()
        cfg = layout.replace(**backbone_shape, adapter_layers=backbone_shape["layers"])
        if adapters is not None:
            cfg = cfg.replace(**W.infer_adapter_config(adapters, cfg.layers))
    return cfg.replace(**overrides) if overrides else cfg


def load_strict(model: STAdapterViT, state: dict, source: str, part: str = "all") -> None:
    """Copy `state` into `model`; every expected key must be present with the right shape.

    part: "all" (every parameter), "backbone" (the frozen CLIP part) or "trainable" (adapters + fc).
    """
    own = model.state_dict()
    if part == "backbone":
        own = {k: v for k, v in own.items() if not is_trainable_name(k)}
    elif part == "trainable":
        own = {k: v for k, v in own.items() if is_trainable_name(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(_mismatch_message(model.cfg, state, source, part, missing, unexpected, mismatched))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def _mismatch_message(cfg, state, source, part, missing, unexpected, mismatched) -> str:
    show = lambda keys: ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
    lines = [f"{source} does not fit the model ({backbone_name(cfg)}, {part} weights):"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches: {show(mismatched)}")
    if "conv1.weight" in state and "positional_embedding" in state:
        fits = ModelConfig(**W.infer_backbone_config(state), adapter_layers=0)  # the backbone part only
        names = presets_with_backbone(fits)
        lines.append(f"  the file holds a {backbone_name(fits)} backbone; presets that fit: {names or 'none'}")
        if part == "backbone":
            lines.append("  without a preset (no --preset) the architecture is inferred from the file")
    return "\n".join(lines)
