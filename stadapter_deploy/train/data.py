"""The training side of the video pipeline: list files -> datasets, synthetic data on demand.

A thin adapter over stadapter_deploy.video (the one preprocessing path); nothing here decodes or
transforms frames itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..labels import placeholder_labels, read_labels
from ..preprocessing import Preprocessing
from ..recipes import class_names as shipped_class_names
from ..video.dataset import VideoClipDataset
from ..video.limits import DecodeLimits
from ..video.listfile import read_video_list
from . import distributed as D
from .config import TrainConfig


def ensure_synthetic_dataset(cfg: TrainConfig, dist: D.DistInfo) -> None:
    """Generate the synthetic motion dataset at cfg.data_root unless its lists are already there."""
    root = Path(cfg.data_root)
    if dist.is_main and not ((root / "train.txt").is_file() and (root / "val.txt").is_file()):
        from ..video.synthetic import make_synthetic_dataset

        print(f"generating the synthetic motion dataset in {root} ...", flush=True)
        make_synthetic_dataset(root, seed=0)
    D.barrier()


def class_names(cfg: TrainConfig) -> list[str]:
    """From --class-names / the data config, else the list shipped for the dataset, else class_N."""
    num_classes = cfg.recipe.num_classes
    if cfg.class_names is not None:
        return read_labels(cfg.class_names, num_classes)
    try:
        names = shipped_class_names(cfg.dataset)
    except ValueError:
        names = []
    # another count than the shipped list's (e.g. a subset of K400): no trustworthy names
    return names if len(names) == num_classes else placeholder_labels(num_classes)


SKIP_LOGGER = "stadapter_deploy.video.dataset"  # where VideoClipDataset logs each broken video


def build_datasets(
    cfg: TrainConfig, pre: Preprocessing, limits: DecodeLimits | None = None
) -> tuple[VideoClipDataset, VideoClipDataset]:
    """Training (random clips, the recipe's augmentation) and evaluation (all views) datasets."""
    train = read_video_list(cfg.train_list, cfg.train_root, cfg.recipe.num_classes)
    val = read_video_list(cfg.val_list, cfg.val_root, cfg.recipe.num_classes)
    train_set = VideoClipDataset(train, pre, True, cfg.recipe.train_augment, cfg.seed, limits=limits)
    val_set = VideoClipDataset(val, pre, train=False, seed=cfg.seed, limits=limits)
    return train_set, val_set


class SkipLog(logging.FileHandler):
    """Appends '<path>\t<why>' for each video the dataset skips; every process (workers too) appends."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            path, why = record.args
            return f"{path}\t{why}".replace("\n", " ")
        return record.getMessage().replace("\n", " ")


def log_skipped_videos(path: Path) -> None:
    """Record the dataset's skipped videos in `path` (idempotent; also a DataLoader worker_init_fn target)."""
    logger = logging.getLogger(SKIP_LOGGER)
    target = os.path.abspath(path)
    for h in [h for h in logger.handlers if isinstance(h, SkipLog)]:
        if h.baseFilename == target:
            return
        logger.removeHandler(h)  # left by an earlier run in this process
        h.close()
    logger.addHandler(SkipLog(target, mode="a", delay=True))  # opened lazily, in each process


def stop_logging_skipped() -> None:
    """Detach and close the skipped-video file (run() ends; the logger is process-global)."""
    logger = logging.getLogger(SKIP_LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, SkipLog)]:
        logger.removeHandler(h)
        h.close()


def read_skipped(path: Path) -> list[str]:
    """Distinct skipped videos recorded in `path` ('<path>\t<why>'), in the order first met."""
    if not path.is_file():
        return []
    return list(dict.fromkeys(line for line in path.read_text().splitlines() if line.strip()))
