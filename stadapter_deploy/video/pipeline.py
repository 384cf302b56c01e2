"""The one eval path: video -> sampled frame indices -> decoded frames -> normalized view clips."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..preprocessing import Preprocessing
from .decode import VideoSource, decode_sampled
from .limits import DecodeLimits
from .sampling import eval_indices
from .transforms import eval_transform


@dataclass
class EvalViews:
    clips: torch.Tensor  # [V, 3, T, size, size] float32, CLIP-normalized
    frame_indices: list[list[int]]  # one list per temporal view
    num_video_frames: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # "decode", "preprocess"


def decode_clip_frames(video: VideoSource, pick, decoder: str | None = None, limits: DecodeLimits | None = None):
    """Choose indices with `pick(N)`, N the frames that decode, and decode them: (frames, indices, probe).

    Sampling always sees the frames that really decode (a truncated or damaged file has fewer than
    its packets promise); see `decode_sampled`.
    """
    return decode_sampled(video, pick, decoder, limits)


def eval_picker(pre: Preprocessing):
    """n -> the flat list of eval frame indices, temporal view after temporal view."""
    return lambda n: [
        i for view in eval_indices(n, pre.num_frames, pre.sampling_rate, pre.temporal_views) for i in view
    ]


def eval_views_from_frames(frames, pre: Preprocessing) -> torch.Tensor:
    """Decoded frames [V_t * T, H, W, 3] -> [V, 3, T, S, S], each spatial crop's temporal views together."""
    T = pre.num_frames
    per_view = [
        eval_transform(frames[v * T : (v + 1) * T], pre.size, pre.spatial_views, pre.mean, pre.std)
        for v in range(pre.temporal_views)
    ]  # [temporal][spatial] -> [3, T, S, S]
    return torch.stack([per_view[t][s] for s in range(pre.spatial_views) for t in range(pre.temporal_views)])


def prepare_eval_views(
    video: VideoSource,
    pre: Preprocessing | None = None,
    decoder: str | None = None,
    limits: DecodeLimits | None = None,
    **fields,
) -> EvalViews:
    """Model input for evaluation as `pre` (or Preprocessing(**fields)) says: V = spatial x temporal
    views, each spatial crop's temporal views together (the reference order), within `limits` (the
    package's default decode limits unless given)."""
    pre = (pre or Preprocessing()).replace(**fields) if fields else (pre or Preprocessing())
    start = time.perf_counter()
    frames, flat, info = decode_clip_frames(video, eval_picker(pre), decoder, limits)  # [V_t * T, H, W, 3]
    decoded = time.perf_counter()
    clips = eval_views_from_frames(frames, pre)
    done = time.perf_counter()
    T = pre.num_frames
    return EvalViews(
        clips=clips.contiguous(),  # [V, 3, T, S, S]
        frame_indices=[flat[v * T : (v + 1) * T] for v in range(pre.temporal_views)],
        num_video_frames=info.num_frames,
        timings_ms={"decode": (decoded - start) * 1e3, "preprocess": (done - decoded) * 1e3},
    )


def load_eval_views(
    video: VideoSource,
    num_frames: int = 8,
    sampling_rate: int = 0,
    spatial_views: int = 1,
    temporal_views: int = 1,
    size: int = 224,
) -> torch.Tensor:
    """float32 [V, 3, T, size, size] CLIP-normalized views of `video` (a path or bytes)."""
    pre = Preprocessing(num_frames, sampling_rate, size, spatial_views=spatial_views, temporal_views=temporal_views)
    return prepare_eval_views(video, pre).clips
