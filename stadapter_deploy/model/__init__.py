"""CLIP ViT + ST-Adapter: the modules, presets and weight formats. Names load on first use (PEP 562), so
that `stadapter_deploy.model.config` (presets, FLOPs) can be read without importing torch."""

_EXPORTS = {
    "build_model": ".build",
    "load_strict": ".build",
    "PRESETS": ".config",
    "ModelConfig": ".config",
    "get_preset": ".config",
    "STAdapter": ".vit",
    "STAdapterViT": ".vit",
    "is_trainable_name": ".vit",
    "trainable_state_dict": ".vit",
    "load_clip_state_dict": ".weights",
    "read_checkpoint": ".weights",
    "save_checkpoint": ".weights",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
