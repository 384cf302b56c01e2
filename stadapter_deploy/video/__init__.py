"""The one preprocessing path: decode -> sample -> transform, shared by training, export, serving and demo."""

from ..preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing
from .decode import decode_frames
from .pipeline import EvalViews, load_eval_views, prepare_eval_views
from .transforms import denormalize

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EvalViews",
    "Preprocessing",
    "decode_frames",
    "denormalize",
    "load_eval_views",
    "prepare_eval_views",
]
