"""The one preprocessing path: decode -> sample -> transform, shared by training, export, serving and demo.

Its names load on first use (PEP 562), so that importing a light module of the package, such as the
decode pool, does not import torch.
"""

_EXPORTS = {
    "CLIP_MEAN": "..preprocessing",
    "CLIP_STD": "..preprocessing",
    "Preprocessing": "..preprocessing",
    "EvalViews": ".pipeline",
    "load_eval_views": ".pipeline",
    "prepare_eval_views": ".pipeline",
    "decode_frames": ".decode",
    "denormalize": ".transforms",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
