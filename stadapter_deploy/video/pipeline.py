"""The one eval path: video -> sampled frame indices -> decoded frames -> normalized view clips."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import VideoError
from .decode import Probe, ShortVideoError, VideoSource, count_decodable_frames, decode_with_probe, probe
from .sampling import eval_indices
from .transforms import eval_transform


@dataclass
class EvalViews:
    clips: torch.Tensor  # [V, 3, T, size, size] float32, CLIP-normalized
    frame_indices: list[list[int]]  # one list per temporal view
    num_video_frames: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # "decode", "preprocess"


def decode_clip_frames(video: VideoSource, pick, decoder: str | None = None):
    """Probe, choose indices with `pick(num_frames)`, decode them. Returns (frames, indices, probe).

    If fewer frames decode than the packets promise (a truncated file), the real count is taken and
    the indices are chosen again, so sampling always sees the frames that exist.
    """
    info = probe(video)
    indices = pick(info.num_frames)
    try:
        return decode_with_probe(video, info, indices, decoder), indices, info
    except ShortVideoError:
        real = count_decodable_frames(video)
        if real == 0:
            raise VideoError("no frame of the video can be decoded") from None
        info = Probe(**{**info.__dict__, "pts": info.pts[:real]})
        indices = pick(info.num_frames)
        return decode_with_probe(video, info, indices, "pyav"), indices, info


def eval_picker(num_frames: int, sampling_rate: int, temporal_views: int):
    """n -> the flat list of eval frame indices, temporal view after temporal view."""
    return lambda n: [i for view in eval_indices(n, num_frames, sampling_rate, temporal_views) for i in view]


def eval_views_from_frames(frames, num_frames: int, spatial_views: int, temporal_views: int, size: int) -> torch.Tensor:
    """Decoded frames [V_t * T, H, W, 3] -> [V, 3, T, S, S], each spatial crop's temporal views together."""
    per_view = [
        eval_transform(frames[v * num_frames : (v + 1) * num_frames], size, spatial_views)
        for v in range(temporal_views)
    ]  # [temporal][spatial] -> [3, T, S, S]
    return torch.stack([per_view[t][s] for s in range(spatial_views) for t in range(temporal_views)])


def prepare_eval_views(
    video: VideoSource,
    num_frames: int = 8,
    sampling_rate: int = 0,
    spatial_views: int = 1,
    temporal_views: int = 1,
    size: int = 224,
    decoder: str | None = None,
) -> EvalViews:
    """Model input for evaluation: V = spatial_views x temporal_views views, each spatial crop's
    temporal views together (the reference order)."""
    if spatial_views not in (1, 3) or temporal_views < 1 or size < 1:
        raise ValueError(
            f"need spatial_views in (1, 3), temporal_views >= 1, size >= 1; got "
            f"{spatial_views}, {temporal_views}, {size}"
        )
    eval_indices(1, num_frames, sampling_rate, temporal_views)  # argument errors before any decoding
    start = time.perf_counter()
    pick = eval_picker(num_frames, sampling_rate, temporal_views)
    frames, flat, info = decode_clip_frames(video, pick, decoder)  # [V_t * T, H, W, 3]
    decoded = time.perf_counter()
    clips = eval_views_from_frames(frames, num_frames, spatial_views, temporal_views, size)
    done = time.perf_counter()
    return EvalViews(
        clips=clips.contiguous(),  # [V, 3, T, S, S]
        frame_indices=[flat[v * num_frames : (v + 1) * num_frames] for v in range(temporal_views)],
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
    return prepare_eval_views(video, num_frames, sampling_rate, spatial_views, temporal_views, size).clips
