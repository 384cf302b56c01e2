"""Predict at scale over the Predictor: folders and lists in batches (in this process, or on a Ray
cluster: ray_engine.py), timelines of long videos and streams. Windowing lives in
stadapter_deploy/video/windows.py, the timeline's model side in stadapter_deploy/runtime/timeline.py.
Names load on first use (PEP 562), so that the command line can read its options (options.py) and
start its decode pool before torch loads."""

_EXPORTS = {
    "BatchOptions": ".options",
    "classify_videos": ".batch",
    "VideoInput": ".inputs",
    "collect_inputs": ".inputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
