"""How a model turns a video into its input: one typed record, validated once.

It travels with the model: the recipe holds it, training writes it into the checkpoint's metadata,
the exporter writes it into the bundle manifest, and the eval pipeline is built from it (as
open_clip's PreprocessCfg builds its transform). Importing this module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_BATCH_CLIPS = 8  # clips per model call where the runner sets no maximum
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_TEMPORAL_VIEWS = 10


@dataclass(frozen=True)
class Preprocessing:
    num_frames: int = 8  # T: frames per clip
    sampling_rate: int = 0  # r: frames between sampled frames; 0 = uniform over the whole video
    size: int = 224  # square side of the model input
    mean: tuple[float, float, float] = CLIP_MEAN  # per RGB channel, on [0, 1] pixels
    std: tuple[float, float, float] = CLIP_STD
    spatial_views: int = 1  # 1 = center crop, 3 = three crops along the long side
    temporal_views: int = 1  # clips along time (strided sampling only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        for name in ("num_frames", "sampling_rate", "size", "spatial_views", "temporal_views"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be an integer, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.num_frames < 1 or self.size < 1 or self.sampling_rate < 0:
            problems.append(
                f"need num_frames >= 1, size >= 1 and sampling_rate >= 0, got "
                f"{self.num_frames}, {self.size}, {self.sampling_rate}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        if self.spatial_views not in (1, 3):
            problems.append(f"spatial_views must be 1 or 3, got {self.spatial_views}")
        if not 1 <= self.temporal_views <= MAX_TEMPORAL_VIEWS:
            problems.append(f"temporal_views must be between 1 and {MAX_TEMPORAL_VIEWS}, got {self.temporal_views}")
        if self.sampling_rate == 0 and self.temporal_views != 1:
            problems.append("uniform sampling (sampling_rate=0) covers the whole video: use temporal_views=1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def views(self) -> int:
        return self.spatial_views * self.temporal_views

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """One clip: [3, T, S, S]."""
        return (3, self.num_frames, self.size, self.size)

    def replace(self, **changes) -> Preprocessing:
        return dataclasses.replace(self, **changes)

    def with_views(self, views: int | None) -> Preprocessing:
        """`views` clips per video, laid out as this recipe lays them: temporal views for a strided
        recipe that averages over time, else 1 or 3 spatial crops. None keeps the recipe's views."""
        if views is None:
            return self
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"views must be a positive integer, got {views!r}")
        if self.temporal_views > 1:
            if views > MAX_TEMPORAL_VIEWS:
                raise ValueError(f"views must be between 1 and {MAX_TEMPORAL_VIEWS} temporal views, got {views}")
            return self.replace(spatial_views=1, temporal_views=views)
        if views not in (1, 3):
            raise ValueError(f"this model averages spatial crops: views must be 1 or 3, got {views}")
        return self.replace(spatial_views=views, temporal_views=1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {**d, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """From a manifest or checkpoint entry; unknown keys are an error, absent ones take defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(names)}")
        return cls(**d)
