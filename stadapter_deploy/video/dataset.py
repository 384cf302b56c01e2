"""List-file datasets (`<relative path> <label>` per line, as the reference's lists) over the one video path.

Each sample's randomness is seeded from (seed, epoch, index, attempt), so a clip is the same whatever
DataLoader worker builds it. A broken or missing video never stops training: it is logged with its
path, counted in `skipped` (a shared counter: DataLoader workers add to it too), and another entry is
drawn in its place (training: a seeded random entry; evaluation: the next entry in the list, so no
two runs differ). Clean your lists first with `python -m stadapter_deploy.video.check_list`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, VideoError
from ..preprocessing import Preprocessing
from .augment import AUGMENTS, train_transform
from .limits import DecodeLimits
from .pipeline import decode_clip_frames, eval_picker, eval_views_from_frames
from .sampling import train_indices

log = logging.getLogger(__name__)


class VideoClipDataset(Dataset):
    """(clip, label, index): clip [3, T, S, S] in training, [V, 3, T, S, S] in evaluation.

    `index` is the entry the clip came from (differs from the requested one when a broken video was
    replaced). Evaluation views follow `prepare_eval_views`: each spatial crop's temporal views together.
    """

    def __init__(
        self,
        entries: list[tuple[Path, int]],
        preprocessing: Preprocessing,
        train: bool = True,
        augment: str = "k400",
        seed: int = 0,
        decoder: str | None = None,
        max_attempts: int = 20,
        limits: DecodeLimits | None = None,
    ):
        if augment not in AUGMENTS:
            raise ConfigError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if not entries:
            raise ConfigError("a dataset needs at least one video")
        self.entries = list(entries)
        self.preprocessing, self.train, self.augment = preprocessing, train, augment
        self.seed, self.epoch, self.decoder, self.max_attempts = seed, 0, decoder, max_attempts
        self.limits = limits or DecodeLimits()  # what one video may cost to decode (the app's settings)
        self._skipped = mp.Value("l", 0)
        self.skipped_paths: list[str] = []  # this process's skips (workers log theirs)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """New augmentation and sampling draws each epoch (call before creating the epoch's iterator)."""
        self.epoch = epoch

    @property
    def skipped(self) -> int:
        """Broken videos met so far, in this process and its DataLoader workers."""
        return self._skipped.value

    def __getitem__(self, index: int):
        for attempt in range(self.max_attempts):
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
            path, label = self.entries[index]
            try:
                return self._load(path, rng), label, index
            except VideoError as e:
                self._skip(path, e)
            index = int(rng.integers(len(self))) if self.train else (index + 1) % len(self)
        raise VideoError(f"{self.max_attempts} videos in a row failed to decode; is the dataset root right?")

    def _skip(self, path: Path, error: Exception) -> None:
        with self._skipped.get_lock():
            self._skipped.value += 1
        self.skipped_paths.append(str(path))
        log.warning("skipping broken video %s: %s", path, error)

    def _load(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        pre = self.preprocessing
        if self.train:
            pick = lambda n: train_indices(n, pre.num_frames, pre.sampling_rate, rng)
            frames, _, _ = decode_clip_frames(path, pick, self.decoder, self.limits)
            return train_transform(frames, pre.size, self.augment, rng, pre.mean, pre.std)  # [3, T, S, S]
        frames, _, _ = decode_clip_frames(path, eval_picker(pre), self.decoder, self.limits)
        return eval_views_from_frames(frames, pre)  # [V, 3, T, S, S]
