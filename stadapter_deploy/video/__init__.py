"""The one preprocessing path: decode -> sample -> transform, shared by training, export, serving and demo.

Its names load on first use (PEP 562), so that importing a light module of the package, such as the
decode pool, does not import torch.
"""

from ..lazy import lazy_exports, lazy_names

_EXPORTS = lazy_names(
    {
        "..preprocessing": ("CLIP_MEAN", "CLIP_STD", "Preprocessing"),
        ".pipeline": ("EvalViews", "load_eval_views", "prepare_eval_views"),
        ".decode": ("decode_frames",),
        ".transforms": ("denormalize",),
    }
)
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
