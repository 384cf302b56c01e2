"""Frame indices of the reference recipes (docs/method.md), exactly.

n = frames in the video, T = frames per clip, r = sampling rate (0 = uniform over the whole video).
Rounding is Python's `round` (half to even), as in the reference.
"""

from __future__ import annotations

import numpy as np


def _segments(n: int, num_frames: int) -> list[tuple[int, int]]:
    seg = (n - 1) / num_frames
    return [(round(seg * i), round(seg * (i + 1))) for i in range(num_frames)]


def train_indices(n: int, num_frames: int, sampling_rate: int, rng: np.random.Generator) -> list[int]:
    """One random clip for training."""
    _check(n, num_frames, sampling_rate)
    if sampling_rate <= 0:  # one random frame per segment
        return [int(rng.integers(start, end + 1)) for start, end in _segments(n, num_frames)]
    span = sampling_rate * (num_frames - 1) + 1
    if span >= n:  # too short: strided from 0, clamped to the last frame
        return [min(i * sampling_rate, n - 1) for i in range(num_frames)]
    start = int(rng.integers(0, n - span + 1))
    return [start + sampling_rate * i for i in range(num_frames)]


def eval_indices(n: int, num_frames: int, sampling_rate: int, temporal_views: int = 1) -> list[list[int]]:
    """One index list per temporal view for evaluation."""
    _check(n, num_frames, sampling_rate)
    if sampling_rate <= 0:
        if temporal_views != 1:
            raise ValueError("uniform sampling (sampling_rate=0) covers the whole video: use temporal_views=1")
        return [[(start + end) // 2 for start, end in _segments(n, num_frames)]]
    length = (num_frames - 1) * sampling_rate + 1
    slide = max(n - length, 0)  # shorter videos repeat their last frame
    views = []
    for i in range(temporal_views):
        start = slide // 2 if temporal_views == 1 else round(slide / (temporal_views - 1) * i)
        views.append([min(start + sampling_rate * j, n - 1) for j in range(num_frames)])
    return views


def _check(n: int, num_frames: int, sampling_rate: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got {n}")
    if num_frames < 1 or sampling_rate < 0:
        raise ValueError(f"need num_frames >= 1 and sampling_rate >= 0, got {num_frames}, {sampling_rate}")
