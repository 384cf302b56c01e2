"""Predict at scale over the Predictor: folders and lists in batches, timelines of long videos and streams."""

from .batch import BatchOptions, classify_videos
from .inputs import VideoInput, collect_inputs
from .timeline import Segment, iter_timeline, timeline

__all__ = ["BatchOptions", "Segment", "VideoInput", "classify_videos", "collect_inputs", "iter_timeline", "timeline"]
