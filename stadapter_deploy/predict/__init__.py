"""Predict at scale over the Predictor: folders and lists in batches (in this process, or on a Ray
cluster: ray_engine.py), timelines of long videos and streams. Windowing lives in
stadapter_deploy/video/windows.py, the timeline's model side in stadapter_deploy/runtime/timeline.py.
Names load on first use (PEP 562), so that the command line can read its options (options.py) and
start its decode pool before torch loads."""

from ..lazy import lazy_exports, lazy_names

_EXPORTS = lazy_names(
    {".options": ("BatchOptions",), ".batch": ("classify_videos",), ".inputs": ("VideoInput", "collect_inputs")}
)
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
