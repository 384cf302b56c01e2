"""Predict at scale over the Predictor: folders and lists in batches, timelines of long videos and
streams, sharded under torchrun. Windowing lives in stadapter_deploy/video/windows.py, the timeline's
model side in stadapter_deploy/runtime/timeline.py."""

from .batch import BatchOptions, classify_videos
from .inputs import VideoInput, collect_inputs

__all__ = ["BatchOptions", "VideoInput", "classify_videos", "collect_inputs"]
