"""Find alike: clip embeddings of many videos kept as an index, and their nearest neighbours by cosine.

An index is two files: `F.npy`, float32 [N, D], one L2-normalised embedding (`Predictor.embed`) a row,
and `F.json` beside it: which video each row is and which model made them (its name and the sha256 of
its weights: embeddings of different models do not compare). `np.load` reads the array without pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError

INDEX_FORMAT = "stadapter-deploy/feature-index-v1"


@dataclass
class Match:
    video: str
    row: int  # the video's row in the index
    score: float  # cosine similarity, in [-1, 1]

    def to_dict(self) -> dict:
        return {"video": self.video, "score": self.score}


def cosine_neighbours(queries: np.ndarray, index: np.ndarray, k: int, exclude_self: bool = False):
    """The k nearest rows of `index` [N, D] by cosine for each of `queries` [Q, D] (any scale: both are
    L2-normalised here): (rows [Q, k] int, scores [Q, k] float32), best first. exclude_self: the queries
    are the index itself (Q == N) and row i is not its own neighbour."""
    queries, index = l2_normalise(queries), l2_normalise(index)
    scores = queries @ index.T  # [Q, N]
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    k = min(k, scores.shape[1] - int(exclude_self))
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [Q, k]
    return rows, np.take_along_axis(scores, rows, axis=1).astype(np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 1 else x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def model_id(bundle) -> dict:
    """Which model made an embedding: the bundle's model name and its weights' sha256 (the same for
    every backend of the bundle)."""
    torch_artifacts = bundle.find("torch")
    return {"name": bundle.model_name, "weights_sha256": torch_artifacts[0]["sha256"] if torch_artifacts else None}


@dataclass
class FeatureIndex:
    videos: list[str]  # the video of each row
    features: np.ndarray  # float32 [N, D], L2-normalised rows
    model: dict  # model_id of the bundle that made them

    def __post_init__(self) -> None:
        self.features = l2_normalise(self.features) if len(self.features) else np.zeros((0, 0), np.float32)
        if len(self.videos) != len(self.features):
            raise ValueError(f"{len(self.videos)} videos for {len(self.features)} feature rows")

    def save(self, path: str | Path) -> Path:
        """Write F.npy and F.json (`path` is F.npy; the .npy suffix is added when missing)."""
        path = npy_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, self.features.astype(np.float32), allow_pickle=False)
        meta = {"format": INDEX_FORMAT, "model": self.model, "dim": int(self.features.shape[1]), "videos": self.videos}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureIndex:
        """Read F.npy and its F.json; BundleError (one line) when either is missing or they disagree."""
        path = npy_path(path)
        meta_path = path.with_suffix(".json")
        for p in (path, meta_path):
            if not p.is_file():
                raise BundleError(f"feature index {path}: {p} is missing (--features-out writes both)")
        try:
            features = np.load(path, allow_pickle=False)
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as e:
            raise BundleError(f"feature index {path} cannot be read: {str(e).splitlines()[0]}") from e
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise BundleError(f"{meta_path} is not a feature index (format {INDEX_FORMAT!r})")
        videos = meta.get("videos")
        if features.ndim != 2 or not isinstance(videos, list) or len(videos) != len(features):
            raise BundleError(
                f"feature index {path}: {len(videos) if isinstance(videos, list) else 'no'} videos in "
                f"{meta_path.name} for an array of shape {list(features.shape)}"
            )
        return cls(videos=[str(v) for v in videos], features=features, model=meta.get("model") or {})

    def check_model(self, model: dict) -> None:
        """BundleError unless `model` (a model_id) made this index: other weights' embeddings do not compare."""
        made, here = self.model.get("weights_sha256"), model.get("weights_sha256")
        if made != here:
            raise BundleError(
                f"the index was made by {self.model.get('name')!r} (weights {str(made)[:12]}), not by this "
                f"bundle's {model.get('name')!r} (weights {str(here)[:12]}): embeddings of different models "
                "do not compare; index the videos again with this bundle"
            )

    def nearest(self, query: np.ndarray, k: int = 5) -> list[Match]:
        """The k videos most like the embedding `query` [D], best first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if len(self.videos) == 0:
            return []
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.features.shape[1]:
            raise ValueError(f"a query of {query.shape[0]} dimensions for an index of {self.features.shape[1]}")
        rows, scores = cosine_neighbours(query, self.features, k)
        return [Match(self.videos[r], int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True)]


def npy_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")
