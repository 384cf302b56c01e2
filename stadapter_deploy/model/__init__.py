from .build import build_model, load_strict
from .config import PRESETS, ModelConfig, get_preset
from .vit import STAdapter, STAdapterViT, is_trainable_name, trainable_state_dict
from .weights import load_clip_state_dict, read_checkpoint, save_checkpoint

__all__ = [
    "PRESETS",
    "ModelConfig",
    "STAdapter",
    "STAdapterViT",
    "build_model",
    "get_preset",
    "is_trainable_name",
    "load_clip_state_dict",
    "load_strict",
    "read_checkpoint",
    "save_checkpoint",
    "trainable_state_dict",
]
