"""CLIP ViT + ST-Adapter: the modules, presets and weight formats. Names load on first use (PEP 562), so
that `stadapter_deploy.model.config` (presets, FLOPs) can be read without importing torch."""

from ..lazy import lazy_exports, lazy_names

_EXPORTS = lazy_names(
    {
        ".build": ("build_model", "load_strict"),
        ".config": ("PRESETS", "ModelConfig", "get_preset"),
        ".vit": ("STAdapter", "STAdapterViT", "is_trainable_name", "trainable_state_dict"),
        ".weights": ("load_clip_state_dict", "read_checkpoint", "save_checkpoint"),
    }
)
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
