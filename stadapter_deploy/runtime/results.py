"""What a classified video is: its top-k labels, the frames it was read from, the backend and timings.

`classification` is the one builder of a result: `Predictor.classify`, the service's /classify and
/classify_batch, the batch CLI and the demo all make theirs with it, from an EvalViews and its logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class Classification:
    """One classified video. `to_dict()` is the JSON the service answers with."""

    labels: list[dict]  # [{"label", "index", "score"}], best first
    frame_indices: list[list[int]]  # one list of frame numbers per temporal view
    backend: str
    precision: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, preprocess, infer, total
    clips: torch.Tensor | None = None  # [V, 3, T, S, S] model input, when asked for
    features: list[float] | None = None  # the clip embedding (see clip_embedding), when asked for

    @property
    def frames(self) -> list[int]:
        return [i for view in self.frame_indices for i in view]

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("clips", "frame_indices", "features")}
        return {**d, "frames": self.frames} | ({"features": self.features} if self.features is not None else {})


def top_k_labels(labels: list[str], logits: np.ndarray, top_k: int = 5) -> list[dict]:
    """Softmax per view, averaged over views (as training eval does); the top_k classes."""
    logits = np.asarray(logits, dtype=np.float64)
    logits = logits[None] if logits.ndim == 1 else logits  # [V, C]
    check_top_k(top_k, logits.shape[-1])
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    scores = (z / z.sum(axis=-1, keepdims=True)).mean(axis=0)  # [C]
    best = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": labels[i], "index": int(i), "score": float(scores[i])} for i in best]


def check_top_k(top_k, num_classes: int) -> None:
    """The one check of a top_k, wherever it comes from (a call, a form field, a flag)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be an integer between 1 and {num_classes}, got {top_k!r}")


def clip_embedding(features: np.ndarray) -> np.ndarray:
    """One video's embedding from its views' pooled features [V, D] (or one view's [D]): averaged over the
    views, L2-normalised, float32 [D]. Cosine similarity between two videos is then a dot product."""
    mean = np.asarray(features, dtype=np.float64).reshape(-1, np.shape(features)[-1]).mean(axis=0)  # [D]
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def classification(
    views,
    logits: np.ndarray,
    labels: list[str],
    top_k: int,
    runner_info: dict,
    infer_ms: float,
    total_ms: float | None = None,
    keep_clips: bool = False,
    features: np.ndarray | None = None,
) -> Classification:
    """The result of one video from its EvalViews and its logits [V, C]. `runner_info`: {"backend",
    "precision"}; `infer_ms`: this video's model time; `total_ms` (default: the stages' sum): from the
    request's start to now; `features`: the views' pooled features [V, D] from the same model call, for
    the result's embedding."""
    stages = {
        "decode": float(views.timings_ms["decode"]),
        "preprocess": float(views.timings_ms["preprocess"]),
        "infer": float(infer_ms),
    }
    return Classification(
        labels=top_k_labels(labels, logits, top_k),
        frame_indices=[list(map(int, v)) for v in views.frame_indices],
        backend=runner_info["backend"],
        precision=runner_info["precision"],
        timings_ms={**stages, "total": float(sum(stages.values()) if total_ms is None else total_ms)},
        clips=views.clips if keep_clips else None,
        features=None if features is None else clip_embedding(features).tolist(),
    )
